//! Every built-in kernel's CUDA C compiles through NVRTC for the H100's architecture, and the PTX
//! has every entry point its plans launch. Runs wherever NVRTC loads (CI installs NVIDIA's
//! `nvidia-cuda-nvrtc` wheel); skips elsewhere unless `GPUBRIDGE_REQUIRE_NVRTC=1` or
//! `GPUBRIDGE_REQUIRE_GPU=1`.

use gpubridge_core::kernels::{ConnectedComponents, MatMul, Saxpy, Sum, VectorAdd};
use gpubridge_core::{BackendKind, Error, Kernel, KernelSources};

fn required() -> bool {
    ["GPUBRIDGE_REQUIRE_NVRTC", "GPUBRIDGE_REQUIRE_GPU"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

fn sources() -> Vec<(&'static str, KernelSources, &'static [&'static str])> {
    vec![
        (VectorAdd::ID, VectorAdd.sources(), &["vector_add"]),
        (Sum::ID, Sum.sources(), &["segmented_sum"]),
        (Saxpy::ID, Saxpy.sources(), &["saxpy"]),
        (MatMul::ID, MatMul.sources(), &["matmul_f32"]),
        (
            ConnectedComponents::ID,
            ConnectedComponents::default().sources(),
            &["cc_init", "cc_hook", "cc_flatten"],
        ),
    ]
}

#[test]
fn every_builtin_cuda_source_compiles_for_sm_90() {
    let version = match gpubridge_cuda::nvrtc_version() {
        Ok(v) => v,
        Err(e) if !required() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("NVRTC is required here: {e}"),
    };
    eprintln!("NVRTC {}.{}", version.0, version.1);
    for (id, s, entries) in sources() {
        let ptx = gpubridge_cuda::compile(id, s.cuda.expect("CUDA form"), (9, 0))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            ptx.contains(".target sm_90"),
            "{id}: {}",
            &ptx[..ptx.len().min(400)]
        );
        for e in entries {
            assert!(ptx.contains(&format!(".entry {e}(")), "{id}: no entry {e}");
        }
    }
}

#[test]
fn compile_errors_carry_the_nvrtc_log() {
    if gpubridge_cuda::nvrtc_version().is_err() {
        assert!(!required(), "NVRTC is required here");
        return;
    }
    let err = gpubridge_cuda::compile(
        "test/broken",
        "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }",
        (9, 0),
    )
    .unwrap_err();
    match err {
        Error::Backend {
            backend: BackendKind::Cuda,
            message,
            ..
        } => {
            assert!(message.contains("undefined_name"), "{message}");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
}

#[test]
fn ptx_cache_stores_and_reuses_by_key() {
    if gpubridge_cuda::nvrtc_version().is_err() {
        assert!(!required(), "NVRTC is required here");
        return;
    }
    let dir = std::env::temp_dir().join(format!("gpubridge-ptx-test-{}", std::process::id()));
    let cache = gpubridge_cuda::PtxCache::new(Some(&dir)).unwrap();
    let s = VectorAdd.sources();
    let (a, cached) = cache
        .ptx(VectorAdd::ID, s.cuda.unwrap(), s.hash(), (9, 0))
        .unwrap();
    assert!(!cached);
    let path = cache.path_for(VectorAdd::ID, s.hash(), (9, 0)).unwrap();
    assert!(path.exists(), "{}", path.display());
    let (b, cached) = cache
        .ptx(VectorAdd::ID, s.cuda.unwrap(), s.hash(), (9, 0))
        .unwrap();
    assert!(cached);
    assert_eq!(a, b);
    // Another architecture or source is another key.
    assert_ne!(
        path,
        cache.path_for(VectorAdd::ID, s.hash(), (8, 0)).unwrap()
    );
    assert_ne!(
        path,
        cache.path_for(VectorAdd::ID, s.hash() ^ 1, (9, 0)).unwrap()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn discovery_never_panics() {
    match gpubridge_cuda::probe() {
        Ok(devices) => assert!(!devices.is_empty()),
        Err(why) => {
            assert!(!why.0.is_empty());
            assert!(
                std::env::var("GPUBRIDGE_REQUIRE_GPU").map_or(true, |v| v != "1"),
                "a GPU is required here: {why}"
            );
        }
    }
}
