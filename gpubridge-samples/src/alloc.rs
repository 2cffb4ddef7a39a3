//! The CLI's global allocator: mimalloc (feature `mimalloc`, on by default) with a count of the
//! bytes handed out and not yet given back, which the soak reads as Rust's live heap.
//!
//! glibc's malloc serves a million single requests a second badly: each request allocates on a
//! tokio worker and is freed on a batcher or executor thread, and such cross-thread frees take
//! the allocating arena's lock. With the two arenas the CLI used to set, `gpubridge load`
//! completed under a third of 1M offered requests/s on the H200; with 16 arenas 1M at P50 1.3 ms;
//! with mimalloc 1M at P50 0.66 ms (docs/PERFORMANCE.md, tenth session).
//!
//! The count is kept in per-thread shards (one cache line each), so that counting costs an
//! uncontended atomic add per allocation.
//!
//! `GPUBRIDGE_ALLOCATOR=system` in the environment makes the process allocate through the C
//! library's malloc instead (decided at its first allocation, before `main`; still counted):
//! `cargo xtask valgrind` runs the CLI so, because memcheck follows malloc and not mimalloc's own
//! pages.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicU8, AtomicUsize, Ordering};

const SHARDS: usize = 64;

/// One shard of the count, alone on its cache line.
#[repr(align(128))]
struct Shard(AtomicIsize);

/// mimalloc (or the C library's malloc), counting the bytes it holds for Rust.
pub(crate) struct CountingMimalloc {
    shards: [Shard; SHARDS],
    next: AtomicUsize,
    /// [`UNDECIDED`], [`MIMALLOC`] or [`SYSTEM`].
    choice: AtomicU8,
}

const UNDECIDED: u8 = 0;
const MIMALLOC: u8 = 1;
const SYSTEM: u8 = 2;

/// Whether `GPUBRIDGE_ALLOCATOR=system` is set, read without allocating.
fn system_requested() -> bool {
    // SAFETY: getenv reads the environment block, which nothing changes this early (the first
    // allocation comes before `main`); both strings are NUL-terminated.
    unsafe {
        let v = libc::getenv(c"GPUBRIDGE_ALLOCATOR".as_ptr());
        !v.is_null() && libc::strcmp(v, c"system".as_ptr()) == 0
    }
}

thread_local! {
    /// This thread's shard (`usize::MAX` until its first allocation). A const-initialised
    /// `Cell` needs no destructor and no allocation, so the allocator may read it at any time.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

impl CountingMimalloc {
    pub(crate) const fn new() -> Self {
        Self {
            shards: [const { Shard(AtomicIsize::new(0)) }; SHARDS],
            next: AtomicUsize::new(0),
            choice: AtomicU8::new(UNDECIDED),
        }
    }

    /// Whether this process allocates through the C library (decided once; threads that race
    /// to decide first read the same environment).
    pub(crate) fn system(&self) -> bool {
        match self.choice.load(Ordering::Relaxed) {
            MIMALLOC => false,
            SYSTEM => true,
            _ => {
                let system = system_requested();
                self.choice
                    .store(if system { SYSTEM } else { MIMALLOC }, Ordering::Relaxed);
                system
            }
        }
    }

    /// The allocator in use, for reports.
    pub(crate) fn name(&self) -> &'static str {
        if self.system() {
            "the C library's malloc (GPUBRIDGE_ALLOCATOR=system)"
        } else {
            "mimalloc"
        }
    }

    fn add(&self, bytes: isize) {
        let i = SHARD
            .try_with(|s| {
                let mut i = s.get();
                if i == usize::MAX {
                    // Threads take shards in turn, so that few share one.
                    i = self.next.fetch_add(1, Ordering::Relaxed) % SHARDS;
                    s.set(i);
                }
                i
            })
            .unwrap_or(0);
        self.shards[i].0.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes allocated and not yet freed, over every thread.
    pub(crate) fn live_bytes(&self) -> u64 {
        let total: isize = self
            .shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
        u64::try_from(total).unwrap_or(0)
    }
}

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

impl CountingMimalloc {
    /// The allocator every call goes to.
    fn backend(&self) -> &'static dyn GlobalAlloc {
        if self.system() {
            &System
        } else {
            &mimalloc::MiMalloc
        }
    }

    /// Counts `bytes` more when `p` is a block (not an allocation failure); returns `p`.
    fn counted(&self, p: *mut u8, bytes: isize) -> *mut u8 {
        if !p.is_null() {
            self.add(bytes);
        }
        p
    }
}

// SAFETY: every call is forwarded with the caller's arguments unchanged to one allocator, the
// same for the whole process (chosen before the first allocation returns and never changed), so
// each block is freed by the allocator that made it; the count beside it never touches memory.
unsafe impl GlobalAlloc for CountingMimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { self.backend().alloc(layout) };
        trace::allocated(p, layout.size());
        self.counted(p, signed(layout.size()))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { self.backend().alloc_zeroed(layout) };
        trace::allocated(p, layout.size());
        self.counted(p, signed(layout.size()))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        trace::freed(ptr, layout.size());
        // SAFETY: forwarded as received.
        unsafe { self.backend().dealloc(ptr, layout) };
        self.add(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { self.backend().realloc(ptr, layout, new_size) };
        if !p.is_null() {
            trace::freed(ptr, layout.size());
            trace::allocated(p, new_size);
        }
        self.counted(p, signed(new_size) - signed(layout.size()))
    }
}

/// A diagnostic: the large blocks Rust allocates after a point and keeps, each with the call
/// stack that allocated it (`gpubridge soak` arms it with `GPUBRIDGE_SOAK_TRACE_ALLOC=BYTES` at
/// the end of its warm-up, and after each reading at rest lists the blocks that outlived the
/// reading before it: what a step of the live heap at rest is made of). Off, it costs each
/// allocation and free one relaxed load.
pub(crate) mod trace {
    use std::backtrace::Backtrace;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Mutex, PoisonError};

    /// Smallest block traced; `usize::MAX` while off.
    static MIN: AtomicUsize = AtomicUsize::new(usize::MAX);
    /// Readings listed so far: a block is listed once it has outlived a whole reading.
    static EPOCH: AtomicU64 = AtomicU64::new(0);

    struct Block {
        bytes: usize,
        epoch: u64,
        listed: bool,
        stack: Backtrace,
    }

    static LIVE: Mutex<Option<HashMap<usize, Block>>> = Mutex::new(None);

    thread_local! {
        /// Set while this thread is inside the tracer: its own allocations are not traced.
        static BUSY: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f` unless this thread is already in the tracer (or is ending).
    fn outside(f: impl FnOnce()) {
        let entered = BUSY.try_with(|b| !b.replace(true)).unwrap_or(false);
        if entered {
            f();
            let _ = BUSY.try_with(|b| b.set(false));
        }
    }

    /// Traces blocks of `min_bytes` and more from now on.
    pub(crate) fn arm(min_bytes: usize) {
        MIN.store(min_bytes.max(1), Ordering::SeqCst);
    }

    /// Stops tracing (the blocks traced are forgotten).
    #[cfg(test)]
    pub(crate) fn disarm() {
        MIN.store(usize::MAX, Ordering::SeqCst);
        outside(|| drop(LIVE.lock().unwrap_or_else(PoisonError::into_inner).take()));
    }

    pub(super) fn allocated(p: *mut u8, bytes: usize) {
        if bytes < MIN.load(Ordering::Relaxed) || p.is_null() {
            return;
        }
        outside(|| {
            let stack = Backtrace::force_capture();
            let block = Block {
                bytes,
                epoch: EPOCH.load(Ordering::Relaxed),
                listed: false,
                stack,
            };
            LIVE.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(HashMap::new)
                .insert(p as usize, block);
        });
    }

    pub(super) fn freed(p: *mut u8, bytes: usize) {
        if bytes < MIN.load(Ordering::Relaxed) {
            return;
        }
        outside(|| {
            let gone = LIVE
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .and_then(|m| m.remove(&(p as usize)));
            drop(gone);
        });
    }

    /// Closes a reading: the blocks allocated before the previous call and still held, not
    /// listed before, each with its size and call stack (symbol names where the binary has its
    /// symbol table). Empty while off.
    pub(crate) fn survivors() -> String {
        let mut out = String::new();
        outside(|| {
            let epoch = EPOCH.fetch_add(1, Ordering::SeqCst);
            let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(m) = live.as_mut() else { return };
            for (addr, b) in m.iter_mut() {
                if b.epoch < epoch && !b.listed {
                    b.listed = true;
                    out.push_str(&format!(
                        "block {addr:#x}, {} bytes, allocated before reading {epoch}:\n{}\n",
                        b.bytes, b.stack
                    ));
                }
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::CountingMimalloc;
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn the_tracer_lists_a_kept_block_once_with_its_call_stack_and_forgets_a_freed_one() {
        // A size no other test of this process allocates.
        let size = 3_333_333;
        super::trace::arm(size - 1);
        let _ = super::trace::survivors();
        let kept: Vec<u8> = std::hint::black_box(Vec::with_capacity(size));
        let passing: Vec<u8> = std::hint::black_box(Vec::with_capacity(size + 1));
        // Allocated before this reading: not listed yet (it has not outlived one).
        assert!(!super::trace::survivors().contains(&format!("{size} bytes")));
        drop(passing);
        let listed = super::trace::survivors();
        super::trace::disarm();
        assert!(listed.contains(&format!(", {size} bytes")), "{listed}");
        assert!(
            !listed.contains(&format!(", {} bytes", size + 1)),
            "{listed}"
        );
        // The block's call stack: by name where this binary has its symbols (a stripped one, as
        // in the device pack, lists the frames unnamed).
        let symbols = std::backtrace::Backtrace::force_capture()
            .to_string()
            .contains("the_tracer_lists");
        let stack = if symbols { "the_tracer_lists" } else { "  1: " };
        assert!(listed.contains(stack), "no call stack: {listed}");
        assert_eq!(
            listed.matches(&format!(", {size} bytes")).count(),
            1,
            "{listed}"
        );
        drop(kept);
    }

    #[test]
    fn the_count_follows_allocations_reallocations_and_frees() {
        // An allocator of its own, so that other tests' allocations do not move its count.
        let a = CountingMimalloc::new();
        let small = Layout::from_size_align(100, 8).unwrap();
        let big = Layout::from_size_align(3 << 20, 64).unwrap();
        // SAFETY: each block is freed once with the layout it was allocated (or reallocated) with.
        unsafe {
            let p = a.alloc(small);
            let q = a.alloc_zeroed(big);
            assert!(!p.is_null() && !q.is_null());
            assert_eq!(*q.add(12345), 0);
            assert_eq!(a.live_bytes(), 100 + (3 << 20));
            let p = a.realloc(p, small, 1000);
            assert!(!p.is_null());
            assert_eq!(a.live_bytes(), 1000 + (3 << 20));
            // Another thread frees what this one allocated: the count is the process's.
            let q_addr = q as usize;
            std::thread::scope(|s| {
                s.spawn(|| a.dealloc(q_addr as *mut u8, big));
            });
            assert_eq!(a.live_bytes(), 1000);
            a.dealloc(p, Layout::from_size_align(1000, 8).unwrap());
        }
        assert_eq!(a.live_bytes(), 0);
    }
}

/// The process's allocator.
#[global_allocator]
pub(crate) static GLOBAL: CountingMimalloc = CountingMimalloc::new();
