//! The dynamic batcher: single requests from many callers gathered into batches (in the manner
//! of Triton's dynamic batcher).
//!
//! Each kernel gets its own bounded queue and one dispatcher thread, both created by the first
//! [`GpuBridge::single`] for that kernel. The dispatcher waits until `batching.max_micro_batch`
//! items are queued (or the largest of `batching.preferred_batch_sizes`), or until the oldest
//! request has waited `batching.max_queue_delay_us`, then runs the batch through
//! [`crate::BatchGrain::execute`], so placement, fallback and circuit breakers apply as for any
//! batch. High-priority requests are taken first; requests of equal priority run in submission
//! order. A full queue rejects at once with [`Error::QueueFull`]; a request whose deadline
//! (`hints.timeout`) passes while it waits is answered [`Error::Timeout`] and never runs; a
//! request whose future is dropped is skipped and never runs. [`GpuBridge::shutdown`] runs what
//! is queued and stops the dispatchers; dropping the last bridge handle answers what is queued
//! with [`Error::Cancelled`].

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use gpubridge_telemetry::names;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::bridge::{GpuBridge, Inner};
use crate::device::{BackendKind, DeviceId};
use crate::error::{Error, Result};
use crate::hints::{BatchResult, ExecutionHints, Priority};
use crate::kernel::{DynKernel, Kernel};

/// The answer to one [`GpuBridge::single`] request.
#[derive(Debug, Clone)]
pub struct SingleResult<O> {
    /// The request's output.
    pub output: O,
    /// How many requests ran in the same batch (this one included).
    pub batch_size: usize,
    /// How long the request waited in its kernel's queue before its batch started.
    pub queued: Duration,
    /// The backend that ran the batch (most of it, if it was split).
    pub backend: Option<BackendKind>,
    /// The device that ran the batch (most of it, if it was split).
    pub device: Option<DeviceId>,
}

/// Why a request was rejected without running (the `reason` label of
/// `gpubridge_rejections_total`).
fn reject(kernel: &'static str, reason: &'static str) {
    metrics::counter!(names::REJECTIONS_TOTAL, "kernel" => kernel, "reason" => reason).increment(1);
}

/// The batcher queues of one bridge, by kernel id.
#[derive(Default)]
pub(crate) struct Batchers {
    queues: Mutex<HashMap<&'static str, Arc<dyn Any + Send + Sync>>>,
    shutdown: Mutex<bool>,
    stoppers: Mutex<Vec<Arc<dyn Stop>>>,
}

impl Batchers {
    /// Tells every dispatcher to stop: `drain` runs what is queued first (the bridge is still
    /// alive), otherwise queued requests are answered `Cancelled`. Returns the dispatcher
    /// threads to join.
    pub(crate) fn stop_all(&self, drain: bool) -> Vec<std::thread::JoinHandle<()>> {
        *self.shutdown.lock() = true;
        let stoppers = std::mem::take(&mut *self.stoppers.lock());
        stoppers.iter().filter_map(|s| s.stop(drain)).collect()
    }
}

trait Stop: Send + Sync {
    fn stop(&self, drain: bool) -> Option<std::thread::JoinHandle<()>>;
}

struct Request<I, O> {
    input: I,
    hints: ExecutionHints,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<SingleResult<O>>>,
}

struct State<I, O> {
    /// Low, normal, high.
    lanes: [VecDeque<Request<I, O>>; 3],
    len: usize,
    stopping: Option<bool>,
}

struct Queue<I, O> {
    kernel: Arc<dyn DynKernel<I, O>>,
    capacity: usize,
    state: Mutex<State<I, O>>,
    wake: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<I: Send + 'static, O: Send + 'static> Stop for Queue<I, O> {
    fn stop(&self, drain: bool) -> Option<std::thread::JoinHandle<()>> {
        self.state.lock().stopping = Some(drain);
        self.wake.notify_all();
        self.thread.lock().take()
    }
}

fn lane(p: Priority) -> usize {
    match p {
        Priority::Low => 0,
        Priority::Normal => 1,
        Priority::High => 2,
    }
}

/// Whether two requests may share a batch (same placement hints).
fn compatible(a: &ExecutionHints, b: &ExecutionHints) -> bool {
    a.backend == b.backend
        && a.prefer == b.prefer
        && a.preferred_device == b.preferred_device
        && a.persistent == b.persistent
}

impl<I, O> Queue<I, O>
where
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    /// Takes the next batch (at most `max` requests): high priority first, submission order
    /// within a priority, dropping requests whose caller left or whose deadline passed; only
    /// requests with the first one's placement hints join it. Empty when nothing runnable is
    /// left.
    fn take_batch(&self, state: &mut State<I, O>, max: usize) -> Vec<Request<I, O>> {
        let kernel = self.kernel.id();
        let now = Instant::now();
        let mut batch: Vec<Request<I, O>> = Vec::new();
        for l in (0..3).rev() {
            let lane = &mut state.lanes[l];
            let mut kept = VecDeque::with_capacity(lane.len());
            while let Some(r) = lane.pop_front() {
                if r.deadline.is_some_and(|d| d <= now) {
                    // Past its deadline: answered here unless the caller's own timer already
                    // answered (and counted) it.
                    state.len -= 1;
                    if !r.reply.is_closed() {
                        reject(kernel, "timeout");
                        let after = r.deadline.map_or(Duration::ZERO, |d| d - r.enqueued);
                        let _ = r.reply.send(Err(Error::Timeout { after }));
                    }
                } else if r.reply.is_closed() {
                    state.len -= 1;
                    reject(kernel, "cancelled");
                } else if batch.len() < max
                    && batch.first().is_none_or(|f| compatible(&f.hints, &r.hints))
                {
                    state.len -= 1;
                    batch.push(r);
                } else {
                    kept.push_back(r);
                }
            }
            *lane = kept;
        }
        batch
    }

    /// Drops queued requests whose caller left or whose deadline passed (as [`Queue::take_batch`]
    /// would), so that they stop holding room in a full queue.
    fn prune(&self, state: &mut State<I, O>) {
        let kernel = self.kernel.id();
        let now = Instant::now();
        for lane in &mut state.lanes {
            lane.retain_mut(|r| {
                if r.deadline.is_some_and(|d| d <= now) {
                    if !r.reply.is_closed() {
                        reject(kernel, "timeout");
                        let after = r.deadline.map_or(Duration::ZERO, |d| d - r.enqueued);
                        let (dead, _) = oneshot::channel();
                        let reply = std::mem::replace(&mut r.reply, dead);
                        let _ = reply.send(Err(Error::Timeout { after }));
                    }
                    false
                } else if r.reply.is_closed() {
                    reject(kernel, "cancelled");
                    false
                } else {
                    true
                }
            });
        }
        state.len = state.lanes.iter().map(VecDeque::len).sum();
    }

    fn dispatch(self: Arc<Self>, bridge: Weak<Inner>, cfg: DispatchConfig) {
        let kernel = self.kernel.id();
        loop {
            let mut state = self.state.lock();
            // Wait for work.
            while state.len == 0 && state.stopping.is_none() {
                self.wake.wait(&mut state);
            }
            if state.len == 0 {
                return;
            }
            // Gather: until a full (or preferred) batch, the oldest's delay, or a stop.
            if state.stopping.is_none() {
                let oldest = state
                    .lanes
                    .iter()
                    .filter_map(|l| l.front().map(|r| r.enqueued))
                    .min()
                    .unwrap_or_else(Instant::now);
                let until = oldest + cfg.delay;
                while state.len < cfg.target && state.stopping.is_none() {
                    if self.wake.wait_until(&mut state, until).timed_out() {
                        break;
                    }
                }
            }
            let drain = state.stopping.unwrap_or(true);
            let available = state.len.min(cfg.max);
            let take = cfg
                .preferred
                .iter()
                .rev()
                .copied()
                .find(|&p| p <= available)
                .unwrap_or(available)
                .max(1);
            let batch = self.take_batch(&mut state, take);
            drop(state);
            if batch.is_empty() {
                continue;
            }
            let Some(inner) = bridge.upgrade().filter(|_| drain) else {
                for r in batch {
                    reject(kernel, "cancelled");
                    let _ = r.reply.send(Err(Error::Cancelled {
                        reason: "the bridge shut down".to_owned(),
                    }));
                }
                continue;
            };
            let grain = GpuBridge::from_inner(inner).grain(self.kernel.clone());
            run_batch(&grain, batch);
        }
    }
}

fn run_batch<I, O>(grain: &crate::BatchGrain<I, O>, batch: Vec<Request<I, O>>)
where
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    let started = Instant::now();
    let size = batch.len();
    let Some(first) = batch.first() else {
        return;
    };
    let mut hints = first.hints.clone();
    hints.timeout = None;
    hints.priority = Priority::Normal;
    hints.correlation_id = None;
    hints.tenant = None;
    hints.spin_wait = None;
    let mut inputs = Vec::with_capacity(size);
    let mut replies = Vec::with_capacity(size);
    for r in batch {
        inputs.push(r.input);
        replies.push((r.reply, started.saturating_duration_since(r.enqueued)));
    }
    let result: Result<BatchResult<O>> = futures::executor::block_on(grain.execute(inputs, hints));
    match result {
        Ok(result) => {
            let backend = result.backend();
            let device = result.device();
            for ((reply, queued), output) in replies.into_iter().zip(result.outputs) {
                let _ = reply.send(Ok(SingleResult {
                    output,
                    batch_size: size,
                    queued,
                    backend,
                    device,
                }));
            }
        }
        Err(e) => {
            for (reply, _) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[derive(Clone)]
struct DispatchConfig {
    max: usize,
    target: usize,
    delay: Duration,
    preferred: Vec<usize>,
}

impl GpuBridge {
    /// Runs one input of kernel `K` through the kernel's dynamic batcher: it waits (up to
    /// `batching.max_queue_delay_us`) to share a batch with other callers' requests, then runs
    /// with them. See the [module documentation](crate::batcher).
    ///
    /// ```no_run
    /// use gpubridge_core::{kernels, ExecutionHints, GpuBridge, Priority};
    /// # async fn demo(bridge: GpuBridge) -> gpubridge_core::Result<()> {
    /// let pair = kernels::VectorPair { a: vec![1.0], b: vec![2.0] };
    /// let hints = ExecutionHints { priority: Priority::High, ..Default::default() };
    /// let sum = bridge.single::<kernels::VectorAdd>(pair, hints).await?;
    /// assert_eq!(sum.output, vec![3.0]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownKernel`]; [`Error::InvalidInput`] for a bad input (only this caller sees
    /// it, nothing is queued); [`Error::QueueFull`] when the kernel's queue holds
    /// `batching.queue_capacity` requests; [`Error::Timeout`] when `hints.timeout` passes first
    /// (needs a tokio runtime with time enabled); [`Error::Cancelled`] after
    /// [`GpuBridge::shutdown`] or when the bridge is dropped; otherwise the batch's error.
    pub async fn single<K: Kernel>(
        &self,
        input: K::Input,
        hints: ExecutionHints,
    ) -> Result<SingleResult<K::Output>> {
        let queue = self.queue::<K::Input, K::Output>(K::ID)?;
        let kernel = queue.kernel.id();
        queue.kernel.validate(0, &input)?;
        let _pending = self.pending_guard();
        let enqueued = Instant::now();
        let timeout = hints.timeout;
        let (tx, rx) = oneshot::channel();
        {
            let mut state = queue.state.lock();
            if state.stopping.is_some() {
                reject(kernel, "cancelled");
                return Err(Error::Cancelled {
                    reason: "the bridge is shutting down".to_owned(),
                });
            }
            if state.len >= queue.capacity {
                queue.prune(&mut state);
            }
            if state.len >= queue.capacity {
                reject(kernel, "queue_full");
                return Err(Error::QueueFull {
                    kernel: kernel.to_owned(),
                    capacity: queue.capacity,
                });
            }
            let l = lane(hints.priority);
            state.lanes[l].push_back(Request {
                input,
                deadline: timeout.map(|t| enqueued + t),
                hints,
                enqueued,
                reply: tx,
            });
            state.len += 1;
        }
        queue.wake.notify_one();
        let answer = match timeout {
            Some(after) => match tokio::time::timeout(after, rx).await {
                Ok(a) => a,
                Err(_) => {
                    reject(kernel, "timeout");
                    return Err(Error::Timeout { after });
                }
            },
            None => rx.await,
        };
        let result = answer.unwrap_or_else(|_| {
            Err(Error::Cancelled {
                reason: "the batcher stopped".to_owned(),
            })
        });
        if let Ok(r) = &result {
            metrics::histogram!(names::QUEUE_DURATION_SECONDS, "kernel" => kernel)
                .record(r.queued.as_secs_f64());
        }
        result
    }

    /// Stops every kernel's batcher: requests already queued run, new ones are answered
    /// [`Error::Cancelled`]. Blocks until the dispatchers have finished; batches in flight
    /// complete first. Plain batches ([`crate::BatchGrain::execute`]) are unaffected.
    pub fn shutdown(&self) {
        for t in self.batchers().stop_all(true) {
            let _ = t.join();
        }
    }

    fn queue<I, O>(&self, id: &str) -> Result<Arc<Queue<I, O>>>
    where
        I: Send + Sync + 'static,
        O: Send + 'static,
    {
        let kernel = self.catalog().resolve::<I, O>(id)?;
        let batchers = self.batchers();
        let mut queues = batchers.queues.lock();
        if let Some(q) = queues.get(kernel.id()) {
            return Arc::clone(q).downcast::<Queue<I, O>>().map_err(|_| {
                Error::KernelTypeMismatch {
                    id: id.to_owned(),
                    expected: "the types of the kernel's first single request".to_owned(),
                    found: std::any::type_name::<I>().to_owned(),
                }
            });
        }
        let b = &self.config().batching;
        let max = b.max_micro_batch.min(b.max_batch).max(1);
        let mut preferred: Vec<usize> = b
            .preferred_batch_sizes
            .iter()
            .copied()
            .filter(|&p| p >= 1 && p <= max)
            .collect();
        preferred.sort_unstable();
        let cfg = DispatchConfig {
            max,
            target: preferred.last().copied().unwrap_or(max),
            delay: Duration::from_micros(b.max_queue_delay_us),
            preferred,
        };
        let queue = Arc::new(Queue {
            capacity: b.queue_capacity,
            kernel: kernel.clone(),
            state: Mutex::new(State {
                lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
                len: 0,
                stopping: (*batchers.shutdown.lock()).then_some(true),
            }),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        });
        let weak = self.downgrade();
        let q = queue.clone();
        let handle = std::thread::Builder::new()
            .name(format!("gpubridge-batcher-{}", kernel.id()))
            .spawn(move || q.dispatch(weak, cfg))
            .map_err(|e| Error::Backend {
                backend: BackendKind::Cpu,
                message: format!("could not start the batcher thread: {e}"),
                transient: true,
            })?;
        *queue.thread.lock() = Some(handle);
        batchers.stoppers.lock().push(queue.clone());
        queues.insert(kernel.id(), queue.clone());
        Ok(queue)
    }
}
