//! The CPU backend through core's device-adapter family.

use futures::executor::block_on;
use gpubridge_core::device::{Device, Instance, Work};
use gpubridge_core::{Backend, BackendKind, BridgeConfig, DeviceType, Error, Health};
use gpubridge_wgpu_fallback::cpu::CpuInstance;
use gpubridge_wgpu_fallback::CpuBackend;

#[test]
fn enumerates_one_host_device_with_real_facts() {
    let mut cfg = BridgeConfig::default();
    cfg.cpu.threads = 3;
    let devices = CpuInstance::open(&cfg).unwrap().enumerate().unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(d.info().device_type, DeviceType::Cpu);
    assert_eq!(d.info().compute_units, 3);
    assert_eq!(d.context().threads(), 3);
    let mem = d.memory().unwrap();
    assert!(
        mem.total > 0 && mem.free > 0 && mem.free <= mem.total,
        "{mem:?}"
    );
    assert_eq!(d.health(), Health::Healthy);
}

#[test]
fn host_buffers_copy_and_check_bounds() {
    let d = CpuInstance::open(&BridgeConfig::default())
        .unwrap()
        .enumerate()
        .unwrap()
        .remove(0);
    let mut buf = d.alloc(16).unwrap();
    d.write(&mut buf, 4, &[1, 2, 3, 4]).unwrap();
    let mut out = [0u8; 6];
    d.read(&buf, 3, &mut out).unwrap();
    assert_eq!(out, [0, 1, 2, 3, 4, 0]);
    assert!(matches!(
        d.write(&mut buf, 14, &[0; 4]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.read(&buf, usize::MAX, &mut out),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.alloc(usize::MAX),
        Err(Error::OutOfMemory { .. })
    ));
    // The CPU has no device modules or graphs: typed Unsupported, never a panic.
    assert!(matches!(
        d.load_module("k", &Default::default()),
        Err(Error::Unsupported {
            backend: BackendKind::Cpu,
            ..
        })
    ));
}

#[test]
fn backend_runs_cpu_jobs_and_refuses_plans() {
    let b = CpuBackend::new(&BridgeConfig::default()).unwrap();
    let (tx, rx) = futures::channel::oneshot::channel();
    b.submit(
        0,
        Work::Cpu(Box::new(move |ctx| {
            let _ = tx.send(ctx.threads());
        })),
    )
    .unwrap();
    assert!(block_on(rx).unwrap() >= 1);
    let plan = gpubridge_core::Plan::new("k");
    let err = b
        .submit(
            0,
            Work::Plan {
                plan,
                sources: Default::default(),
                complete: Box::new(|_| {}),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }));
    assert!(matches!(
        b.submit(1, Work::Cpu(Box::new(|_| {}))),
        Err(Error::DeviceLost { .. })
    ));
}

#[test]
fn optional_capabilities_are_typed_unsupported_on_the_host() {
    let b = CpuBackend::new(&BridgeConfig::default()).unwrap();
    let d = b.device();
    assert_eq!(d.info(), &b.devices()[0]);
    assert_eq!(d.info().id.backend, BackendKind::Cpu);
    // The host's free memory is not sampled for placement, and every kernel can run here.
    assert_eq!(b.free_memory(0), None);
    assert!(b.can_run(&Default::default()));
    assert_eq!(b.plan_target(0), None);
    assert_eq!(b.memory_budget(0), None);
    assert_eq!(b.health(0), Health::Healthy);

    let pinned = d.alloc_pinned(4096).unwrap_err();
    let mut buf = d.alloc(8).unwrap();
    let direct = d
        .read_file_direct(std::path::Path::new("/proc/self/stat"), 0, 8, &mut buf)
        .unwrap_err();
    for (e, what) in [
        (pinned, "pinned host memory"),
        (direct, "direct storage reads"),
    ] {
        match e {
            Error::Unsupported { backend, what: w } => {
                assert_eq!(backend, BackendKind::Cpu);
                assert_eq!(w, what);
            }
            other => panic!("expected Unsupported({what}), got {other:?}"),
        }
    }
    // The refused direct read left the buffer as it was.
    let mut out = [0xffu8; 8];
    d.read(&buf, 0, &mut out).unwrap();
    assert_eq!(out, [0; 8]);
    d.synchronize().unwrap();
}
