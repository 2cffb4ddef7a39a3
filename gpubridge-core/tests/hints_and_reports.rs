//! What callers see besides outputs: hints that steer placement, the batch result's summaries,
//! the accounting's leak lines, the error's labels, classes and messages, and the reasons a
//! backend report gives.

use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::poll;
use gpubridge_core::accounting::{Accounting, BatcherOccupancy};
use gpubridge_core::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge_core::testing::{assert_quiescent, FaultInjectingBackend};
use gpubridge_core::{
    BackendKind, BackendReport, BackendStatus, BatchResult, BridgeConfig, ChunkReport, DeviceId,
    Error, ErrorClass, ExecutionHints, GpuBridge, IoErrorKind, Preference, Priority, TenantUsage,
};

fn pairs(n: usize, len: usize) -> Vec<VectorPair> {
    (0..n)
        .map(|i| VectorPair {
            a: (0..len).map(|j| (i * len + j) as f32).collect(),
            b: vec![0.5; len],
        })
        .collect()
}

fn check_sums(inputs: &[VectorPair], outputs: &[Vec<f32>]) {
    assert_eq!(inputs.len(), outputs.len());
    for (p, o) in inputs.iter().zip(outputs) {
        let want: Vec<f32> = p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect();
        assert_eq!(o, &want);
    }
}

/// A bridge with a "GPU" (the test double reporting itself as CUDA, running CPU forms) and a CPU.
fn two_backends(config: BridgeConfig) -> GpuBridge {
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).unwrap();
    b.register(Sum).unwrap();
    b.add_backend(FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap());
    b.add_backend(FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap());
    b.build().unwrap()
}

#[test]
fn prefer_gpu_and_prefer_cpu_choose_the_backend_whatever_the_configuration_says() {
    for config_prefers_gpu in [true, false] {
        let mut config = BridgeConfig::default();
        config.general.prefer_gpu = config_prefers_gpu;
        let b = two_backends(config);
        let grain = b.batch::<VectorAdd>().unwrap();
        let inputs = pairs(3, 100);
        for (gpu, want) in [(true, BackendKind::Cuda), (false, BackendKind::Cpu)] {
            let hints = ExecutionHints::default().prefer_gpu(gpu);
            assert_eq!(
                hints.prefer,
                if gpu {
                    Preference::Gpu
                } else {
                    Preference::Cpu
                }
            );
            let r = block_on(grain.execute(inputs.clone(), hints)).unwrap();
            assert_eq!(
                r.backend(),
                Some(want),
                "prefer_gpu({gpu}) with general.prefer_gpu = {config_prefers_gpu}"
            );
            assert!(r.fallbacks.is_empty(), "{:?}", r.fallbacks);
            check_sums(&inputs, &r.outputs);
        }
        // Auto follows the configuration.
        let r = block_on(grain.execute(inputs.clone(), ExecutionHints::default())).unwrap();
        let auto = if config_prefers_gpu {
            BackendKind::Cuda
        } else {
            BackendKind::Cpu
        };
        assert_eq!(r.backend(), Some(auto));
        assert_quiescent(&b);
    }
}

// A deadline uses tokio's timer (see `BatchGrain::execute`), so this runs on a tokio runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hint_builder_sets_its_field_and_the_request_still_runs() {
    let hints = ExecutionHints::default()
        .priority(Priority::High)
        .persistent(true)
        .spin_wait(Duration::from_millis(5))
        .max_micro_batch(2)
        .timeout(Duration::from_secs(30))
        .preferred_device(0)
        .on_backend(BackendKind::Cpu)
        .tenant("t")
        .correlation_id("req-1");
    assert_eq!(hints.priority, Priority::High);
    assert!(hints.persistent);
    assert_eq!(hints.spin_wait, Some(Duration::from_millis(5)));
    assert_eq!(hints.max_micro_batch, Some(2));
    assert_eq!(hints.timeout, Some(Duration::from_secs(30)));
    assert_eq!(hints.preferred_device, Some(0));
    assert_eq!(hints.backend, Some(BackendKind::Cpu));
    assert_eq!(hints.tenant.as_deref(), Some("t"));
    assert_eq!(hints.correlation_id.as_deref(), Some("req-1"));
    assert!(Priority::Low < Priority::Normal && Priority::Normal < Priority::High);
    assert_eq!(Priority::default(), Priority::Normal);

    let b = two_backends(BridgeConfig::default());
    let inputs = pairs(5, 64);
    let r = b
        .batch::<VectorAdd>()
        .unwrap()
        .execute(inputs.clone(), hints.clone())
        .await
        .unwrap();
    check_sums(&inputs, &r.outputs);
    // At most two items per micro-batch, all on the one backend allowed.
    assert_eq!(r.chunks.len(), 3);
    assert!(r.chunks.iter().all(|c| c.items <= 2));
    assert!(r
        .chunks
        .iter()
        .all(|c| c.device.backend == BackendKind::Cpu));
    // A single request with the same hints is answered too.
    let one = b.single::<Sum>(vec![1.0, 2.0, 3.5], hints).await.unwrap();
    assert_eq!(one.output, 6.5);
    assert_quiescent(&b);
}

fn chunk(device: DeviceId, items: usize, ms: u64, graph: bool) -> ChunkReport {
    ChunkReport {
        device,
        items,
        first_item: 0,
        queue: Duration::ZERO,
        compute: Duration::from_millis(ms),
        transfer: Duration::from_millis(2 * ms),
        graph_replayed: graph,
        executor: Duration::ZERO,
        pack: Duration::ZERO,
        upload: Duration::ZERO,
        download: Duration::ZERO,
        unpack: Duration::ZERO,
        handoff: Duration::ZERO,
        bytes_in: 0,
        bytes_out: 0,
    }
}

#[test]
fn batch_result_summaries_add_up_over_micro_batches() {
    let gpu0 = DeviceId {
        backend: BackendKind::Cuda,
        index: 0,
    };
    let gpu1 = DeviceId {
        backend: BackendKind::Cuda,
        index: 1,
    };
    let mut r = BatchResult::<u8> {
        outputs: Vec::new(),
        chunks: vec![
            chunk(gpu0, 3, 1, true),
            chunk(gpu1, 4, 2, true),
            chunk(gpu0, 2, 4, true),
        ],
        fallbacks: Vec::new(),
        total: Duration::from_millis(10),
    };
    assert_eq!(r.compute_time(), Duration::from_millis(7));
    assert_eq!(r.transfer_time(), Duration::from_millis(14));
    assert!(r.graph_replayed());
    // gpu0 ran five items, gpu1 four.
    assert_eq!(r.device(), Some(gpu0));
    r.chunks[1].graph_replayed = false;
    assert!(!r.graph_replayed(), "one micro-batch without a graph");
    r.chunks.clear();
    assert!(!r.graph_replayed(), "an empty batch replayed nothing");
    assert_eq!(r.compute_time(), Duration::ZERO);
    assert_eq!(r.device(), None);

    // On the CPU nothing is copied and no graph is replayed.
    let b = two_backends(BridgeConfig::default());
    let r = block_on(b.batch::<VectorAdd>().unwrap().execute(
        pairs(4, 10),
        ExecutionHints::default().on_backend(BackendKind::Cpu),
    ))
    .unwrap();
    assert!(!r.graph_replayed());
    assert_eq!(r.transfer_time(), Duration::ZERO);
    assert_eq!(
        r.compute_time(),
        r.chunks.iter().map(|c| c.compute).sum::<Duration>()
    );
    assert_quiescent(&b);
}

#[test]
fn accounting_names_every_count_that_is_not_zero() {
    let dev = DeviceId {
        backend: BackendKind::Wgpu,
        index: 1,
    };
    let idle = Accounting {
        pending_batches: 0,
        batchers: vec![("kernels/sum", BatcherOccupancy::default())],
        running_micro_batches: 0,
        waiting_micro_batches: 0,
        device_in_flight: vec![(dev, 0)],
        tenants: vec![("quiet".to_owned(), TenantUsage::default())],
        device_memory_in_use: vec![(dev, 0)],
    };
    assert!(idle.is_quiescent(), "{:?}", idle.leaks());
    let busy = Accounting {
        pending_batches: 2,
        batchers: vec![
            ("kernels/sum", BatcherOccupancy::default()),
            (
                "kernels/vector/add",
                BatcherOccupancy {
                    queued: 1,
                    staged: 2,
                    running: 3,
                },
            ),
        ],
        running_micro_batches: 4,
        waiting_micro_batches: 9,
        device_in_flight: vec![(dev, 5)],
        tenants: vec![
            ("quiet".to_owned(), TenantUsage::default()),
            (
                "busy".to_owned(),
                TenantUsage {
                    in_flight: 6,
                    bytes_in_flight: 7,
                    refused: 8,
                },
            ),
        ],
        device_memory_in_use: vec![(dev, 4096)],
    };
    assert!(!busy.is_quiescent());
    assert_eq!(
        busy.leaks(),
        vec![
            "2 batches pending".to_owned(),
            "batcher of kernels/vector/add: 1 queued, 2 staged, 3 running".to_owned(),
            "4 micro-batches hold a device slot".to_owned(),
            "9 micro-batches wait for a device slot".to_owned(),
            "wgpu:1: 5 micro-batches in flight".to_owned(),
            "tenant \"busy\": 6 requests and 7 bytes in flight".to_owned(),
            "wgpu:1: 4096 pool bytes rented out".to_owned(),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_bridge_lists_what_it_holds_while_a_device_holds_work() {
    let mut config = BridgeConfig::default();
    config.batching.max_queue_delay_us = 100;
    let mut builder = GpuBridge::builder(config);
    builder.register(VectorAdd).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    builder.add_backend(backend.clone());
    let b = builder.build().unwrap();
    backend.hold();
    let grain = b.batch::<VectorAdd>().unwrap();
    let inputs = pairs(2, 16);
    let mut batch = Box::pin(grain.execute(inputs.clone(), ExecutionHints::default()));
    let mut single = Box::pin(b.single::<VectorAdd>(inputs[0].clone(), ExecutionHints::default()));
    let started = Instant::now();
    while backend.held() < 2 {
        assert!(poll!(batch.as_mut()).is_pending());
        assert!(poll!(single.as_mut()).is_pending());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the work never reached the device"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let leaks = b.accounting().leaks();
    // The batch, and the batch the batcher made of the single request.
    assert!(leaks.contains(&"2 batches pending".to_owned()), "{leaks:?}");
    assert!(
        leaks
            .iter()
            .any(|l| l.starts_with("batcher of kernels/vector/add:") && l.ends_with("1 running")),
        "{leaks:?}"
    );
    assert!(
        leaks
            .iter()
            .any(|l| l.ends_with("micro-batches hold a device slot")),
        "{leaks:?}"
    );
    assert!(
        leaks.contains(&"cpu:0: 2 micro-batches in flight".to_owned()),
        "{leaks:?}"
    );
    assert_eq!(backend.release(), 2);
    check_sums(&inputs, &batch.await.unwrap().outputs);
    assert_eq!(single.await.unwrap().output, check_one(&inputs[0]));
    assert_quiescent(&b);
}

fn check_one(p: &VectorPair) -> Vec<f32> {
    p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect()
}

#[test]
fn errors_have_stable_labels_classes_and_messages() {
    let io = |kind| Error::Io {
        path: "/data/x.bin".into(),
        kind,
        message: "reading".to_owned(),
    };
    let cases: Vec<(Error, &str, ErrorClass)> = vec![
        (
            Error::UnknownKernel {
                id: "k".into(),
                registered: "a, b".into(),
            },
            "unknown_kernel",
            ErrorClass::Caller,
        ),
        (
            Error::KernelTypeMismatch {
                id: "k".into(),
                expected: "f32 -> f32".into(),
                found: "u8 -> u8".into(),
            },
            "kernel_type_mismatch",
            ErrorClass::Caller,
        ),
        (
            Error::QueueFull {
                kernel: "k".into(),
                capacity: 8,
            },
            "queue_full",
            ErrorClass::Overload,
        ),
        (
            Error::Timeout {
                after: Duration::from_millis(5),
            },
            "timeout",
            ErrorClass::Overload,
        ),
        (
            Error::Cancelled {
                reason: "shut down".into(),
            },
            "cancelled",
            ErrorClass::Caller,
        ),
        (
            Error::config("batching.max_batch", "must be positive"),
            "invalid_config",
            ErrorClass::Caller,
        ),
        (io(IoErrorKind::DiskFull), "io", ErrorClass::Resource),
        (io(IoErrorKind::Other), "io", ErrorClass::Resource),
        (io(IoErrorKind::PermissionDenied), "io", ErrorClass::Caller),
        (io(IoErrorKind::Truncated), "io", ErrorClass::Caller),
        (io(IoErrorKind::ShortRead), "io", ErrorClass::Caller),
        (io(IoErrorKind::NotFound), "io", ErrorClass::Caller),
    ];
    for (e, label, class) in cases {
        assert_eq!(e.reason_label(), label, "{e:?}");
        assert_eq!(e.class(), class, "{e:?}");
    }
    assert_eq!(
        Error::QueueFull {
            kernel: "kernels/sum".into(),
            capacity: 8
        }
        .to_string(),
        "queue full for kernels/sum (8 requests waiting)"
    );
    assert_eq!(
        Error::config("batching.max_batch", "must be positive").to_string(),
        "invalid configuration value for `batching.max_batch`: must be positive"
    );
    assert_eq!(
        io(IoErrorKind::Truncated).to_string(),
        "file truncated for /data/x.bin: reading"
    );
    let none = Error::NoBackendAvailable {
        kernel: "kernels/sum".into(),
        attempts: Vec::new(),
    };
    assert_eq!(
        none.to_string(),
        "no backend could run kernels/sum: no backend is enabled"
    );
    let some = Error::NoBackendAvailable {
        kernel: "kernels/sum".into(),
        attempts: vec![
            (BackendKind::Cuda, "no GPU".into()),
            (BackendKind::Cpu, "disabled".into()),
        ],
    };
    assert_eq!(
        some.to_string(),
        "no backend could run kernels/sum: cuda: no GPU; cpu: disabled"
    );
}

#[test]
fn io_error_kinds_name_what_went_wrong() {
    use std::io::ErrorKind as K;
    let names = [
        (IoErrorKind::NotFound, "not found"),
        (IoErrorKind::PermissionDenied, "permission denied"),
        (IoErrorKind::Truncated, "file truncated"),
        (IoErrorKind::ShortRead, "short read"),
        (IoErrorKind::DiskFull, "disk full"),
        (IoErrorKind::Other, "i/o error"),
    ];
    for (kind, name) in names {
        assert_eq!(kind.name(), name);
        assert_eq!(kind.to_string(), name);
    }
    for (os, kind) in [
        (K::NotFound, IoErrorKind::NotFound),
        (K::PermissionDenied, IoErrorKind::PermissionDenied),
        (K::StorageFull, IoErrorKind::DiskFull),
        (K::QuotaExceeded, IoErrorKind::DiskFull),
        (K::UnexpectedEof, IoErrorKind::ShortRead),
        (K::InvalidInput, IoErrorKind::Other),
        (K::Interrupted, IoErrorKind::Other),
    ] {
        assert_eq!(IoErrorKind::of(&std::io::Error::from(os)), kind, "{os:?}");
    }
    // Raw OS errors map through their kinds: a full disk or quota is DiskFull, EIO is Other.
    // Linux's ENOSPC (28), EDQUOT (122) and EIO (5).
    for (errno, kind) in [
        (28, IoErrorKind::DiskFull),
        (122, IoErrorKind::DiskFull),
        (5, IoErrorKind::Other),
    ] {
        let e = Error::io("/f", "writing", &std::io::Error::from_raw_os_error(errno));
        match e {
            Error::Io {
                kind: k, message, ..
            } => {
                assert_eq!(k, kind, "errno {errno}");
                assert!(message.starts_with("writing: "), "{message}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }
}

#[test]
fn backend_reports_say_why_a_backend_is_not_used() {
    let not_compiled = BackendReport {
        kind: BackendKind::Cuda,
        status: BackendStatus::NotCompiled { feature: "cuda" },
    };
    assert_eq!(
        not_compiled.unavailable_reason().as_deref(),
        Some("not compiled in (build with the `cuda` feature)")
    );
    let unavailable = BackendReport {
        kind: BackendKind::Wgpu,
        status: BackendStatus::Unavailable("no adapter".into()),
    };
    assert_eq!(
        unavailable.unavailable_reason().as_deref(),
        Some("no adapter")
    );
    let ready = BackendReport {
        kind: BackendKind::Cpu,
        status: BackendStatus::Ready(Vec::new()),
    };
    assert_eq!(ready.unavailable_reason(), None);
}

#[test]
fn a_cpu_context_shows_and_uses_its_thread_count() {
    let ctx = gpubridge_core::CpuContext::new(3).unwrap();
    assert_eq!(ctx.threads(), 3);
    assert_eq!(format!("{ctx:?}"), "CpuContext { threads: 3 }");
    // Installed work runs on one of the context's own named workers.
    let name = ctx.install(|| std::thread::current().name().map(str::to_owned));
    let name = name.expect("pool threads are named");
    assert!(name.starts_with("gpubridge-cpu-"), "{name}");
}

/// A backend of a given kind that relies on every default of the trait (it runs nothing).
struct Defaults(BackendKind, Vec<gpubridge_core::DeviceInfo>);

impl gpubridge_core::Backend for Defaults {
    fn kind(&self) -> BackendKind {
        self.0
    }

    fn devices(&self) -> &[gpubridge_core::DeviceInfo] {
        &self.1
    }

    fn plan_target(&self, _device: usize) -> Option<gpubridge_core::PlanTarget> {
        None
    }

    fn memory_budget(&self, _device: usize) -> Option<u64> {
        None
    }

    fn health(&self, _device: usize) -> gpubridge_core::Health {
        gpubridge_core::Health::Healthy
    }

    fn submit(&self, _device: usize, _work: gpubridge_core::Work) -> gpubridge_core::Result<()> {
        Err(Error::Unsupported {
            backend: self.0,
            what: "running anything".to_owned(),
        })
    }
}

#[test]
fn by_default_a_backend_runs_kernels_that_have_its_form_and_reports_no_memory() {
    use gpubridge_core::{Backend, KernelSources};
    let cuda_only = KernelSources {
        cuda: Some("extern \"C\" __global__ void k() {}"),
        wgsl: None,
    };
    let wgsl_only = KernelSources {
        cuda: None,
        wgsl: Some("@compute @workgroup_size(1) fn k() {}"),
    };
    let none = KernelSources::default();
    let can = |kind| {
        let b = Defaults(kind, Vec::new());
        assert_eq!(b.free_memory(0), None);
        assert_eq!(b.memory_in_use(0), None);
        assert!(!b.wakes_early());
        (
            b.can_run(&cuda_only),
            b.can_run(&wgsl_only),
            b.can_run(&none),
        )
    };
    assert_eq!(can(BackendKind::Cuda), (true, false, false));
    assert_eq!(can(BackendKind::Wgpu), (false, true, false));
    assert_eq!(can(BackendKind::Cpu), (true, true, true));
}
