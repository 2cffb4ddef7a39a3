//! The fallback chain, circuit breakers and placement, proven with fault-injecting test backends
//! (named as such: they run real CPU forms under a GPU backend's name and fail on demand).

use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use gpubridge_core::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge_core::testing::{Fault, FaultInjectingBackend, FaultKind};
use gpubridge_core::{
    BackendKind, BridgeConfig, CircuitState, DeviceId, Error, ExecutionHints, GpuBridge,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

fn bridge_with(backends: &[Arc<FaultInjectingBackend>], config: BridgeConfig) -> GpuBridge {
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).expect("register");
    b.register(Sum).expect("register");
    for be in backends {
        b.add_backend(be.clone());
    }
    b.build().expect("bridge builds")
}

fn pairs(n: usize) -> Vec<VectorPair> {
    (0..n)
        .map(|i| VectorPair {
            a: vec![i as f32; 5],
            b: vec![1.0; 5],
        })
        .collect()
}

fn check_pairs(out: &[Vec<f32>], n: usize) {
    assert_eq!(out.len(), n);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(
            o,
            &vec![i as f32 + 1.0; 5],
            "output {i} out of order or wrong"
        );
    }
}

fn config(threshold: u32, open_ms: u64) -> BridgeConfig {
    let mut c = BridgeConfig::default();
    c.fallback.circuit_failure_threshold = threshold;
    c.fallback.circuit_open_ms = open_ms;
    c
}

#[test]
fn device_lost_falls_back_to_next_backend_and_is_counted() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    cuda.inject(Fault::Always(vec![0]), FaultKind::DeviceLost);
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(5, 1000));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let r = metrics::with_local_recorder(&recorder, || {
        block_on(
            bridge
                .batch::<VectorAdd>()
                .unwrap()
                .execute(pairs(4), ExecutionHints::default()),
        )
    })
    .expect("falls back to the CPU");
    check_pairs(&r.outputs, 4);
    assert_eq!(r.backend(), Some(BackendKind::Cpu));
    assert_eq!(r.fallbacks.len(), 1);
    assert_eq!(
        (
            r.fallbacks[0].from,
            r.fallbacks[0].to,
            r.fallbacks[0].reason
        ),
        (BackendKind::Cuda, BackendKind::Cpu, "device_lost")
    );
    let fallbacks: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == "gpubridge_fallbacks_total")
        .filter(|(k, ..)| {
            k.key()
                .labels()
                .any(|l| l.key() == "reason" && l.value() == "device_lost")
        })
        .map(|(.., v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum();
    assert_eq!(
        fallbacks, 1,
        "gpubridge_fallbacks_total{{reason=device_lost}} counted once"
    );
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn circuit_opens_skips_device_then_probes_and_closes() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    cuda.inject(Fault::Always(vec![0]), FaultKind::LaunchFailure);
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(3, 150));
    let grain = bridge.batch::<VectorAdd>().unwrap();
    let dev = DeviceId {
        backend: BackendKind::Cuda,
        index: 0,
    };
    for _ in 0..3 {
        let r = block_on(grain.execute(pairs(2), ExecutionHints::default())).unwrap();
        check_pairs(&r.outputs, 2);
    }
    assert_eq!(bridge.circuit_state(dev), Some(CircuitState::Open));
    let tried = cuda.submissions();
    // While open, the device is not even tried.
    for _ in 0..5 {
        let r = block_on(grain.execute(pairs(2), ExecutionHints::default())).unwrap();
        assert_eq!(r.backend(), Some(BackendKind::Cpu));
    }
    assert_eq!(
        cuda.submissions(),
        tried,
        "an open circuit sent work to its device"
    );
    // The device heals; after the open period one probe goes through and closes the circuit.
    cuda.inject(Fault::Healthy, FaultKind::LaunchFailure);
    std::thread::sleep(Duration::from_millis(200));
    let r = block_on(grain.execute(pairs(2), ExecutionHints::default())).unwrap();
    assert_eq!(r.backend(), Some(BackendKind::Cuda));
    assert_eq!(bridge.circuit_state(dev), Some(CircuitState::Closed));
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn failing_device_moves_work_to_another_device_of_the_same_backend() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 2).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    cuda.inject(Fault::Always(vec![0]), FaultKind::DeviceLost);
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(5, 1000));
    let r = block_on(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(pairs(3), ExecutionHints::default().preferred_device(0)),
    )
    .unwrap();
    check_pairs(&r.outputs, 3);
    assert_eq!(
        r.device(),
        Some(DeviceId {
            backend: BackendKind::Cuda,
            index: 1
        })
    );
    assert!(
        r.fallbacks.is_empty(),
        "moving to another device is not a backend fallback"
    );
    assert_eq!(cpu.submissions(), 0);
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn preferred_device_is_honoured() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 3).unwrap();
    let bridge = bridge_with(std::slice::from_ref(&cuda), config(5, 1000));
    let grain = bridge.batch::<VectorAdd>().unwrap();
    for d in [2, 1, 2] {
        let r = block_on(grain.execute(pairs(1), ExecutionHints::default().preferred_device(d)))
            .unwrap();
        assert_eq!(
            r.device(),
            Some(DeviceId {
                backend: BackendKind::Cuda,
                index: d
            })
        );
    }
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn unsupported_and_out_of_memory_fall_back_without_opening_the_circuit() {
    for fault in [FaultKind::Unsupported, FaultKind::OutOfMemory] {
        let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
        let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
        cuda.inject(Fault::Always(vec![0]), fault);
        let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(1, 1000));
        let r = block_on(
            bridge
                .batch::<VectorAdd>()
                .unwrap()
                .execute(pairs(2), ExecutionHints::default()),
        )
        .unwrap();
        check_pairs(&r.outputs, 2);
        assert_eq!(r.backend(), Some(BackendKind::Cpu));
        let want = if fault == FaultKind::Unsupported {
            "unsupported"
        } else {
            "out_of_memory"
        };
        assert_eq!(r.fallbacks[0].reason, want);
        assert_eq!(
            bridge.circuit_state(DeviceId {
                backend: BackendKind::Cuda,
                index: 0
            }),
            Some(CircuitState::Closed),
            "{fault:?} is not a device fault"
        );
        gpubridge_core::testing::assert_quiescent(&bridge);
    }
}

#[test]
fn transient_failure_then_success_loses_nothing() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    cuda.inject(Fault::FirstN(2), FaultKind::LaunchFailure);
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(5, 1000));
    let grain = bridge.batch::<VectorAdd>().unwrap();
    let mut backends = Vec::new();
    for _ in 0..4 {
        let r = block_on(grain.execute(pairs(3), ExecutionHints::default())).unwrap();
        check_pairs(&r.outputs, 3);
        backends.push(r.backend().unwrap());
    }
    assert_eq!(
        backends,
        [
            BackendKind::Cpu,
            BackendKind::Cpu,
            BackendKind::Cuda,
            BackendKind::Cuda
        ]
    );
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn forced_backend_does_not_fall_back() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    cuda.inject(Fault::Always(vec![0]), FaultKind::DeviceLost);
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(5, 1000));
    let err = block_on(bridge.batch::<VectorAdd>().unwrap().execute(
        pairs(2),
        ExecutionHints::default().on_backend(BackendKind::Cuda),
    ))
    .unwrap_err();
    match err {
        Error::NoBackendAvailable { attempts, .. } => {
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].0, BackendKind::Cuda);
            assert!(attempts[0].1.contains("lost"), "{attempts:?}");
        }
        other => panic!("expected NoBackendAvailable, got {other:?}"),
    }
    assert_eq!(cpu.submissions(), 0);
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn forced_missing_backend_names_its_reason() {
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    let mut b = GpuBridge::builder(BridgeConfig::default());
    b.register(VectorAdd).unwrap();
    b.add_backend(cpu);
    b.add_report(gpubridge_core::BackendReport {
        kind: BackendKind::Cuda,
        status: gpubridge_core::BackendStatus::Unavailable("libcuda.so.1 not found".to_owned()),
    });
    let bridge = b.build().unwrap();
    let err = block_on(bridge.batch::<VectorAdd>().unwrap().execute(
        pairs(1),
        ExecutionHints::default().on_backend(BackendKind::Cuda),
    ))
    .unwrap_err();
    assert!(matches!(err, Error::NoBackendAvailable { .. }), "{err:?}");
    assert!(err.to_string().contains("libcuda.so.1 not found"), "{err}");
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn cpu_preference_puts_the_cpu_first() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], config(5, 1000));
    let grain = bridge.batch::<Sum>().unwrap();
    let r = block_on(grain.execute(
        vec![vec![1.0, 2.0]],
        ExecutionHints::default().prefer_gpu(false),
    ))
    .unwrap();
    assert_eq!(r.backend(), Some(BackendKind::Cpu));
    let r = block_on(grain.execute(vec![vec![1.0, 2.0]], ExecutionHints::default())).unwrap();
    assert_eq!(r.backend(), Some(BackendKind::Cuda));
    let mut cfg = config(5, 1000);
    cfg.general.prefer_gpu = false;
    let bridge = bridge_with(&[cuda, cpu], cfg);
    let r = block_on(
        bridge
            .batch::<Sum>()
            .unwrap()
            .execute(vec![vec![3.0]], ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(r.backend(), Some(BackendKind::Cpu));
    assert_eq!(r.outputs, vec![3.0]);
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn chain_order_comes_from_config_and_omitted_backends_are_unused() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 1).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    let mut cfg = BridgeConfig::default();
    cfg.fallback.chain = vec![BackendKind::Cpu];
    let bridge = bridge_with(&[cuda.clone(), cpu.clone()], cfg);
    assert_eq!(bridge.backends(), vec![BackendKind::Cpu]);
    let r = block_on(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(pairs(2), ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(r.backend(), Some(BackendKind::Cpu));
    assert_eq!(cuda.submissions(), 0);
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn concurrent_requests_under_faults_all_complete() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 2).unwrap();
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    cuda.inject(Fault::Always(vec![1]), FaultKind::DeviceLost);
    let bridge = bridge_with(&[cuda, cpu], config(2, 50));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64usize {
            let grain = bridge.batch::<VectorAdd>().unwrap();
            tasks.push(tokio::spawn(async move {
                let n = 1 + t % 7;
                let r = grain
                    .execute(pairs(n), ExecutionHints::default().max_micro_batch(2))
                    .await
                    .unwrap();
                check_pairs(&r.outputs, n);
            }));
        }
        for t in tasks {
            t.await.expect("no task panicked");
        }
    });
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn placement_prefers_a_device_with_room_for_the_batch() {
    let cuda = FaultInjectingBackend::new(BackendKind::Cuda, 2).unwrap();
    // Device 0 has 1 KB free, device 1 has plenty: a 4-pair batch of 1000 floats needs 48 KB.
    cuda.set_free_memory(0, Some(1024));
    cuda.set_free_memory(1, Some(1 << 30));
    let bridge = bridge_with(std::slice::from_ref(&cuda), config(5, 1000));
    let batch: Vec<VectorPair> = (0..4)
        .map(|i| VectorPair {
            a: vec![i as f32; 1000],
            b: vec![1.0; 1000],
        })
        .collect();
    let r = block_on(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(batch, ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(
        r.device(),
        Some(DeviceId {
            backend: BackendKind::Cuda,
            index: 1
        })
    );
    // A small batch fits either; with both idle, the emptier device wins.
    cuda.set_free_memory(0, Some(2 << 30));
    let r = block_on(
        bridge
            .batch::<VectorAdd>()
            .unwrap()
            .execute(pairs(1), ExecutionHints::default()),
    )
    .unwrap();
    assert_eq!(
        r.device(),
        Some(DeviceId {
            backend: BackendKind::Cuda,
            index: 0
        })
    );
    gpubridge_core::testing::assert_quiescent(&bridge);
}
