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
