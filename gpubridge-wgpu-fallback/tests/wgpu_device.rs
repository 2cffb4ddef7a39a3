//! The wgpu backend through core's device-adapter family, on whatever adapter this machine has
//! (Mesa's llvmpipe in CI): adapter facts, buffers, compiled modules, plans refused for the
//! adapter's limits, validation errors, the pool and its limit, and the reasons given when wgpu is
//! not used. Skips without an adapter unless `GPUBRIDGE_REQUIRE_WGPU=1`.

#![cfg(feature = "wgpu")]

use std::io::Write;
use std::sync::Arc;

use gpubridge_core::conformance::wgpu_required;
use gpubridge_core::device::{Device, Instance};
use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::plan::{Arg, Args, BufferId, Gemm, Launch, Plan, PlanTarget};
use gpubridge_core::{
    Backend, BackendKind, BridgeConfig, DeviceType, Error, Health, Kernel, KernelSources,
};
use gpubridge_wgpu_fallback::wgpu::{WgpuBackend, WgpuDevice, WgpuInstance};
use rand::{Rng, SeedableRng};

/// The first device, or `None` (a skip) where there is no adapter and wgpu is not required.
fn device(config: &BridgeConfig) -> Option<WgpuDevice> {
    let instance = match WgpuInstance::discover(config) {
        Ok(i) => i,
        Err(why) => {
            assert!(!wgpu_required(), "wgpu is required here: {why}");
            eprintln!("skipped: wgpu not available: {why}");
            return None;
        }
    };
    let d = instance
        .enumerate()
        .expect("an adapter that was found opens")
        .remove(0);
    // Once per test binary, straight to stderr (libtest captures `eprintln!` of passing tests).
    static NAMED: std::sync::Once = std::sync::Once::new();
    NAMED.call_once(|| {
        let a = d.adapter_info();
        let _ = writeln!(
            std::io::stderr(),
            "wgpu_device runs on: {} (backend {}, device type {:?}, driver {} {})",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.driver_info
        );
    });
    Some(d)
}

fn random_pairs(n: usize, len: usize) -> Vec<VectorPair> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    (0..n)
        .map(|_| VectorPair {
            a: (0..len).map(|_| rng.random_range(-1e3..1e3)).collect(),
            b: (0..len).map(|_| rng.random_range(-1e3..1e3)).collect(),
        })
        .collect()
}

/// Runs VectorAdd's plan for `inputs` directly on `d`, returning the outputs.
fn run_vector_add(d: &WgpuDevice, inputs: &[VectorPair]) -> Result<Vec<Vec<f32>>, Error> {
    let module = d.load_module(VectorAdd::ID, &VectorAdd.sources())?;
    let items: Arc<[VectorPair]> = Arc::from(inputs.to_vec());
    let mut plan = VectorAdd.plan(&items, &d.plan_target())?;
    let mut out = None;
    d.execute(&module, &mut plan, &mut |outputs| {
        out = Some(VectorAdd.unpack(&items, &outputs));
    })?;
    out.expect("execute hands the outputs over")
}

fn vector_add_module(d: &WgpuDevice) -> gpubridge_wgpu_fallback::wgpu::WgpuModule {
    d.load_module(VectorAdd::ID, &VectorAdd.sources()).unwrap()
}

#[test]
fn adapter_is_reported_with_its_kind_and_limits() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let info = d.info();
    assert_eq!(info.id.backend, BackendKind::Wgpu);
    assert_eq!(info.id.index, 0);
    assert_eq!(info.name, d.adapter_info().name);
    if d.is_software() {
        assert_eq!(info.device_type, DeviceType::SoftwareGpu);
        assert!(
            info.details.contains("software adapter"),
            "{}",
            info.details
        );
        assert!(info.compute_units > 0 && info.total_memory > 0, "{info:?}");
        let mem = d.memory().unwrap();
        assert!(mem.free > 0 && mem.free <= mem.total, "{mem:?}");
    } else {
        assert_ne!(info.device_type, DeviceType::SoftwareGpu);
        assert!(matches!(d.memory(), Err(Error::Unsupported { .. })));
    }
    let limits = d.limits();
    match d.plan_target() {
        PlanTarget::Wgsl {
            max_workgroups_per_dim,
            max_storage_buffer_bytes,
        } => {
            assert_eq!(
                max_workgroups_per_dim,
                limits.max_compute_workgroups_per_dimension
            );
            assert_eq!(
                max_storage_buffer_bytes,
                limits
                    .max_storage_buffer_binding_size
                    .min(limits.max_buffer_size)
            );
        }
        other => panic!("a wgpu device plans for WGSL, not {other:?}"),
    }
    assert_eq!(d.health(), Health::Healthy);
}

#[test]
fn buffers_copy_at_any_offset_and_check_bounds() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let mut buf = d.alloc(19).unwrap();
    assert_eq!(buf.len(), 19);
    let mut all = [0xffu8; 19];
    d.read(&buf, 0, &mut all).unwrap();
    assert_eq!(all, [0; 19], "new buffers are zeroed");
    d.write(&mut buf, 4, &[1, 2, 3, 4]).unwrap();
    // Unaligned on both ends: wgpu copies words, so the edges are merged.
    d.write(&mut buf, 9, &[9, 8, 7]).unwrap();
    d.write(&mut buf, 18, &[5]).unwrap();
    let mut out = [0u8; 11];
    d.read(&buf, 3, &mut out).unwrap();
    assert_eq!(out, [0, 1, 2, 3, 4, 0, 9, 8, 7, 0, 0]);
    d.read(&buf, 0, &mut all).unwrap();
    assert_eq!(all[18], 5);
    assert_eq!(all[..4], [0; 4]);
    assert!(matches!(
        d.write(&mut buf, 17, &[0; 4]),
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        d.read(&buf, usize::MAX, &mut out),
        Err(Error::InvalidInput { .. })
    ));
    // Larger than the adapter's largest buffer: no retry can help, so Unsupported.
    assert!(matches!(
        d.alloc(usize::MAX / 2),
        Err(Error::Unsupported {
            backend: BackendKind::Wgpu,
            ..
        })
    ));
    d.synchronize().unwrap();
}

#[test]
fn modules_compile_once_and_bad_wgsl_is_unsupported_and_remembered() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let a = vector_add_module(&d);
    let b = vector_add_module(&d);
    assert!(a.same_as(&b), "a module is compiled once per source");
    assert_eq!(a.kernel(), VectorAdd::ID);
    let shown = format!("{a:?}");
    assert!(
        shown.starts_with("WgpuModule") && shown.contains(VectorAdd::ID),
        "{shown}"
    );
    assert!(matches!(
        d.load_module("cpu/only", &KernelSources::default()),
        Err(Error::Unsupported { .. })
    ));
    let broken = KernelSources {
        cuda: None,
        wgsl: Some("@compute @workgroup_size(1) fn main() { let x: f32 = ; }"),
    };
    let first = d.load_module("broken", &broken).unwrap_err();
    let Error::Unsupported { what, .. } = &first else {
        panic!("a compile error is Unsupported, got {first:?}");
    };
    assert!(what.contains("compiling broken"), "{what}");
    let again = d.load_module("broken", &broken).unwrap_err();
    assert_eq!(first.to_string(), again.to_string());
    assert_eq!(
        d.health(),
        Health::Healthy,
        "a bad kernel is not a bad device"
    );
}

#[test]
fn plans_the_adapter_cannot_run_are_refused_before_they_run() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let module = vector_add_module(&d);
    let max = d.limits().max_compute_workgroups_per_dimension;
    let plan_with = |launch: Option<Launch>, gemm: bool| {
        let mut p = Plan::new(VectorAdd::ID);
        let a = p.input("a", 64, |dst, _| dst.fill(0));
        let b = p.input("b", 64, |dst, _| dst.fill(0));
        let out = p.output("out", 64);
        match launch {
            Some(mut l) => {
                if l.args.is_empty() {
                    l.args =
                        Args::from_slice(&[Arg::buf(a), Arg::buf(b), Arg::buf(out), Arg::U32(16)]);
                }
                p.launch(l);
            }
            None if gemm => p.gemm(Gemm {
                m: 4,
                k: 4,
                n: 4,
                a: Arg::buf(a),
                b: Arg::buf(b),
                c: Arg::buf(out),
            }),
            None => {}
        }
        p
    };
    let launch = |grid: [u32; 3], args: &[Arg]| Launch::new("vector_add", grid, [256, 1, 1], args);
    let cases = [
        (
            "a grid beyond the limit",
            plan_with(Some(launch([max + 1, 1, 1], &[])), false),
        ),
        ("a GEMM step", plan_with(None, true)),
        (
            "a 64-bit scalar",
            plan_with(
                Some(launch(
                    [1, 1, 1],
                    &[
                        Arg::buf(BufferId(0)),
                        Arg::buf(BufferId(1)),
                        Arg::buf(BufferId(2)),
                        Arg::U64(16),
                    ],
                )),
                false,
            ),
        ),
        (
            "a misaligned binding offset",
            plan_with(
                Some(launch(
                    [1, 1, 1],
                    &[
                        Arg::Buffer {
                            id: BufferId(0),
                            offset: 4,
                        },
                        Arg::buf(BufferId(1)),
                        Arg::buf(BufferId(2)),
                        Arg::U32(1),
                    ],
                )),
                false,
            ),
        ),
        (
            "an entry point the source does not have",
            plan_with(
                Some(Launch::new(
                    "no_such_entry",
                    [1, 1, 1],
                    [256, 1, 1],
                    &[
                        Arg::buf(BufferId(0)),
                        Arg::buf(BufferId(1)),
                        Arg::buf(BufferId(2)),
                        Arg::U32(16),
                    ],
                )),
                false,
            ),
        ),
    ];
    for (what, mut plan) in cases {
        let mut called = false;
        let err = d
            .execute(&module, &mut plan, &mut |_| called = true)
            .expect_err(what);
        assert!(
            matches!(
                err,
                Error::Unsupported {
                    backend: BackendKind::Wgpu,
                    ..
                }
            ),
            "{what}: {err:?}"
        );
        assert!(!called, "{what}: outputs handed over for a refused plan");
    }
    assert_eq!(d.health(), Health::Healthy);
}

#[test]
fn validation_errors_are_caught_as_unsupported_and_the_device_carries_on() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let module = vector_add_module(&d);
    // The shader binds four resources; this launch gives two buffers and the scalars, so wgpu's
    // validation refuses the bind group. It must come back typed, not as a panic.
    let mut p = Plan::new(VectorAdd::ID);
    let a = p.input("a", 64, |dst, _| dst.fill(0));
    let out = p.output("out", 64);
    p.launch(Launch::new(
        "vector_add",
        [1, 1, 1],
        [256, 1, 1],
        &[Arg::buf(a), Arg::buf(out), Arg::U32(16)],
    ));
    let err = d.execute(&module, &mut p, &mut |_| {}).unwrap_err();
    match &err {
        Error::Unsupported { what, .. } => assert!(what.contains("refused by wgpu"), "{what}"),
        other => panic!("expected Unsupported from wgpu validation, got {other:?}"),
    }
    // The device is fine: a correct plan runs and is right.
    let inputs = random_pairs(3, 1000);
    let outs = run_vector_add(&d, &inputs).unwrap();
    for (p, o) in inputs.iter().zip(&outs) {
        let want: Vec<f32> = p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect();
        assert_eq!(o, &want);
    }
    assert_eq!(d.health(), Health::Healthy);
}

#[test]
fn pool_reuses_buffers_and_its_limit_is_out_of_memory() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let inputs = random_pairs(4, 10_000);
    run_vector_add(&d, &inputs).unwrap();
    let first = d.pool_stats();
    let outs = run_vector_add(&d, &inputs).unwrap();
    let second = d.pool_stats();
    assert_eq!(second.misses, first.misses, "{first:?} -> {second:?}");
    assert!(second.hits > first.hits, "{first:?} -> {second:?}");
    assert_eq!(second.in_use, 0, "every buffer went back: {second:?}");
    for (p, o) in inputs.iter().zip(&outs) {
        assert_eq!(o.len(), p.a.len());
        assert!(p.a.iter().zip(&p.b).zip(o).all(|((a, b), o)| a + b == *o));
    }

    let mut small = BridgeConfig::default();
    small.memory.pool_size_mb = 1;
    let Some(d) = device(&small) else { return };
    let err = run_vector_add(&d, &random_pairs(1, 200_000)).unwrap_err();
    match err {
        Error::OutOfMemory {
            device, requested, ..
        } => {
            assert_eq!(device, "wgpu:0");
            assert!(requested > 0);
        }
        other => panic!("expected OutOfMemory at the pool limit, got {other:?}"),
    }
    assert_eq!(d.pool_stats().failures, 1);
    assert_eq!(
        d.pool_stats().in_use,
        0,
        "a refused plan gives back what it rented"
    );
    // Within the limit the same device still works.
    run_vector_add(&d, &random_pairs(2, 1000)).unwrap();
}

#[test]
fn backend_reports_budget_target_and_refuses_cpu_jobs() {
    let config = BridgeConfig::default();
    let Some(b) = WgpuBackend::or_skip(&config) else {
        return;
    };
    assert_eq!(b.kind(), BackendKind::Wgpu);
    assert!(!b.devices().is_empty());
    let d = b.device(0).unwrap();
    assert_eq!(b.plan_target(0), Some(d.plan_target()));
    let budget = b.memory_budget(0).unwrap();
    let PlanTarget::Wgsl {
        max_storage_buffer_bytes,
        ..
    } = d.plan_target()
    else {
        unreachable!()
    };
    assert!(budget > 0 && budget <= max_storage_buffer_bytes);
    assert!(matches!(
        b.submit(0, gpubridge_core::Work::Cpu(Box::new(|_| {}))),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        b.submit(7, gpubridge_core::Work::Cpu(Box::new(|_| {}))),
        Err(Error::DeviceLost { .. })
    ));
    assert_eq!(b.health(0), Health::Healthy);
}

#[test]
fn unavailable_wgpu_says_exactly_why() {
    let mut off = BridgeConfig::default();
    off.wgpu.enabled = false;
    let why = WgpuBackend::new(&off).unwrap_err().to_string();
    assert!(
        why.contains("disabled by configuration (wgpu.enabled = false)"),
        "{why}"
    );
    let report = gpubridge_wgpu_fallback::wgpu_status(&off);
    assert!(report
        .unavailable_reason()
        .unwrap()
        .contains("wgpu.enabled"));

    let mut filtered = BridgeConfig::default();
    filtered.wgpu.adapter = Some("no-such-adapter-xyz".to_owned());
    match WgpuBackend::new(&filtered) {
        Ok(_) => panic!("an adapter filter that matches nothing left an adapter"),
        Err(why) => {
            let why = why.to_string();
            // Either adapters were found and passed over by the filter, or there were none.
            assert!(
                why.contains("wgpu.adapter = \"no-such-adapter-xyz\"") || !wgpu_required(),
                "{why}"
            );
        }
    }

    if let Some(d) = device(&BridgeConfig::default()) {
        if d.is_software() {
            let mut hardware_only = BridgeConfig::default();
            hardware_only.wgpu.allow_software_adapter = false;
            let why = WgpuBackend::new(&hardware_only).unwrap_err().to_string();
            assert!(why.contains("wgpu.allow_software_adapter = false"), "{why}");
        }
    }
}

#[test]
fn micro_batches_within_the_budget_fit_the_pool() {
    // A 10 MiB pool: the budget (two fifths) splits this 12 MB batch into micro-batches whose
    // storage and staging buffers fit the pool, so nothing is refused and all of it runs on wgpu.
    let mut config = BridgeConfig::default();
    config.memory.pool_size_mb = 10;
    let Some(b) = WgpuBackend::or_skip(&config) else {
        return;
    };
    assert_eq!(b.memory_budget(0), Some(4 << 20));
    let bridge = gpubridge_core::GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .backend(b.clone())
        .build()
        .unwrap();
    let inputs = random_pairs(10, 100_000);
    let r = futures::executor::block_on(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(inputs.clone(), gpubridge_core::ExecutionHints::default()),
    )
    .unwrap();
    assert!(r.chunks.len() >= 3, "{} micro-batches", r.chunks.len());
    assert!(r
        .chunks
        .iter()
        .all(|c| c.device.backend == BackendKind::Wgpu));
    for (p, o) in inputs.iter().zip(&r.outputs) {
        assert!(p.a.iter().zip(&p.b).zip(o).all(|((a, b), o)| a + b == *o));
    }
    let stats = b.pool_stats(0).unwrap();
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert!(stats.peak <= 10 << 20, "{stats:?}");
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn a_panicking_packer_leaves_the_device_and_its_pool_usable() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let module = vector_add_module(&d);
    // One pair of 1000 floats: the same buffer sizes as the plan below, so they share buffers.
    run_vector_add(&d, &random_pairs(1, 1000)).unwrap();
    let mut p = Plan::new(VectorAdd::ID);
    let a = p.input("a", 4000, |_, _| panic!("a kernel's packer panicked"));
    let b = p.input("b", 4000, |dst, _| dst.fill(0));
    let out = p.output("out", 4000);
    p.launch(Launch::new(
        "vector_add",
        [4, 1, 1],
        [256, 1, 1],
        &[Arg::buf(a), Arg::buf(b), Arg::buf(out), Arg::U32(1000)],
    ));
    // The packer's panic is caught and is the plan's error (the kernel's, not the device's).
    let e = d.execute(&module, &mut p, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&e, Error::KernelPanicked { kernel, message, .. } if kernel == VectorAdd::ID && message == "a kernel's packer panicked"),
        "{e:?}"
    );
    assert_eq!(
        d.pool_stats().in_use,
        0,
        "the failed plan gave its buffers back"
    );
    // The staging buffers it held (one left mapped mid-write) are reused and work.
    let before = d.pool_stats();
    let inputs = random_pairs(1, 1000);
    let outs = run_vector_add(&d, &inputs).unwrap();
    for (p, o) in inputs.iter().zip(&outs) {
        assert!(p.a.iter().zip(&p.b).zip(o).all(|((a, b), o)| a + b == *o));
    }
    let after = d.pool_stats();
    assert_eq!(after.misses, before.misses, "{before:?} -> {after:?}");
    assert_eq!(d.health(), Health::Healthy);
}

#[test]
fn the_instance_names_its_adapters_and_opens_as_core_opens_it() {
    let config = BridgeConfig::default();
    let instance = match WgpuInstance::open(&config) {
        Ok(i) => i,
        Err(e) => {
            assert!(!wgpu_required(), "wgpu is required here: {e}");
            return;
        }
    };
    let infos = instance.adapter_infos();
    assert!(!infos.is_empty());
    let shown = format!("{instance:?}");
    for a in &infos {
        assert!(shown.contains(&a.name), "{shown} lacks {}", a.name);
    }
    // The raw instance is the live one: it finds an adapter too.
    let adapters = futures::executor::block_on(
        instance
            .raw()
            .enumerate_adapters(wgpu::Backends::VULKAN | wgpu::Backends::GL),
    );
    assert!(!adapters.is_empty());
    let devices = instance.enumerate().unwrap();
    assert_eq!(devices.len(), infos.len());
    for (d, a) in devices.iter().zip(&infos) {
        assert_eq!(d.adapter_info().name, a.name);
        let shown = format!("{d:?}");
        assert!(
            shown.starts_with("WgpuDevice") && shown.contains(&a.name),
            "{shown}"
        );
    }

    // Through core's `Instance::open`, disabled wgpu is Unsupported with the reason.
    let mut off = BridgeConfig::default();
    off.wgpu.enabled = false;
    match WgpuInstance::open(&off) {
        Err(Error::Unsupported {
            backend: BackendKind::Wgpu,
            what,
        }) => assert!(what.contains("wgpu.enabled = false"), "{what}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn empty_buffers_and_empty_copies_are_allowed() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let mut empty = d.alloc(0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    d.write(&mut empty, 0, &[]).unwrap();
    d.read(&empty, 0, &mut []).unwrap();
    // Past the end is still refused, even for an empty buffer.
    assert!(matches!(
        d.write(&mut empty, 0, &[1]),
        Err(Error::InvalidInput { .. })
    ));

    let mut buf = d.alloc(6).unwrap();
    assert!(!buf.is_empty());
    d.write(&mut buf, 0, &[1, 2, 3, 4, 5, 6]).unwrap();
    // Empty copies at any offset within the buffer, the end included, leave it as it was.
    for at in [0, 3, 6] {
        d.write(&mut buf, at, &[]).unwrap();
        d.read(&buf, at, &mut []).unwrap();
    }
    let mut out = [0u8; 6];
    d.read(&buf, 0, &mut out).unwrap();
    assert_eq!(out, [1, 2, 3, 4, 5, 6]);
    assert!(matches!(
        d.read(&buf, 7, &mut []),
        Err(Error::InvalidInput { .. })
    ));
}

#[test]
fn graphs_pinned_memory_and_direct_reads_are_typed_unsupported() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let module = vector_add_module(&d);
    let inputs: Arc<[VectorPair]> = Arc::from(random_pairs(1, 16));
    let mut plan = VectorAdd.plan(&inputs, &d.plan_target()).unwrap();
    let mut buf = d.alloc(16).unwrap();
    let errors = [
        ("graphs", d.capture_graph(&module, &plan).unwrap_err()),
        ("pinned host memory", d.alloc_pinned(4096).unwrap_err()),
        (
            "direct storage reads",
            d.read_file_direct(std::path::Path::new("/proc/self/stat"), 0, 16, &mut buf)
                .unwrap_err(),
        ),
    ];
    for (what, e) in errors {
        match e {
            Error::Unsupported { backend, what: w } => {
                assert_eq!(backend, BackendKind::Wgpu);
                assert_eq!(w, what);
            }
            other => panic!("expected Unsupported({what}), got {other:?}"),
        }
    }
    // None of that touched the device: the plan still runs.
    let mut out = None;
    d.execute(&module, &mut plan, &mut |o| {
        out = Some(VectorAdd.unpack(&inputs, &o))
    })
    .unwrap();
    let want: Vec<f32> = inputs[0]
        .a
        .iter()
        .zip(&inputs[0].b)
        .map(|(a, b)| a + b)
        .collect();
    assert_eq!(out.unwrap().unwrap(), vec![want]);
    assert_eq!(d.health(), Health::Healthy);
}

/// Submits `plan` to device 0 of `b` and waits for its completion's verdict.
fn submit_and_wait(b: &WgpuBackend, plan: Plan, sources: KernelSources) -> Result<(), Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    b.submit(
        0,
        gpubridge_core::Work::Plan {
            plan,
            sources,
            complete: Box::new(move |r| {
                let _ = tx.send(r.map(|o| {
                    assert!(!o.stats.graph_replayed);
                }));
            }),
        },
    )
    .expect("the executor takes the plan");
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the executor completes every plan")
}

fn packer_plan(pack: impl Fn(&mut [u8], usize) + Send + Sync + 'static) -> Plan {
    let mut p = Plan::new(VectorAdd::ID);
    let a = p.input("a", 4000, pack);
    let b = p.input("b", 4000, |dst, _| dst.fill(0));
    let out = p.output("out", 4000);
    p.launch(Launch::new(
        "vector_add",
        [4, 1, 1],
        [256, 1, 1],
        &[Arg::buf(a), Arg::buf(b), Arg::buf(out), Arg::U32(1000)],
    ));
    p
}

#[test]
fn the_executor_turns_panics_and_failures_into_errors_and_carries_on() {
    let Some(b) = WgpuBackend::or_skip(&BridgeConfig::default()) else {
        return;
    };
    assert!(format!("{b:?}").starts_with("WgpuBackend"));
    assert_eq!(b.health(9), Health::Lost("no such device".to_owned()));
    let sources = VectorAdd.sources();
    let bytes = 4000;
    // A packer's panic (kernel code), whatever its payload, completes the plan with
    // `KernelPanicked` naming the kernel and the panic: the request's failure, not the device's.
    let cases: [(Plan, &str); 3] = [
        (
            packer_plan(|_, _| panic!("the packer gave up")),
            "the packer gave up",
        ),
        (
            packer_plan(move |_, _| panic!("the packer gave up on {bytes} bytes")),
            "the packer gave up on 4000 bytes",
        ),
        (
            packer_plan(|_, _| std::panic::panic_any(42u32)),
            "unknown panic",
        ),
    ];
    for (plan, want) in cases {
        match submit_and_wait(&b, plan, sources) {
            Err(Error::KernelPanicked {
                kernel,
                backend: BackendKind::Wgpu,
                message,
            }) => {
                assert_eq!(kernel, VectorAdd::ID);
                assert_eq!(message, want);
            }
            other => panic!("expected KernelPanicked with {want:?}, got {other:?}"),
        }
        assert_eq!(b.health(0), Health::Healthy);
    }
    // A kernel without a WGSL form fails before anything runs, with its own error.
    let e = submit_and_wait(
        &b,
        packer_plan(|dst, _| dst.fill(0)),
        KernelSources::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Unsupported { backend: BackendKind::Wgpu, what } if what.contains("no WGSL form")),
        "{e:?}"
    );
    // A completion that panics after taking its outputs: the error comes too late for anyone to
    // hear it (it is logged), and the executor carries on.
    let (tx, rx) = std::sync::mpsc::channel();
    b.submit(
        0,
        gpubridge_core::Work::Plan {
            plan: packer_plan(|dst, _| dst.fill(0)),
            sources,
            complete: Box::new(move |r| {
                let _ = tx.send(r.is_ok());
                panic!("the caller's completion failed");
            }),
        },
    )
    .unwrap();
    assert!(rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the completion ran"));
    // The executor is still there and the device is fine: a good plan completes.
    submit_and_wait(&b, packer_plan(|dst, _| dst.fill(0)), sources).unwrap();
    assert_eq!(b.health(0), Health::Healthy);
    assert_eq!(b.pool_stats(0).unwrap().in_use, 0);
}

#[test]
fn more_plans_the_adapter_cannot_run_are_refused_before_anything_is_rented() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let module = vector_add_module(&d);
    let before = d.pool_stats();
    let limits = d.limits().clone();
    let vector_add = |p: &mut Plan, a, b, out, shared: u32| {
        let mut l = Launch::new(
            "vector_add",
            [1, 1, 1],
            [256, 1, 1],
            &[Arg::buf(a), Arg::buf(b), Arg::buf(out), Arg::U32(16)],
        );
        l.shared_mem_bytes = shared;
        p.launch(l);
    };
    let mut cases = Vec::new();

    // Dynamic shared memory: WGSL declares workgroup memory in the source.
    let mut p = Plan::new(VectorAdd::ID);
    let (a, b, out) = (
        p.input("a", 64, |dst, _| dst.fill(0)),
        p.input("b", 64, |dst, _| dst.fill(0)),
        p.output("out", 64),
    );
    vector_add(&mut p, a, b, out, 1024);
    cases.push(("dynamic shared memory", p));

    // An output larger than the adapter's largest buffer (declared, never allocated).
    if let Ok(huge) = usize::try_from(limits.max_buffer_size + 4) {
        let mut p = Plan::new(VectorAdd::ID);
        let (a, b, out) = (
            p.input("a", 64, |dst, _| dst.fill(0)),
            p.input("b", 64, |dst, _| dst.fill(0)),
            p.output("out", huge),
        );
        vector_add(&mut p, a, b, out, 0);
        cases.push(("beyond the adapter's largest buffer", p));
    }

    // One storage binding more than a shader stage may have.
    let most = limits.max_storage_buffers_per_shader_stage;
    if most < 1 << 16 {
        let mut p = Plan::new(VectorAdd::ID);
        let a = p.input("a", 64, |dst, _| dst.fill(0));
        let args: Vec<Arg> = (0..=most).map(|_| Arg::buf(a)).collect();
        p.launch(Launch::new("vector_add", [1, 1, 1], [256, 1, 1], &args));
        cases.push(("storage buffers, beyond the adapter's", p));
    } else {
        eprintln!("not checked: this adapter allows {most} storage buffers per stage");
    }

    for (what, mut plan) in cases {
        let mut called = false;
        let err = d
            .execute(&module, &mut plan, &mut |_| called = true)
            .expect_err(what);
        match &err {
            Error::Unsupported {
                backend: BackendKind::Wgpu,
                what: w,
            } => assert!(w.contains(what), "{w:?} lacks {what:?}"),
            other => panic!("{what}: expected Unsupported, got {other:?}"),
        }
        assert!(!called, "{what}: outputs handed over for a refused plan");
    }
    let after = d.pool_stats();
    assert_eq!(
        (after.misses, after.hits, after.in_use),
        (before.misses, before.hits, 0),
        "nothing was rented for a refused plan"
    );
    assert_eq!(d.health(), Health::Healthy);
}

#[test]
fn scalars_are_packed_as_their_bits_and_scratch_and_empty_inputs_are_bound() {
    let Some(d) = device(&BridgeConfig::default()) else {
        return;
    };
    let module = vector_add_module(&d);
    let inputs = random_pairs(1, 1000);
    let want: Vec<f32> = inputs[0]
        .a
        .iter()
        .zip(&inputs[0].b)
        .map(|(a, b)| a + b)
        .collect();
    let (a_vals, b_vals) = (inputs[0].a.clone(), inputs[0].b.clone());
    let mut p = Plan::new(VectorAdd::ID);
    let a = p.input("a", 4000, move |dst, at| {
        gpubridge_core::plan::pack_range(dst, at, &a_vals)
    });
    let b = p.input("b", 4000, move |dst, at| {
        gpubridge_core::plan::pack_range(dst, at, &b_vals)
    });
    let out = p.output("out", 4000);
    // Buffers the launch does not use: device-only scratch and an empty input.
    let _scratch = p.scratch("scratch", 512);
    let _nothing = p.input("nothing", 0, |_, _| {});
    // The element count as an F32 argument with the same bits as the u32 the shader reads: the
    // scalar slot receives the argument's bytes as they are.
    p.launch(Launch::new(
        "vector_add",
        [4, 1, 1],
        [256, 1, 1],
        &[
            Arg::buf(a),
            Arg::buf(b),
            Arg::buf(out),
            Arg::F32(f32::from_bits(1000)),
        ],
    ));
    let mut got = None;
    d.execute(&module, &mut p, &mut |o| {
        got = Some(o.f32s(out).unwrap().into_owned());
    })
    .unwrap();
    assert_eq!(got.unwrap(), want);
    assert_eq!(d.pool_stats().in_use, 0);
}
