//! Kernel validation: the catalog accepts only the device code a kernel was registered with,
//! recognised by address (the same static text) or by content (the same text elsewhere), and
//! refuses anything else before it could be compiled or launched.

use gpubridge_core::kernels::VectorAdd;
use gpubridge_core::{Error, Kernel, KernelCatalog, KernelSources};

#[test]
fn only_the_registered_device_code_passes() {
    let mut catalog = KernelCatalog::default();
    catalog.register(VectorAdd).unwrap();
    let registered = VectorAdd.sources();
    catalog
        .verify_sources(VectorAdd::ID, &registered)
        .expect("the registered static text");

    // The same text at another address (copied at run time, or a literal's copy in another
    // codegen unit) is the same text.
    let copy = |s: Option<&'static str>| s.map(|t| &*String::leak(t.to_owned()));
    let copied = KernelSources {
        cuda: copy(registered.cuda),
        wgsl: copy(registered.wgsl),
    };
    assert!(!std::ptr::eq(
        copied.cuda.unwrap().as_ptr(),
        registered.cuda.unwrap().as_ptr()
    ));
    catalog
        .verify_sources(VectorAdd::ID, &copied)
        .expect("the same text elsewhere");

    // One byte more, one byte changed (same length), one missing form: refused, naming the
    // kernel.
    let mut longer = registered.cuda.unwrap().to_owned();
    longer.push(' ');
    let flipped = registered.cuda.unwrap().replacen('{', "(", 1);
    assert_eq!(flipped.len(), registered.cuda.unwrap().len());
    for bad in [
        KernelSources {
            cuda: Some(String::leak(longer)),
            wgsl: registered.wgsl,
        },
        KernelSources {
            cuda: Some(String::leak(flipped)),
            wgsl: registered.wgsl,
        },
        KernelSources {
            cuda: registered.cuda,
            wgsl: None,
        },
    ] {
        let e = catalog.verify_sources(VectorAdd::ID, &bad).unwrap_err();
        assert!(
            matches!(&e, Error::KernelSourceChanged { id, registered, found } if id == VectorAdd::ID && registered != found),
            "{e:?}"
        );
        assert_eq!(e.reason_label(), "kernel_source_changed");
    }
    assert!(matches!(
        catalog.verify_sources("kernels/none", &registered),
        Err(Error::UnknownKernel { .. })
    ));
}
