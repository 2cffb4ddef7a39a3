//! Deferred drops: large request data is freed on a background thread, off the request's path.
//!
//! Freeing a large allocation is not free: unmapping hundreds of megabytes of pages takes
//! milliseconds (page-table teardown, TLB shootdowns on every core that touched them). A batch's
//! inputs are owned by the bridge once submitted, and the last reference would otherwise be
//! dropped on the caller's task or on a device's executor thread, where that time delays the
//! next micro-batch. [`drop_later`] hands the value to one background thread instead.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Garbage = Box<dyn Send>;

static JANITOR: OnceLock<Option<Mutex<mpsc::Sender<Garbage>>>> = OnceLock::new();

fn janitor() -> Option<&'static Mutex<mpsc::Sender<Garbage>>> {
    JANITOR
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Garbage>();
            std::thread::Builder::new()
                .name("gpubridge-janitor".to_owned())
                .spawn(move || {
                    crate::threads::prefault_stack();
                    for garbage in rx {
                        drop(garbage);
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Values holding fewer bytes than this are dropped in place: handing them over would cost a
/// wake-up of the janitor thread, more than freeing them.
pub const DEFER_MIN_BYTES: usize = 1 << 20;

/// Drops `value` on the janitor thread if it holds at least [`DEFER_MIN_BYTES`] (as the caller
/// counts them), else right here.
pub fn drop_later_if_large<T: Send + 'static>(value: T, bytes: usize) {
    if bytes >= DEFER_MIN_BYTES {
        drop_later(value);
    } else {
        drop(value);
    }
}

/// Drops `value` on the background janitor thread (or right here if that thread cannot run).
pub fn drop_later<T: Send + 'static>(value: T) {
    if std::mem::size_of::<T>() == 0 {
        return;
    }
    match janitor().and_then(|m| m.lock().ok()) {
        Some(tx) => {
            if let Err(mpsc::SendError(garbage)) = tx.send(Box::new(value)) {
                drop(garbage);
            }
        }
        None => drop(value),
    }
}

/// Waits until everything handed to the janitor so far has been dropped. For benchmarks and
/// tests that must not measure the freeing of an earlier request's data.
pub fn flush() {
    struct Marker(mpsc::Sender<()>);
    impl Drop for Marker {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let (tx, rx) = mpsc::channel::<()>();
    drop_later(Marker(tx));
    let _ = rx.recv();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn flush_waits_for_earlier_drops() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                std::thread::sleep(std::time::Duration::from_millis(5));
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let n = Arc::new(AtomicUsize::new(0));
        for _ in 0..4 {
            drop_later(Counted(n.clone()));
        }
        flush();
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }
}
