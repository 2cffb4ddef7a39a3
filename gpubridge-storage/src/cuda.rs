//! CUDA device memory on the other side of a transfer, and every `unsafe` of the staged path.
//!
//! Each worker owns a lane: a stream, two pinned bounce buffers and an event per buffer. A load
//! reads a chunk into one buffer and enqueues its host-to-device copy, then reads the next chunk
//! into the other buffer while the first copy runs; a buffer is reused only after its event says
//! its copy finished. A save is the mirror image. Lanes are kept between transfers (pinning is
//! slow) and never exceed `storage.max_pinned_memory_mb` in all.
//!
//! # Stream ordering
//! The lanes' streams first wait for an event recorded on the buffer's own stream (so earlier
//! work on the buffer, such as a kernel writing it, is ordered before a save reads it, and a
//! load never overwrites what a pending kernel still reads). Every lane is synchronised before
//! the transfer returns, so later work on any stream sees the bytes.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, DeviceSlice,
};
use gpubridge_core::{BackendKind, Error, Result};
use parking_lot::{Condvar, Mutex};

use crate::engine::Job;
use crate::file::{Source, Target};
use crate::plan::Task;

/// A driver error as core's error.
pub(crate) fn driver_error(what: &str, e: result::DriverError) -> Error {
    if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        return Error::OutOfMemory {
            device: "cuda".to_owned(),
            requested: 0,
            reason: format!("{what}: {e}"),
        };
    }
    Error::Backend {
        backend: BackendKind::Cuda,
        message: format!("{what}: {e}"),
        transient: false,
    }
}

/// A context on CUDA device `ordinal`, or the reason there is none (no driver library, no
/// device). Checks for the driver library first: cudarc panics on first use without it.
///
/// # Errors
/// [`Error::Unsupported`] with the reason.
pub fn cuda_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    let unsupported = |what: String| Error::Unsupported {
        backend: BackendKind::Cuda,
        what,
    };
    // SAFETY: only tries to dlopen the driver library; no preconditions.
    if !unsafe { sys::is_culib_present() } {
        return Err(unsupported(
            "libcuda.so.1 not found (no NVIDIA driver installed)".to_owned(),
        ));
    }
    CudaContext::new(ordinal).map_err(|e| unsupported(format!("device {ordinal}: {e}")))
}

/// How a lane's bounce buffers were page-locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceMemory {
    /// Anonymous memory starting on a 2 MiB boundary, offered to transparent huge pages
    /// (`madvise(MADV_HUGEPAGE)`) and page-locked with `cuMemHostRegister`: an `O_DIRECT` read
    /// into it reaches the disk as a few large physically contiguous segments.
    RegisteredHugePages,
    /// `cuMemHostAlloc` (flags 0): the driver's page-locked memory, where the kernel has it
    /// refused huge pages or registration failed.
    HostAlloc,
}

impl BounceMemory {
    /// A short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            BounceMemory::RegisteredHugePages => "registered huge pages",
            BounceMemory::HostAlloc => "cuMemHostAlloc",
        }
    }
}

/// The transparent huge page size the bounce buffers are aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// Page-locked host memory, freed on drop.
struct Pinned {
    ptr: *mut u8,
    len: usize,
    /// The mapping's length, for `munmap` (registered memory only).
    mapped: usize,
    kind: BounceMemory,
    ctx: Arc<CudaContext>,
}

// SAFETY: plain host memory owned by this value; the lane that holds it synchronises its stream
// before the memory is touched by another thread or freed.
unsafe impl Send for Pinned {}

impl Pinned {
    /// `len` bytes of page-locked memory: registered huge pages where the kernel and driver
    /// allow, else `cuMemHostAlloc`. On the H200 machine's virtio disk (runs AA to AC), one
    /// reader's `O_DIRECT` reads of 4 MiB into `cuMemHostAlloc` memory ran 11-34% slower than
    /// into registered heap memory (for example 1.63 against 2.47 GB/s).
    fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        ctx.bind_to_thread()
            .map_err(|e| driver_error("binding the context", e))?;
        match Self::registered(ctx, len) {
            Ok(p) => Ok(p),
            Err(why) => {
                static ONCE: std::sync::Once = std::sync::Once::new();
                ONCE.call_once(|| {
                    tracing::info!("storage bounce buffers from cuMemHostAlloc: {why}");
                });
                Self::host_alloc(ctx, len)
            }
        }
    }

    fn registered(ctx: &Arc<CudaContext>, len: usize) -> std::result::Result<Self, String> {
        // Exactly the buffer in whole pages (the pinned-memory cap counts it so), starting on a
        // huge page boundary: every whole 2 MiB of it can be a huge page.
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two() && *p <= HUGE_PAGE)
            .ok_or_else(|| "no usable page size".to_owned())?;
        let mapped = len.max(1).next_multiple_of(page);
        let whole = mapped + HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                whole,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let start = raw as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        // SAFETY: the head and tail cut off lie inside the mapping just made, outside the
        // aligned `mapped` bytes kept, and are whole pages (`start`, `aligned` and `mapped` are
        // page multiples). A failure leaves them mapped: memory kept, not unsound.
        unsafe {
            if aligned > start && libc::munmap(raw, aligned - start) != 0 {
                tracing::warn!("munmap: {}", std::io::Error::last_os_error());
            }
            let end = aligned + mapped;
            if start + whole > end && libc::munmap(end as *mut c_void, start + whole - end) != 0 {
                tracing::warn!("munmap: {}", std::io::Error::last_os_error());
            }
        }
        let ptr = aligned as *mut c_void;
        // SAFETY: `ptr .. ptr + mapped` is this mapping. A kernel without transparent huge pages
        // refuses the first advice, and the memory is then ordinary pages (still registered);
        // the second keeps a forked child from sharing the locked pages copy-on-write.
        unsafe {
            libc::madvise(ptr, mapped, libc::MADV_HUGEPAGE);
            libc::madvise(ptr, mapped, libc::MADV_DONTFORK);
        }
        // SAFETY: the context is current; the range is mapped, page-aligned, and stays mapped
        // until `Drop` unregisters it first.
        let rc = unsafe { sys::cuMemHostRegister_v2(ptr, mapped, 0) };
        if rc != sys::CUresult::CUDA_SUCCESS {
            // SAFETY: the mapping made above, not registered.
            unsafe { libc::munmap(ptr, mapped) };
            return Err(format!("cuMemHostRegister: {rc:?}"));
        }
        Ok(Self {
            ptr: ptr.cast::<u8>(),
            len,
            mapped,
            kind: BounceMemory::RegisteredHugePages,
            ctx: ctx.clone(),
        })
    }

    fn host_alloc(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        // SAFETY: the context is current on this thread; flags 0 asks for plain pinned memory
        // (cacheable, so that a save's memcpy out of it is fast).
        let ptr = unsafe { result::malloc_host(len, 0) }.map_err(|e| Error::OutOfMemory {
            device: format!("cuda:{} (pinned host memory)", ctx.ordinal()),
            requested: len,
            reason: format!("cuMemHostAlloc: {e}"),
        })?;
        Ok(Self {
            ptr: ptr.cast::<u8>(),
            len,
            mapped: 0,
            kind: BounceMemory::HostAlloc,
            ctx: ctx.clone(),
        })
    }

    /// The first `n` bytes (at most the buffer's size).
    fn slice_mut(&mut self, n: usize) -> &mut [u8] {
        // SAFETY: `ptr` owns `len` bytes; `n` is clamped to it. The device touches them only
        // between a copy's enqueue and the wait on its event, and the lane never hands out a
        // slice of a buffer whose copy is pending.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, n.min(self.len)) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.bind_to_thread() {
            tracing::warn!("binding the context to free pinned memory failed: {e}");
            return;
        }
        match self.kind {
            BounceMemory::RegisteredHugePages => {
                // SAFETY: registered by `registered` in this context; the lane synchronised
                // its stream before dropping, so no copy uses it; unmapped only once unregistered.
                let rc = unsafe { sys::cuMemHostUnregister(self.ptr.cast::<c_void>()) };
                if rc != sys::CUresult::CUDA_SUCCESS {
                    // Still locked by the driver: leaked rather than unmapped under it.
                    tracing::warn!("cuMemHostUnregister failed: {rc:?}");
                    return;
                }
                // SAFETY: the mapping made by `registered`, no longer registered or used.
                unsafe { libc::munmap(self.ptr.cast::<c_void>(), self.mapped) };
            }
            BounceMemory::HostAlloc => {
                // SAFETY: allocated by cuMemHostAlloc in this context; the lane synchronised
                // its stream before dropping, so no copy uses it.
                if let Err(e) = unsafe { result::free_host(self.ptr.cast::<c_void>()) } {
                    tracing::warn!("cuMemFreeHost failed: {e}");
                }
            }
        }
    }
}

/// One worker's CUDA resources.
pub(crate) struct Lane {
    stream: Arc<CudaStream>,
    bufs: [Pinned; 2],
    events: [CudaEvent; 2],
    pending: [bool; 2],
    next: usize,
    bounce: usize,
    ctx: Arc<CudaContext>,
}

impl Lane {
    fn new(ctx: &Arc<CudaContext>, bounce: usize) -> Result<Self> {
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_error("cuStreamCreate", e))?;
        let event = || {
            ctx.new_event(None)
                .map_err(|e| driver_error("cuEventCreate", e))
        };
        Ok(Self {
            bufs: [Pinned::new(ctx, bounce)?, Pinned::new(ctx, bounce)?],
            events: [event()?, event()?],
            stream,
            pending: [false; 2],
            next: 0,
            bounce,
            ctx: ctx.clone(),
        })
    }

    /// How its bounce buffers were locked: registered huge pages only if both are.
    fn memory(&self) -> BounceMemory {
        if self
            .bufs
            .iter()
            .all(|b| b.kind == BounceMemory::RegisteredHugePages)
        {
            BounceMemory::RegisteredHugePages
        } else {
            BounceMemory::HostAlloc
        }
    }

    /// Waits for buffer `k`'s copy, if one is pending.
    fn settle(&mut self, k: usize) -> Result<()> {
        if self.pending[k] {
            self.events[k]
                .synchronize()
                .map_err(|e| driver_error("cuEventSynchronize", e))?;
            self.pending[k] = false;
        }
        Ok(())
    }

    fn record(&mut self, k: usize) -> Result<()> {
        self.events[k]
            .record(&self.stream)
            .map_err(|e| driver_error("cuEventRecord", e))?;
        self.pending[k] = true;
        Ok(())
    }

    fn quiesce(&mut self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("cuStreamSynchronize", e))?;
        self.pending = [false; 2];
        Ok(())
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        // The pinned buffers are freed after this; no copy may still use them.
        if let Err(e) = self.stream.synchronize() {
            tracing::warn!("synchronising a storage stream before freeing it failed: {e}");
        }
    }
}

struct LaneState {
    idle: Vec<Lane>,
    alive: usize,
}

/// The lanes kept between transfers: at most `max` exist at once (the pinned-memory cap).
pub(crate) struct LanePool {
    state: Mutex<LaneState>,
    freed: Condvar,
    max: usize,
    bounce: usize,
    /// How the last lane made locked its bounce buffers.
    memory: Mutex<Option<BounceMemory>>,
}

impl LanePool {
    /// A pool of at most `max` lanes with two `bounce`-byte buffers each.
    pub(crate) fn new(max: usize, bounce: usize) -> Self {
        Self {
            state: Mutex::new(LaneState {
                idle: Vec::new(),
                alive: 0,
            }),
            freed: Condvar::new(),
            max: max.max(1),
            bounce,
            memory: Mutex::new(None),
        }
    }

    /// How the bounce buffers of the last lane made were page-locked (`None` before the first).
    pub(crate) fn bounce_memory(&self) -> Option<BounceMemory> {
        *self.memory.lock()
    }

    /// Bytes of pinned memory held now (lanes in use and idle).
    pub(crate) fn pinned_bytes(&self) -> usize {
        self.state.lock().alive * 2 * self.bounce
    }

    fn take(&self, ctx: &Arc<CudaContext>) -> Result<Lane> {
        let mut st = self.state.lock();
        loop {
            if let Some(i) = st.idle.iter().position(|l| l.ctx == *ctx) {
                return Ok(st.idle.swap_remove(i));
            }
            if st.alive < self.max {
                st.alive += 1;
                drop(st);
                return Lane::new(ctx, self.bounce)
                    .inspect(|lane| *self.memory.lock() = Some(lane.memory()))
                    .inspect_err(|_| self.discard());
            }
            if let Some(other) = st.idle.pop() {
                // An idle lane of another device makes room for one of this device.
                st.alive -= 1;
                drop(st);
                drop(other);
                st = self.state.lock();
                continue;
            }
            // Every lane is busy with another transfer: a lane's holder never waits for a lane,
            // so one comes back.
            self.freed.wait(&mut st);
        }
    }

    fn give(&self, lane: Lane) {
        self.state.lock().idle.push(lane);
        self.freed.notify_one();
    }

    fn discard(&self) {
        self.state.lock().alive -= 1;
        self.freed.notify_one();
    }

    fn finish(&self, mut lane: Lane) -> Result<()> {
        match lane.quiesce() {
            Ok(()) => {
                self.give(lane);
                Ok(())
            }
            Err(e) => {
                drop(lane);
                self.discard();
                Err(e)
            }
        }
    }
}

/// A CUDA buffer's device address and what orders the transfer after earlier work on it.
pub(crate) struct DeviceSide {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) len: usize,
    ready: CudaEvent,
}

impl DeviceSide {
    fn new(stream: &Arc<CudaStream>, ptr: sys::CUdeviceptr, len: usize) -> Result<Self> {
        let ready = stream
            .record_event(None)
            .map_err(|e| driver_error("cuEventRecord", e))?;
        Ok(Self {
            ctx: stream.context().clone(),
            ptr,
            len,
            ready,
        })
    }

    /// Makes `stream` wait for the buffer's earlier work.
    #[cfg_attr(not(feature = "gds"), allow(dead_code))] // cuFile waits on the host instead.
    pub(crate) fn wait_on_host(&self) -> Result<()> {
        self.ready
            .synchronize()
            .map_err(|e| driver_error("cuEventSynchronize", e))
    }
}

/// Runs `f` with the device side of `dst` (a load destination). cudarc's event tracking is
/// honoured: the buffer's stream is told the transfer wrote it.
pub(crate) fn with_dest<T>(
    mut dst: CudaViewMut<'_, u8>,
    f: impl FnOnce(&DeviceSide) -> Result<T>,
) -> Result<T> {
    let stream = dst.stream().clone();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| driver_error("binding the context", e))?;
    let len = dst.len();
    let (ptr, _written) = dst.device_ptr_mut(&stream);
    let side = DeviceSide::new(&stream, ptr, len)?;
    f(&side)
}

/// Runs `f` with the device side of `src` (a save source).
pub(crate) fn with_src<T>(
    src: CudaView<'_, u8>,
    f: impl FnOnce(&DeviceSide) -> Result<T>,
) -> Result<T> {
    let stream = src.stream().clone();
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| driver_error("binding the context", e))?;
    let len = src.len();
    let (ptr, _read) = src.device_ptr(&stream);
    let side = DeviceSide::new(&stream, ptr, len)?;
    f(&side)
}

/// Load into device memory through the lanes.
pub(crate) struct CudaLoad<'a> {
    pub(crate) src: &'a Source,
    pub(crate) dst: &'a DeviceSide,
    pub(crate) lanes: &'a LanePool,
}

impl Job for CudaLoad<'_> {
    type Piece = ();
    type Worker = Lane;

    fn worker(&self) -> Result<Lane> {
        let lane = self.lanes.take(&self.dst.ctx)?;
        if let Err(e) = lane.stream.wait(&self.dst.ready) {
            self.lanes.give(lane);
            return Err(driver_error("cuStreamWaitEvent", e));
        }
        Ok(lane)
    }

    fn run(&self, lane: &mut Lane, task: &Task, (): ()) -> Result<()> {
        let end = task.buf_offset + task.len;
        if end > self.dst.len {
            return Err(Error::Backend {
                backend: BackendKind::Cuda,
                message: format!(
                    "storage task {}..{end} outside a {}-byte buffer",
                    task.buf_offset, self.dst.len
                ),
                transient: false,
            });
        }
        let mut done = 0;
        while done < task.len {
            let n = (task.len - done).min(lane.bounce);
            let k = lane.next;
            lane.settle(k)?;
            let staged = lane.bufs[k].slice_mut(n);
            self.src
                .read_exact_at(staged, task.file_offset + done as u64)?;
            let at = self.dst.ptr + (task.buf_offset + done) as u64;
            // SAFETY: `at..at + n` lies inside the destination (checked above against its
            // length); `staged` is pinned and stays untouched until event `k` is waited on
            // (`settle`), and the lane is synchronised before it is dropped or reused.
            unsafe { result::memcpy_htod_async(at, staged, lane.stream.cu_stream()) }
                .map_err(|e| driver_error("cuMemcpyHtoDAsync", e))?;
            lane.record(k)?;
            lane.next ^= 1;
            done += n;
        }
        Ok(())
    }

    fn finish(&self, lane: Lane) -> Result<()> {
        self.lanes.finish(lane)
    }
}

/// Save from device memory through the lanes.
pub(crate) struct CudaSave<'a> {
    pub(crate) dst: &'a Target,
    pub(crate) src: &'a DeviceSide,
    pub(crate) lanes: &'a LanePool,
}

impl Job for CudaSave<'_> {
    type Piece = ();
    type Worker = Lane;

    fn worker(&self) -> Result<Lane> {
        let lane = self.lanes.take(&self.src.ctx)?;
        if let Err(e) = lane.stream.wait(&self.src.ready) {
            self.lanes.give(lane);
            return Err(driver_error("cuStreamWaitEvent", e));
        }
        Ok(lane)
    }

    fn run(&self, lane: &mut Lane, task: &Task, (): ()) -> Result<()> {
        let end = task.buf_offset + task.len;
        if end > self.src.len {
            return Err(Error::Backend {
                backend: BackendKind::Cuda,
                message: format!(
                    "storage task {}..{end} outside a {}-byte buffer",
                    task.buf_offset, self.src.len
                ),
                transient: false,
            });
        }
        // Chunk i's copy to the host runs while chunk i - 1 is written to the file.
        let mut written: Option<(usize, u64, usize)> = None;
        let mut done = 0;
        while done < task.len {
            let n = (task.len - done).min(lane.bounce);
            let k = lane.next;
            lane.settle(k)?;
            let at = self.src.ptr + (task.buf_offset + done) as u64;
            let staged = lane.bufs[k].slice_mut(n);
            // SAFETY: `at..at + n` lies inside the source (checked above); `staged` is pinned and
            // is not read until event `k` has been waited on.
            unsafe { result::memcpy_dtoh_async(staged, at, lane.stream.cu_stream()) }
                .map_err(|e| driver_error("cuMemcpyDtoHAsync", e))?;
            lane.record(k)?;
            if let Some((pk, offset, len)) = written.take() {
                lane.settle(pk)?;
                self.dst
                    .write_all_at(lane.bufs[pk].slice_mut(len), offset)?;
            }
            written = Some((k, task.file_offset + done as u64, n));
            lane.next ^= 1;
            done += n;
        }
        if let Some((pk, offset, len)) = written {
            lane.settle(pk)?;
            self.dst
                .write_all_at(lane.bufs[pk].slice_mut(len), offset)?;
        }
        Ok(())
    }

    fn finish(&self, lane: Lane) -> Result<()> {
        self.lanes.finish(lane)
    }
}
