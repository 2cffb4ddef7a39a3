//! The dynamic batcher puts many callers' single requests into one batch, so one caller's item
//! that makes the kernel fail (a panic, or an input it refuses that validation let through) must
//! fail that caller's request alone: the batch is run again in halves until the items that fail
//! alone are found, every other caller gets its own correct answer, the extra runs are bounded,
//! the items are never donated to the kernel (a failed run must leave them unchanged), and the
//! device is not blamed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gpubridge_core::testing::{assert_quiescent, FaultInjectingBackend};
use gpubridge_core::{
    BackendKind, BridgeConfig, CircuitState, CpuContext, DeviceId, Error, ExecutionHints,
    GpuBridge, Kernel, Result, SingleResult,
};

/// Input that makes [`Picky`] panic.
const PANICS: f32 = -1.0;
/// Input that [`Picky`] refuses with `InvalidInput` although its validation lets it through.
const REFUSED: f32 = -2.0;

/// Doubles its inputs; panics on [`PANICS`] and refuses [`REFUSED`]. Its donated form doubles
/// the inputs in place before it looks at them, so a retry of a donated batch would double them
/// twice; it counts its runs and its donated runs.
struct Picky {
    runs: Arc<AtomicUsize>,
    donated: Arc<AtomicUsize>,
}

impl Kernel for Picky {
    type Input = f32;
    type Output = f32;
    const ID: &'static str = "tests/picky";

    fn validate(&self, _index: usize, _input: &f32) -> Result<()> {
        Ok(())
    }

    fn device_bytes(&self, _input: &f32) -> usize {
        // Large, so that a micro-batch of one MiB holds sixteen items.
        64 << 10
    }

    fn run_cpu(&self, inputs: &[f32], _ctx: &CpuContext) -> Result<Vec<f32>> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        inputs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if x == PANICS {
                    panic!("picky about {x}");
                }
                if x == REFUSED {
                    return Err(Error::invalid_item(Self::ID, i, "refused"));
                }
                Ok(x * 2.0)
            })
            .collect()
    }

    fn run_cpu_donated(&self, inputs: &mut [f32], ctx: &CpuContext) -> Result<Vec<f32>> {
        self.donated.fetch_add(1, Ordering::SeqCst);
        for x in inputs.iter_mut() {
            *x *= 2.0;
        }
        let halved: Vec<f32> = inputs.iter().map(|x| x / 2.0).collect();
        self.run_cpu(&halved, ctx)
    }
}

struct Fixture {
    bridge: GpuBridge,
    backend: Arc<FaultInjectingBackend>,
    runs: Arc<AtomicUsize>,
    donated: Arc<AtomicUsize>,
}

/// A bridge whose batcher takes batches of up to `batch` singles, on one CPU device; split by bytes into micro-batches of sixteen items when `split`.
fn fixture(batch: usize, split: bool) -> Fixture {
    let mut config = BridgeConfig::default();
    config.batching.max_batch = batch;
    config.batching.max_queue_delay_us = 100;
    config.batching.max_micro_batch = batch;
    config.batching.max_micro_batch_mb = if split { 1 } else { 1 << 20 };
    config.batching.batches_in_flight = 1;
    let runs = Arc::new(AtomicUsize::new(0));
    let donated = Arc::new(AtomicUsize::new(0));
    let mut b = GpuBridge::builder(config);
    b.register(Picky {
        runs: runs.clone(),
        donated: donated.clone(),
    })
    .unwrap();
    let backend = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    b.add_backend(backend.clone());
    Fixture {
        bridge: b.build().unwrap(),
        backend,
        runs,
        donated,
    }
}

/// Sends `inputs` as single requests that the batcher takes as one batch, and returns their
/// answers in input order. The batcher's runner is kept busy with a held request meanwhile, so
/// that every one of them is queued before it takes its next batch.
async fn singles(f: &Fixture, inputs: &[f32]) -> Vec<Result<SingleResult<f32>>> {
    f.backend.hold();
    let b = f.bridge.clone();
    let first =
        tokio::spawn(async move { b.single::<Picky>(0.5, ExecutionHints::default()).await });
    while f.backend.held() == 0 {
        tokio::task::yield_now().await;
    }
    let mut queued: Vec<_> = inputs
        .iter()
        .map(|&x| Box::pin(f.bridge.single::<Picky>(x, ExecutionHints::default())))
        .collect();
    for q in &mut queued {
        assert!(futures::poll!(q.as_mut()).is_pending());
    }
    f.backend.release();
    assert_eq!(first.await.unwrap().unwrap().output, 1.0);
    futures::future::join_all(queued).await
}

fn cpu0() -> DeviceId {
    DeviceId {
        backend: BackendKind::Cpu,
        index: 0,
    }
}

/// Checks every answer: the bad items' errors, the others' doubled values from one batch.
fn check(inputs: &[f32], answers: &[Result<SingleResult<f32>>], batch: usize) {
    for (i, (&x, answer)) in inputs.iter().zip(answers).enumerate() {
        match answer {
            Ok(r) => {
                assert!(x >= 0.0, "item {i} ({x}) should have failed");
                assert_eq!(r.output, x * 2.0, "item {i}");
                assert_eq!(r.batch_size, batch, "item {i} was not in the shared batch");
            }
            Err(Error::KernelPanicked {
                kernel,
                backend,
                message,
            }) => {
                assert_eq!(x, PANICS, "item {i} failed: {message}");
                assert_eq!(kernel, Picky::ID);
                assert_eq!(*backend, BackendKind::Cpu);
                assert_eq!(message, "picky about -1");
            }
            Err(Error::InvalidInput { kernel, reason, .. }) => {
                assert_eq!(x, REFUSED, "item {i} refused: {reason}");
                assert_eq!(kernel, Picky::ID);
                assert_eq!(reason, "refused");
            }
            Err(e) => panic!("item {i} ({x}): unexpected {e:?}"),
        }
    }
}

/// Fresh positive inputs with a few bad ones at random places.
fn inputs(n: usize, bad: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n).map(|_| rand::random::<f32>() * 100.0).collect();
    for k in 0..bad {
        let at = rand::random::<u64>() as usize % n;
        x[at] = if k % 2 == 0 { PANICS } else { REFUSED };
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_item_fails_only_its_own_single_request() {
    let f = fixture(64, false);
    for bad in [1, 2, 3] {
        let runs_before = f.runs.load(Ordering::SeqCst);
        let x = inputs(64, bad);
        let answers = singles(&f, &x).await;
        check(&x, &answers, 64);
        let failed = answers.iter().filter(|a| a.is_err()).count();
        let distinct_bad = x.iter().filter(|v| **v < 0.0).count();
        assert_eq!(failed, distinct_bad);
        // The held request's run, one of the batch, then halves: at most 2 log2(64) runs per
        // bad item.
        let runs = f.runs.load(Ordering::SeqCst) - runs_before;
        assert!(
            runs <= 2 + 12 * distinct_bad,
            "{runs} runs for {distinct_bad} bad"
        );
    }
    // Singles are never donated: a failed run must leave the items as they came.
    assert_eq!(f.donated.load(Ordering::SeqCst), 0);
    // The kernel's failures are not the device's.
    assert_eq!(f.bridge.circuit_state(cpu0()), Some(CircuitState::Closed));
    // A batch with no bad item runs once (after the held request's run).
    let runs_before = f.runs.load(Ordering::SeqCst);
    let x = inputs(64, 0);
    let answers = singles(&f, &x).await;
    check(&x, &answers, 64);
    assert_eq!(f.runs.load(Ordering::SeqCst) - runs_before, 2);
    assert_quiescent(&f.bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_item_in_one_micro_batch_leaves_the_others_alone() {
    // A batch of 96 singles in six micro-batches of 16: the micro-batches without a bad item
    // run once each.
    let f = fixture(96, true);
    let mut x = inputs(96, 0);
    x[20] = PANICS;
    x[70] = REFUSED;
    let answers = singles(&f, &x).await;
    check(&x, &answers, 96);
    assert_eq!(answers.iter().filter(|a| a.is_err()).count(), 2);
    // The held request's run, six micro-batches, then halves of two of them: 2 log2(16) = 8
    // each at most.
    let runs = f.runs.load(Ordering::SeqCst);
    assert!((7..=7 + 16).contains(&runs), "{runs} runs");
    assert_quiescent(&f.bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_bad_items_costs_a_bounded_number_of_runs() {
    // Every item panics: each caller gets the error, and the search stops after its allowance
    // of extra runs (64) instead of running each of the 512 items alone.
    let f = fixture(512, false);
    let x = vec![PANICS; 512];
    let answers = singles(&f, &x).await;
    check(&x, &answers, 512);
    assert!(answers.iter().all(Result::is_err));
    // (And the held request's run.)
    let runs = f.runs.load(Ordering::SeqCst);
    assert!(runs <= 2 + 64, "{runs} runs");
    assert_eq!(f.bridge.circuit_state(cpu0()), Some(CircuitState::Closed));
    // And the bridge serves the next batch.
    let x = inputs(512, 0);
    let answers = singles(&f, &x).await;
    check(&x, &answers, 512);
    assert_quiescent(&f.bridge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_own_batch_still_fails_as_a_whole() {
    // `batch().execute` is one caller's request: a bad item fails it, and its items may be
    // donated (the kernel's donated form runs).
    let f = fixture(64, false);
    let grain = f.bridge.batch::<Picky>().unwrap();
    let e = grain
        .execute(vec![1.0, PANICS, 3.0], ExecutionHints::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KernelPanicked { .. }), "{e:?}");
    let ok = grain
        .execute(vec![1.0, 2.0], ExecutionHints::default())
        .await
        .unwrap();
    assert_eq!(ok.outputs, vec![2.0, 4.0]);
    assert_eq!(f.donated.load(Ordering::SeqCst), 2);
    assert_quiescent(&f.bridge);
}
