//! `gpubridge load`: an open-loop load generator for the dynamic batcher (TARGETS.md P3).
//!
//! Many tokio tasks (`--tasks`, default 1000) each send single-item requests
//! ([`GpuBridge::single`]: the sum of a `--len`-float vector) on a fixed schedule, whatever the
//! bridge's answers are doing: open loop, so a slow bridge meets a growing backlog rather than a
//! politely waiting client (a task never waits for an answer before its next send). A request's
//! latency runs from its send to its answer. tokio's timers tick in milliseconds, so a task wakes at most
//! once per `--tick-us` and sends what fell due since its last wake in one burst; how late each send was against its schedule
//! (the generator's lag) is reported beside the latencies, and a rate whose P99 lag passes the
//! tick by 2 ms is marked as one the generator could not offer. Every answer is checked against the sum
//! computed on the host.
//!
//! The sweep runs each offered rate in `--rates` for a warm-up and a measured window, and reports
//! per rate the completed requests per second, P50/P95/P99/P99.9 latency, errors by reason and
//! the mean batch size; the knee is the highest offered rate that was served in full (at least
//! 95% of it completed in the window) with P50 <= 1 ms. With a second backend in `--backends`
//! (the CPU, by default beside a GPU) the sweep is repeated there as the baseline of the P3 row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{FuturesUnordered, StreamExt};
use gpubridge::kernels::Sum;
use gpubridge::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Options of `gpubridge load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Backends to sweep, in order; the first is measured, the second is the baseline
    /// (`cuda,cpu`, `wgpu,cpu`, `cpu`). Default: `cuda,cpu` where CUDA is usable, else `cpu`.
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<String>,
    /// Concurrent sending tasks.
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Offered rates in requests per second (`k` and `M` suffixes), comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "50k,100k,250k,500k,1M,1.5M,2M,3M,4M"
    )]
    pub rates: Vec<String>,
    /// Measured window per rate, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Warm-up per rate before the window, in seconds.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// What wakes the sending tasks when their sends fall due: `thread` (a pacing thread that
    /// keeps time to a few microseconds, waking the tasks due in each `--tick-us` slot) or
    /// `timer` (each task's own tokio timer, which fires on millisecond boundaries).
    #[arg(long, value_enum, default_value_t = Pacing::Thread)]
    pub pacer: Pacing,
    /// Shortest time between two wakes of one task, in microseconds: a task sends what fell
    /// due since its last wake in one burst. Default: 100 with the pacing thread, 2000 with
    /// tokio's timers (which tick in milliseconds anyway).
    #[arg(long)]
    pub tick_us: Option<u64>,
    /// Floats per request.
    #[arg(long, default_value_t = 100)]
    pub len: usize,
    /// Stop a backend's sweep after this many rates in a row past the knee.
    #[arg(long, default_value_t = 2)]
    pub stop_after: usize,
    /// Install the Prometheus recorder first, so that the run pays for every metric the bridge
    /// records (the telemetry-cost comparison runs once with and once without).
    #[arg(long)]
    pub telemetry: bool,
    /// Before each sweep, time whole batches of 100 to 16384 items through `execute` (no
    /// batcher), split into the device executor's time and the rest: where a batch's time goes.
    #[arg(long)]
    pub calibrate: bool,
    /// Tokio worker threads (default: one per logical core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Scheduler ticks between a tokio worker's checks of its timers and I/O (tokio's
    /// `event_interval`; tokio's default is 61). Fewer keep the senders' wakes on schedule when
    /// the workers are busy answering.
    #[arg(long)]
    pub event_interval: Option<u32>,
    /// Write the report (rows in TARGETS.md's format and every sweep point) as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// What wakes the sending tasks (`--pacer`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// A thread of its own keeps the schedule and wakes each slot's tasks.
    Thread,
    /// Each task sleeps on its own tokio timer.
    Timer,
}

impl LoadArgs {
    /// The wake slot in microseconds (`--tick-us`, or the pacer's default).
    fn tick_us(&self) -> u64 {
        self.tick_us.unwrap_or(match self.pacer {
            Pacing::Thread => 100,
            Pacing::Timer => 2000,
        })
    }
}

/// One offered rate's outcome.
#[derive(Debug, Clone, Default)]
struct Point {
    offered: f64,
    achieved: f64,
    p50_us: f64,
    p95_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    lag_p99_us: f64,
    queued_p50_us: f64,
    batch_p50_us: f64,
    /// Median of what is left of a request's latency after its wait in the queue and its
    /// batch's time: the batch's answers on their way back to the callers.
    answer_p50_us: f64,
    /// Process CPU time (user + system, every thread) per completed request in the window, in
    /// microseconds: the cost of a request to the machine, generator included.
    cpu_us_per_request: f64,
    tick_us: f64,
    /// Where the batcher's runners spent their time in the window, per batch.
    runners: String,
    completed: u64,
    errors: BTreeMap<&'static str, u64>,
    wrong: u64,
    hung: u64,
    mean_batch: f64,
}

impl Point {
    /// Served in full with P50 <= 1 ms: the P3 criterion.
    fn served(&self) -> bool {
        self.achieved >= 0.95 * self.offered
            && self.p50_us <= 1000.0
            && self.wrong == 0
            && self.generator_kept_up()
    }

    /// The generator sent on schedule (P99 lag within its tick and 2 ms more): the offered rate
    /// was really offered.
    fn generator_kept_up(&self) -> bool {
        self.lag_p99_us <= self.tick_us + 2000.0
    }

    fn to_json(&self) -> Value {
        json!({
            "offered_per_s": self.offered, "achieved_per_s": self.achieved,
            "p50_us": self.p50_us, "p95_us": self.p95_us, "p99_us": self.p99_us,
            "p999_us": self.p999_us, "max_us": self.max_us, "send_lag_p99_us": self.lag_p99_us, "queued_p50_us": self.queued_p50_us, "batch_time_p50_us": self.batch_p50_us, "answer_p50_us": self.answer_p50_us, "runners": self.runners, "cpu_us_per_request": self.cpu_us_per_request,
            "generator_kept_up": self.generator_kept_up(), "completed": self.completed,
            "errors": self.errors, "wrong_answers": self.wrong, "hung": self.hung,
            "mean_batch": self.mean_batch, "served": self.served(),
        })
    }
}

fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('m' | 'M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .with_context(|| format!("bad rate {s:?} (examples: 250000, 250k, 1.5M)"))?;
    anyhow::ensure!(v.is_finite() && v > 0.0, "a rate must be positive: {s:?}");
    Ok(v * mult)
}

pub(crate) fn backend_of(name: &str) -> anyhow::Result<BackendKind> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "cuda" => BackendKind::Cuda,
        "wgpu" => BackendKind::Wgpu,
        "cpu" => BackendKind::Cpu,
        other => anyhow::bail!("unknown backend {other:?} (cuda, wgpu or cpu)"),
    })
}

/// The runners' time per batch between two snapshots, in words.
fn runner_split(a: &gpubridge::BatcherStats, b: &gpubridge::BatcherStats) -> String {
    let n = b.batches.saturating_sub(a.batches);
    if n == 0 {
        return String::new();
    }
    let per = |x: Duration, y: Duration| x.saturating_sub(y).as_secs_f64() * 1e6 / n as f64;
    format!(
        "{n} batches, {:.0} requests each; per batch: waiting to gather {:.0} us, gathering {:.0} us, running {:.0} us (waiting for a device {:.0}, executor {:.0}, hand-offs {:.0}, unpack {:.0}), delivering {:.0} us",
        b.requests.saturating_sub(a.requests) as f64 / n as f64,
        per(b.waiting_to_gather, a.waiting_to_gather),
        per(b.gathering, a.gathering),
        per(b.running, a.running),
        per(b.device_queue, a.device_queue),
        per(b.executor, a.executor),
        per(b.handoff, a.handoff),
        per(b.unpack, a.unpack),
        per(b.delivering, a.delivering),
    )
}

/// A multi-threaded tokio runtime with `workers` threads (default: one per logical core), and
/// that count.
pub(crate) fn runtime(
    workers: Option<usize>,
    event_interval: Option<u32>,
) -> anyhow::Result<(tokio::runtime::Runtime, usize)> {
    let workers = workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(std::num::NonZeroUsize::get)
            .unwrap_or(1)
    });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(workers)
        .enable_time()
        .on_thread_start(gpubridge::prefault_stack);
    if let Some(n) = event_interval {
        anyhow::ensure!(n >= 1, "--event-interval must be at least 1");
        builder.event_interval(n);
    }
    Ok((builder.build()?, workers))
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat` (Linux).
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks per second: 100 on every Linux configuration in practice (USER_HZ).
    Some((utime + stime) / 100.0)
}

/// A duration in tenths of a microsecond (saturating).
pub(crate) fn tenths(d: Duration) -> u32 {
    u32::try_from(d.as_nanos() / 100).unwrap_or(u32::MAX)
}

pub(crate) fn percentile_us(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 10.0
}

/// What one task saw: latencies (in tenths of a microsecond) of requests scheduled in the window.
#[derive(Default)]
struct TaskLog {
    latencies: Vec<u32>,
    lags: Vec<u32>,
    /// Time each answered request waited in the batcher's queue before its batch started.
    queued: Vec<u32>,
    /// How long the batch of each answered request took.
    batch: Vec<u32>,
    /// Latency less queue wait and batch time: the answer's way back.
    answer: Vec<u32>,
    completed_in_window: u64,
    errors: BTreeMap<&'static str, u64>,
    wrong: u64,
    batch_sum: u64,
    batch_n: u64,
    unfinished: u64,
}

/// The inputs every task draws from, with their sums.
pub(crate) struct Pool {
    pub(crate) inputs: Vec<Vec<f32>>,
    pub(crate) sums: Vec<f32>,
}

impl Pool {
    pub(crate) fn new(len: usize) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let inputs: Vec<Vec<f32>> = (0..4096)
            .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        let sums = inputs
            .iter()
            .map(|v| v.iter().map(|&x| f64::from(x)).sum::<f64>() as f32)
            .collect();
        Self { inputs, sums }
    }
}

/// One answered request.
pub(crate) struct Done {
    pub(crate) scheduled: Instant,
    pub(crate) sent: Instant,
    pub(crate) done: Instant,
    /// Which pool input it sent.
    pub(crate) i: usize,
    pub(crate) r: gpubridge::Result<gpubridge::SingleResult<f32>>,
}

pub(crate) async fn send_one(
    bridge: &GpuBridge,
    input: Vec<f32>,
    hints: ExecutionHints,
    scheduled: Instant,
    i: usize,
) -> Done {
    let sent = Instant::now();
    let r = bridge.single::<Sum>(input, hints).await;
    Done {
        scheduled,
        sent,
        done: Instant::now(),
        i,
        r,
    }
}

/// The pacing thread (`--pacer thread`): it keeps the senders' schedule with a thread's sleep (a
/// few microseconds late at most, with the thread's timer slack at 1 us) instead of tokio's
/// millisecond timers. The tasks are split into groups by their phase in the send period, and
/// the thread wakes one group per slot of at most `tick`, so that each task is woken just after
/// its next send falls due (never more than a slot late). A group is woken through a leader task
/// on the runtime, which wakes its members from a worker thread (a million wakes a second from a
/// foreign thread would each go through the runtime's shared queue).
struct Pacer {
    groups: usize,
    receivers: Vec<tokio::sync::watch::Receiver<u64>>,
}

impl Pacer {
    /// Starts the leaders (on the current runtime) and the thread; both end on their own after
    /// the last slot past `end`.
    fn start(
        start: Instant,
        end: Instant,
        period: Duration,
        tick: Duration,
    ) -> std::io::Result<Self> {
        // Slots of at most `tick`, a whole number of them per period (one when the period is
        // shorter than the tick: every task is woken every tick then).
        let groups = (period.as_secs_f64() / tick.as_secs_f64()).ceil().max(1.0) as usize;
        let slot = if groups == 1 {
            tick.max(period)
        } else {
            period.div_f64(groups as f64)
        };
        let mut receivers = Vec::with_capacity(groups);
        let mut leaders = Vec::with_capacity(groups);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for _ in 0..groups {
            let (tx, rx) = tokio::sync::watch::channel(0u64);
            receivers.push(rx);
            let notify = Arc::new(tokio::sync::Notify::new());
            leaders.push(notify.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    notify.notified().await;
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        // Dropping the sender tells the members the pacing is over.
                        break;
                    }
                    n += 1;
                    tx.send_replace(n);
                }
            });
        }
        std::thread::Builder::new()
            .name("load-pacer".to_owned())
            .spawn(move || {
                #[cfg(target_os = "linux")]
                // SAFETY: PR_SET_TIMERSLACK only sets this thread's timer slack (in ns).
                unsafe {
                    libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong);
                }
                let last = end + slot * 2;
                let mut j = 0u64;
                loop {
                    let at = start + slot.mul_f64(j as f64);
                    if at > last {
                        break;
                    }
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    leaders[(j % groups as u64) as usize].notify_one();
                    j += 1;
                }
                stop.store(true, std::sync::atomic::Ordering::Release);
                for l in &leaders {
                    l.notify_one();
                }
            })?;
        Ok(Self { groups, receivers })
    }

    /// The wake of a task whose sends fall at `phase` (0..1) of the period: the group whose
    /// slot comes first at or after it.
    fn receiver(&self, phase: f64) -> tokio::sync::watch::Receiver<u64> {
        let g = (phase * self.groups as f64).ceil() as usize % self.groups;
        self.receivers[g].clone()
    }
}

/// Runs one rate on one backend.
async fn one_rate(
    bridge: &GpuBridge,
    pool: &Arc<Pool>,
    backend: BackendKind,
    rate: f64,
    args: &LoadArgs,
) -> Point {
    let tasks = args.tasks.max(1);
    let period = Duration::from_secs_f64(tasks as f64 / rate);
    let start = Instant::now() + Duration::from_millis(20);
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let end = window_start + Duration::from_secs_f64(args.seconds);
    // Answers still missing this long after the last send are hung.
    let grace = Duration::from_secs(30);
    let hints = ExecutionHints::default().on_backend(backend);
    let tick = Duration::from_micros(args.tick_us().max(1));
    let paced = args.pacer == Pacing::Thread;
    let pacer = if paced {
        match Pacer::start(start, end, period, tick) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("could not start the pacing thread ({e}): tokio's timers pace this rate");
                None
            }
        }
    } else {
        None
    };
    let mut handles = Vec::with_capacity(tasks);
    for t in 0..tasks {
        let bridge = bridge.clone();
        let pool = pool.clone();
        let hints = hints.clone();
        // Tasks are staggered across one period so that the offered load is smooth.
        let phase = t as f64 / tasks as f64;
        let first = start + period.mul_f64(phase);
        let mut wake = pacer.as_ref().map(|p| p.receiver(phase));
        handles.push(tokio::spawn(async move {
            let mut log = TaskLog::default();
            let mut inflight = FuturesUnordered::new();
            let mut next = first;
            let mut k = t * 7;
            let deadline = tokio::time::Instant::from_std(end + grace);
            // Sends everything that fell due by now (before the end).
            macro_rules! send_due {
                () => {{
                    let now = Instant::now();
                    while next <= now && next < end {
                        let i = k % pool.inputs.len();
                        k += 1;
                        let input = pool.inputs[i].clone();
                        inflight.push(send_one(&bridge, input, hints.clone(), next, i));
                        next += period;
                    }
                    now
                }};
            }
            // With tokio's timers, one timer per task, reset rather than re-created: a task
            // sends what fell due at each wake, and wakes at most once per `tick`. With the
            // pacing thread, the timer only bounds the wait for the last answers.
            let sleep = tokio::time::sleep_until(if wake.is_some() {
                deadline
            } else {
                tokio::time::Instant::from_std(first)
            });
            tokio::pin!(sleep);
            let mut sending = true;
            loop {
                tokio::select! {
                    biased;
                    Some(Done { scheduled, sent, done, i, r }) = inflight.next(), if !inflight.is_empty() => {
                        if done >= window_start && done <= end {
                            log.completed_in_window += 1;
                        }
                        match r {
                            Ok(single) => {
                                let want = pool.sums[i];
                                if (single.output - want).abs() > 1e-4 * (1.0 + want.abs()) {
                                    log.wrong += 1;
                                }
                                log.batch_sum += single.batch_size as u64;
                                log.batch_n += 1;
                                if scheduled >= window_start && scheduled < end {
                                    log.queued.push(tenths(single.queued));
                                    log.batch.push(tenths(single.batch_time));
                                    let back = (done - sent)
                                        .saturating_sub(single.queued)
                                        .saturating_sub(single.batch_time);
                                    log.answer.push(tenths(back));
                                }
                            }
                            Err(e) => *log.errors.entry(e.reason_label()).or_default() += 1,
                        }
                        if scheduled >= window_start && scheduled < end {
                            log.latencies.push(tenths(done - sent));
                            log.lags.push(tenths(sent.saturating_duration_since(scheduled)));
                        }
                    }
                    changed = async {
                        match wake.as_mut() {
                            Some(w) => w.changed().await,
                            None => std::future::pending().await,
                        }
                    }, if sending && wake.is_some() => {
                        // The pacer woke this task's slot, or has stopped (after the end):
                        // either way, what fell due is sent now.
                        send_due!();
                        if next >= end || changed.is_err() {
                            sending = false;
                        }
                    }
                    () = &mut sleep => {
                        if !sending || wake.is_some() {
                            // The grace period after the last send ran out.
                            log.unfinished = inflight.len() as u64;
                            break;
                        }
                        let now = send_due!();
                        if next >= end {
                            sending = false;
                            sleep.as_mut().reset(deadline);
                        } else {
                            sleep.as_mut().reset(tokio::time::Instant::from_std(next.max(now + tick)));
                        }
                    }
                }
                if !sending && inflight.is_empty() {
                    break;
                }
            }
            log
        }));
    }
    // CPU time over the measured window, read by a task that wakes at its edges.
    let stats_of = |b: &GpuBridge| {
        b.batcher_stats()
            .into_iter()
            .find(|(k, _)| *k == <Sum as gpubridge::Kernel>::ID)
            .map(|(_, s)| s)
            .unwrap_or_default()
    };
    let window_bridge = bridge.clone();
    let cpu_window = tokio::spawn(async move {
        tokio::time::sleep_until(tokio::time::Instant::from_std(window_start)).await;
        let a = process_cpu_seconds();
        let ra = stats_of(&window_bridge);
        tokio::time::sleep_until(tokio::time::Instant::from_std(end)).await;
        let b = process_cpu_seconds();
        let rb = stats_of(&window_bridge);
        (b.zip(a).map(|(b, a)| b - a), runner_split(&ra, &rb))
    });
    let mut all = TaskLog::default();
    let mut latencies = Vec::new();
    let mut lags = Vec::new();
    let mut queued = Vec::new();
    let mut batch = Vec::new();
    let mut answer = Vec::new();
    for h in handles {
        let Ok(log) = h.await else {
            all.unfinished += 1;
            continue;
        };
        latencies.extend_from_slice(&log.latencies);
        lags.extend_from_slice(&log.lags);
        queued.extend_from_slice(&log.queued);
        batch.extend_from_slice(&log.batch);
        answer.extend_from_slice(&log.answer);
        all.completed_in_window += log.completed_in_window;
        all.wrong += log.wrong;
        all.batch_sum += log.batch_sum;
        all.batch_n += log.batch_n;
        all.unfinished += log.unfinished;
        for (k, v) in log.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let (cpu, runners) = cpu_window.await.unwrap_or((None, String::new()));
    latencies.sort_unstable();
    lags.sort_unstable();
    queued.sort_unstable();
    batch.sort_unstable();
    answer.sort_unstable();
    Point {
        offered: rate,
        achieved: all.completed_in_window as f64 / args.seconds,
        p50_us: percentile_us(&latencies, 0.50),
        p95_us: percentile_us(&latencies, 0.95),
        p99_us: percentile_us(&latencies, 0.99),
        p999_us: percentile_us(&latencies, 0.999),
        max_us: latencies.last().map_or(f64::NAN, |&m| f64::from(m) / 10.0),
        lag_p99_us: percentile_us(&lags, 0.99),
        queued_p50_us: percentile_us(&queued, 0.50),
        batch_p50_us: percentile_us(&batch, 0.50),
        answer_p50_us: percentile_us(&answer, 0.50),
        cpu_us_per_request: cpu.map_or(f64::NAN, |c| {
            c * 1e6 / (all.completed_in_window.max(1) as f64)
        }),
        tick_us: args.tick_us() as f64,
        runners,
        completed: all.completed_in_window,
        errors: all.errors,
        wrong: all.wrong,
        hung: all.unfinished,
        mean_batch: if all.batch_n == 0 {
            0.0
        } else {
            all.batch_sum as f64 / all.batch_n as f64
        },
    }
}

/// Times batches of several sizes through [`gpubridge::BatchGrain::execute`] (median of 20).
fn calibrate(
    rt: &tokio::runtime::Runtime,
    bridge: &GpuBridge,
    pool: &Pool,
    backend: BackendKind,
) -> anyhow::Result<()> {
    let grain = bridge.batch::<Sum>()?;
    println!("calibration on {backend}: median of 20 batches through execute (no batcher)");
    println!(
        "{:>7} {:>10} {:>12} {:>10} {:>10}",
        "items", "total us", "executor us", "compute", "ns/item"
    );
    for n in [100usize, 1000, 4096, 16384] {
        let mut totals = Vec::new();
        let mut execs = Vec::new();
        let mut computes = Vec::new();
        for _ in 0..20 {
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|i| pool.inputs[i % pool.inputs.len()].clone())
                .collect();
            let hints = ExecutionHints::default().on_backend(backend);
            let r = rt.block_on(grain.execute(inputs, hints))?;
            totals.push(r.total.as_secs_f64() * 1e6);
            execs.push(
                r.chunks
                    .iter()
                    .map(|c| c.executor.as_secs_f64())
                    .sum::<f64>()
                    * 1e6,
            );
            computes.push(
                r.chunks
                    .iter()
                    .map(|c| c.compute.as_secs_f64())
                    .sum::<f64>()
                    * 1e6,
            );
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let t = med(&mut totals);
        println!(
            "{n:>7} {t:>10.1} {:>12.1} {:>10.1} {:>10.0}",
            med(&mut execs),
            med(&mut computes),
            t * 1e3 / n as f64
        );
    }
    Ok(())
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.0}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn print_point(backend: &str, p: &Point) {
    let errors: u64 = p.errors.values().sum();
    println!(
        "{backend:<5} {:>8} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8.0} {:>7} {:>5} {:>5} {:>8.0} {:>7.2} {}",
        fmt_rate(p.offered),
        fmt_rate(p.achieved),
        p.queued_p50_us,
        p.batch_p50_us,
        p.answer_p50_us,
        p.p50_us,
        p.p95_us,
        p.p99_us,
        p.p999_us,
        p.mean_batch,
        errors,
        p.wrong,
        p.hung,
        p.lag_p99_us,
        p.cpu_us_per_request,
        if p.served() { "yes" } else { "no" }
    );
}

/// Runs the sweep.
///
/// # Errors
/// Bad arguments, no usable backend of those named, wrong answers or hung requests, or a report
/// that cannot be written.
pub fn run(args: LoadArgs, mut config: BridgeConfig) -> anyhow::Result<()> {
    let mut rates = args
        .rates
        .iter()
        .map(|r| parse_rate(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    rates.sort_by(f64::total_cmp);
    anyhow::ensure!(!rates.is_empty(), "no rates to sweep");
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(args.len >= 1, "--len must be at least 1");
    if args.telemetry {
        #[cfg(feature = "prometheus")]
        gpubridge::telemetry::exporter::install()?;
        #[cfg(not(feature = "prometheus"))]
        anyhow::bail!("--telemetry needs the `prometheus` feature");
    }
    let (rt, workers) = runtime(args.workers, args.event_interval)?;
    // wgpu asked for by name is opened beside CUDA too (`wgpu.alongside_cuda`).
    if args
        .backends
        .iter()
        .any(|b| backend_of(b).is_ok_and(|k| k == BackendKind::Wgpu))
    {
        config.wgpu.alongside_cuda = true;
    }
    let bridge = gpubridge::bridge(config)?;
    let available = bridge.backends();
    let backends: Vec<BackendKind> = if args.backends.is_empty() {
        if available.contains(&BackendKind::Cuda) {
            vec![BackendKind::Cuda, BackendKind::Cpu]
        } else {
            vec![BackendKind::Cpu]
        }
    } else {
        args.backends
            .iter()
            .map(|b| backend_of(b))
            .collect::<anyhow::Result<_>>()?
    };
    for b in &backends {
        anyhow::ensure!(
            available.contains(b),
            "backend {b} is not usable here: {}",
            bridge
                .reports()
                .iter()
                .find(|r| r.kind == *b)
                .and_then(|r| r.unavailable_reason())
                .unwrap_or_else(|| "not compiled in".to_owned())
        );
    }
    let device_name = |b: BackendKind| {
        bridge
            .devices()
            .into_iter()
            .find(|d| d.id.backend == b)
            .map(|d| d.name)
            .unwrap_or_default()
    };
    let pool = Arc::new(Pool::new(args.len));
    println!(
        "open-loop load: {} tasks, sum of {} floats per request, {} s measured per rate after {} s warm-up, telemetry {}, {} tokio workers",
        args.tasks, args.len, args.seconds, args.warmup, if args.telemetry { "on" } else { "off" }, workers
    );
    println!(
        "{:<5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>5} {:>5} {:>8} {:>7} served",
        "back", "offered", "achieved", "queue50", "batch50", "answer50", "P50 us", "P95 us", "P99 us", "P99.9 us", "batch", "errors", "wrong", "hung", "lag99 us", "cpu us"
    );
    let mut sweeps: Vec<(BackendKind, Vec<Point>)> = Vec::new();
    for &backend in &backends {
        // Untimed: kernels compiled, pools and graphs warm, batcher threads started.
        rt.block_on(async {
            let hints = ExecutionHints::default().on_backend(backend);
            let warm: Vec<_> = (0..4096)
                .map(|i| {
                    bridge.single::<Sum>(pool.inputs[i % pool.inputs.len()].clone(), hints.clone())
                })
                .collect();
            futures::future::join_all(warm).await
        })
        .into_iter()
        .collect::<gpubridge::Result<Vec<_>>>()
        .with_context(|| format!("warming up the {backend} backend"))?;
        if args.calibrate {
            calibrate(&rt, &bridge, &pool, backend)?;
        }
        let mut points = Vec::new();
        let mut past_knee = 0;
        for &rate in &rates {
            let p = rt.block_on(one_rate(&bridge, &pool, backend, rate, &args));
            print_point(&backend.to_string(), &p);
            if !p.runners.is_empty() {
                println!("      runners: {}", p.runners);
            }
            past_knee = if p.served() { 0 } else { past_knee + 1 };
            points.push(p);
            if past_knee >= args.stop_after.max(1) {
                break;
            }
        }
        sweeps.push((backend, points));
    }
    // Let the batchers drain before the bridge goes.
    bridge.shutdown();

    let knee = |points: &[Point]| {
        points
            .iter()
            .filter(|p| p.served())
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
            .cloned()
    };
    let mut rows = Vec::new();
    let command = format!(
        "gpubridge load --backends {} --tasks {} --rates {} --seconds {}{}",
        backends
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.tasks,
        args.rates.join(","),
        args.seconds,
        if args.telemetry { " --telemetry" } else { "" }
    );
    if let Some((first, points)) = sweeps.first() {
        let k = knee(points);
        let base = sweeps.get(1).and_then(|(_, p)| knee(p));
        let value = k.as_ref().map(|p| p.achieved);
        let base_value = base.as_ref().map(|p| p.achieved);
        let on_gpu = *first != BackendKind::Cpu;
        rows.push(json!({
            "id": "P3",
            "metric": format!("completed single-item requests per second (sum of {} floats) from {} tasks, P50 <= 1 ms", args.len, args.tasks),
            "value": value,
            "unit": "req/s",
            "baseline": sweeps.get(1).map(|(b, _)| format!("the same sweep on the {b} backend")),
            "baseline_value": base_value,
            "ratio": value.zip(base_value).map(|(v, b)| v / b),
            "target": ">= 1M req/s with P50 <= 1 ms (stretch 5M/s)",
            "pass": if on_gpu { json!(value.is_some_and(|v| v >= 1e6)) } else { Value::Null },
            "card": device_name(*first),
            "date": crate::bench::today(),
            "command": command,
            "note": k.map(|p| format!("knee at offered {}: P50 {:.0} us, P99 {:.0} us, P99.9 {:.0} us, mean batch {:.0}; telemetry {}", fmt_rate(p.offered), p.p50_us, p.p99_us, p.p999_us, p.mean_batch, if args.telemetry { "on" } else { "off" })).unwrap_or_else(|| "no rate was served with P50 <= 1 ms".to_owned()),
        }));
    }
    let wrong: u64 = sweeps.iter().flat_map(|(_, p)| p).map(|p| p.wrong).sum();
    let hung: u64 = sweeps.iter().flat_map(|(_, p)| p).map(|p| p.hung).sum();
    for (b, points) in &sweeps {
        match knee(points) {
            Some(p) => println!(
                "knee on {b} ({}): {} req/s completed at offered {}, P50 {:.0} us, P99 {:.0} us",
                device_name(*b),
                fmt_rate(p.achieved),
                fmt_rate(p.offered),
                p.p50_us,
                p.p99_us
            ),
            None => println!("knee on {b}: no rate was served with P50 <= 1 ms"),
        }
    }
    let report = json!({
        "rows": rows,
        "tasks": args.tasks,
        "len": args.len,
        "seconds": args.seconds,
        "telemetry": args.telemetry,
        "workers": workers,
        "sweeps": sweeps.iter().map(|(b, points)| json!({
            "backend": b.to_string(),
            "device": device_name(*b),
            "points": points.iter().map(Point::to_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    anyhow::ensure!(wrong == 0, "{wrong} answers differed from the host's sums");
    anyhow::ensure!(hung == 0, "{hung} requests were never answered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes() {
        assert_eq!(parse_rate("250k").ok(), Some(250_000.0));
        assert_eq!(parse_rate("1.5M").ok(), Some(1_500_000.0));
        assert_eq!(parse_rate("900").ok(), Some(900.0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1k").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn percentiles_of_sorted_tenths() {
        let v: Vec<u32> = (1..=1000).collect();
        assert!((percentile_us(&v, 0.5) - 50.0).abs() < 0.2);
        assert!((percentile_us(&v, 0.99) - 99.0).abs() < 0.2);
        assert!(percentile_us(&[], 0.5).is_nan());
    }
}
