//! The device slots micro-batches wait for (`general.max_concurrent_kernels`), handed out by
//! priority: when every slot is taken, the next one freed goes to the longest-waiting
//! micro-batch of the highest priority waiting (high before normal before low, first come first
//! served within a level), so that urgent batch requests overtake a backlog of ordinary ones, as
//! the batcher's queues do for single requests.
//!
//! A waiter that goes away (its request was cancelled or timed out) leaves the queue; if a slot
//! had just been handed to it, the slot goes on to the next waiter.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::hints::Priority;

/// Slots for micro-batches, by priority.
pub(crate) struct Slots {
    state: Mutex<State>,
    capacity: usize,
    /// Waiters not yet given a slot (kept beside the state, so that admission reads it without
    /// the lock).
    waiting: AtomicUsize,
}

struct Waiter {
    waker: Waker,
    granted: bool,
}

struct State {
    free: usize,
    next_id: u64,
    /// Ids waiting, per priority ([`Priority::index`]), oldest first. An id no longer in
    /// `waiters` left the queue and is skipped (or compacted away).
    queues: [VecDeque<u64>; 3],
    waiters: HashMap<u64, Waiter>,
}

impl State {
    /// Gives a freed slot to the next waiter (counting it out of `waiting`), or back to the
    /// free count.
    fn release(&mut self, waiting: &AtomicUsize) {
        // Highest priority first.
        for queue in self.queues.iter_mut().rev() {
            while let Some(id) = queue.pop_front() {
                if let Some(w) = self.waiters.get_mut(&id) {
                    if !w.granted {
                        w.granted = true;
                        waiting.fetch_sub(1, Ordering::Relaxed);
                        w.waker.wake_by_ref();
                        return;
                    }
                }
            }
        }
        self.free += 1;
    }
}

impl Slots {
    /// `capacity` slots, all free.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: capacity,
                next_id: 0,
                queues: Default::default(),
                waiters: HashMap::new(),
            }),
            capacity,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Slots taken now.
    pub(crate) fn taken(&self) -> usize {
        let st = self.state.lock();
        // A slot handed to a waiter that has not woken yet is taken too.
        self.capacity - st.free
    }

    /// Micro-batches waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a slot at `priority`; the slot is held until the returned [`Slot`] drops.
    pub(crate) fn acquire(&self, priority: Priority) -> Acquire<'_> {
        Acquire {
            slots: self,
            priority,
            id: None,
            done: false,
        }
    }
}

/// A held slot; dropping it frees the slot for the next waiter.
pub(crate) struct Slot<'a>(&'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.state.lock().release(&self.0.waiting);
    }
}

/// The future of [`Slots::acquire`].
pub(crate) struct Acquire<'a> {
    slots: &'a Slots,
    priority: Priority,
    /// Set once queued.
    id: Option<u64>,
    /// Set once it has given out its slot.
    done: bool,
}

impl<'a> Future for Acquire<'a> {
    type Output = Slot<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot<'a>> {
        if self.done {
            return polled_after_completion();
        }
        let slots = self.slots;
        let mut st = slots.state.lock();
        match self.id {
            None => {
                // Nobody waits while a slot is free (a freed slot goes straight to a waiter), so
                // taking a free one overtakes no one.
                if st.free > 0 {
                    st.free -= 1;
                    drop(st);
                    self.done = true;
                    return Poll::Ready(Slot(slots));
                }
                let id = st.next_id;
                st.next_id += 1;
                st.waiters.insert(
                    id,
                    Waiter {
                        waker: cx.waker().clone(),
                        granted: false,
                    },
                );
                st.queues[self.priority.index()].push_back(id);
                slots.waiting.fetch_add(1, Ordering::Relaxed);
                drop(st);
                self.id = Some(id);
                Poll::Pending
            }
            Some(id) => match st.waiters.get_mut(&id) {
                Some(w) if w.granted => {
                    st.waiters.remove(&id);
                    drop(st);
                    self.id = None;
                    self.done = true;
                    Poll::Ready(Slot(slots))
                }
                Some(w) => {
                    if !w.waker.will_wake(cx.waker()) {
                        w.waker = cx.waker().clone();
                    }
                    Poll::Pending
                }
                // Only this future removes its entry, and it does so as it completes (after
                // which `done` answers).
                None => polled_after_completion(),
            },
        }
    }
}

/// An `Acquire` polled after it completed: a logic error in the caller, answered as the futures
/// contract allows (never ready again, no second slot) rather than with a panic.
fn polled_after_completion<T>() -> Poll<T> {
    tracing::error!("a slot's acquire future was polled after it completed");
    Poll::Pending
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut st = self.slots.state.lock();
            if let Some(w) = st.waiters.remove(&id) {
                if w.granted {
                    // Handed a slot it will never use: pass it on.
                    st.release(&self.slots.waiting);
                } else {
                    self.slots.waiting.fetch_sub(1, Ordering::Relaxed);
                }
            }
            // Ids of waiters that left stay in their queue until a release skips them; when
            // many leave while the slots stay taken (timeouts under overload), drop them here so
            // that the queues stay as long as the waiting.
            let queued: usize = st.queues.iter().map(VecDeque::len).sum();
            if queued > 2 * st.waiters.len() + 64 {
                let State {
                    queues, waiters, ..
                } = &mut *st;
                for q in queues.iter_mut() {
                    q.retain(|id| waiters.contains_key(id));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn free_slots_are_taken_at_once_and_come_back_on_drop() {
        let slots = Slots::new(2);
        let a = slots
            .acquire(Priority::Normal)
            .now_or_never()
            .expect("free");
        let b = slots.acquire(Priority::Low).now_or_never().expect("free");
        assert_eq!(slots.taken(), 2);
        assert!(slots.acquire(Priority::High).now_or_never().is_none());
        assert_eq!(slots.waiting(), 0, "a dropped waiter leaves the queue");
        drop(a);
        assert_eq!(slots.taken(), 1);
        drop(b);
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn a_completed_acquire_polled_again_takes_no_second_slot() {
        let slots = Slots::new(2);
        let mut acquire = Box::pin(slots.acquire(Priority::Normal));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(slot) = acquire.as_mut().poll(&mut cx) else {
            panic!("a free slot");
        };
        assert!(acquire.as_mut().poll(&mut cx).is_pending());
        assert_eq!(slots.taken(), 1);
        drop(slot);
        drop(acquire);
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn waiters_that_leave_do_not_pile_up_in_the_queues() {
        let slots = Slots::new(1);
        let held = slots
            .acquire(Priority::Normal)
            .now_or_never()
            .expect("free");
        for _ in 0..10_000 {
            assert!(slots.acquire(Priority::High).now_or_never().is_none());
        }
        let queued: usize = slots.state.lock().queues.iter().map(VecDeque::len).sum();
        assert!(queued <= 64 + 1, "{queued} ids left in the queues");
        assert_eq!(slots.waiting(), 0);
        drop(held);
        assert_eq!(slots.taken(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_freed_slot_goes_to_the_highest_priority_then_the_oldest_waiter() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire(Priority::Normal).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Queued in this order: low, normal 1, high 1, normal 2, high 2.
        for (name, p) in [
            ("low", Priority::Low),
            ("normal 1", Priority::Normal),
            ("high 1", Priority::High),
            ("normal 2", Priority::Normal),
            ("high 2", Priority::High),
        ] {
            let (slots, order) = (slots.clone(), order.clone());
            let queued = Arc::new(AtomicUsize::new(0));
            let q = queued.clone();
            tasks.push(tokio::spawn(async move {
                let mut acquire = slots.acquire(p);
                // Queue now, in this order, before the next one is spawned.
                if futures::poll!(&mut acquire).is_ready() {
                    panic!("no slot should be free");
                }
                q.store(1, Ordering::SeqCst);
                let _slot = acquire.await;
                order.lock().push(name);
                tokio::task::yield_now().await;
            }));
            while queued.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(slots.waiting(), 5);
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock(),
            vec!["high 1", "high 2", "normal 1", "normal 2", "low"]
        );
        assert_eq!(slots.taken(), 0);
        assert_eq!(slots.waiting(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_that_leaves_after_being_handed_a_slot_passes_it_on() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire(Priority::Normal).await;
        let mut first = Box::pin(slots.acquire(Priority::High));
        assert!(futures::poll!(&mut first).is_pending());
        let s = slots.clone();
        let second = tokio::spawn(async move {
            let _slot = s.acquire(Priority::Normal).await;
        });
        while slots.waiting() < 2 {
            tokio::task::yield_now().await;
        }
        // The slot goes to `first`, which is dropped before it wakes: `second` must get it.
        drop(held);
        assert_eq!(slots.waiting(), 1);
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("the slot was passed on")
            .unwrap();
        assert_eq!(slots.taken(), 0);
        assert_eq!(slots.waiting(), 0);
    }
}
