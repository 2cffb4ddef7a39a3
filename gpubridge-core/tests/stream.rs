//! The stream grain: order, backpressure, stopping from either end, bad items, and answers
//! checked against the host on fresh random inputs. Stalls use the test backend's
//! `hold`/`release`, not sleeps.

use std::sync::Arc;

use futures::{poll, StreamExt};
use gpubridge_core::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge};
use rand::Rng;

fn bridge(delay_us: u64) -> (GpuBridge, Arc<FaultInjectingBackend>) {
    let mut config = BridgeConfig::default();
    config.batching.max_queue_delay_us = delay_us;
    config.batching.max_batch = 64;
    let mut b = GpuBridge::builder(config);
    b.register(Sum).unwrap();
    b.register(VectorAdd).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    (b.build().unwrap(), backend)
}

fn host_sum(v: &[f32]) -> f32 {
    v.iter().map(|&x| f64::from(x)).sum::<f64>() as f32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_come_in_send_order_and_match_the_host() {
    let (b, _) = bridge(200);
    let mut rng = rand::rng();
    let inputs: Vec<Vec<f32>> = (0..3000)
        .map(|_| {
            let n = rng.random_range(1..200);
            (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
        })
        .collect();
    let (tx, mut rx) = b.stream::<Sum>(ExecutionHints::default(), 256).unwrap();
    let send = inputs.clone();
    let producer = tokio::spawn(async move {
        for v in send {
            tx.send(v).await?;
        }
        Ok::<_, Error>(())
    });
    let mut i = 0;
    while let Some(out) = rx.next().await {
        let got = out.unwrap();
        let want = host_sum(&inputs[i]);
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "item {i}: {got} != {want}"
        );
        i += 1;
    }
    producer.await.unwrap().unwrap();
    assert_eq!(i, inputs.len(), "every item came out once");
    assert_eq!(b.readiness().pending_requests, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_holds_the_sender_until_an_output_is_received() {
    let (b, backend) = bridge(50);
    backend.hold();
    let (tx, mut rx) = b.stream::<Sum>(ExecutionHints::default(), 3).unwrap();
    for k in 0..3 {
        tx.send(vec![k as f32; 4]).await.unwrap();
    }
    assert_eq!(tx.in_flight(), 3);
    // No room: `send` waits, `try_send` refuses at once.
    let mut fourth = Box::pin(tx.send(vec![3.0; 4]));
    assert!(poll!(&mut fourth).is_pending());
    assert!(
        matches!(
            tx.try_send(vec![9.0; 4]),
            Err(Error::QueueFull { capacity: 3, .. })
        ),
        "try_send on a full stream"
    );
    while backend.held() == 0 {
        tokio::task::yield_now().await;
    }
    backend.release();
    // Receiving one output makes room for the waiting send.
    assert_eq!(rx.recv().await.unwrap().unwrap(), 0.0);
    fourth.await.unwrap();
    drop(tx);
    let rest: Vec<f32> = rx.map(|r| r.unwrap()).collect().await;
    assert_eq!(rest, vec![4.0, 8.0, 12.0]);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_sender_lets_the_receiver_drain_then_end() {
    let (b, _) = bridge(100);
    let (tx, mut rx) = b.stream::<Sum>(ExecutionHints::default(), 64).unwrap();
    let tx2 = tx.clone();
    for k in 0..10 {
        tx.send(vec![k as f32]).await.unwrap();
    }
    tx.close();
    tx2.send(vec![10.0]).await.unwrap();
    drop(tx2);
    let mut got = Vec::new();
    while let Some(r) = rx.recv().await {
        got.push(r.unwrap());
    }
    assert_eq!(got, (0..=10).map(|k| k as f32).collect::<Vec<_>>());
    assert!(rx.recv().await.is_none(), "an ended stream stays ended");
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_stops_the_senders() {
    let (b, backend) = bridge(100);
    backend.hold();
    let (tx, rx) = b.stream::<Sum>(ExecutionHints::default(), 1).unwrap();
    tx.send(vec![1.0]).await.unwrap();
    // The stream is full; the waiting send fails once the receiver goes.
    let waiting = tokio::spawn({
        let tx = tx.clone();
        async move { tx.send(vec![2.0]).await }
    });
    tokio::task::yield_now().await;
    rx.close();
    assert!(matches!(
        waiting.await.unwrap(),
        Err(Error::Cancelled { .. })
    ));
    assert!(matches!(
        tx.send(vec![3.0]).await,
        Err(Error::Cancelled { .. })
    ));
    backend.release();
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_item_fails_its_send_and_the_stream_goes_on() {
    let (b, _) = bridge(100);
    let (tx, mut rx) = b.stream::<VectorAdd>(ExecutionHints::default(), 8).unwrap();
    let good = |x: f32| VectorPair {
        a: vec![x, x],
        b: vec![1.0, 2.0],
    };
    tx.send(good(1.0)).await.unwrap();
    let bad = tx
        .send(VectorPair {
            a: vec![1.0, 2.0, 3.0],
            b: vec![1.0],
        })
        .await;
    assert!(matches!(bad, Err(Error::InvalidInput { .. })), "{bad:?}");
    tx.send(good(5.0)).await.unwrap();
    drop(tx);
    assert_eq!(rx.recv().await.unwrap().unwrap(), vec![2.0, 3.0]);
    assert_eq!(rx.recv().await.unwrap().unwrap(), vec![6.0, 7.0]);
    assert!(rx.recv().await.is_none());
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test]
async fn a_stream_needs_room_and_a_registered_kernel() {
    let (b, _) = bridge(100);
    assert!(matches!(
        b.stream::<Sum>(ExecutionHints::default(), 0),
        Err(Error::InvalidInput { .. })
    ));
    let lone = GpuBridge::builder(BridgeConfig::default()).build().unwrap();
    assert!(matches!(
        lone.stream::<Sum>(ExecutionHints::default(), 4),
        Err(Error::UnknownKernel { .. })
    ));
    gpubridge_core::testing::assert_quiescent(&b);
    gpubridge_core::testing::assert_quiescent(&lone);
}
