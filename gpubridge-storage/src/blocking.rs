//! The threads that run [`crate::Storage::unblock`]'s blocking work: started as work needs them
//! (at most [`MAX_THREADS`]) and kept, so that a service doing a storage round trip every few
//! milliseconds does not start and end a thread for each (tens of microseconds, a fresh stack
//! and its thread-local state every time; the soak saw the resident set step as they came and
//! went).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The most threads the pool starts; beyond them, work waits for one to be free.
pub const MAX_THREADS: usize = 64;

struct Pool {
    tx: mpsc::Sender<Job>,
    rx: Mutex<mpsc::Receiver<Job>>,
    /// Threads started (they never end).
    threads: AtomicUsize,
    /// Of them, those waiting for work.
    idle: AtomicUsize,
    /// Jobs sent and not yet taken.
    queued: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        Pool {
            tx,
            rx: Mutex::new(rx),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
        }
    })
}

/// Runs `job` on one of the pool's threads, starting one when every thread is busy (and fewer
/// than [`MAX_THREADS`] run). A job that panics ends alone: its thread goes on.
///
/// # Errors
/// The operating system's error when no thread is running and none can be started.
pub fn spawn(job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let p = pool();
    p.queued.fetch_add(1, Ordering::SeqCst);
    // The receiver lives in the same static as the sender: sending cannot fail.
    let _ = p.tx.send(Box::new(job));
    while p.queued.load(Ordering::SeqCst) > p.idle.load(Ordering::SeqCst) {
        let n = p.threads.load(Ordering::SeqCst);
        if n >= MAX_THREADS {
            break;
        }
        if p.threads
            .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            continue;
        }
        let started = std::thread::Builder::new()
            .name("gpubridge-storage-io".to_owned())
            .spawn(|| work(pool()));
        if let Err(e) = started {
            p.threads.fetch_sub(1, Ordering::SeqCst);
            if p.threads.load(Ordering::SeqCst) == 0 {
                return Err(e);
            }
            break;
        }
    }
    Ok(())
}

/// Threads started so far (for tests and diagnostics).
pub fn threads() -> usize {
    pool().threads.load(Ordering::SeqCst)
}

fn work(p: &'static Pool) {
    loop {
        p.idle.fetch_add(1, Ordering::SeqCst);
        let job = p.rx.lock().map(|rx| rx.recv());
        p.idle.fetch_sub(1, Ordering::SeqCst);
        let Ok(Ok(job)) = job else {
            // A poisoned lock (a thread panicked holding it, which `recv` does not do) or a
            // closed channel (the sender is static): nothing more will come.
            p.threads.fetch_sub(1, Ordering::SeqCst);
            return;
        };
        p.queued.fetch_sub(1, Ordering::SeqCst);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
