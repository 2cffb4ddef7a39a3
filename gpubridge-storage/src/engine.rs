//! The thread-pool runner both paths share: a transfer's tasks go on one queue, and each of up
//! to `storage.threads` workers takes the next task in file order until the queue is empty or
//! one task has failed.

use std::sync::atomic::{AtomicBool, Ordering};

use gpubridge_core::{Error, Result};
use parking_lot::{Condvar, Mutex};

use crate::plan::Task;

/// One kind of transfer, as the workers see it.
pub(crate) trait Job: Sync {
    /// The part of the buffer one task owns (a disjoint `&mut [u8]` for host memory; nothing
    /// where the task's offsets say it all).
    type Piece: Send;
    /// A worker's own state: its bounce buffers, its stream.
    type Worker;

    /// Sets up a worker (on the worker's thread).
    ///
    /// # Errors
    /// When its resources cannot be had.
    fn worker(&self) -> Result<Self::Worker>;

    /// Moves one task's bytes.
    ///
    /// # Errors
    /// I/O and driver errors.
    fn run(&self, worker: &mut Self::Worker, task: &Task, piece: Self::Piece) -> Result<()>;

    /// Waits for the worker's outstanding copies and releases it. Called after the last task,
    /// and after a failed one.
    ///
    /// # Errors
    /// Driver errors.
    fn finish(&self, worker: Self::Worker) -> Result<()>;
}

/// How many workers may move tasks at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Up to this many throughout.
    Fixed(usize),
    /// Measure first: the first `one_tasks` tasks one at a time, the next `many_tasks` up to
    /// `many` at once, then the rest at `many` if it moved its bytes more than
    /// [`MANY_READERS_MARGIN`] times faster than one, else one at a time.
    Probe {
        one_tasks: usize,
        many: usize,
        many_tasks: usize,
    },
}

/// A probe keeps many readers only where they moved bytes faster than one by more than this
/// factor. Its two samples are short (tens of MiB each) and a disk's rate drifts between them:
/// on the H200 machine's virtio disk, where one reader is 8 to 23% faster in longer
/// measurements, a probe once measured 16 readers 5% ahead of one and kept them for the next
/// minute's loads (run AB: the load at 0.86 of the best raw reader, 1 reader at 1.25 in the
/// same run). One reader also holds one lane's pinned memory, not sixteen.
pub(crate) const MANY_READERS_MARGIN: f64 = 1.15;

/// Whether a probe that measured `one` reader and `many` readers (bytes per second) keeps the
/// many: only if they beat one by more than [`MANY_READERS_MARGIN`].
fn keeps_many(one: f64, many: f64) -> bool {
    many > one * MANY_READERS_MARGIN
}

/// What a [`Depth::Probe`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Probed {
    /// Bytes per second with one worker.
    pub one: f64,
    /// Bytes per second with `many` workers.
    pub many: f64,
    /// The depth the rest of the transfer ran at.
    pub chosen: usize,
}

/// Where a probing transfer is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Measuring `depth`: its `count` tasks end below `until`; `done` of them finished, `bytes`
    /// moved since `since` (when its first task started).
    Measure {
        depth: usize,
        until: usize,
        count: usize,
        done: usize,
        bytes: u64,
        since: Option<std::time::Instant>,
    },
    Settled,
}

/// The runner's shared state: the tasks not yet handed out and the depth gate.
struct Gate<I> {
    tasks: I,
    /// Index of the next task to hand out.
    next: usize,
    running: usize,
    allowed: usize,
    phase: Phase,
    /// A probe's second depth and its tasks.
    many: (usize, usize),
    /// The first phase's bytes per second, once measured.
    one: Option<f64>,
    probed: Option<Probed>,
}

impl<I> Gate<I> {
    /// Whether the next task may start now.
    fn open(&self) -> bool {
        let in_phase = match self.phase {
            Phase::Measure { until, .. } => self.next < until,
            Phase::Settled => true,
        };
        self.running < self.allowed && in_phase
    }

    /// Task `index` of `len` bytes started (`started`) or finished at `now`: times the phase
    /// being measured, and moves to the next one when its last task is done (`true` then: the
    /// gate's depth changed).
    fn note(&mut self, index: usize, len: u64, started: bool, now: std::time::Instant) -> bool {
        let Phase::Measure {
            depth,
            until,
            count,
            done,
            bytes,
            since,
        } = &mut self.phase
        else {
            return false;
        };
        if index >= *until || index + *count < *until {
            return false;
        }
        if started {
            since.get_or_insert(now);
            return false;
        }
        *done += 1;
        *bytes += len;
        if *done < *count {
            return false;
        }
        let t0 = since.unwrap_or(now);
        let rate = *bytes as f64 / now.duration_since(t0).as_secs_f64().max(1e-9);
        match self.one {
            None => {
                // One worker measured: now as many as the probe allows.
                self.one = Some(rate);
                let (many, many_tasks) = self.many;
                self.allowed = many;
                self.phase = Phase::Measure {
                    depth: many,
                    until: *until + many_tasks,
                    count: many_tasks,
                    done: 0,
                    bytes: 0,
                    since: None,
                };
            }
            Some(one) => {
                let chosen = if keeps_many(one, rate) { *depth } else { 1 };
                self.probed = Some(Probed {
                    one,
                    many: rate,
                    chosen,
                });
                self.allowed = chosen;
                self.phase = Phase::Settled;
            }
        }
        true
    }
}

/// Runs `tasks` on workers of `pool`, at most `depth` moving tasks at once (measured first with
/// [`Depth::Probe`]); returns the first error, once every worker has stopped (so no buffer is in
/// use when this returns), or what the probe measured.
pub(crate) fn run<J: Job>(
    pool: &rayon::ThreadPool,
    depth: Depth,
    job: &J,
    tasks: Vec<(Task, J::Piece)>,
) -> Result<Option<Probed>> {
    if tasks.is_empty() {
        return Ok(None);
    }
    let total = tasks.len();
    let (workers, allowed, phase, many) = match depth {
        Depth::Probe {
            one_tasks,
            many,
            many_tasks,
        } if many > 1 && one_tasks > 0 && many_tasks > 0 && one_tasks + many_tasks < total => (
            many,
            1,
            Phase::Measure {
                depth: 1,
                until: one_tasks,
                count: one_tasks,
                done: 0,
                bytes: 0,
                since: None,
            },
            (many, many_tasks),
        ),
        Depth::Probe { many, .. } | Depth::Fixed(many) => {
            let n = many.clamp(1, total);
            (n, n, Phase::Settled, (n, 0))
        }
    };
    let gate = Gate {
        tasks: tasks.into_iter(),
        next: 0,
        running: 0,
        allowed,
        phase,
        many,
        one: None,
        probed: None,
    };
    let workers = workers.clamp(1, total);
    let gate = Mutex::new(gate);
    let turn = Condvar::new();
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let work = || -> Result<()> {
        let mut worker = job.worker()?;
        let mut outcome = Ok(());
        loop {
            let next = {
                let mut g = gate.lock();
                loop {
                    if stop.load(Ordering::Relaxed) || g.next >= total {
                        break None;
                    }
                    if g.open() {
                        let index = g.next;
                        g.next += 1;
                        g.running += 1;
                        let item = g.tasks.next();
                        if let Some((task, _)) = &item {
                            let len = task.len as u64;
                            g.note(index, len, true, std::time::Instant::now());
                        }
                        break item.map(|i| (index, i));
                    }
                    turn.wait(&mut g);
                }
            };
            let Some((index, (task, piece))) = next else {
                break;
            };
            let ran = job.run(&mut worker, &task, piece);
            let everyone = {
                let mut g = gate.lock();
                g.running -= 1;
                let changed = g.note(index, task.len as u64, false, std::time::Instant::now());
                // One place freed: one waiter may take it; all of them when the depth changed or
                // no task is left (they leave then).
                changed || g.next >= total
            };
            if everyone {
                turn.notify_all();
            } else {
                turn.notify_one();
            }
            if let Err(e) = ran {
                outcome = Err(e);
                break;
            }
        }
        let finished = job.finish(worker);
        outcome.and(finished)
    };
    pool.scope(|s| {
        for _ in 0..workers {
            s.spawn(|_| {
                if let Err(e) = work() {
                    stop.store(true, Ordering::Relaxed);
                    failed.lock().get_or_insert(e);
                    // Wake the workers waiting at the gate, so that they see the stop.
                    drop(gate.lock());
                    turn.notify_all();
                }
            });
        }
    });
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    Ok(gate.into_inner().probed)
}

/// A heap buffer whose usable part starts on a 4 KiB boundary, for `O_DIRECT` into plain memory.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` usable bytes (zeroed once).
    pub(crate) fn new(len: usize) -> Self {
        let align = crate::plan::ALIGN as usize;
        let raw = vec![0u8; len + align];
        let start = raw.as_ptr().align_offset(align).min(align);
        Self { raw, start, len }
    }

    /// The first `n` usable bytes (at most the buffer's size).
    pub(crate) fn slice_mut(&mut self, n: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + n.min(self.len)]
    }

    /// Usable bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpubridge_core::IoErrorKind;
    use std::sync::atomic::AtomicUsize;

    fn task_failed() -> Error {
        Error::Io {
            path: "f".into(),
            kind: IoErrorKind::ShortRead,
            message: "task failed".to_owned(),
        }
    }

    /// A job that records what the runner does with it and fails on one task.
    struct Counting {
        workers: AtomicUsize,
        finished: AtomicUsize,
        ran: AtomicUsize,
        fail_at: Option<u64>,
    }

    impl Job for Counting {
        type Piece = ();
        type Worker = ();

        fn worker(&self) -> Result<()> {
            self.workers.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn run(&self, (): &mut (), task: &Task, (): ()) -> Result<()> {
            self.ran.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(200));
            if Some(task.file_offset) == self.fail_at {
                return Err(task_failed());
            }
            Ok(())
        }

        fn finish(&self, (): ()) -> Result<()> {
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn tasks(n: u64) -> Vec<(Task, ())> {
        (0..n)
            .map(|i| {
                (
                    Task {
                        file_offset: i * 4096,
                        buf_offset: (i * 4096) as usize,
                        len: 4096,
                        aligned: true,
                    },
                    (),
                )
            })
            .collect()
    }

    #[test]
    fn every_task_runs_once_and_every_worker_finishes() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let job = Counting {
            workers: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            ran: AtomicUsize::new(0),
            fail_at: None,
        };
        run(&pool, Depth::Fixed(8), &job, tasks(100)).unwrap();
        assert_eq!(job.ran.load(Ordering::SeqCst), 100);
        assert_eq!(job.workers.load(Ordering::SeqCst), 8);
        assert_eq!(job.finished.load(Ordering::SeqCst), 8);
        // Fewer tasks than workers: only as many workers as tasks.
        let job = Counting {
            workers: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            ran: AtomicUsize::new(0),
            fail_at: None,
        };
        run(&pool, Depth::Fixed(8), &job, tasks(3)).unwrap();
        assert_eq!(job.workers.load(Ordering::SeqCst), 3);
        run(&pool, Depth::Fixed(8), &job, Vec::new()).unwrap();
    }

    #[test]
    fn the_first_error_stops_the_rest_and_every_worker_still_finishes() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        let job = Counting {
            workers: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            ran: AtomicUsize::new(0),
            fail_at: Some(2 * 4096),
        };
        let e = run(&pool, Depth::Fixed(4), &job, tasks(1000)).unwrap_err();
        assert!(e.to_string().contains("task failed"), "{e}");
        assert!(job.ran.load(Ordering::SeqCst) < 1000, "the others stopped");
        assert_eq!(
            job.finished.load(Ordering::SeqCst),
            job.workers.load(Ordering::SeqCst)
        );
    }

    /// A job whose tasks take `base` times the number running at once to the power `power`:
    /// power 0 is a device that serves readers in parallel, power 2 one that slows down more
    /// than it gains with each extra reader. It records the most tasks that ran at once before
    /// and after the probe's end, and fails on task `fail_at`.
    struct Contended {
        base: std::time::Duration,
        power: f64,
        running: AtomicUsize,
        /// The most running at once among the first `probe_tasks` tasks, and among the rest.
        peak_probe: AtomicUsize,
        peak_after: AtomicUsize,
        probe_tasks: usize,
        fail_at: Option<usize>,
    }

    impl Contended {
        fn new(base_us: u64, power: f64, probe_tasks: usize) -> Self {
            Self {
                base: std::time::Duration::from_micros(base_us),
                power,
                running: AtomicUsize::new(0),
                peak_probe: AtomicUsize::new(0),
                peak_after: AtomicUsize::new(0),
                probe_tasks,
                fail_at: None,
            }
        }
    }

    impl Job for Contended {
        type Piece = ();
        type Worker = ();

        fn worker(&self) -> Result<()> {
            Ok(())
        }

        fn run(&self, (): &mut (), task: &Task, (): ()) -> Result<()> {
            let index = (task.file_offset / 4096) as usize;
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            let peak = if index < self.probe_tasks {
                &self.peak_probe
            } else {
                &self.peak_after
            };
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.base.mul_f64((now as f64).powf(self.power)));
            self.running.fetch_sub(1, Ordering::SeqCst);
            if Some(index) == self.fail_at {
                return Err(task_failed());
            }
            Ok(())
        }

        fn finish(&self, (): ()) -> Result<()> {
            Ok(())
        }
    }

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    const PROBE: Depth = Depth::Probe {
        one_tasks: 8,
        many: 4,
        many_tasks: 16,
    };

    #[test]
    fn a_probe_keeps_many_readers_where_they_read_faster() {
        // Tasks of 2 ms whatever the depth: four readers move four times the bytes.
        let job = Contended::new(2000, 0.0, 8);
        let p = run(&pool(4), PROBE, &job, tasks(64)).unwrap().unwrap();
        assert_eq!(p.chosen, 4, "{p:?}");
        assert!(p.many > 2.0 * p.one, "{p:?}");
        // One at a time while the first depth was measured.
        assert_eq!(job.peak_probe.load(Ordering::SeqCst), 1);
        assert!(job.peak_after.load(Ordering::SeqCst) > 1);
    }

    #[test]
    fn a_probe_settles_on_one_reader_where_more_are_slower() {
        // Each task takes 1 ms x (readers at once)^2: four readers move a quarter of the bytes.
        let job = Contended::new(1000, 2.0, 8 + 16);
        let p = run(&pool(4), PROBE, &job, tasks(64)).unwrap().unwrap();
        assert_eq!(p.chosen, 1, "{p:?}");
        assert!(p.one > p.many, "{p:?}");
        // After the probe, one task at a time.
        assert_eq!(job.peak_after.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn many_readers_must_beat_one_by_the_margin() {
        // Run AB's probe: 16 readers 5% ahead of one, which longer measurements contradict.
        assert!(!keeps_many(1.74e9, 1.83e9));
        assert!(!keeps_many(2.0e9, 2.0e9 * MANY_READERS_MARGIN));
        assert!(!keeps_many(2.0e9, 1.0e9));
        // An NVMe drive's many readers, several times one.
        assert!(keeps_many(1.0e9, 3.5e9));
        assert!(keeps_many(1.0e9, 1.2e9));
    }

    #[test]
    fn a_transfer_too_small_to_probe_runs_at_full_depth() {
        let job = Contended::new(500, 0.0, 0);
        let p = run(&pool(4), PROBE, &job, tasks(20)).unwrap();
        assert_eq!(p, None);
        assert!(job.peak_after.load(Ordering::SeqCst) > 1);
    }

    #[test]
    fn a_failure_while_probing_stops_the_workers_waiting_at_the_gate() {
        // The failing task is in the one-reader phase: the three other workers are waiting for
        // the gate to open and must see the stop.
        let mut job = Contended::new(200, 0.0, 8);
        job.fail_at = Some(3);
        let e = run(&pool(4), PROBE, &job, tasks(64)).unwrap_err();
        assert!(e.to_string().contains("task failed"), "{e}");
        assert_eq!(job.running.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn aligned_buffers_start_on_a_page() {
        for n in [1, 4096, 12345] {
            let mut b = AlignedBuf::new(n);
            let s = b.slice_mut(n);
            assert_eq!(s.len(), n);
            assert_eq!(s.as_ptr() as usize % 4096, 0);
        }
    }
}
