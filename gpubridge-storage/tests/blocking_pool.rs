//! The storage I/O pool starts a thread only for a job that finds every thread busy (its own
//! process, so that no other test's jobs share the pool). What `Storage::unblock` relies on.

use std::sync::mpsc;
use std::time::Duration;

use gpubridge_storage::blocking;

#[test]
fn jobs_sent_one_after_another_run_on_one_thread() {
    // Each job is sent the moment the previous one has answered, while its thread is still on
    // the way back to wait for more: the race that used to start a thread now and then.
    for _ in 0..2000 {
        let (tx, rx) = mpsc::channel();
        blocking::spawn_then(|| 7, move |n| tx.send(n).unwrap()).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)).unwrap(), 7);
    }
    assert_eq!(blocking::threads(), 1);
    // Two at a time, each waiting for the other: two threads, and no more however often.
    for _ in 0..500 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (tx, rx) = mpsc::channel();
        for _ in 0..2 {
            let (barrier, tx) = (barrier.clone(), tx.clone());
            blocking::spawn_then(move || barrier.wait(), move |_| tx.send(()).unwrap()).unwrap();
        }
        for _ in 0..2 {
            rx.recv_timeout(Duration::from_secs(30)).unwrap();
        }
    }
    assert_eq!(blocking::threads(), 2);
}
