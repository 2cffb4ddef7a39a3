//! Device memory pool (size classes, O(1) rent and return, statistics, a hard limit, trim under
//! pressure) and pinned host staging buffers.
//!
//! Both are owned by one device's executor thread, whose context is current, so neither locks.

use std::ffi::c_void;

use cudarc::driver::{result, sys};
use gpubridge_core::{Error, Result};
use gpubridge_telemetry::names;

/// Smallest allocation class, in bytes.
const MIN_CLASS: usize = 256;
/// Sub-classes per power of two: waste is at most a quarter of a request.
const SUBCLASSES: usize = 4;

/// The class index and rounded size of a request. Classes are `256`, then four steps per power of
/// two (`256, 320, 384, 448, 512, 640, ...`), so rounding wastes at most 25%.
pub fn size_class(bytes: usize) -> (usize, usize) {
    if bytes <= MIN_CLASS {
        return (0, MIN_CLASS);
    }
    let p = usize::BITS as usize - 1 - (bytes - 1).leading_zeros() as usize; // floor(log2(bytes - 1))
    let base = 1usize << p;
    let step = base / SUBCLASSES;
    let sub = (bytes - 1 - base) / step; // 0..SUBCLASSES
    let size = base + (sub + 1) * step;
    let min_p = MIN_CLASS.trailing_zeros() as usize;
    (1 + (p - min_p) * SUBCLASSES + sub, size)
}

/// Counters of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes rented out now.
    pub in_use: usize,
    /// Bytes held idle for reuse.
    pub idle: usize,
    /// Highest `in_use + idle` seen.
    pub peak: usize,
    /// Rents served from idle memory.
    pub hits: u64,
    /// Rents that allocated.
    pub misses: u64,
    /// Rents refused (limit or device out of memory after a trim).
    pub failures: u64,
    /// Idle bytes released by trims.
    pub trimmed: usize,
}

/// One rented device allocation.
#[derive(Debug)]
pub struct DeviceBuffer {
    /// Device pointer.
    pub ptr: sys::CUdeviceptr,
    /// Class size in bytes (at least the request).
    pub size: usize,
    class: usize,
}

/// A device's memory pool. Allocations are `cuMemAlloc` of class sizes, kept on per-class free
/// lists when returned.
#[derive(Debug)]
pub struct DevicePool {
    label: String,
    free: Vec<Vec<sys::CUdeviceptr>>,
    /// Per class: rented since the last [`DevicePool::release_unused`].
    rented: Vec<bool>,
    limit: usize,
    stats: PoolStats,
}

impl DevicePool {
    /// A pool for device `label` that never holds more than `limit` bytes.
    pub fn new(label: String, limit: usize) -> Self {
        Self {
            label,
            free: Vec::new(),
            rented: Vec::new(),
            limit,
            stats: PoolStats::default(),
        }
    }

    /// Statistics now.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// Rents at least `bytes`. O(1) when a buffer of the class is idle.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the limit or the device refuses, after trimming idle memory
    /// and retrying once. Counted in `gpubridge_allocation_failures_total`.
    pub fn rent(&mut self, bytes: usize) -> Result<DeviceBuffer> {
        let (class, size) = size_class(bytes.max(1));
        if self.rented.len() <= class {
            self.rented.resize(class + 1, false);
        }
        self.rented[class] = true;
        if let Some(ptr) = self.free.get_mut(class).and_then(Vec::pop) {
            self.stats.hits += 1;
            self.stats.idle -= size;
            self.stats.in_use += size;
            return Ok(DeviceBuffer { ptr, size, class });
        }
        self.stats.misses += 1;
        if self.stats.in_use + self.stats.idle + size > self.limit {
            self.trim();
            if self.stats.in_use + size > self.limit {
                return Err(self.refuse(size, "pool limit (memory.pool_size_mb) reached"));
            }
        }
        // SAFETY: the executor thread owns this pool and has the device's context current.
        let ptr = match unsafe { result::malloc_sync(size) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                self.trim();
                // SAFETY: as above.
                unsafe { result::malloc_sync(size) }
                    .map_err(|e| self.refuse(size, &format!("cuMemAlloc: {e}")))?
            }
            Err(e) => return Err(crate::executor::driver_error(&self.label, "cuMemAlloc", e)),
        };
        self.stats.in_use += size;
        self.stats.peak = self.stats.peak.max(self.stats.in_use + self.stats.idle);
        self.gauges();
        Ok(DeviceBuffer { ptr, size, class })
    }

    /// Returns a buffer for reuse. O(1).
    pub fn give_back(&mut self, buf: DeviceBuffer) {
        if self.free.len() <= buf.class {
            self.free.resize_with(buf.class + 1, Vec::new);
        }
        self.free[buf.class].push(buf.ptr);
        self.stats.in_use -= buf.size;
        self.stats.idle += buf.size;
    }

    /// Frees the idle buffers of every size class that no rent asked for since the previous call,
    /// and starts a new period. Called every `memory.idle_release_s` ([`IDLE_RELEASE_EVERY`] by
    /// default) by the executor, so that idle memory follows the classes in use: a workload whose
    /// shapes drift (graph-cache evictions returning one set of classes while new captures rent
    /// others) does not keep every class it ever used.
    pub fn release_unused(&mut self) {
        let rented = std::mem::take(&mut self.rented);
        if self.free_idle(|class| !rented.get(class).copied().unwrap_or(false)) {
            self.gauges();
        }
        self.rented = rented;
        self.rented.iter_mut().for_each(|r| *r = false);
    }

    /// Frees every idle buffer.
    pub fn trim(&mut self) {
        self.free_idle(|_| true);
        self.gauges();
    }

    /// Frees the idle buffers of the size classes `which` picks; whether any were freed.
    fn free_idle(&mut self, which: impl Fn(usize) -> bool) -> bool {
        let mut freed = false;
        for (class, list) in self.free.iter_mut().enumerate() {
            if list.is_empty() || !which(class) {
                continue;
            }
            let size = class_size(class);
            for ptr in list.drain(..) {
                // SAFETY: `ptr` came from `cuMemAlloc` in this context and is not in use.
                if let Err(e) = unsafe { result::free_sync(ptr) } {
                    tracing::warn!(device = %self.label, "cuMemFree failed freeing idle memory: {e}");
                }
                self.stats.idle -= size;
                self.stats.trimmed += size;
            }
            freed = true;
        }
        freed
    }

    fn refuse(&mut self, size: usize, reason: &str) -> Error {
        self.stats.failures += 1;
        metrics::counter!(names::ALLOCATION_FAILURES_TOTAL, "device" => self.label.clone(), "reason" => "out_of_memory")
            .increment(1);
        Error::OutOfMemory {
            device: self.label.clone(),
            requested: size,
            reason: reason.to_owned(),
        }
    }

    fn gauges(&self) {
        gpubridge_telemetry::record_pool_bytes(
            &self.label,
            self.stats.in_use as u64,
            self.stats.idle as u64,
        );
    }
}

/// How often the executor releases the idle memory of size classes nobody rented meanwhile by
/// default (`memory.idle_release_s`; see [`DevicePool::release_unused`]): idle memory of an
/// unused class lives 30 to 60 seconds.
pub const IDLE_RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

fn class_size(class: usize) -> usize {
    if class == 0 {
        return MIN_CLASS;
    }
    let p = (class - 1) / SUBCLASSES + MIN_CLASS.trailing_zeros() as usize;
    let sub = (class - 1) % SUBCLASSES;
    let base = 1usize << p;
    base + (sub + 1) * (base / SUBCLASSES)
}

impl Drop for DevicePool {
    fn drop(&mut self) {
        self.trim();
    }
}

/// `CU_MEMHOSTALLOC_DEVICEMAP`: the allocation is also mapped into the device's address space.
const DEVICEMAP: u32 = 0x02;

/// Page-locked host memory for staging copies, grown on demand. A [`PinnedBuffer::mapped`] one is
/// also mapped into the device's address space, so kernels can read and write it directly over
/// the bus (zero-copy) for tiny plans.
#[derive(Debug)]
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
    flags: u32,
    device: sys::CUdeviceptr,
}

// SAFETY: the buffer is plain host memory owned by this value; moving it between threads is sound.
unsafe impl Send for PinnedBuffer {}

impl PinnedBuffer {
    /// An empty staging buffer (allocates nothing).
    pub fn empty() -> Self {
        Self {
            ptr: std::ptr::null_mut(),
            len: 0,
            flags: 0,
            device: 0,
        }
    }

    /// An empty buffer that, once allocated, is mapped into the device's address space.
    pub fn mapped() -> Self {
        Self {
            flags: DEVICEMAP,
            ..Self::empty()
        }
    }

    /// Makes the buffer at least `len` bytes (contents are not kept).
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the driver cannot pin (and map) that much.
    pub fn ensure(&mut self, len: usize, label: &str) -> Result<()> {
        if len <= self.len {
            return Ok(());
        }
        self.release();
        let want = len.next_power_of_two().max(64 << 10);
        let oom = |what: &str, e: result::DriverError| Error::OutOfMemory {
            device: label.to_owned(),
            requested: want,
            reason: format!("{what} (pinned staging): {e}"),
        };
        // SAFETY: the calling thread has the device's context current.
        let host = unsafe { result::malloc_host(want, self.flags) }
            .map_err(|e| oom("cuMemHostAlloc", e))?;
        if self.flags & DEVICEMAP != 0 {
            let mut device: sys::CUdeviceptr = 0;
            // SAFETY: `host` was just allocated with DEVICEMAP in this context; `device` is a valid
            // out-pointer.
            let rc = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host, 0) };
            if rc != sys::CUresult::CUDA_SUCCESS {
                // SAFETY: allocated above, never used.
                let _ = unsafe { result::free_host(host) };
                return Err(oom("cuMemHostGetDevicePointer", result::DriverError(rc)));
            }
            self.device = device;
        }
        self.ptr = host.cast::<u8>();
        self.len = want;
        Ok(())
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// The device address of byte 0 of a [`PinnedBuffer::mapped`] buffer (0 otherwise).
    pub fn device_ptr(&self) -> sys::CUdeviceptr {
        self.device
    }

    /// The host address of byte 0 (null before the first [`PinnedBuffer::ensure`]), for words
    /// the device writes while no slice of the buffer is borrowed (a graph's signal word).
    pub fn host_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// The first `len` bytes (at most the buffer's size).
    pub fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        if self.ptr.is_null() {
            return &mut [];
        }
        // SAFETY: `ptr` points to `self.len` bytes we own exclusively; `len` is clamped to it.
        // The device touches them only between an enqueue and the wait that follows it, never
        // while this borrow is used.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len.min(self.len)) }
    }

    fn release(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from `cuMemHostAlloc` and no copy or kernel is using it (callers
            // wait for the stream before growing or dropping the buffer, or for a graph's signal
            // word, the last thing that graph writes).
            if let Err(e) = unsafe { result::free_host(self.ptr.cast::<c_void>()) } {
                tracing::warn!("cuMemFreeHost failed: {e}");
            }
            self.ptr = std::ptr::null_mut();
            self.len = 0;
            self.device = 0;
        }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_requests_with_bounded_waste() {
        let mut last = (0, 0);
        for bytes in (1..5000).chain([1 << 20, (1 << 20) + 1, 3 << 20, 1 << 30]) {
            let (class, size) = size_class(bytes);
            assert!(size >= bytes, "{bytes} -> {size}");
            assert!(
                bytes <= MIN_CLASS || (size as f64) <= bytes as f64 * 1.25 + 1.0,
                "{bytes} -> {size}"
            );
            assert_eq!(class_size(class), size, "class {class} of {bytes}");
            assert!(class >= last.0, "classes are monotonic");
            last = (class, size);
        }
        assert_eq!(size_class(256), (0, 256));
        assert_eq!(size_class(257), (1, 320));
        assert_eq!(size_class(512), (4, 512));
        assert_eq!(size_class(513), (5, 640));
    }
}
