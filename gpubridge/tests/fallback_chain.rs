//! The whole fallback chain, CUDA -> wgpu -> CPU, with real wgpu and CPU backends: CUDA is a
//! fault-injecting test double (named as one) whose device is lost, and the wgpu device is really
//! destroyed (wgpu's device-lost callback fires). Each move must be logged once with its reason and
//! counted in `gpubridge_fallbacks_total{from,to,reason}`, and the answers must stay exact.
//! Also: wgpu left out by configuration or by an adapter filter sends work straight to the CPU,
//! with the reason on record. Skips without a wgpu adapter unless `GPUBRIDGE_REQUIRE_WGPU=1`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use gpubridge::kernels::{VectorAdd, VectorPair};
use gpubridge::testing::{Fault, FaultInjectingBackend, FaultKind};
use gpubridge::{
    Backend, BackendKind, BackendStatus, BridgeConfig, Error, ExecutionHints, GpuBridge, Health,
};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;
use gpubridge_wgpu_fallback::CpuBackend;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rand::{Rng, SeedableRng};

fn wgpu_or_skip(config: &BridgeConfig) -> Option<Arc<WgpuBackend>> {
    match WgpuBackend::new(config) {
        Ok(b) => {
            // Once per test binary, straight to stderr (libtest captures `eprintln!`).
            static NAMED: std::sync::Once = std::sync::Once::new();
            NAMED.call_once(|| {
                let _ = writeln!(
                    std::io::stderr(),
                    "fallback_chain runs wgpu on: {} ({})",
                    b.devices()[0].name,
                    b.devices()[0].details
                );
            });
            Some(b)
        }
        Err(why) => {
            assert!(
                !gpubridge::conformance::wgpu_required(),
                "wgpu is required here: {why}"
            );
            eprintln!("skipped: wgpu not available: {why}");
            None
        }
    }
}

fn lost_cuda() -> Arc<FaultInjectingBackend> {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    cuda.inject(Fault::Always(vec![0]), FaultKind::DeviceLost);
    cuda
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

fn check_add(inputs: &[VectorPair], outputs: &[Vec<f32>]) {
    assert_eq!(inputs.len(), outputs.len());
    for (p, o) in inputs.iter().zip(outputs) {
        assert_eq!(o.len(), p.a.len());
        for ((a, b), o) in p.a.iter().zip(&p.b).zip(o) {
            assert_eq!(a + b, *o);
        }
    }
}

type Counted = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn fallbacks_counted(counted: &Counted, from: &str, to: &str, reason: &str) -> u64 {
    counted
        .iter()
        .filter(|(k, ..)| k.key().name() == "gpubridge_fallbacks_total")
        .filter(|(k, ..)| {
            let has = |name: &str, value: &str| {
                k.key()
                    .labels()
                    .any(|l| l.key() == name && l.value() == value)
            };
            has("from", from) && has("to", to) && has("reason", reason)
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

/// Log lines written by `tracing` on the test's thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn lines(&self, needles: &[&str]) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }
}

#[test]
fn work_moves_from_cuda_to_wgpu_then_to_the_cpu_when_wgpu_is_lost() {
    let mut config = BridgeConfig::default();
    // CI's adapter is llvmpipe, which automatic placement would otherwise try after the CPU.
    config.fallback.software_adapters_last = false;
    let Some(wgpu) = wgpu_or_skip(&config) else {
        return;
    };
    let cuda = lost_cuda();
    let cpu = CpuBackend::new(&config).unwrap();
    let bridge = GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .backend(cuda.clone())
        .backend(wgpu.clone())
        .backend(cpu)
        .build()
        .unwrap();
    assert_eq!(
        bridge.backends(),
        [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::Cpu]
    );
    let grain = bridge.batch::<VectorAdd>().unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        metrics::with_local_recorder(&recorder, || {
            // CUDA's device is lost: the work lands on wgpu.
            let inputs = random_pairs(5, 1001);
            let r = block_on(grain.execute(inputs.clone(), ExecutionHints::default())).unwrap();
            check_add(&inputs, &r.outputs);
            assert_eq!(r.backend(), Some(BackendKind::Wgpu));
            let moves: Vec<_> = r
                .fallbacks
                .iter()
                .map(|f| (f.from, f.to, f.reason))
                .collect();
            assert_eq!(
                moves,
                [(BackendKind::Cuda, BackendKind::Wgpu, "device_lost")]
            );

            // The wgpu device is destroyed for real; its lost callback marks it lost.
            wgpu.inject_device_lost(0);
            let t = Instant::now();
            while !matches!(wgpu.health(0), Health::Lost(_)) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "the destroyed wgpu device was never reported lost"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let inputs = random_pairs(3, 777);
            let r = block_on(grain.execute(inputs.clone(), ExecutionHints::default())).unwrap();
            check_add(&inputs, &r.outputs);
            assert_eq!(r.backend(), Some(BackendKind::Cpu));
            let moves: Vec<_> = r
                .fallbacks
                .iter()
                .map(|f| (f.from, f.to, f.reason))
                .collect();
            assert_eq!(
                moves,
                [
                    (BackendKind::Cuda, BackendKind::Wgpu, "device_lost"),
                    (BackendKind::Wgpu, BackendKind::Cpu, "device_lost"),
                ]
            );
            assert!(
                r.fallbacks[1].message.contains("wgpu:0")
                    && r.fallbacks[1].message.contains("lost"),
                "{}",
                r.fallbacks[1].message
            );

            // Asked for wgpu alone, the request fails with the device's reason.
            let err = block_on(grain.execute(
                random_pairs(1, 8),
                ExecutionHints::default().on_backend(BackendKind::Wgpu),
            ))
            .unwrap_err();
            match &err {
                Error::NoBackendAvailable { attempts, .. } => {
                    assert_eq!(attempts.len(), 1, "{attempts:?}");
                    assert_eq!(attempts[0].0, BackendKind::Wgpu);
                    assert!(attempts[0].1.contains("lost"), "{attempts:?}");
                }
                other => panic!("expected NoBackendAvailable, got {other:?}"),
            }
        })
    });
    // A snapshot hands over the counts it reads: take one.
    let counted = snapshotter.snapshot().into_vec();
    assert_eq!(
        fallbacks_counted(&counted, "cuda", "wgpu", "device_lost"),
        2
    );
    assert_eq!(fallbacks_counted(&counted, "wgpu", "cpu", "device_lost"), 1);
    assert_eq!(fallbacks_counted(&counted, "cuda", "cpu", "device_lost"), 0);
    assert_eq!(
        logs.lines(&["falling back", "from=cuda", "to=wgpu", "device_lost"]),
        2,
        "one log line per move"
    );
    assert_eq!(logs.lines(&["falling back"]), 3);
    assert_eq!(
        logs.lines(&["falling back", "from=wgpu", "to=cpu", "device_lost"]),
        1
    );
    gpubridge::testing::assert_quiescent(&bridge);
}

#[test]
fn wgpu_disabled_or_filtered_away_sends_work_to_the_cpu_with_the_reason_on_record() {
    let mut disabled = BridgeConfig::default();
    disabled.wgpu.enabled = false;
    let mut filtered = BridgeConfig::default();
    filtered.wgpu.adapter = Some("no-such-adapter-xyz".to_owned());
    let mut left_out = BridgeConfig::default();
    left_out.fallback.chain = vec![BackendKind::Cuda, BackendKind::Cpu];
    for (config, why) in [
        (disabled, "disabled by configuration (wgpu.enabled = false)"),
        (filtered, ""),
        (left_out, "left out of fallback.chain"),
    ] {
        let cuda = lost_cuda();
        let bridge = gpubridge::builder(config)
            .unwrap()
            .backend(cuda.clone())
            .build()
            .unwrap();
        assert_eq!(bridge.backends(), [BackendKind::Cuda, BackendKind::Cpu]);
        let report = bridge
            .reports()
            .iter()
            .find(|r| r.kind == BackendKind::Wgpu)
            .expect("wgpu is reported");
        let reason = report.unavailable_reason().expect("wgpu is not in use");
        assert!(matches!(report.status, BackendStatus::Unavailable(_)));
        assert!(reason.contains(why), "{reason}");
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let inputs = random_pairs(4, 513);
        let r = metrics::with_local_recorder(&recorder, || {
            block_on(
                bridge
                    .batch::<VectorAdd>()
                    .unwrap()
                    .execute(inputs.clone(), ExecutionHints::default()),
            )
        })
        .unwrap();
        check_add(&inputs, &r.outputs);
        assert_eq!(r.backend(), Some(BackendKind::Cpu));
        let moves: Vec<_> = r
            .fallbacks
            .iter()
            .map(|f| (f.from, f.to, f.reason))
            .collect();
        assert_eq!(
            moves,
            [(BackendKind::Cuda, BackendKind::Cpu, "device_lost")]
        );
        let counted = snapshotter.snapshot().into_vec();
        assert_eq!(fallbacks_counted(&counted, "cuda", "cpu", "device_lost"), 1);
        assert_eq!(cuda.submissions(), 1);
        // Asked for wgpu alone: the error carries the reason it is not in use.
        let err = block_on(bridge.batch::<VectorAdd>().unwrap().execute(
            inputs,
            ExecutionHints::default().on_backend(BackendKind::Wgpu),
        ))
        .unwrap_err();
        assert!(matches!(err, Error::NoBackendAvailable { .. }), "{err:?}");
        assert!(err.to_string().contains(&reason), "{err}");
        gpubridge::testing::assert_quiescent(&bridge);
    }
}

#[test]
fn without_cuda_the_default_bridge_runs_on_wgpu() {
    let mut config = BridgeConfig::default();
    config.fallback.software_adapters_last = false;
    if wgpu_or_skip(&config).is_none() {
        return;
    }
    let bridge = gpubridge::bridge(config).unwrap();
    if bridge.backends().contains(&BackendKind::Cuda) {
        eprintln!("a CUDA device is present: the default chain starts there");
        return;
    }
    assert_eq!(bridge.backends(), [BackendKind::Wgpu, BackendKind::Cpu]);
    let inputs = random_pairs(2, 4099);
    let r = block_on(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(inputs.clone(), ExecutionHints::default()),
    )
    .unwrap();
    check_add(&inputs, &r.outputs);
    assert_eq!(r.backend(), Some(BackendKind::Wgpu));
    assert!(r.fallbacks.is_empty());
    gpubridge::testing::assert_quiescent(&bridge);
}

#[test]
fn a_software_adapter_is_tried_after_the_cpu_unless_asked_for() {
    let config = BridgeConfig::default();
    let Some(wgpu) = wgpu_or_skip(&config) else {
        return;
    };
    if wgpu.devices()[0].device_type != gpubridge::DeviceType::SoftwareGpu {
        eprintln!("a hardware adapter: automatic placement keeps wgpu before the CPU");
        return;
    }
    let cpu = CpuBackend::new(&config).unwrap();
    let bridge = GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .backend(wgpu)
        .backend(cpu)
        .build()
        .unwrap();
    let grain = bridge.batch::<VectorAdd>().unwrap();
    let inputs = random_pairs(2, 513);
    let auto = block_on(grain.execute(inputs.clone(), ExecutionHints::default())).unwrap();
    check_add(&inputs, &auto.outputs);
    assert_eq!(auto.backend(), Some(BackendKind::Cpu));
    let asked = block_on(grain.execute(
        inputs.clone(),
        ExecutionHints::default().on_backend(BackendKind::Wgpu),
    ))
    .unwrap();
    check_add(&inputs, &asked.outputs);
    assert_eq!(asked.backend(), Some(BackendKind::Wgpu));
    gpubridge::testing::assert_quiescent(&bridge);
}

/// Where CUDA is usable the facade does not open wgpu beside it (a second context on the same
/// GPU perturbs CUDA's latency) and says why; `wgpu.alongside_cuda` opens both, and work asked
/// for on wgpu runs there with exact answers. Needs a CUDA device (skips without one unless
/// `GPUBRIDGE_REQUIRE_GPU=1`); the wgpu half needs an adapter as the other tests do.
#[test]
fn wgpu_is_opened_beside_cuda_only_when_asked() {
    let config = BridgeConfig::default();
    let bridge = gpubridge::bridge(config.clone()).unwrap();
    if !bridge.backends().contains(&BackendKind::Cuda) {
        assert!(
            !gpubridge::conformance::gpu_required(),
            "a CUDA device is required here: {:?}",
            bridge.reports()
        );
        eprintln!("skipped: no CUDA device");
        return;
    }
    assert_eq!(bridge.backends(), [BackendKind::Cuda, BackendKind::Cpu]);
    let reason = bridge
        .reports()
        .iter()
        .find(|r| r.kind == BackendKind::Wgpu)
        .and_then(|r| r.unavailable_reason())
        .expect("wgpu is reported as not in use")
        .to_owned();
    assert!(reason.contains("wgpu.alongside_cuda is off"), "{reason}");
    drop(bridge);

    let mut beside = config;
    beside.wgpu.alongside_cuda = true;
    beside.fallback.software_adapters_last = false;
    if wgpu_or_skip(&beside).is_none() {
        return;
    }
    let bridge = gpubridge::bridge(beside).unwrap();
    assert_eq!(
        bridge.backends(),
        [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::Cpu]
    );
    let inputs = random_pairs(3, 1025);
    let r = block_on(bridge.batch::<VectorAdd>().unwrap().execute(
        inputs.clone(),
        ExecutionHints::default().on_backend(BackendKind::Wgpu),
    ))
    .unwrap();
    check_add(&inputs, &r.outputs);
    assert_eq!(r.backend(), Some(BackendKind::Wgpu));
    gpubridge::testing::assert_quiescent(&bridge);
}
