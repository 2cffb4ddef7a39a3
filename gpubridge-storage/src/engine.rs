//! The thread-pool runner both paths share: a transfer's tasks go on one queue, and each of up
//! to `storage.threads` workers takes the next task in file order until the queue is empty or
//! one task has failed.

use std::sync::atomic::{AtomicBool, Ordering};

use gpubridge_core::{Error, Result};
use parking_lot::Mutex;

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

/// Runs `tasks` on at most `workers` workers of `pool`; returns the first error, once every
/// worker has stopped (so no buffer is in use when this returns).
pub(crate) fn run<J: Job>(
    pool: &rayon::ThreadPool,
    workers: usize,
    job: &J,
    tasks: Vec<(Task, J::Piece)>,
) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let workers = workers.clamp(1, tasks.len());
    let queue = Mutex::new(tasks.into_iter());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let work = || -> Result<()> {
        let mut worker = job.worker()?;
        let mut outcome = Ok(());
        while !stop.load(Ordering::Relaxed) {
            let Some((task, piece)) = queue.lock().next() else {
                break;
            };
            if let Err(e) = job.run(&mut worker, &task, piece) {
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
                }
            });
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
                return Err(Error::Io {
                    path: "f".into(),
                    kind: IoErrorKind::ShortRead,
                    message: "task failed".to_owned(),
                });
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
        run(&pool, 8, &job, tasks(100)).unwrap();
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
        run(&pool, 8, &job, tasks(3)).unwrap();
        assert_eq!(job.workers.load(Ordering::SeqCst), 3);
        run(&pool, 8, &job, Vec::new()).unwrap();
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
        let e = run(&pool, 4, &job, tasks(1000)).unwrap_err();
        assert!(e.to_string().contains("task failed"), "{e}");
        assert!(job.ran.load(Ordering::SeqCst) < 1000, "the others stopped");
        assert_eq!(
            job.finished.load(Ordering::SeqCst),
            job.workers.load(Ordering::SeqCst)
        );
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
