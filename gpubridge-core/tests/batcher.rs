//! The dynamic batcher: correctness under concurrency, batching, priorities, order, bounded
//! queues, timeouts, cancellation, per-caller validation errors and shutdown. Stalls use the
//! test backend's `hold`/`release`, not sleeps.

use std::sync::Arc;
use std::time::Duration;

use futures::poll;
use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, Error, ExecutionHints, GpuBridge, Priority};

fn bridge(
    max_batch: usize,
    capacity: usize,
    delay_us: u64,
) -> (GpuBridge, Arc<FaultInjectingBackend>) {
    bridge_with(max_batch, capacity, delay_us, 1)
}

fn bridge_with(
    max_batch: usize,
    capacity: usize,
    delay_us: u64,
    runners: usize,
) -> (GpuBridge, Arc<FaultInjectingBackend>) {
    let mut config = BridgeConfig::default();
    config.batching.max_batch = max_batch;
    config.batching.queue_capacity = capacity;
    config.batching.max_queue_delay_us = delay_us;
    // Most tests use one runner: a held batch then holds the queue, which is what they look
    // behind.
    config.batching.batches_in_flight = runners;
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    (b.build().unwrap(), backend)
}

fn pair(x: f32) -> VectorPair {
    VectorPair {
        a: vec![x, 1.0],
        b: vec![2.0 * x, 3.0],
    }
}

fn want(x: f32) -> Vec<f32> {
    vec![3.0 * x, 4.0]
}

/// Submits one request that the (held) backend accepts, and waits until it is held.
async fn held_first(
    b: &GpuBridge,
    backend: &FaultInjectingBackend,
) -> tokio::task::JoinHandle<gpubridge_core::Result<gpubridge_core::SingleResult<Vec<f32>>>> {
    backend.hold();
    let b2 = b.clone();
    let first = tokio::spawn(async move {
        b2.single::<VectorAdd>(pair(0.0), ExecutionHints::default())
            .await
    });
    while backend.held() == 0 {
        tokio::task::yield_now().await;
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_runners_answer_every_caller_correctly() {
    // Three batches in flight at once; callers that each send a run of requests one after
    // another, so that every runner sees work, and every answer checked.
    let (b, _) = bridge_with(64, 65536, 200, 3);
    let callers: Vec<_> = (0..32)
        .map(|c| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut largest = 0;
                for k in 0..200 {
                    let x = (c * 1000 + k) as f32;
                    let r = b
                        .single::<VectorAdd>(pair(x), ExecutionHints::default())
                        .await?;
                    assert_eq!(r.output, want(x));
                    largest = largest.max(r.batch_size);
                }
                Ok::<_, Error>(largest)
            })
        })
        .collect();
    let mut largest = 0;
    for c in callers {
        largest = largest.max(c.await.unwrap().unwrap());
    }
    assert!(largest > 1, "no batching happened");
    assert_eq!(b.readiness().pending_requests, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_singles_are_correct_and_batched() {
    let (b, _) = bridge(256, 65536, 2000);
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                let r = b
                    .single::<VectorAdd>(pair(i as f32), ExecutionHints::default())
                    .await?;
                Ok::<_, Error>((i, r))
            })
        })
        .collect();
    let mut largest = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap().unwrap();
        assert_eq!(r.output, want(i as f32));
        assert!(r.batch_size >= 1 && r.batch_size <= 256);
        largest = largest.max(r.batch_size);
    }
    assert!(largest > 1, "no batching happened");
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_overtakes_low_behind_a_held_batch() {
    let (b, backend) = bridge(2, 100, 100);
    let first = held_first(&b, &backend).await;
    let low = |x| {
        b.single::<VectorAdd>(
            pair(x),
            ExecutionHints {
                priority: Priority::Low,
                ..Default::default()
            },
        )
    };
    let mut l1 = Box::pin(low(1.0));
    let mut l2 = Box::pin(low(2.0));
    let mut h = Box::pin(b.single::<VectorAdd>(
        pair(3.0),
        ExecutionHints {
            priority: Priority::High,
            ..Default::default()
        },
    ));
    assert!(poll!(&mut l1).is_pending());
    assert!(poll!(&mut l2).is_pending());
    assert!(poll!(&mut h).is_pending());
    backend.release();
    first.await.unwrap().unwrap();
    let h = h.await.unwrap();
    let l1 = l1.await.unwrap();
    let l2 = l2.await.unwrap();
    assert_eq!(h.output, want(3.0));
    // The high request went first, with the oldest low one; the newer low one ran alone.
    assert_eq!((h.batch_size, l1.batch_size, l2.batch_size), (2, 2, 1));
    assert_eq!(l2.output, want(2.0));
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_callers_requests_run_in_submission_order() {
    let (b, backend) = bridge(2, 100, 100);
    let first = held_first(&b, &backend).await;
    let mut futs: Vec<_> = (1..=5)
        .map(|i| Box::pin(b.single::<VectorAdd>(pair(i as f32), ExecutionHints::default())))
        .collect();
    for f in &mut futs {
        assert!(poll!(f).is_pending());
    }
    backend.release();
    first.await.unwrap().unwrap();
    let mut sizes = Vec::new();
    for (i, f) in futs.into_iter().enumerate() {
        let r = f.await.unwrap();
        assert_eq!(r.output, want((i + 1) as f32));
        sizes.push(r.batch_size);
    }
    // Taken in order, two at a time: (1,2), (3,4), (5).
    assert_eq!(sizes, vec![2, 2, 2, 2, 1]);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_at_once() {
    let (b, backend) = bridge(1, 2, 100);
    let first = held_first(&b, &backend).await;
    let mut q1 = Box::pin(b.single::<VectorAdd>(pair(1.0), ExecutionHints::default()));
    let mut q2 = Box::pin(b.single::<VectorAdd>(pair(2.0), ExecutionHints::default()));
    assert!(poll!(&mut q1).is_pending());
    assert!(poll!(&mut q2).is_pending());
    let full = b
        .single::<VectorAdd>(pair(3.0), ExecutionHints::default())
        .await;
    assert!(
        matches!(full, Err(Error::QueueFull { capacity: 2, .. })),
        "{full:?}"
    );
    backend.release();
    first.await.unwrap().unwrap();
    assert_eq!(q1.await.unwrap().output, want(1.0));
    assert_eq!(q2.await.unwrap().output, want(2.0));
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_past_its_deadline_times_out_and_never_runs() {
    let (b, backend) = bridge(2, 100, 100);
    let first = held_first(&b, &backend).await;
    let late = b
        .single::<VectorAdd>(
            pair(1.0),
            ExecutionHints {
                timeout: Some(Duration::from_millis(5)),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
    let mut next = Box::pin(b.single::<VectorAdd>(pair(2.0), ExecutionHints::default()));
    assert!(poll!(&mut next).is_pending());
    backend.release();
    first.await.unwrap().unwrap();
    // The timed-out request was skipped: the next one ran alone.
    assert_eq!(next.await.unwrap().batch_size, 1);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_future_is_removed_and_its_item_never_runs() {
    let (b, backend) = bridge(2, 100, 100);
    let first = held_first(&b, &backend).await;
    let mut gone = Box::pin(b.single::<VectorAdd>(pair(1.0), ExecutionHints::default()));
    assert!(poll!(&mut gone).is_pending());
    drop(gone);
    let mut next = Box::pin(b.single::<VectorAdd>(pair(2.0), ExecutionHints::default()));
    assert!(poll!(&mut next).is_pending());
    backend.release();
    first.await.unwrap().unwrap();
    let next = next.await.unwrap();
    assert_eq!(next.batch_size, 1);
    assert_eq!(next.output, want(2.0));
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_item_fails_only_its_caller() {
    let (b, _) = bridge(64, 100, 1000);
    let bad = VectorPair {
        a: vec![1.0, 2.0],
        b: vec![1.0],
    };
    let (good1, bad, good2) = tokio::join!(
        b.single::<VectorAdd>(pair(1.0), ExecutionHints::default()),
        b.single::<VectorAdd>(bad, ExecutionHints::default()),
        b.single::<VectorAdd>(pair(2.0), ExecutionHints::default()),
    );
    assert!(matches!(bad, Err(Error::InvalidInput { .. })), "{bad:?}");
    assert_eq!(good1.unwrap().output, want(1.0));
    assert_eq!(good2.unwrap().output, want(2.0));
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_queue_and_then_refuses() {
    let (b, backend) = bridge(2, 100, 100);
    let first = held_first(&b, &backend).await;
    let mut futs: Vec<_> = (1..=3)
        .map(|i| Box::pin(b.single::<VectorAdd>(pair(i as f32), ExecutionHints::default())))
        .collect();
    for f in &mut futs {
        assert!(poll!(f).is_pending());
    }
    let b2 = b.clone();
    let stopping = std::thread::spawn(move || b2.shutdown());
    backend.release();
    first.await.unwrap().unwrap();
    for (i, f) in futs.into_iter().enumerate() {
        assert_eq!(f.await.unwrap().output, want((i + 1) as f32));
    }
    stopping.join().unwrap();
    let after = b
        .single::<VectorAdd>(pair(9.0), ExecutionHints::default())
        .await;
    assert!(matches!(after, Err(Error::Cancelled { .. })), "{after:?}");
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_under_load_answers_every_request_once() {
    // Callers keep submitting from several tasks while the bridge shuts down: every request
    // ends with its own correct output or `Cancelled`, none hangs, and nothing stays pending.
    let (b, _) = bridge_with(32, 65536, 100, 2);
    let callers: Vec<_> = (0..16)
        .map(|c| {
            let b = b.clone();
            tokio::spawn(async move {
                let (mut ok, mut cancelled) = (0u32, 0u32);
                for k in 0..400 {
                    let x = (c * 1000 + k) as f32;
                    let r = tokio::time::timeout(
                        Duration::from_secs(20),
                        b.single::<VectorAdd>(pair(x), ExecutionHints::default()),
                    )
                    .await
                    .expect("a request hung");
                    match r {
                        Ok(r) => {
                            assert_eq!(r.output, want(x));
                            ok += 1;
                        }
                        Err(Error::Cancelled { .. }) => cancelled += 1,
                        Err(e) => panic!("unexpected error: {e:?}"),
                    }
                }
                (ok, cancelled)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || b2.shutdown())
        .await
        .unwrap();
    let (mut ok, mut cancelled) = (0, 0);
    for c in callers {
        let (o, x) = c.await.unwrap();
        ok += o;
        cancelled += x;
    }
    assert_eq!(ok + cancelled, 16 * 400);
    assert!(
        cancelled > 0,
        "the shutdown came after every request: {ok} ok"
    );
    assert_eq!(b.readiness().pending_requests, 0);
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_within_a_deadline_cancels_what_it_could_not_run_and_says_so() {
    let (b, backend) = bridge(1, 100, 100);
    let first = held_first(&b, &backend).await;
    let mut queued: Vec<_> = (1..=5)
        .map(|i| Box::pin(b.single::<VectorAdd>(pair(i as f32), ExecutionHints::default())))
        .collect();
    for q in &mut queued {
        assert!(poll!(q).is_pending());
    }
    // The held batch outlasts the 20 ms deadline; it is released later and finishes.
    let b2 = b.clone();
    let stop = tokio::task::spawn_blocking(move || b2.shutdown_within(Duration::from_millis(20)));
    tokio::time::sleep(Duration::from_millis(60)).await;
    backend.release();
    let report = stop.await.unwrap();
    assert!(report.deadline_passed, "{report:?}");
    assert_eq!((report.ran, report.cancelled), (0, 5), "{report:?}");
    assert_eq!(first.await.unwrap().unwrap().output, want(0.0));
    for q in queued {
        assert!(matches!(q.await, Err(Error::Cancelled { .. })));
    }
    assert!(matches!(
        b.single::<VectorAdd>(pair(9.0), ExecutionHints::default())
            .await,
        Err(Error::Cancelled { .. })
    ));
    gpubridge_core::testing::assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_within_a_generous_deadline_runs_everything_queued() {
    let (b, backend) = bridge(2, 100, 100);
    let first = held_first(&b, &backend).await;
    let mut queued: Vec<_> = (1..=4)
        .map(|i| Box::pin(b.single::<VectorAdd>(pair(i as f32), ExecutionHints::default())))
        .collect();
    for q in &mut queued {
        assert!(poll!(q).is_pending());
    }
    let b2 = b.clone();
    let stop = tokio::task::spawn_blocking(move || b2.shutdown_within(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(10)).await;
    backend.release();
    let report = stop.await.unwrap();
    assert_eq!((report.ran, report.cancelled), (4, 0), "{report:?}");
    assert!(!report.deadline_passed);
    first.await.unwrap().unwrap();
    for (i, q) in queued.into_iter().enumerate() {
        assert_eq!(q.await.unwrap().output, want((i + 1) as f32));
    }
    gpubridge_core::testing::assert_quiescent(&b);
}

/// A full batch is counted the moment its last caller takes its place, just before that caller
/// pushes its request: the runner must not take the batch before every push has landed, or it
/// runs short and the rest wait out another delay (seen once on the H200: a batch of 2 of 32,
/// then the others 10 s later; this test failed in two of three runs on the 2-core build machine
/// before the fix). Round after round of concurrent callers filling exactly one batch, under a
/// delay no round may wait for. 500 rounds, or `GPUBRIDGE_TEST_ROUNDS` (`cargo xtask valgrind`
/// runs 20: memcheck sees every path of a round in a few, and 500 took it three minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn a_batch_counted_full_waits_for_its_last_pushes() {
    let (b, _) = bridge_with(64, 1024, 30_000_000, 2);
    let rounds: u32 = std::env::var("GPUBRIDGE_TEST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    for round in 0..rounds {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.single::<VectorAdd>(pair(i as f32), ExecutionHints::default())
                        .await
                        .map(|r| (i, r))
                })
            })
            .collect();
        for t in tasks {
            let (i, r) = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a request waited out the delay"))
                .unwrap()
                .unwrap();
            assert_eq!(r.output, want(i as f32));
            assert_eq!(r.batch_size, 64, "round {round}: a short batch");
        }
    }
    gpubridge_core::testing::assert_quiescent(&b);
}
