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
        self.counted(p, signed(layout.size()))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { self.backend().alloc_zeroed(layout) };
        self.counted(p, signed(layout.size()))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { self.backend().dealloc(ptr, layout) };
        self.add(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { self.backend().realloc(ptr, layout, new_size) };
        self.counted(p, signed(new_size) - signed(layout.size()))
    }
}

#[cfg(test)]
mod tests {
    use super::CountingMimalloc;
    use std::alloc::{GlobalAlloc, Layout};

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
