//! TARGETS.md R2 on real backends: faults injected under concurrent load into the real CUDA and
//! wgpu backends (the GPU on the GPU machine; Mesa's llvmpipe for wgpu in CI), with the real CPU
//! backend behind them. For each fault type: every request ends with its exact result or an error
//! (none hangs), within a second; nothing stays pending; and once the faults stop, the device's
//! circuit closes again and work returns to it. Each test skips without its backend unless
//! `GPUBRIDGE_REQUIRE_GPU=1` (CUDA) or `GPUBRIDGE_REQUIRE_WGPU=1` (wgpu) makes that a failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpubridge::faults::{FaultInjector, InjectedFault, Trigger};
use gpubridge::kernels::{VectorAdd, VectorPair};
use gpubridge::{Backend, BackendKind, BridgeConfig, CircuitState, ExecutionHints, GpuBridge};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;
use gpubridge_wgpu_fallback::CpuBackend;
use rand::{Rng, SeedableRng};

/// A bridge with the `kind` device under fault injection and the CPU behind it, or `None` (the
/// test skips) where that backend is not usable and not required.
fn setup(kind: BackendKind) -> Option<(GpuBridge, Arc<FaultInjector>)> {
    let mut config = BridgeConfig::default();
    // llvmpipe is a software adapter: put it first here, so that it is the device under test.
    config.fallback.software_adapters_last = false;
    config.fallback.chain = vec![kind, BackendKind::Cpu];
    config.fallback.circuit_failure_threshold = 3;
    config.fallback.circuit_open_ms = 200;
    let device: Result<Arc<dyn Backend>, String> = match kind {
        BackendKind::Wgpu => WgpuBackend::new(&config)
            .map(|b| b as Arc<dyn Backend>)
            .map_err(|e| e.to_string()),
        BackendKind::Cuda => gpubridge_cuda::CudaBackend::new(&config)
            .map(|b| b as Arc<dyn Backend>)
            .map_err(|e| e.to_string()),
        BackendKind::Cpu => unreachable!("the CPU is the fallback here"),
    };
    let device = match device {
        Ok(b) => b,
        Err(why) => {
            assert!(
                !gpubridge::conformance::backend_required(kind),
                "{kind} is required here: {why}"
            );
            eprintln!("skipped: {kind} not available: {why}");
            return None;
        }
    };
    let faulty = FaultInjector::wrap(device);
    let cpu = CpuBackend::new(&config).unwrap();
    let bridge = GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .backend(faulty.clone())
        .backend(cpu)
        .build()
        .unwrap();
    Some((bridge, faulty))
}

fn pairs(rng: &mut impl Rng, n: usize, len: usize) -> Vec<VectorPair> {
    (0..n)
        .map(|_| VectorPair {
            a: (0..len).map(|_| rng.random_range(-1e3..1e3)).collect(),
            b: (0..len).map(|_| rng.random_range(-1e3..1e3)).collect(),
        })
        .collect()
}

/// 6 tasks x 15 batches; returns (ok, errors, slowest) and checks every result.
async fn load(bridge: &GpuBridge) -> (usize, usize, Duration) {
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let bridge = bridge.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(t);
                let grain = bridge.batch::<VectorAdd>().unwrap();
                let (mut ok, mut err, mut slowest) = (0, 0, Duration::ZERO);
                for _ in 0..15 {
                    let inputs = pairs(&mut rng, 3, 256);
                    let want: Vec<Vec<f32>> = inputs
                        .iter()
                        .map(|p| p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect())
                        .collect();
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(20),
                        grain.execute(inputs, ExecutionHints::default()),
                    )
                    .await
                    .expect("a request hung");
                    slowest = slowest.max(t0.elapsed());
                    match r {
                        Ok(r) => {
                            assert_eq!(r.outputs, want, "a wrong answer");
                            ok += 1;
                        }
                        Err(_) => err += 1,
                    }
                }
                (ok, err, slowest)
            })
        })
        .collect();
    let (mut ok, mut err, mut slowest) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (o, e, s) = t.await.unwrap();
        ok += o;
        err += e;
        slowest = slowest.max(s);
    }
    (ok, err, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wgpu_every_fault_type_under_load_ends_every_request_and_the_circuit_closes_again() {
    every_fault_type(BackendKind::Wgpu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cuda_every_fault_type_under_load_ends_every_request_and_the_circuit_closes_again() {
    every_fault_type(BackendKind::Cuda).await;
}

async fn every_fault_type(kind: BackendKind) {
    let Some((bridge, faulty)) = setup(kind) else {
        return;
    };
    let device_circuit = |b: &GpuBridge| {
        b.readiness()
            .devices
            .iter()
            .find(|d| d.id.backend == kind)
            .map(|d| d.circuit)
    };
    for (fault, when) in [
        (InjectedFault::LaunchFailure, Trigger::Rate(0.3)),
        (InjectedFault::OutOfMemory, Trigger::EveryNth(3)),
        (InjectedFault::CopyFailure, Trigger::Rate(0.3)),
        (
            InjectedFault::Slow(Duration::from_millis(30)),
            Trigger::Rate(0.3),
        ),
        (InjectedFault::DeviceLost, Trigger::Nth(4)),
    ] {
        faulty.heal();
        let before = faulty.injected();
        faulty.inject(fault, when);
        let (ok, err, slowest) = load(&bridge).await;
        assert_eq!(ok + err, 90, "{fault:?}: every request ended");
        // The CPU takes over: faults on the device fail no request.
        assert_eq!(err, 0, "{fault:?}: {err} requests failed");
        assert!(faulty.injected() > before, "{fault:?} never fired");
        assert!(
            slowest < Duration::from_secs(1),
            "{fault:?}: a request took {slowest:?} (R2: fallback within 1 s)"
        );
        assert_eq!(bridge.readiness().pending_requests, 0, "{fault:?}");
        // Healthy again: the circuit closes once its open period is over and a probe succeeds,
        // and work runs on wgpu.
        faulty.heal();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut back = false;
        while Instant::now() < deadline {
            let r = bridge
                .batch::<VectorAdd>()
                .unwrap()
                .execute(pairs(&mut rand::rng(), 2, 64), ExecutionHints::default())
                .await
                .unwrap();
            if r.backend() == Some(kind) && device_circuit(&bridge) == Some(CircuitState::Closed) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            back,
            "{fault:?}: work never returned to {kind} with a closed circuit"
        );
        // Every fault's requests are answered, so the pools and queues are back to zero too.
        gpubridge::testing::assert_quiescent(&bridge);
    }
}
