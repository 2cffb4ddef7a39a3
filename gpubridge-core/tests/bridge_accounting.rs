//! The bridge's accounting (`GpuBridge::accounting`, `testing::assert_quiescent`): every count goes
//! back to zero once requests are answered, timed out or dropped; and overload (R4) is refused
//! with `QueueFull` while what is queued stays within `batching.queue_capacity`.

use std::sync::Arc;
use std::time::Duration;

use futures::poll;
use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::testing::{assert_quiescent, FaultInjectingBackend};
use gpubridge_core::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge};

fn bridge(capacity: usize) -> (GpuBridge, Arc<FaultInjectingBackend>) {
    let mut config = BridgeConfig::default();
    config.batching.max_batch = 16;
    config.batching.queue_capacity = capacity;
    config.batching.max_queue_delay_us = 100;
    config.batching.batches_in_flight = 1;
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    (b.build().unwrap(), backend)
}

fn pair(x: f32) -> VectorPair {
    VectorPair {
        a: vec![x; 256],
        b: vec![1.0; 256],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_bridge_holds_nothing() {
    let (b, _) = bridge(8);
    let a = b.accounting();
    assert!(a.is_quiescent(), "{:?}", a.leaks());
    assert_eq!(a.device_in_flight.len(), 1, "one line per device");
    assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_times_out_on_the_device_gives_its_place_back() {
    // Found by the batch_decode fuzz target: a batch whose caller timed out while its
    // micro-batch was on the device left the device counted busy for ever.
    let (b, backend) = bridge(8);
    backend.hold();
    let add = b.batch::<VectorAdd>().unwrap();
    let late = add
        .execute(
            vec![pair(1.0), pair(2.0)],
            ExecutionHints::default().timeout(Duration::from_millis(20)),
        )
        .await;
    assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
    assert_eq!(backend.held(), 1, "the micro-batch reached the device");
    backend.release();
    assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_batch_gives_everything_back() {
    let (b, backend) = bridge(8);
    backend.hold();
    let add = b.batch::<VectorAdd>().unwrap();
    let mut fut = Box::pin(add.execute(vec![pair(1.0)], ExecutionHints::default().tenant("t")));
    while backend.held() == 0 {
        assert!(poll!(&mut fut).is_pending());
        tokio::task::yield_now().await;
    }
    let during = b.accounting();
    assert_eq!(during.pending_batches, 1);
    assert_eq!(during.device_in_flight[0].1, 1);
    assert_eq!(during.tenants[0].1.in_flight, 1);
    drop(fut);
    backend.release();
    assert_quiescent(&b);
}

/// R4: a flood far beyond the queue's capacity while the device is stalled is refused with
/// `QueueFull` at once; what the batcher holds never passes its capacity (so its memory is
/// bounded by capacity times the item size); every accepted request is answered once the device
/// comes back, and the bridge is back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_queue_full_and_the_queue_stays_bounded() {
    const CAPACITY: usize = 64;
    const FLOOD: usize = 5_000;
    let (b, backend) = bridge(CAPACITY);
    backend.hold();
    let mut accepted = Vec::new();
    let mut refused = 0usize;
    let mut most_queued = 0usize;
    for i in 0..FLOOD {
        let mut fut = Box::pin(b.single::<VectorAdd>(pair(i as f32), ExecutionHints::default()));
        match poll!(&mut fut) {
            std::task::Poll::Pending => accepted.push((i, fut)),
            std::task::Poll::Ready(Err(Error::QueueFull { capacity, .. })) => {
                assert_eq!(capacity, CAPACITY);
                refused += 1;
            }
            std::task::Poll::Ready(other) => panic!("request {i}: {other:?}"),
        }
        let a = b.accounting();
        let (_, q) = a.batchers[0];
        most_queued = most_queued.max(q.queued);
        assert!(
            q.queued <= CAPACITY,
            "{} queued past the capacity of {CAPACITY}",
            q.queued
        );
        // Held in a batch on the device: at most one batch of `max_batch`.
        assert!(q.running <= 16, "{} running", q.running);
    }
    assert!(refused >= FLOOD - CAPACITY - 16, "only {refused} refused");
    assert!(
        most_queued >= CAPACITY / 2,
        "the queue filled ({most_queued})"
    );
    backend.release();
    for (i, fut) in accepted {
        let r = fut.await.unwrap();
        assert_eq!(r.output[0], i as f32 + 1.0);
    }
    assert_quiescent(&b);
}
