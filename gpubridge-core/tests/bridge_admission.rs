//! Batch requests waiting for device slots (`general.max_concurrent_kernels`): they get freed
//! slots by priority (high, normal, low; oldest first within a level), a full waiting queue
//! (`batching.batch_queue_capacity`) rejects new requests at once with `QueueFull` and holds
//! nothing for them, and a waiter that leaves gives its place up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpubridge_core::testing::{assert_quiescent, FaultInjectingBackend};
use gpubridge_core::{
    BackendKind, BridgeConfig, CpuContext, Error, ExecutionHints, GpuBridge, Kernel, Priority,
    Result,
};
use parking_lot::Mutex;

/// Records the order in which its batches run (by the tag of each batch's first input) and
/// answers each input with itself.
struct Tagged {
    ran: Arc<Mutex<Vec<u32>>>,
}

impl Kernel for Tagged {
    type Input = u32;
    type Output = u32;
    const ID: &'static str = "tests/tagged";

    fn validate(&self, _index: usize, _input: &u32) -> Result<()> {
        Ok(())
    }

    fn device_bytes(&self, _input: &u32) -> usize {
        8
    }

    fn run_cpu(&self, inputs: &[u32], _ctx: &CpuContext) -> Result<Vec<u32>> {
        if let Some(&tag) = inputs.first() {
            self.ran.lock().push(tag);
        }
        Ok(inputs.to_vec())
    }
}

/// A bridge with one device slot and one device whose work is held until released.
fn bridge(
    batch_queue_capacity: usize,
) -> (GpuBridge, Arc<FaultInjectingBackend>, Arc<Mutex<Vec<u32>>>) {
    let mut config = BridgeConfig::default();
    config.general.max_concurrent_kernels = 1;
    config.batching.batch_queue_capacity = batch_queue_capacity;
    let ran = Arc::new(Mutex::new(Vec::new()));
    let mut b = GpuBridge::builder(config);
    b.register(Tagged { ran: ran.clone() }).unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    (b.build().unwrap(), backend, ran)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn hints(p: Priority) -> ExecutionHints {
    ExecutionHints::default().priority(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_batches_get_the_slot_by_priority_then_age() {
    let (b, backend, ran) = bridge(64);
    backend.hold();
    let grain = b.batch::<Tagged>().unwrap();
    // Tag 0 takes the only slot and is held on the device.
    let first = {
        let g = grain.clone();
        tokio::spawn(async move { g.execute(vec![0], hints(Priority::Normal)).await })
    };
    until("the first batch on the device", || backend.held() == 1).await;
    // The rest queue for the slot in this order.
    let queued = [
        (1, Priority::Low),
        (2, Priority::Normal),
        (3, Priority::High),
        (4, Priority::Normal),
        (5, Priority::High),
    ];
    let mut tasks = Vec::new();
    for (i, (tag, p)) in queued.into_iter().enumerate() {
        let g = grain.clone();
        tasks.push(tokio::spawn(async move {
            g.execute(vec![tag, tag], hints(p)).await
        }));
        until("the batch waiting for a slot", || {
            b.accounting().waiting_micro_batches == i + 1
        })
        .await;
    }
    assert_eq!(backend.release(), 1);
    assert_eq!(first.await.unwrap().unwrap().outputs, vec![0]);
    for (task, (tag, _)) in tasks.into_iter().zip(queued) {
        assert_eq!(task.await.unwrap().unwrap().outputs, vec![tag, tag]);
    }
    assert_eq!(*ran.lock(), vec![0, 3, 5, 2, 4, 1]);
    assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_urgent_singles_waits_at_their_priority() {
    let (b, backend, ran) = bridge(64);
    backend.hold();
    let grain = b.batch::<Tagged>().unwrap();
    let first = {
        let g = grain.clone();
        tokio::spawn(async move { g.execute(vec![0], hints(Priority::Normal)).await })
    };
    until("the first batch on the device", || backend.held() == 1).await;
    let normal = {
        let g = grain.clone();
        tokio::spawn(async move { g.execute(vec![1], hints(Priority::Normal)).await })
    };
    until("the normal batch waiting", || {
        b.accounting().waiting_micro_batches == 1
    })
    .await;
    // A high-priority single: the batcher's batch of it waits for a slot at high priority.
    let single = {
        let b = b.clone();
        tokio::spawn(async move { b.single::<Tagged>(2, hints(Priority::High)).await })
    };
    until("the single's batch waiting", || {
        b.accounting().waiting_micro_batches == 2
    })
    .await;
    backend.release();
    assert_eq!(first.await.unwrap().unwrap().outputs, vec![0]);
    assert_eq!(single.await.unwrap().unwrap().output, 2);
    assert_eq!(normal.await.unwrap().unwrap().outputs, vec![1]);
    assert_eq!(*ran.lock(), vec![0, 2, 1], "the urgent single went first");
    assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiting_queue_rejects_new_batches_at_once_and_holds_nothing_for_them() {
    let (b, backend, ran) = bridge(2);
    backend.hold();
    let grain = b.batch::<Tagged>().unwrap();
    let mut tasks = Vec::new();
    for tag in 0..3u32 {
        let g = grain.clone();
        tasks.push(tokio::spawn(async move {
            g.execute(vec![tag], ExecutionHints::default()).await
        }));
        if tag == 0 {
            until("the first batch on the device", || backend.held() == 1).await;
        } else {
            until("the batch waiting", || {
                b.accounting().waiting_micro_batches == tag as usize
            })
            .await;
        }
    }
    // Two wait: the third request is turned away, whatever its priority, and nothing of it stays.
    for p in [Priority::Normal, Priority::High] {
        let e = grain.execute(vec![9], hints(p)).await.unwrap_err();
        assert!(
            matches!(&e, Error::QueueFull { kernel, capacity: 2 } if kernel == "tests/tagged"),
            "{e:?}"
        );
    }
    let held = b.accounting();
    assert_eq!(held.pending_batches, 3, "{held:?}");
    assert_eq!(held.waiting_micro_batches, 2);
    assert_eq!(held.running_micro_batches, 1);
    backend.release();
    for (tag, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap().unwrap().outputs, vec![tag as u32]);
    }
    assert_eq!(*ran.lock(), vec![0, 1, 2]);
    // With room again, requests are served.
    let ok = grain
        .execute(vec![7], ExecutionHints::default())
        .await
        .unwrap();
    assert_eq!(ok.outputs, vec![7]);
    assert_quiescent(&b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_batch_that_times_out_gives_its_place_up() {
    let (b, backend, ran) = bridge(64);
    backend.hold();
    let grain = b.batch::<Tagged>().unwrap();
    let first = {
        let g = grain.clone();
        tokio::spawn(async move { g.execute(vec![0], ExecutionHints::default()).await })
    };
    until("the first batch on the device", || backend.held() == 1).await;
    let e = grain
        .execute(
            vec![1],
            hints(Priority::High).timeout(Duration::from_millis(20)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert_eq!(b.accounting().waiting_micro_batches, 0);
    let later = {
        let g = grain.clone();
        tokio::spawn(async move { g.execute(vec![2], ExecutionHints::default()).await })
    };
    until("the later batch waiting", || {
        b.accounting().waiting_micro_batches == 1
    })
    .await;
    backend.release();
    assert_eq!(first.await.unwrap().unwrap().outputs, vec![0]);
    assert_eq!(later.await.unwrap().unwrap().outputs, vec![2]);
    assert_eq!(*ran.lock(), vec![0, 2], "the timed-out batch never ran");
    assert_quiescent(&b);
}
