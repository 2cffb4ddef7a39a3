//! The dynamic batcher: single requests from many callers gathered into batches (in the manner
//! of Triton's dynamic batcher).
//!
//! Each kernel gets its own bounded queue and `batching.batches_in_flight` runner threads, all
//! created by the first [`GpuBridge::single`] for that kernel. One runner at a time gathers: it
//! waits until `batching.max_micro_batch` items are queued (or the largest of
//! `batching.preferred_batch_sizes`), or until the oldest request has waited
//! `batching.max_queue_delay_us`, then runs the batch (while the next runner gathers) through
//! [`crate::BatchGrain::execute`], so placement, fallback and circuit breakers apply as for any
//! batch. High-priority requests are taken first; requests of equal priority run in submission
//! order. A full queue rejects at once with [`Error::QueueFull`]; a request whose deadline
//! (`hints.timeout`) passes while it waits is answered [`Error::Timeout`] and never runs; a
//! request whose future is dropped is skipped and never runs. [`GpuBridge::shutdown`] runs what
//! is queued and stops the dispatchers; dropping the last bridge handle answers what is queued
//! with [`Error::Cancelled`].
//!
//! A batch holds many callers' requests, so one caller's item must not fail the others. When
//! a micro-batch of singles fails because of its items (the kernel panicked, or refused an input
//! that validation let through), it is run again in halves, and so on, until the items that
//! fail alone are found: their callers get the error, every other caller its own answer. The
//! search is bounded (64 extra runs per micro-batch; past that, the pieces still failing fail
//! their items). Any other failure of a micro-batch fails that micro-batch's items only. For
//! this the batcher never donates its items to the kernel ([`Kernel::run_cpu_donated`],
//! [`Kernel::unpack_donated`]): a failed run must leave them unchanged.
//!
//! The path of a request is built for a million requests a second from many threads: a caller
//! finds its kernel's queue without a lock, reserves a place with one atomic add, pushes onto a
//! lock-free queue and wakes the gathering runner only when the queue was empty or has a full
//! batch. The runner moves what arrived into its own staging area, where priorities, deadlines
//! and cancellations are handled; callers never touch it except to make room in a full queue.
//! A batch's answers are sent from a task on the callers' tokio runtime, so that waking its
//! callers goes through a worker's own run queue.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use gpubridge_telemetry::names;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::bridge::{GpuBridge, Inner};
use crate::device::{BackendKind, DeviceId};
use crate::error::{Error, Result};
use crate::hints::ExecutionHints;
use crate::kernel::{DynKernel, Kernel};
use crate::tenants::{TenantGuard, Tenants};

/// The answer to one [`GpuBridge::single`] request.
#[derive(Debug, Clone)]
pub struct SingleResult<O> {
    /// The request's output.
    pub output: O,
    /// How many requests ran in the same batch (this one included).
    pub batch_size: usize,
    /// How long the request waited in its kernel's queue before its batch started.
    pub queued: Duration,
    /// How long its batch took, from its start until its outputs were ready (before the
    /// callers were answered).
    pub batch_time: Duration,
    /// The backend that ran the batch (most of it, if it was split).
    pub backend: Option<BackendKind>,
    /// The device that ran the batch (most of it, if it was split).
    pub device: Option<DeviceId>,
}

/// What [`GpuBridge::shutdown_within`] did with the requests queued when it began (counted over
/// every stop of this bridge's batchers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Queued requests that ran after the stop began.
    pub ran: usize,
    /// Queued requests answered [`Error::Cancelled`] because the deadline passed (or the bridge
    /// was dropped).
    pub cancelled: usize,
    /// Whether the deadline passed before the queues were empty.
    pub deadline_passed: bool,
    /// How long the shutdown took.
    pub took: Duration,
}

/// Why a request was rejected without running (the `reason` label of
/// `gpubridge_rejections_total`).
pub(crate) fn reject(kernel: &'static str, reason: &'static str) {
    metrics::counter!(names::REJECTIONS_TOTAL, "kernel" => kernel, "reason" => reason).increment(1);
}

/// The batcher queues of one bridge: one slot per registered kernel, filled by the kernel's
/// first single request. The map never changes after the bridge is built, so finding a queue
/// takes no lock.
pub(crate) struct Batchers {
    slots: HashMap<&'static str, OnceLock<Arc<dyn Any + Send + Sync>>>,
    /// Taken only to create a queue.
    create: Mutex<()>,
    shutdown: AtomicBool,
    stoppers: Mutex<Vec<Arc<dyn Stop>>>,
}

impl Batchers {
    /// Slots for these kernel ids.
    pub(crate) fn new(ids: impl IntoIterator<Item = &'static str>) -> Self {
        Self {
            slots: ids.into_iter().map(|id| (id, OnceLock::new())).collect(),
            create: Mutex::new(()),
            shutdown: AtomicBool::new(false),
            stoppers: Mutex::new(Vec::new()),
        }
    }

    /// Tells every dispatcher to stop: `drain` runs what is queued first (the bridge is still
    /// alive), otherwise queued requests are answered `Cancelled`. Returns the dispatcher
    /// threads to join.
    pub(crate) fn stop_all(&self, drain: bool) -> Vec<std::thread::JoinHandle<()>> {
        {
            let _create = self.create.lock();
            self.shutdown.store(true, Ordering::SeqCst);
        }
        let stoppers = self.stoppers.lock().clone();
        stoppers.iter().flat_map(|s| s.stop(drain)).collect()
    }

    /// Turns a draining stop into a cancelling one: what is still queued is answered
    /// `Cancelled` (batches already running finish).
    fn escalate(&self) {
        for s in self.stoppers.lock().iter() {
            s.escalate();
        }
    }

    /// Requests run and requests cancelled since the stop began, over every queue.
    fn stop_counts(&self) -> (usize, usize) {
        self.stoppers
            .lock()
            .iter()
            .map(|s| s.stop_counts())
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }

    /// Each kernel's batcher now, by kernel id.
    pub(crate) fn occupancy(&self) -> Vec<(&'static str, crate::accounting::BatcherOccupancy)> {
        self.stoppers.lock().iter().map(|s| s.occupancy()).collect()
    }

    /// Single requests accepted and not yet answered, in every kernel's batcher.
    pub(crate) fn pending(&self) -> usize {
        self.stoppers.lock().iter().map(|s| s.pending()).sum()
    }
}

trait Stop: Send + Sync {
    fn stop(&self, drain: bool) -> Vec<std::thread::JoinHandle<()>>;
    fn escalate(&self);
    fn pending(&self) -> usize;
    fn stop_counts(&self) -> (usize, usize);
    fn stats(&self) -> (&'static str, BatcherStats);
    fn occupancy(&self) -> (&'static str, crate::accounting::BatcherOccupancy);
}

struct Request<I, O> {
    input: I,
    hints: ExecutionHints,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<SingleResult<O>>>,
}

/// Requests moved off the intake, by priority (low, normal, high), in arrival order.
struct Staging<I, O> {
    lanes: [VecDeque<Request<I, O>>; 3],
}

impl<I, O> Staging<I, O> {
    fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }
}

const RUNNING: u8 = 0;
const DRAIN: u8 = 1;
const CANCEL: u8 = 2;

struct Queue<I, O> {
    kernel: Arc<dyn DynKernel<I, O>>,
    capacity: usize,
    /// Queued requests at which the gathering runner stops waiting for more (the full batch).
    target: usize,
    /// Where callers push, by priority (lock-free).
    intake: [SegQueue<Request<I, O>>; 3],
    /// Requests accepted and not yet taken into a batch or dropped (intake and staging).
    len: AtomicUsize,
    /// Requests taken into batches and not yet answered.
    running: AtomicUsize,
    /// `RUNNING`, or stopping with `DRAIN` or `CANCEL`.
    stopping: AtomicU8,
    /// Set while the gathering runner sleeps on `wake`.
    sleeping: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
    /// Held by the one runner that gathers the next batch; the others run theirs meanwhile.
    gather: Mutex<()>,
    /// Held briefly by the gathering runner, and by a caller making room in a full queue.
    staging: Mutex<Staging<I, O>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// `gpubridge_queue_duration_seconds{kernel}`, resolved once.
    queued: metrics::Histogram,
    /// `gpubridge_pending_requests`, moved by whole batches.
    pending_gauge: metrics::Gauge,
    /// The tokio runtime of the first caller that had one: batches are answered from it.
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Where the runners' time went.
    stats: RunnerClock,
    /// Requests taken into batches after the stop began, run and cancelled.
    ran_after_stop: AtomicUsize,
    cancelled_on_stop: AtomicUsize,
}

impl<I: Send + 'static, O: Send + 'static> Stop for Queue<I, O> {
    fn stop(&self, drain: bool) -> Vec<std::thread::JoinHandle<()>> {
        let _ = self.stopping.compare_exchange(
            RUNNING,
            if drain { DRAIN } else { CANCEL },
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        {
            let _sleep = self.sleep.lock();
            self.wake.notify_all();
        }
        std::mem::take(&mut *self.threads.lock())
    }

    fn escalate(&self) {
        let _ = self
            .stopping
            .compare_exchange(DRAIN, CANCEL, Ordering::SeqCst, Ordering::SeqCst);
        let _sleep = self.sleep.lock();
        self.wake.notify_all();
    }

    fn pending(&self) -> usize {
        self.len.load(Ordering::Relaxed) + self.running.load(Ordering::Relaxed)
    }

    fn stop_counts(&self) -> (usize, usize) {
        (
            self.ran_after_stop.load(Ordering::Relaxed),
            self.cancelled_on_stop.load(Ordering::Relaxed),
        )
    }

    fn stats(&self) -> (&'static str, BatcherStats) {
        (self.kernel.id(), self.stats.read())
    }

    fn occupancy(&self) -> (&'static str, crate::accounting::BatcherOccupancy) {
        let staged =
            self.staging.lock().len() + self.intake.iter().map(SegQueue::len).sum::<usize>();
        (
            self.kernel.id(),
            crate::accounting::BatcherOccupancy {
                queued: self.len.load(Ordering::SeqCst),
                staged,
                running: self.running.load(Ordering::SeqCst),
            },
        )
    }
}

/// Where one kernel's batcher runners spent their time, summed over its batches (see
/// [`GpuBridge::batcher_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatcherStats {
    /// Batches run.
    pub batches: u64,
    /// Requests in them.
    pub requests: u64,
    /// Waiting for the turn to gather (another runner was gathering).
    pub waiting_to_gather: Duration,
    /// Gathering: waiting for requests and for the batch to fill or its delay to run out.
    pub gathering: Duration,
    /// Running batches, from taking them to having their answers.
    pub running: Duration,
    /// Handing the answers over.
    pub delivering: Duration,
    /// Of `running`: the batches' micro-batches waiting for their devices (from the batch's
    /// start to each micro-batch's start on its device, summed over micro-batches).
    pub device_queue: Duration,
    /// Of `running`: the devices' executors working on the micro-batches (packing, copies,
    /// kernels; the whole CPU form on the CPU), summed over micro-batches.
    pub executor: Duration,
    /// Of `running`: the micro-batches between threads (to the executor and back), summed.
    pub handoff: Duration,
    /// Of `running`: turning the micro-batches' downloaded bytes into outputs, summed.
    pub unpack: Duration,
}

/// The counters behind [`BatcherStats`] (nanoseconds).
#[derive(Default)]
struct RunnerClock {
    batches: AtomicU64,
    requests: AtomicU64,
    /// Waiting to gather, gathering, running, delivering, then the parts of running: device
    /// queue, executor, hand-off, unpack.
    phases: [AtomicU64; 8],
}

impl RunnerClock {
    fn record(&self, size: usize, phases: [Duration; 8]) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(size as u64, Ordering::Relaxed);
        for (c, d) in self.phases.iter().zip(phases) {
            c.fetch_add(
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }

    fn read(&self) -> BatcherStats {
        let ns = |i: usize| Duration::from_nanos(self.phases[i].load(Ordering::Relaxed));
        BatcherStats {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            waiting_to_gather: ns(0),
            gathering: ns(1),
            running: ns(2),
            delivering: ns(3),
            device_queue: ns(4),
            executor: ns(5),
            handoff: ns(6),
            unpack: ns(7),
        }
    }
}

/// Whether two requests may share a batch (same placement hints).
fn compatible(a: &ExecutionHints, b: &ExecutionHints) -> bool {
    a.backend == b.backend
        && a.prefer == b.prefer
        && a.preferred_device == b.preferred_device
        && a.persistent == b.persistent
}

/// How long a runner that counted a full batch waits for the pushes of its last callers (a
/// caller takes its place and pushes with no await in between: nanoseconds, unless its thread
/// is preempted there).
const PUSH_SETTLE: Duration = Duration::from_millis(10);

/// Whether a queued request should be dropped rather than run (its deadline passed or its caller
/// left), answering it if it timed out.
fn gone<I, O>(kernel: &'static str, r: &mut Request<I, O>, now: Instant) -> bool {
    if r.deadline.is_some_and(|d| d <= now) {
        // Past its deadline: answered here unless the caller's own timer already answered (and
        // counted) it.
        if !r.reply.is_closed() {
            reject(kernel, "timeout");
            let after = r.deadline.map_or(Duration::ZERO, |d| d - r.enqueued);
            let (dead, _) = oneshot::channel();
            let reply = std::mem::replace(&mut r.reply, dead);
            let _ = reply.send(Err(Error::Timeout { after }));
        }
        true
    } else if r.reply.is_closed() {
        reject(kernel, "cancelled");
        true
    } else {
        false
    }
}

impl<I, O> Queue<I, O>
where
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    fn stopping(&self) -> u8 {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Moves what callers pushed into the staging area.
    fn move_intake(&self, staging: &mut Staging<I, O>) {
        for (lane, intake) in staging.lanes.iter_mut().zip(&self.intake) {
            while let Some(r) = intake.pop() {
                lane.push_back(r);
            }
        }
    }

    /// Counts `n` requests as no longer queued.
    fn left(&self, n: usize) {
        if n > 0 {
            self.len.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Sleeps until `ready()` holds, the queue stops, or `until` passes (`false` then).
    fn sleep_until(&self, until: Option<Instant>, ready: impl Fn() -> bool) -> bool {
        let mut guard = self.sleep.lock();
        self.sleeping.store(true, Ordering::SeqCst);
        let mut woke = true;
        while !ready() && self.stopping() == RUNNING {
            match until {
                Some(t) => {
                    if self.wake.wait_until(&mut guard, t).timed_out() {
                        woke = ready();
                        break;
                    }
                }
                None => self.wake.wait(&mut guard),
            }
        }
        self.sleeping.store(false, Ordering::SeqCst);
        woke
    }

    /// Takes the next batch (at most `max` requests) from staging: high priority first,
    /// submission order within a priority, dropping requests whose caller left or whose
    /// deadline passed; only requests with the first one's placement hints join it. Empty when
    /// nothing runnable is left.
    fn take_batch(&self, staging: &mut Staging<I, O>, max: usize) -> Vec<Request<I, O>> {
        let kernel = self.kernel.id();
        let now = Instant::now();
        let mut batch: Vec<Request<I, O>> = Vec::with_capacity(max.min(staging.len()));
        let mut removed = 0;
        for l in (0..3).rev() {
            let lane = &mut staging.lanes[l];
            if lane.is_empty() {
                continue;
            }
            let mut kept = VecDeque::new();
            while let Some(mut r) = lane.pop_front() {
                if batch.len() >= max && kept.is_empty() {
                    // Full, and nothing was set aside: the rest of the lane stays as it is.
                    lane.push_front(r);
                    break;
                }
                if gone(kernel, &mut r, now) {
                    removed += 1;
                } else if batch.len() < max
                    && batch.first().is_none_or(|f| compatible(&f.hints, &r.hints))
                {
                    removed += 1;
                    batch.push(r);
                } else {
                    kept.push_back(r);
                }
            }
            if !kept.is_empty() {
                kept.append(lane);
                *lane = kept;
            }
        }
        self.left(removed);
        batch
    }

    /// Drops queued requests whose caller left or whose deadline passed, so that they stop
    /// holding room in a full queue.
    fn prune(&self, staging: &mut Staging<I, O>) {
        let kernel = self.kernel.id();
        let now = Instant::now();
        let mut removed = 0;
        for lane in &mut staging.lanes {
            lane.retain_mut(|r| {
                let drop = gone(kernel, r, now);
                removed += usize::from(drop);
                !drop
            });
        }
        self.left(removed);
    }

    /// One runner: gathers a batch (while it holds `gather`), then runs it while another runner
    /// gathers the next.
    fn dispatch(self: Arc<Self>, bridge: Weak<Inner>, cfg: Arc<DispatchConfig>) {
        let kernel = self.kernel.id();
        loop {
            let t0 = Instant::now();
            let gathering = self.gather.lock();
            let t1 = Instant::now();
            // Wait for work.
            loop {
                let staged = {
                    let mut st = self.staging.lock();
                    self.move_intake(&mut st);
                    st.len()
                };
                if staged > 0 {
                    break;
                }
                if self.stopping() != RUNNING {
                    if self.len.load(Ordering::SeqCst) == 0 {
                        // Stopping, and nothing is left: a caller that reserves a place from
                        // now on sees the stop and takes its place back.
                        return;
                    }
                    // A caller reserved a place and is about to push, or to see the stop and
                    // take it back.
                    std::thread::yield_now();
                    continue;
                }
                self.sleep_until(None, || self.len.load(Ordering::SeqCst) > 0);
            }
            // Gather: until a full (or preferred) batch, the oldest's delay, or a stop.
            let mut full = false;
            if self.stopping() == RUNNING {
                let oldest = {
                    let st = self.staging.lock();
                    st.lanes
                        .iter()
                        .filter_map(|l| l.front().map(|r| r.enqueued))
                        .min()
                        .unwrap_or_else(Instant::now)
                };
                full = self.sleep_until(Some(oldest + cfg.delay), || {
                    self.len.load(Ordering::SeqCst) >= cfg.target
                });
            }
            let t2 = Instant::now();
            let stop = self.stopping();
            let drain = stop != CANCEL;
            let batch = {
                let mut st = self.staging.lock();
                self.move_intake(&mut st);
                // A caller counts itself in `len` just before it pushes, so a batch counted full
                // may still be landing: wait for those pushes (at most `PUSH_SETTLE`), or the
                // batch runs short and the rest wait out another delay. Only a batch counted
                // full waits (a batch the delay ends takes what is there), so the callers' path
                // costs nothing more.
                let settle = Instant::now();
                while full
                    && st.len() < cfg.target.min(self.len.load(Ordering::SeqCst))
                    && settle.elapsed() < PUSH_SETTLE
                    && self.stopping() == RUNNING
                {
                    drop(st);
                    std::thread::yield_now();
                    st = self.staging.lock();
                    self.move_intake(&mut st);
                }
                let available = st.len().min(cfg.max);
                let take = cfg
                    .preferred
                    .iter()
                    .rev()
                    .copied()
                    .find(|&p| p <= available)
                    .unwrap_or(available)
                    .max(1);
                self.take_batch(&mut st, take)
            };
            drop(gathering);
            if batch.is_empty() {
                continue;
            }
            let size = batch.len();
            if stop != RUNNING {
                let counter = if drain {
                    &self.ran_after_stop
                } else {
                    &self.cancelled_on_stop
                };
                counter.fetch_add(size, Ordering::Relaxed);
            }
            self.running.fetch_add(size, Ordering::Relaxed);
            self.pending_gauge.increment(size as f64);
            let (answers, parts) = match bridge.upgrade().filter(|_| drain) {
                Some(inner) => {
                    let grain = GpuBridge::from_inner(inner).grain(self.kernel.clone());
                    run_batch(&grain, batch, &self.queued, cfg.spin)
                }
                None => (
                    batch
                        .into_iter()
                        .map(|r| {
                            reject(kernel, "cancelled");
                            let cancelled = Error::Cancelled {
                                reason: "the bridge shut down".to_owned(),
                            };
                            (r.reply, Err(cancelled))
                        })
                        .collect(),
                    [Duration::ZERO; 4],
                ),
            };
            // No longer pending once answered: counted out before the callers can see their
            // answers.
            let t3 = Instant::now();
            self.running.fetch_sub(size, Ordering::Relaxed);
            self.pending_gauge.decrement(size as f64);
            deliver(answers, self.runtime.get());
            let [device_queue, executor, handoff, unpack] = parts;
            self.stats.record(
                size,
                [
                    t1 - t0,
                    t2 - t1,
                    t3 - t2,
                    t3.elapsed(),
                    device_queue,
                    executor,
                    handoff,
                    unpack,
                ],
            );
        }
    }
}

/// Runs one batch and returns its answers (to be delivered) and the parts of its time that its
/// micro-batches report: waiting for devices, executors, hand-offs, unpacking.
fn run_batch<I, O>(
    grain: &crate::BatchGrain<I, O>,
    batch: Vec<Request<I, O>>,
    queued_histogram: &metrics::Histogram,
    spin: Option<Duration>,
) -> (Vec<Answer<O>>, [Duration; 4])
where
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    let started = Instant::now();
    let size = batch.len();
    let Some(first) = batch.first() else {
        return (Vec::new(), [Duration::ZERO; 4]);
    };
    let mut hints = first.hints.clone();
    hints.timeout = None;
    // The batch waits for a device slot at its most urgent request's priority (the first: the
    // queues hand out high priority first).
    hints.priority = first.hints.priority;
    hints.correlation_id = None;
    hints.tenant = None;
    // The runner is a thread of its own: it waits for its batch spinning (briefly), which
    // answers sooner than a parked thread woken by the device.
    hints.spin_wait = spin;
    let mut inputs = Vec::with_capacity(size);
    let mut replies = Vec::with_capacity(size);
    for r in batch {
        inputs.push(r.input);
        let queued = started.saturating_duration_since(r.enqueued);
        queued_histogram.record(queued.as_secs_f64());
        replies.push((r.reply, queued));
    }
    let result = futures::executor::block_on(grain.execute_singles(inputs, hints));
    match result {
        Ok((result, failed)) => {
            let backend = result.backend();
            let device = result.device();
            let batch_time = result.total;
            let mut parts = [Duration::ZERO; 4];
            for c in &result.chunks {
                let executor = if c.executor.is_zero() {
                    c.compute
                } else {
                    c.executor
                };
                parts[0] += c.queue;
                parts[1] += executor;
                parts[2] += c.handoff;
                parts[3] += c.unpack;
            }
            // The items that failed alone (ascending) get their errors; the others, in order,
            // the outputs.
            let mut failed = failed.into_iter().peekable();
            let mut outputs = result.outputs.into_iter();
            let answers = replies
                .into_iter()
                .enumerate()
                .map(|(i, (reply, queued))| {
                    if let Some((_, e)) = failed.next_if(|(at, _)| *at == i) {
                        return (reply, Err(e));
                    }
                    let answer = match outputs.next() {
                        Some(output) => Ok(SingleResult {
                            output,
                            batch_size: size,
                            queued,
                            batch_time,
                            backend,
                            device,
                        }),
                        None => Err(Error::Backend {
                            backend: backend.unwrap_or(crate::BackendKind::Cpu),
                            message: format!("batch of {size} singles answered too few"),
                            transient: false,
                        }),
                    };
                    (reply, answer)
                })
                .collect();
            (answers, parts)
        }
        Err(e) => (
            replies
                .into_iter()
                .map(|(reply, _)| (reply, Err(e.clone())))
                .collect(),
            [Duration::ZERO; 4],
        ),
    }
}

/// Sends a batch's answers: from tasks on the callers' runtime when there is one and the batch
/// is large enough to be worth it, else from this thread.
fn deliver<O: Send + 'static>(answers: Vec<Answer<O>>, runtime: Option<&tokio::runtime::Handle>) {
    let size = answers.len();
    match runtime {
        Some(handle) if size >= ANSWER_ON_RUNTIME => {
            // Detached tasks of up to `ANSWER_CHUNK` answers each, so that several workers
            // answer a large batch; a task dropped unpolled (the runtime is gone) answers from
            // `Answers`' drop instead. (Spreading a batch evenly over every worker instead made
            // no difference to P3 on the H200: docs/PERFORMANCE.md, tenth session.)
            let mut answers = answers.into_iter();
            loop {
                let chunk: Vec<Answer<O>> = answers.by_ref().take(ANSWER_CHUNK).collect();
                if chunk.is_empty() {
                    break;
                }
                let mut chunk = Answers(chunk.into_iter());
                drop(handle.spawn(async move { chunk.send_all() }));
            }
        }
        _ => Answers(answers.into_iter()).send_all(),
    }
}

/// Batches of at least this many requests are answered from tasks on the callers' runtime.
const ANSWER_ON_RUNTIME: usize = 8;
/// Answers per task.
const ANSWER_CHUNK: usize = 256;

/// A queued request's answer to come, and its tenant's hold on its allowances.
pub(crate) type Submitted<O> = (
    oneshot::Receiver<Result<SingleResult<O>>>,
    Option<TenantGuard>,
);

type Answer<O> = (
    oneshot::Sender<Result<SingleResult<O>>>,
    Result<SingleResult<O>>,
);

/// A batch's answers. Sent from one of the callers' runtime's workers, each answer wakes its
/// caller through that worker's own run queue; sent from a foreign thread (a runner), each would
/// go through the runtime's shared queue and often wake a parked worker, which at a million
/// answers a second is where the time goes. Whatever is still unsent when this is dropped (the
/// runtime shut down before the task ran) is sent from the dropping thread, so no caller is
/// left without an answer.
struct Answers<O>(std::vec::IntoIter<Answer<O>>);

impl<O> Answers<O> {
    fn send_all(&mut self) {
        for (reply, answer) in self.0.by_ref() {
            let _ = reply.send(answer);
        }
    }
}

impl<O> Drop for Answers<O> {
    fn drop(&mut self) {
        self.send_all();
    }
}

struct DispatchConfig {
    max: usize,
    target: usize,
    delay: Duration,
    preferred: Vec<usize>,
    spin: Option<Duration>,
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
    /// [`GpuBridge::shutdown`] or when the bridge is dropped; [`Error::KernelPanicked`] or
    /// [`Error::InvalidInput`] when the kernel fails on this input (the other requests of its
    /// batch are answered: see the [module documentation](crate::batcher)); otherwise the error of
    /// the micro-batch it ran in.
    pub async fn single<K: Kernel>(
        &self,
        input: K::Input,
        hints: ExecutionHints,
    ) -> Result<SingleResult<K::Output>> {
        let queue = self.queue::<K::Input, K::Output>(K::ID)?;
        let timeout = hints.timeout;
        // The tenant's hold (if any) lives until the answer comes or the caller leaves.
        let (rx, _tenant) = queue.submit(input, hints, self.inner_tenants())?;
        queue.answer(rx, timeout).await
    }

    /// The batcher queue of kernel `K` (created on first use).
    pub(crate) fn single_queue<K: Kernel>(&self) -> Result<()> {
        self.queue::<K::Input, K::Output>(K::ID).map(|_| ())
    }

    /// Queues one request of kernel `K`; the receiver gets its answer (for the stream grain,
    /// which awaits answers in send order).
    pub(crate) fn submit_single<K: Kernel>(
        &self,
        input: K::Input,
        hints: ExecutionHints,
    ) -> Result<Submitted<K::Output>> {
        self.queue::<K::Input, K::Output>(K::ID)?
            .submit(input, hints, self.inner_tenants())
    }

    /// Where each kernel's batcher runners have spent their time so far, by kernel id (kernels
    /// that have had single requests only).
    pub fn batcher_stats(&self) -> Vec<(&'static str, BatcherStats)> {
        self.batchers()
            .stoppers
            .lock()
            .iter()
            .map(|s| s.stats())
            .collect()
    }

    /// Stops every kernel's batcher: requests already queued run, new ones are answered
    /// [`Error::Cancelled`]. Blocks until the dispatchers have finished; batches in flight
    /// complete first. Plain batches ([`crate::BatchGrain::execute`]) are unaffected.
    pub fn shutdown(&self) {
        for t in self.batchers().stop_all(true) {
            let _ = t.join();
        }
    }

    /// Stops every kernel's batcher within `deadline`: new requests are answered
    /// [`Error::Cancelled`] at once; queued ones run until the deadline, and whatever is still
    /// queued then is answered [`Error::Cancelled`] (batches already running finish). Blocks
    /// until the runners have finished, and reports what happened to the queued requests.
    pub fn shutdown_within(&self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        let batchers = self.batchers();
        let threads = batchers.stop_all(true);
        let until = started + deadline;
        let mut escalated = false;
        while !threads.iter().all(std::thread::JoinHandle::is_finished) {
            if !escalated && Instant::now() >= until {
                batchers.escalate();
                escalated = true;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        for t in threads {
            let _ = t.join();
        }
        let (ran, cancelled) = batchers.stop_counts();
        ShutdownReport {
            ran,
            cancelled,
            deadline_passed: escalated,
            took: started.elapsed(),
        }
    }

    /// The batcher queue of kernel `id`, created (with its runners) on first use.
    fn queue<I, O>(&self, id: &str) -> Result<&Queue<I, O>>
    where
        I: Send + Sync + 'static,
        O: Send + 'static,
    {
        let batchers = self.batchers();
        let mismatch = || Error::KernelTypeMismatch {
            id: id.to_owned(),
            expected: "the types of the kernel's first single request".to_owned(),
            found: std::any::type_name::<I>().to_owned(),
        };
        let Some(slot) = batchers.slots.get(id) else {
            // Not registered: the catalog says so, with the registered ids.
            self.catalog().resolve::<I, O>(id)?;
            return Err(mismatch());
        };
        if let Some(q) = slot.get() {
            return q.downcast_ref::<Queue<I, O>>().ok_or_else(mismatch);
        }
        let kernel = self.catalog().resolve::<I, O>(id)?;
        let _create = batchers.create.lock();
        if let Some(q) = slot.get() {
            return q.downcast_ref::<Queue<I, O>>().ok_or_else(mismatch);
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
        let target = preferred.last().copied().unwrap_or(max);
        let cfg = Arc::new(DispatchConfig {
            max,
            target,
            delay: Duration::from_micros(b.max_queue_delay_us),
            preferred,
            spin: (b.runner_spin_us > 0).then(|| Duration::from_micros(b.runner_spin_us)),
        });
        let stopped = batchers.shutdown.load(Ordering::SeqCst);
        let queue = Arc::new(Queue {
            capacity: b.queue_capacity,
            target,
            intake: [SegQueue::new(), SegQueue::new(), SegQueue::new()],
            len: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            stopping: AtomicU8::new(if stopped { DRAIN } else { RUNNING }),
            sleeping: AtomicBool::new(false),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            gather: Mutex::new(()),
            staging: Mutex::new(Staging {
                lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            }),
            threads: Mutex::new(Vec::new()),
            queued: metrics::histogram!(names::QUEUE_DURATION_SECONDS, "kernel" => kernel.id()),
            pending_gauge: metrics::gauge!(names::PENDING_REQUESTS),
            runtime: OnceLock::new(),
            ran_after_stop: AtomicUsize::new(0),
            cancelled_on_stop: AtomicUsize::new(0),
            stats: RunnerClock::default(),
            kernel: kernel.clone(),
        });
        // Registered before the runners start, so that a failed start still stops the ones
        // that did.
        batchers.stoppers.lock().push(queue.clone());
        let runners = if stopped {
            0
        } else {
            b.batches_in_flight.max(1)
        };
        for runner in 0..runners {
            let (weak, q, cfg) = (self.downgrade(), queue.clone(), cfg.clone());
            let handle = std::thread::Builder::new()
                .name(format!("gpubridge-batcher-{runner}-{}", kernel.id()))
                .spawn(move || {
                    crate::threads::prefault_stack();
                    q.dispatch(weak, cfg);
                })
                .map_err(|e| Error::Backend {
                    backend: BackendKind::Cpu,
                    message: format!("could not start the batcher thread: {e}"),
                    transient: true,
                })?;
            queue.threads.lock().push(handle);
        }
        let any: Arc<dyn Any + Send + Sync> = queue;
        let q = slot.get_or_init(|| any);
        q.downcast_ref::<Queue<I, O>>().ok_or_else(mismatch)
    }
}

impl<I, O> Queue<I, O>
where
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    /// Validates, admits (for its tenant) and queues one request; the receiver gets its answer,
    /// and the guard holds the tenant's allowances until dropped.
    fn submit(&self, input: I, hints: ExecutionHints, tenants: &Tenants) -> Result<Submitted<O>> {
        let kernel = self.kernel.id();
        self.kernel.validate(0, &input)?;
        let tenant = match hints.tenant.as_deref() {
            Some(t) => match tenants.admit(t, 1, self.kernel.device_bytes(&input) as u64) {
                Ok(guard) => Some(guard),
                Err(e) => {
                    reject(kernel, "quota_exceeded");
                    return Err(e);
                }
            },
            None => None,
        };
        if self.runtime.get().is_none() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let _ = self.runtime.set(handle);
            }
        }
        let cancelled = || {
            reject(kernel, "cancelled");
            Err(Error::Cancelled {
                reason: "the bridge is shutting down".to_owned(),
            })
        };
        // The place is reserved before the stop is checked, and a stopping runner leaves only
        // once no place is reserved: a request is either refused here or answered there.
        let mut n = self.len.fetch_add(1, Ordering::SeqCst) + 1;
        if self.stopping() != RUNNING {
            self.left(1);
            return cancelled();
        }
        if n > self.capacity {
            // Full: make room by dropping requests whose callers left or timed out.
            {
                let mut st = self.staging.lock();
                self.move_intake(&mut st);
                self.prune(&mut st);
            }
            n = self.len.load(Ordering::SeqCst);
            if n > self.capacity {
                self.left(1);
                reject(kernel, "queue_full");
                return Err(Error::QueueFull {
                    kernel: kernel.to_owned(),
                    capacity: self.capacity,
                });
            }
        }
        let enqueued = Instant::now();
        let (tx, rx) = oneshot::channel();
        let l = hints.priority.index();
        self.intake[l].push(Request {
            input,
            deadline: hints.timeout.map(|t| enqueued + t),
            hints,
            enqueued,
            reply: tx,
        });
        // Wake the gathering runner only when it has something to do: the first request after
        // an empty queue, or a full batch. In between it sleeps until the oldest request's delay
        // runs out, undisturbed.
        if (n == 1 || n >= self.target) && self.sleeping.load(Ordering::SeqCst) {
            let _sleep = self.sleep.lock();
            self.wake.notify_one();
        }
        Ok((rx, tenant))
    }

    /// Waits for a submitted request's answer, up to `timeout`.
    async fn answer(
        &self,
        rx: oneshot::Receiver<Result<SingleResult<O>>>,
        timeout: Option<Duration>,
    ) -> Result<SingleResult<O>> {
        let answer = match timeout {
            Some(after) => match tokio::time::timeout(after, rx).await {
                Ok(a) => a,
                Err(_) => {
                    reject(self.kernel.id(), "timeout");
                    return Err(Error::Timeout { after });
                }
            },
            None => rx.await,
        };
        answer.unwrap_or_else(|_| {
            Err(Error::Cancelled {
                reason: "the batcher stopped".to_owned(),
            })
        })
    }
}
