//! Waking a parked caller ahead of its result.
//!
//! A caller that waits for a plan without the [`spin_wait`](crate::ExecutionHints::spin_wait)
//! hint parks its thread (or its task's worker) until the backend answers. Waking a parked
//! thread costs microseconds on a bare host and more on a virtual machine, where an idle vCPU
//! halts: 7-8 us on the H200 test machine, more the longer it slept. That latency is paid after
//! the device is done, on every call.
//!
//! An [`EarlyWake`] lets a backend that can tell when a plan will finish (CUDA, from the previous
//! replays of the plan's graph, `cuda.early_wake_us`) wake the caller shortly before, while the
//! device still works: the wake-up then overlaps the device's last microseconds, and the caller
//! busy-polls for its result for at most the time the backend asked. Right after submitting, the
//! caller polls [`BEFORE_PARKING`] for such a wake before it parks at all, so that a plan whose
//! result is near when the backend takes it costs no wake-up. It spins only while fewer than
//! half the host's cores are doing so for early wakes (like CUDA's own automatic scheduling,
//! which spins in a wait only while the host has cores to spare); otherwise it parks as before.
//!
//! On the H200 test machine this took P2 (10 x 100 floats summed, host to host) from a P50 of
//! 22-23 us to 16-17.6 us for a parked caller (docs/PERFORMANCE.md, twenty-first session). The
//! caller's spin is bounded; a parked caller never runs its plan on its own thread (which may be
//! an async runtime's worker), so a device that turns slow holds no such thread.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use tokio::sync::oneshot::{self, error::TryRecvError};

/// A handle by which a backend wakes a plan's waiting caller ahead of the plan's result (see the
/// module documentation). Set on [`Plan::early_wake`](crate::Plan::early_wake) by the bridge for
/// callers that park; cheap to clone.
#[derive(Clone, Default)]
pub struct EarlyWake(Arc<Inner>);

#[derive(Default)]
struct Inner {
    waker: AtomicWaker,
    /// The spin the backend asked for, in nanoseconds; 0 while not woken.
    spin_ns: AtomicU64,
    /// The backend has taken the plan and will not wake the caller early.
    declined: AtomicBool,
}

impl std::fmt::Debug for EarlyWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlyWake")
            .field("woken", &(self.0.spin_ns.load(Ordering::Relaxed) != 0))
            .finish()
    }
}

impl EarlyWake {
    /// A handle no one has woken yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the caller now, asking it to busy-poll for its result for at most `spin` before it
    /// parks again. A backend calls this once it expects the result within about `spin`.
    pub fn wake(&self, spin: Duration) {
        let ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.0.spin_ns.store(ns, Ordering::Release);
        self.0.waker.wake();
    }

    /// Tells the caller, polling before it parks ([`BEFORE_PARKING`]), that no early wake will
    /// come for this plan (the backend runs it on a path it cannot time), so that it parks at
    /// once.
    pub fn decline(&self) {
        self.0.declined.store(true, Ordering::Release);
    }

    /// Whether [`EarlyWake::wake`] was called and not yet taken by the caller.
    pub fn is_woken(&self) -> bool {
        self.0.spin_ns.load(Ordering::Acquire) != 0
    }

    /// Whether the backend said, by a wake or [`EarlyWake::decline`], what it will do.
    fn is_settled(&self) -> bool {
        self.is_woken() || self.0.declined.load(Ordering::Acquire)
    }

    /// Registers the task to wake.
    pub(crate) fn register(&self, waker: &Waker) {
        self.0.waker.register(waker);
    }

    /// Takes the spin asked for by a wake since the last call, if any.
    pub(crate) fn take(&self) -> Option<Duration> {
        match self.0.spin_ns.swap(0, Ordering::AcqRel) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// Callers busy-polling after an early wake, process-wide.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// At most this many callers busy-poll after early wakes at once: half the host's cores.
fn max_spinning() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1))
}

/// A caller's place among the spinning ones; gives it back on drop.
pub(crate) struct Spinning(&'static AtomicUsize);

impl Spinning {
    /// A place, unless half the host's cores already spin.
    pub(crate) fn enter() -> Option<Self> {
        Self::enter_in(&SPINNING, max_spinning())
    }

    /// A place among at most `max` counted by `places`.
    fn enter_in(places: &'static AtomicUsize, max: usize) -> Option<Self> {
        places
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(places))
    }
}

impl Drop for Spinning {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Busy-polls `ready` for at most `spin` (the clock read once every 64 polls): `Some` with what
/// it gave, or `None` when the time ran out.
pub(crate) fn spin_for<T>(spin: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    let mut polls = 0u32;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        polls += 1;
        if polls.is_multiple_of(64) && t.elapsed() >= spin {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// How long a caller just past submission polls for an early wake before it parks: a backend
/// that takes the plan at once and expects its result within its lead wakes the caller before it
/// has parked, which then never pays for a wake-up; one that will not wake it early says so
/// ([`EarlyWake::decline`]), and the caller parks then.
pub const BEFORE_PARKING: Duration = Duration::from_micros(5);

/// Waits for a plan's answer on `rx`, busy-polling for it once the backend wakes this caller
/// ahead of it ([`crate::wake`]); `Err` when the backend dropped the plan unanswered.
pub(crate) async fn answer<T>(
    rx: &mut oneshot::Receiver<T>,
    wake: &EarlyWake,
) -> std::result::Result<T, ()> {
    if let Some(_place) = Spinning::enter() {
        // The answer may be here already (the backend ran the plan on this thread).
        let early = spin_for(BEFORE_PARKING, || match rx.try_recv() {
            Ok(v) => Some(Some(Ok(v))),
            Err(TryRecvError::Closed) => Some(Some(Err(()))),
            Err(TryRecvError::Empty) => wake.is_settled().then_some(None),
        });
        if let Some(Some(r)) = early {
            return r;
        }
    }
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(r) = Pin::new(&mut *rx).poll(cx) {
            return Poll::Ready(r.map_err(|_| ()));
        }
        // Registered before the wake is read: a wake after this reading wakes the task again.
        wake.register(cx.waker());
        let Some(spin) = wake.take() else {
            return Poll::Pending;
        };
        if let Some(_place) = Spinning::enter() {
            let got = spin_for(spin, || match rx.try_recv() {
                Ok(v) => Some(Ok(v)),
                Err(TryRecvError::Closed) => Some(Err(())),
                Err(TryRecvError::Empty) => None,
            });
            if let Some(r) = got {
                return Poll::Ready(r);
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::ArcWake;
    use std::task::Context;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Held by the tests that spin in the process-wide places, so that none finds them taken.
    static PLACES_IN_USE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        let waker = futures::task::waker(count.clone());
        (count, waker)
    }

    type Answer<'a> = Pin<Box<dyn Future<Output = std::result::Result<u32, ()>> + 'a>>;

    /// The caller's wait for `rx`, polled once (pending: nothing sent yet).
    fn first_poll<'a>(
        rx: &'a mut oneshot::Receiver<u32>,
        wake: &'a EarlyWake,
        waker: &Waker,
    ) -> Answer<'a> {
        let mut fut: Answer<'a> = Box::pin(answer(rx, wake));
        assert!(fut
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        fut
    }

    fn until(what: impl Fn() -> bool) {
        let t = Instant::now();
        while !what() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_caller_woken_early_gets_its_answer_within_the_poll_that_follows() {
        let _one_at_a_time = PLACES_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, mut rx) = oneshot::channel::<u32>();
        let wake = EarlyWake::new();
        let (count, waker) = counting_waker();
        let mut fut = first_poll(&mut rx, &wake, &waker);
        let mut cx = Context::from_waker(&waker);
        let backend = {
            let wake = wake.clone();
            std::thread::spawn(move || {
                wake.wake(Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(20));
                tx.send(42).unwrap();
            })
        };
        // The early wake arrives while the answer is still 20 ms away...
        until(|| count.0.load(Ordering::SeqCst) >= 1);
        // ...and the next poll spins until it comes: no second wake needed.
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(42)));
        backend.join().unwrap();
    }

    #[test]
    fn a_spin_that_runs_out_parks_again_and_the_answer_still_wakes_the_caller() {
        let _one_at_a_time = PLACES_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, mut rx) = oneshot::channel::<u32>();
        let wake = EarlyWake::new();
        let (count, waker) = counting_waker();
        let mut fut = first_poll(&mut rx, &wake, &waker);
        let mut cx = Context::from_waker(&waker);
        wake.wake(Duration::from_millis(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // The spin runs out before any answer: pending again, the wake taken.
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(!wake.is_woken());
        tx.send(7).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7)));
    }

    #[test]
    fn a_declined_wake_lets_the_caller_park_at_once_and_the_answer_still_comes() {
        let _one_at_a_time = PLACES_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        let (tx, mut rx) = oneshot::channel::<u32>();
        let wake = EarlyWake::new();
        wake.decline();
        assert!(wake.is_settled() && !wake.is_woken());
        let (count, waker) = counting_waker();
        let mut fut = first_poll(&mut rx, &wake, &waker);
        let mut cx = Context::from_waker(&waker);
        tx.send(3).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(3)));
    }

    #[test]
    fn a_dropped_plan_ends_the_wait_with_an_error_spinning_or_not() {
        let _one_at_a_time = PLACES_IN_USE.lock().unwrap_or_else(|p| p.into_inner());
        for early in [false, true] {
            let (tx, mut rx) = oneshot::channel::<u32>();
            let wake = EarlyWake::new();
            let waker = futures::task::noop_waker();
            let mut fut = first_poll(&mut rx, &wake, &waker);
            let mut cx = Context::from_waker(&waker);
            if early {
                wake.wake(Duration::from_secs(5));
            }
            drop(tx);
            assert_eq!(fut.as_mut().poll(&mut cx), Poll::Ready(Err(())));
        }
    }

    #[test]
    fn a_wake_is_taken_once_with_the_spin_asked_for() {
        let w = EarlyWake::new();
        assert!(!w.is_woken());
        assert_eq!(w.take(), None);
        w.wake(Duration::from_micros(30));
        assert!(w.is_woken());
        assert_eq!(w.take(), Some(Duration::from_micros(30)));
        assert_eq!(w.take(), None);
        // A zero spin still counts as a wake.
        w.wake(Duration::ZERO);
        assert_eq!(w.take(), Some(Duration::from_nanos(1)));
    }

    #[test]
    fn spinning_places_are_bounded_and_given_back() {
        assert!(max_spinning() >= 1);
        static PLACES: AtomicUsize = AtomicUsize::new(0);
        let held: Vec<_> = std::iter::from_fn(|| Spinning::enter_in(&PLACES, 3))
            .take(10)
            .collect();
        assert_eq!(held.len(), 3);
        assert!(Spinning::enter_in(&PLACES, 3).is_none());
        drop(held);
        assert_eq!(PLACES.load(Ordering::SeqCst), 0);
        assert!(Spinning::enter_in(&PLACES, 3).is_some());
    }

    #[test]
    fn spin_for_returns_what_becomes_ready_or_none_in_time() {
        let mut n = 0;
        assert_eq!(
            spin_for(Duration::from_secs(5), || {
                n += 1;
                (n == 1000).then_some(n)
            }),
            Some(1000)
        );
        let t = Instant::now();
        assert_eq!(spin_for(Duration::from_millis(2), || None::<()>), None);
        assert!(t.elapsed() >= Duration::from_millis(2));
    }
}
