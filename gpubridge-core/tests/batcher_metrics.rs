//! The batcher's rejections counter, by reason, through a process-wide recorder. This file holds
//! one test on purpose: the recorder is global to the test binary.

use std::time::Duration;

use futures::poll;
use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

fn pair() -> VectorPair {
    VectorPair {
        a: vec![1.0],
        b: vec![2.0],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_counted_once_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let mut config = BridgeConfig::default();
    config.batching.max_batch = 1;
    config.batching.queue_capacity = 1;
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    let b = b.build().unwrap();

    backend.hold();
    let b2 = b.clone();
    let first = tokio::spawn(async move {
        b2.single::<VectorAdd>(pair(), ExecutionHints::default())
            .await
    });
    while backend.held() == 0 {
        tokio::task::yield_now().await;
    }
    // A timed-out request (its caller's timer answers it), then one dropped by its caller.
    let late = b
        .single::<VectorAdd>(
            pair(),
            ExecutionHints {
                timeout: Some(Duration::from_millis(5)),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
    let mut gone = Box::pin(b.single::<VectorAdd>(pair(), ExecutionHints::default()));
    assert!(poll!(&mut gone).is_pending());
    let full = b
        .single::<VectorAdd>(pair(), ExecutionHints::default())
        .await;
    assert!(matches!(full, Err(Error::QueueFull { .. })), "{full:?}");
    drop(gone);
    backend.release();
    first.await.unwrap().unwrap();
    // Runs after the dropped request was skipped.
    b.single::<VectorAdd>(pair(), ExecutionHints::default())
        .await
        .unwrap();

    let snapshot = snapshotter.snapshot().into_vec();
    let count = |reason: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(k, ..)| k.key().name() == "gpubridge_rejections_total")
            .filter(|(k, ..)| {
                k.key()
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
            })
            .map(|(.., v)| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(count("timeout"), 1);
    assert_eq!(count("cancelled"), 1);
    assert_eq!(count("queue_full"), 1);
    gpubridge_core::testing::assert_quiescent(&b);
}
