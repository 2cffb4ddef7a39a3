//! The threads that run [`crate::Storage::unblock`]'s blocking work: started as work needs them
//! (at most [`MAX_THREADS`]) and kept, so that a service doing a storage round trip every few
//! milliseconds does not start and end a thread for each (tens of microseconds, a fresh stack
//! and its thread-local state every time; the soak saw the resident set step as they came and
//! went).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};

/// A job: its work, and what to do with the outcome once its thread counts as free again.
type Job = Box<dyn FnOnce() -> Option<Finish> + Send + 'static>;
type Finish = Box<dyn FnOnce() + Send + 'static>;

/// The most threads the pool starts; beyond them, work waits for one to be free.
pub const MAX_THREADS: usize = 64;

/// The pool's state, under one lock, so that a thread is started exactly when a job finds every
/// thread busy: counts kept apart from the queue (atomics beside a channel) let a thread that
/// had just finished a job look busy for an instant, and the pool grew by a thread now and then
/// for no work, which showed in the soak's resident set as a late step.
struct State {
    queue: VecDeque<Job>,
    /// Threads started (they never end).
    threads: usize,
    /// Of them, those waiting for work.
    idle: usize,
}

struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            threads: 0,
            idle: 0,
        }),
        work: Condvar::new(),
    })
}

impl Pool {
    /// The state; a panic never happens while the lock is held (jobs run outside it), so a
    /// poisoned lock still holds consistent counts.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `job` on one of the pool's threads, starting one when every thread is busy (and fewer
/// than [`MAX_THREADS`] run). A job that panics ends alone: its thread goes on.
///
/// # Errors
/// The operating system's error when no thread is running and none can be started.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    push(Box::new(move || {
        job();
        None
    }))
}

/// Runs `work` on one of the pool's threads as [`spawn`] does, then `then` with its result,
/// after the thread counts as free again: a caller that learns of the result in `then` (a
/// channel's send) and at once sends the next job finds the thread waiting for it instead of
/// starting another. `then` is not run when `work` panics.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_then<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    then: impl FnOnce(T) + Send + 'static,
) -> std::io::Result<()> {
    push(Box::new(move || {
        let out = work();
        Some(Box::new(move || then(out)) as Finish)
    }))
}

fn push(job: Job) -> std::io::Result<()> {
    let p = pool();
    let mut s = p.lock();
    s.queue.push_back(job);
    // Each waiting thread takes one job: start one more only for a job none would take.
    if s.queue.len() > s.idle && s.threads < MAX_THREADS {
        s.threads += 1;
        let started = std::thread::Builder::new()
            .name("gpubridge-storage-io".to_owned())
            .spawn(|| work(pool()));
        if let Err(e) = started {
            s.threads -= 1;
            if s.threads == 0 {
                // Nobody will ever run it: take it back (dropped outside the lock).
                let job = s.queue.pop_back();
                drop(s);
                drop(job);
                return Err(e);
            }
        }
    }
    drop(s);
    p.work.notify_one();
    Ok(())
}

/// Threads started so far (for tests and diagnostics).
pub fn threads() -> usize {
    pool().lock().threads
}

fn work(p: &'static Pool) {
    gpubridge_core::prefault_stack();
    let mut s = p.lock();
    loop {
        if let Some(job) = s.queue.pop_front() {
            drop(s);
            let finish = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            s = p.lock();
            if let Ok(Some(finish)) = finish {
                // Free from here on: a job sent in answer to `finish` is this thread's.
                s.idle += 1;
                drop(s);
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(finish));
                s = p.lock();
                s.idle -= 1;
            }
        } else {
            s.idle += 1;
            s = p.work.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.idle -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{mpsc, Arc};

    #[test]
    fn jobs_run_on_reused_threads_and_a_panic_ends_only_its_job() {
        // Fifty one after another: threads are reused (a thread per job would make fifty; other
        // tests of this process use the pool meanwhile, but never as many at once).
        for _ in 0..50 {
            let (tx, rx) = mpsc::channel();
            spawn(move || tx.send(()).unwrap()).unwrap();
            rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        }
        assert!(threads() < 40, "{} threads", threads());
        // Twelve at once, each blocked until all have started: as many threads as that.
        let n = 12;
        let barrier = Arc::new(std::sync::Barrier::new(n));
        let (tx, rx) = mpsc::channel();
        for _ in 0..n {
            let (barrier, tx) = (barrier.clone(), tx.clone());
            spawn(move || {
                barrier.wait();
                tx.send(()).unwrap();
            })
            .unwrap();
        }
        for _ in 0..n {
            rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        }
        assert!(threads() >= n && threads() <= MAX_THREADS);
        // A job that panics ends alone: the pool goes on serving.
        spawn(|| panic!("a job's own panic")).unwrap();
        for _ in 0..20 {
            let (tx, rx) = mpsc::channel();
            spawn(move || tx.send(()).unwrap()).unwrap();
            rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
        }
    }
}
