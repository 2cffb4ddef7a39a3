//! File to device I/O for gpubridge (the original's `GpuDirectStorageProvider`): load a file, or
//! a byte range of one, into host memory, CUDA device memory or any backend's buffer, and save a
//! buffer (or a range of one) to a file. Same API and same bytes whichever way they travel.
//!
//! # Two paths, chosen per file
//! 1. **cuFile** (GPUDirect Storage, feature `gds`, CUDA device memory only): taken when
//!    `storage.enable_gpu_direct_storage` is set, the file is under `storage.mount_point` (when
//!    one is set), `libcufile` loads, the driver opens and the file's handle registers. Otherwise
//!    the reason is logged once (`tracing`, info) and counted in
//!    `gpubridge_storage_gds_declined_total{reason}`, and the transfer goes host-staged.
//! 2. **Host-staged** (always there, in the manner of NVIDIA's KvikIO): the range is cut into
//!    tasks of `storage.task_size_kb`; a pool of `storage.threads` workers reads them, the
//!    4 KiB-aligned body with `O_DIRECT` (the unaligned head and tail through the page cache),
//!    into per-worker pinned bounce buffers of `storage.bounce_buffer_kb`, two per worker: while
//!    one buffer's asynchronous host-to-device copy runs, the next chunk is read into the other.
//!    Pinned memory never exceeds `storage.max_pinned_memory_mb`. Saves are the mirror image.
//!    For host memory the bounce buffers are plain aligned memory, and aligned pieces of the
//!    caller's buffer are read into directly. A file system that refuses `O_DIRECT` (tmpfs) is
//!    read through the page cache, and [`Transfer::buffered`] says why.
//!
//! Every transfer adds its bytes to `gpubridge_storage_bytes_total{path="gds"|"staged"}`.
//!
//! # Writes are all or nothing
//! A save writes a temporary file beside the target, fsyncs it, renames it over the target and
//! fsyncs the directory: a crash or an error (disk full, a device error) never leaves a file at
//! the target's path that looks complete but is not. The temporary file's blocks are allocated
//! before the first write (`fallocate`), so a disk that cannot hold the file fails the save with
//! [`IoErrorKind::DiskFull`] at once, and the workers' `O_DIRECT` writes land in allocated
//! blocks, which ext4 and XFS let run side by side.
//!
//! # Errors
//! Typed, as [`Error::Io`] with an [`IoErrorKind`]: `NotFound`, `PermissionDenied`,
//! `Truncated` (the range goes past the end of the file), `ShortRead` (the file shrank while
//! read), `DiskFull`, `Other`. Driver failures are [`Error::Backend`] or [`Error::OutOfMemory`].
//! Nothing here panics on bad input.
//!
//! # Example
//! ```
//! use gpubridge_core::BridgeConfig;
//! use gpubridge_storage::{Dest, Src, Storage};
//!
//! # fn main() -> gpubridge_core::Result<()> {
//! let storage = Storage::new(&BridgeConfig::default())?;
//! let path = std::env::temp_dir().join(format!("gpubridge-doc-{}", std::process::id()));
//! let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
//! storage.write(Src::Host(&data), &path)?;
//!
//! // Bytes 100..5100 of the file, into host memory (blocking).
//! let mut back = vec![0u8; 5000];
//! let t = storage.read(&path, 100, Dest::Host(&mut back))?;
//! assert_eq!(back, data[100..5100]);
//! assert_eq!(t.bytes, 5000);
//!
//! // The same, asynchronously, on any executor.
//! let (whole, _) = futures::executor::block_on(storage.load(&path, None))?;
//! assert_eq!(whole, data);
//! # std::fs::remove_file(&path).ok();
//! # Ok(()) }
//! ```
//!
//! With feature `cuda`, `Dest::Cuda` and `Src::Cuda` take a cudarc `CudaViewMut<u8>` /
//! `CudaView<u8>` (a whole `CudaSlice<u8>` through `as_view_mut()`, or any range of one), and
//! `Storage::load_cuda` allocates and fills a `CudaSlice<u8>` on a stream. Buffers of the wgpu
//! and CPU backends go through [`DeviceRange`] and [`DeviceView`], which work for any
//! implementation of core's [`gpubridge_core::device::Device`].

pub mod blocking;
mod device;
mod engine;
mod file;
mod host;
mod plan;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "gds")]
mod gds;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpubridge_core::config::StorageConfig;
use gpubridge_core::{BridgeConfig, Error, IoErrorKind, Result};
use gpubridge_telemetry::names;
use parking_lot::Mutex;

pub use device::{DeviceRange, DeviceRead, DeviceView, DeviceWrite};
pub use file::evict_from_page_cache;

#[cfg(feature = "cuda")]
pub use cuda::{cuda_context, BounceMemory};
#[cfg(feature = "cuda")]
pub use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut};

use file::{Source, Target};

/// Which path a transfer took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// cuFile (GPUDirect Storage).
    Gds,
    /// The host-staged path: a thread pool, `O_DIRECT` reads or writes, bounce buffers.
    Staged,
}

impl Route {
    /// The `path` label of `gpubridge_storage_bytes_total`: `gds` or `staged`.
    pub fn name(self) -> &'static str {
        match self {
            Route::Gds => "gds",
            Route::Staged => "staged",
        }
    }
}

/// What one transfer did.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// Bytes moved.
    pub bytes: u64,
    /// The path taken.
    pub route: Route,
    /// For CUDA device memory: why cuFile was not taken (`None` when it was, and for host and
    /// other backends' memory, where it does not apply).
    pub gds_declined: Option<String>,
    /// For the staged path: why the file's aligned body went through the page cache instead of
    /// `O_DIRECT` (tmpfs refuses it, or `storage.direct_io = false`); `None` when `O_DIRECT` was
    /// used or the range has no aligned body.
    pub buffered: Option<String>,
    /// Anything else worth knowing (a cuFile knob or buffer registration the driver refused).
    pub note: Option<String>,
    /// Tasks the range was cut into.
    pub tasks: usize,
    /// Workers that moved them (at most at once; for a read that probed its depth, the depth the
    /// rest of the read ran at).
    pub workers: usize,
    /// For a large `O_DIRECT` read with `storage.adaptive_depth`: what its first tasks measured
    /// with one reader and with `storage.threads` (`None` when the read did not probe: a depth
    /// for the file's device was measured in the last minute, the read was too small, or it went
    /// through the page cache).
    pub depth_probe: Option<DepthProbe>,
    /// Wall time of the whole transfer (open to close, rename and fsyncs included for a save).
    pub elapsed: Duration,
    /// Where [`Transfer::elapsed`] went.
    pub phases: Phases,
}

/// What a read's first tasks measured (see [`Transfer::depth_probe`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthProbe {
    /// Bytes per second read by one worker.
    pub one_reader: f64,
    /// Bytes per second read by `readers` workers at once.
    pub many_readers: f64,
    /// The workers of `many_readers`.
    pub readers: usize,
    /// The depth chosen for the rest of the read, and remembered for the file's device.
    pub chosen: usize,
}

/// A transfer's wall time by phase (they add up to about [`Transfer::elapsed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Opening the file and checking the range (a load), or creating the temporary file and
    /// allocating its blocks (a save).
    pub open: Duration,
    /// A declined cuFile attempt for CUDA device memory (opening the driver, once per process;
    /// registering the file): what it cost before the staged path started. Zero where cuFile does
    /// not apply, and when it was taken (its setup is then part of `transfer`).
    pub gds_attempt: Duration,
    /// Moving the bytes (either path), until the last of them is in place.
    pub transfer: Duration,
    /// A save's fsync of the temporary file, rename and directory fsync; zero for a load.
    pub commit: Duration,
}

impl Transfer {
    /// Bytes per second over [`Transfer::elapsed`].
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Where a load puts the file's bytes. The load reads exactly `len()` bytes.
///
/// Non-exhaustive: the `Cuda` variant exists only with feature `cuda`.
#[non_exhaustive]
pub enum Dest<'a> {
    /// Host memory (the CPU backend's buffers, any slice).
    Host(&'a mut [u8]),
    /// CUDA device memory: a view of a `CudaSlice<u8>` (`slice.as_view_mut()`, or
    /// `slice.slice_mut(a..b)` for a range).
    ///
    /// # Stream ordering
    /// The load starts after the work already queued on the slice's stream and is complete (on
    /// the device) when it returns.
    #[cfg(feature = "cuda")]
    Cuda(CudaViewMut<'a, u8>),
    /// A buffer of another backend (wgpu, CPU) through [`DeviceRange`], or anything that
    /// implements [`DeviceWrite`].
    Device(&'a mut dyn DeviceWrite),
}

impl Dest<'_> {
    /// Bytes the load will read.
    pub fn len(&self) -> usize {
        match self {
            Dest::Host(b) => b.len(),
            #[cfg(feature = "cuda")]
            Dest::Cuda(v) => v.len(),
            Dest::Device(d) => d.len(),
        }
    }

    /// Whether the destination holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a save writes to the file: all of it, nothing else.
///
/// Non-exhaustive: the `Cuda` variant exists only with feature `cuda`.
#[non_exhaustive]
pub enum Src<'a> {
    /// Host memory.
    Host(&'a [u8]),
    /// CUDA device memory: a view of a `CudaSlice<u8>` (`slice.as_view()`, or `slice.slice(a..b)`).
    ///
    /// # Stream ordering
    /// The save reads the bytes after the work already queued on the slice's stream.
    #[cfg(feature = "cuda")]
    Cuda(CudaView<'a, u8>),
    /// A buffer of another backend through [`DeviceView`], or anything that implements
    /// [`DeviceRead`].
    Device(&'a dyn DeviceRead),
}

impl Src<'_> {
    /// Bytes the save will write.
    pub fn len(&self) -> usize {
        match self {
            Src::Host(b) => b.len(),
            #[cfg(feature = "cuda")]
            Src::Cuda(v) => v.len(),
            Src::Device(d) => d.len(),
        }
    }

    /// Whether there is nothing to write (the save then makes an empty file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An owned buffer that a load can fill, for the asynchronous [`Storage::load_into`].
pub trait AsDest: Send {
    /// The buffer as a load destination.
    fn as_dest(&mut self) -> Dest<'_>;
}

/// An owned buffer that a save can write out, for the asynchronous [`Storage::save`].
pub trait AsSrc: Send {
    /// The buffer as a save source.
    fn as_src(&self) -> Src<'_>;
}

impl AsDest for Vec<u8> {
    fn as_dest(&mut self) -> Dest<'_> {
        Dest::Host(self)
    }
}

impl AsDest for Box<[u8]> {
    fn as_dest(&mut self) -> Dest<'_> {
        Dest::Host(self)
    }
}

impl AsSrc for Vec<u8> {
    fn as_src(&self) -> Src<'_> {
        Src::Host(self)
    }
}

impl AsSrc for Box<[u8]> {
    fn as_src(&self) -> Src<'_> {
        Src::Host(self)
    }
}

impl AsSrc for Arc<[u8]> {
    fn as_src(&self) -> Src<'_> {
        Src::Host(self)
    }
}

#[cfg(feature = "cuda")]
impl AsDest for CudaSlice<u8> {
    fn as_dest(&mut self) -> Dest<'_> {
        Dest::Cuda(self.as_view_mut())
    }
}

#[cfg(feature = "cuda")]
impl AsSrc for CudaSlice<u8> {
    fn as_src(&self) -> Src<'_> {
        Src::Cuda(self.as_view())
    }
}

/// Why cuFile was not used for one transfer: a low-cardinality label and the details.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // Only CUDA transfers consider cuFile.
pub(crate) struct Declined {
    pub(crate) label: &'static str,
    pub(crate) detail: String,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn declined(label: &'static str, detail: impl Into<String>) -> Declined {
    Declined {
        label,
        detail: detail.into(),
    }
}

/// How long a read depth measured for a device is used before the next large read measures
/// again (disks drift).
const DEPTH_MEMORY: Duration = Duration::from_secs(60);
/// Tasks a read's probe reads with one worker.
const PROBE_ONE_TASKS: usize = 16;
/// The fewest tasks a read must have to probe its depth (the probe is at most a fifth of it).
const PROBE_MIN_TASKS: usize = 128;

struct Inner {
    config: StorageConfig,
    pool: rayon::ThreadPool,
    task: usize,
    bounce: usize,
    workers: usize,
    #[cfg(feature = "cuda")]
    lanes: cuda::LanePool,
    #[cfg(feature = "gds")]
    gds: gds::Gds,
    logged: Mutex<HashSet<&'static str>>,
    /// The read depth measured per block device (`storage.adaptive_depth`), and when.
    depths: Mutex<HashMap<u64, (usize, Instant)>>,
    #[cfg(feature = "fault-injection")]
    disk_full_after: Mutex<Option<u64>>,
}

/// File to device I/O with the options of `[storage]`: a cheap, cloneable handle to one thread
/// pool and one set of pinned bounce buffers.
///
/// The blocking methods ([`Storage::read`], [`Storage::write`]) borrow their buffers; the
/// asynchronous ones ([`Storage::load`], [`Storage::load_into`], [`Storage::save`],
/// `Storage::load_cuda`) own them for the duration, so dropping their future never leaves a
/// worker writing into freed memory (the transfer finishes in the background and its buffer is
/// dropped then). They work on any executor.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("config", &self.inner.config)
            .field("workers", &self.inner.workers)
            .finish()
    }
}

impl Storage {
    /// A storage handle with the `[storage]` options of `config` (validated first).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the key at fault, or `storage.threads` when the thread
    /// pool cannot start.
    pub fn new(config: &BridgeConfig) -> Result<Self> {
        config.validate()?;
        let cfg = config.storage.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("gpubridge-storage-{i}"))
            .start_handler(|_| gpubridge_core::prefault_stack())
            .build()
            .map_err(|e| {
                Error::config(
                    "storage.threads",
                    format!("cannot start {} threads: {e}", cfg.threads),
                )
            })?;
        let bounce = (cfg.bounce_buffer_kb as usize).saturating_mul(1024);
        let lane_bytes = bounce.saturating_mul(2).max(1);
        let cap = (cfg.max_pinned_memory_mb as usize).saturating_mul(1 << 20);
        let workers = cfg.threads.min(cap / lane_bytes).max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                task: (cfg.task_size_kb as usize).saturating_mul(1024),
                bounce,
                workers,
                #[cfg(feature = "cuda")]
                lanes: cuda::LanePool::new(workers, bounce),
                #[cfg(feature = "gds")]
                gds: gds::Gds::default(),
                logged: Mutex::new(HashSet::new()),
                depths: Mutex::new(HashMap::new()),
                #[cfg(feature = "fault-injection")]
                disk_full_after: Mutex::new(None),
                pool,
                config: cfg,
            }),
        })
    }

    /// The `[storage]` options in use.
    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// Workers one transfer uses at most: `storage.threads`, fewer if the pinned-memory cap
    /// cannot give each two bounce buffers.
    pub fn max_workers(&self) -> usize {
        self.inner.workers
    }

    /// How many workers read `src`'s `tasks` at once: all of them, unless the read goes through
    /// `O_DIRECT` with `storage.adaptive_depth`; then the depth measured for the file's device
    /// in the last [`DEPTH_MEMORY`], or, for a read of at least [`PROBE_MIN_TASKS`] tasks, a
    /// probe of one reader against all of them on its first tasks. Some disks (the virtio disk
    /// of the device machine) read fastest with one reader, NVMe drives with many.
    /// Also returns the device, to remember a probe's result under.
    fn read_depth(&self, src: &Source, tasks: usize) -> (engine::Depth, Option<u64>) {
        let inner = &*self.inner;
        let all = engine::Depth::Fixed(inner.workers);
        if !inner.config.adaptive_depth || inner.workers < 2 {
            return (all, None);
        }
        let Some(dev) = src.direct_device() else {
            return (all, None);
        };
        if let Some(&(depth, at)) = inner.depths.lock().get(&dev) {
            if at.elapsed() < DEPTH_MEMORY {
                return (engine::Depth::Fixed(depth), Some(dev));
            }
        }
        if tasks < PROBE_MIN_TASKS.max(2 * (PROBE_ONE_TASKS + 4 * inner.workers)) {
            return (all, Some(dev));
        }
        let probe = engine::Depth::Probe {
            one_tasks: PROBE_ONE_TASKS,
            many: inner.workers,
            many_tasks: 4 * inner.workers,
        };
        (probe, Some(dev))
    }

    /// Records what a read's probe measured (for the file's device `dev` and in `t`).
    fn settle_depth(
        &self,
        dev: Option<u64>,
        t: &mut Transfer,
        depth: engine::Depth,
        probed: Option<engine::Probed>,
    ) {
        match (depth, probed) {
            (engine::Depth::Probe { many, .. }, Some(p)) => {
                t.workers = p.chosen;
                t.depth_probe = Some(DepthProbe {
                    one_reader: p.one,
                    many_readers: p.many,
                    readers: many,
                    chosen: p.chosen,
                });
                if let Some(dev) = dev {
                    self.inner
                        .depths
                        .lock()
                        .insert(dev, (p.chosen, Instant::now()));
                }
                tracing::debug!(
                    one = p.one,
                    many = p.many,
                    readers = many,
                    chosen = p.chosen,
                    "storage: read depth measured"
                );
            }
            (engine::Depth::Fixed(n), _) => t.workers = n.min(t.tasks),
            _ => {}
        }
    }

    /// Pinned host memory the CUDA lanes hold now (kept between transfers, at most
    /// `storage.max_pinned_memory_mb`).
    #[cfg(feature = "cuda")]
    pub fn pinned_bytes(&self) -> usize {
        self.inner.lanes.pinned_bytes()
    }

    /// How the CUDA lanes' bounce buffers are page-locked (registered huge pages, or
    /// `cuMemHostAlloc` where registration failed: the reason is logged once); `None` before the
    /// first CUDA transfer made a lane.
    #[cfg(feature = "cuda")]
    pub fn bounce_memory(&self) -> Option<BounceMemory> {
        self.inner.lanes.bounce_memory()
    }

    /// Fault injection for tests: every later save fails with [`IoErrorKind::DiskFull`] (an
    /// `ENOSPC` through the same path as the kernel's) once it has written `bytes` bytes;
    /// `None` turns it off.
    #[cfg(feature = "fault-injection")]
    pub fn inject_disk_full_after(&self, bytes: Option<u64>) {
        *self.inner.disk_full_after.lock() = bytes;
    }

    /// Reads `dest.len()` bytes of `path` starting at byte `offset` into `dest`, blocking the
    /// calling thread until they are there.
    ///
    /// # Errors
    /// [`Error::Io`]: [`IoErrorKind::NotFound`], [`IoErrorKind::PermissionDenied`],
    /// [`IoErrorKind::Truncated`] when the file ends before `offset + dest.len()`,
    /// [`IoErrorKind::ShortRead`] when it shrinks while being read, [`IoErrorKind::Other`].
    /// Device errors as [`Error::Backend`], [`Error::OutOfMemory`] (pinned memory).
    ///
    /// # Fallback
    /// For CUDA memory, cuFile first where it is enabled and works; the host-staged path
    /// otherwise, with the reason in [`Transfer::gds_declined`].
    pub fn read(&self, path: &Path, offset: u64, dest: Dest<'_>) -> Result<Transfer> {
        let started = Instant::now();
        let inner = &*self.inner;
        let src = Source::open(path, inner.config.direct_io)?;
        let len = dest.len();
        src.check_range(offset, len)?;
        let tasks = plan::split(offset, len, inner.task);
        let mut t = Transfer {
            bytes: len as u64,
            route: Route::Staged,
            gds_declined: None,
            buffered: None,
            note: None,
            tasks: tasks.len(),
            workers: inner.workers.min(tasks.len()),
            depth_probe: None,
            elapsed: Duration::ZERO,
            phases: Phases {
                open: started.elapsed(),
                ..Phases::default()
            },
        };
        let has_body = tasks.iter().any(|t| t.aligned);
        let (depth, dev) = self.read_depth(&src, tasks.len());
        if len == 0 {
            // Nothing to move: no device is touched and cuFile is not consulted.
            t.elapsed = started.elapsed();
            return Ok(t);
        }
        // What the read measured of its depth, if it did.
        let probed = match dest {
            Dest::Host(buf) => {
                let job = host::HostLoad {
                    src: &src,
                    bounce: inner.bounce,
                    pieces: std::marker::PhantomData,
                };
                engine::run(&inner.pool, depth, &job, host::pieces_mut(buf, tasks))?
            }
            Dest::Device(d) => {
                let job = device::DeviceLoad {
                    src: &src,
                    dst: Mutex::new(d),
                    bounce: inner.bounce,
                };
                let probed = engine::run(&inner.pool, depth, &job, unit_pieces(tasks))?;
                job.dst.into_inner().flush()?;
                probed
            }
            #[cfg(feature = "cuda")]
            Dest::Cuda(view) => {
                let mut probed = None;
                cuda::with_dest(view, |side| {
                    if self.gds_first(&mut t, path, side, offset, false, GdsFile::Source(&src)) {
                        return Ok(());
                    }
                    let job = cuda::CudaLoad {
                        src: &src,
                        dst: side,
                        lanes: &inner.lanes,
                    };
                    probed = engine::run(&inner.pool, depth, &job, unit_pieces(tasks))?;
                    Ok(())
                })?;
                probed
            }
        };
        self.settle_depth(dev, &mut t, depth, probed);
        if t.route == Route::Staged && has_body {
            t.buffered = src.buffered_reason();
        }
        self.count(&t);
        t.elapsed = started.elapsed();
        t.phases.transfer = t
            .elapsed
            .saturating_sub(t.phases.open + t.phases.gds_attempt);
        tracing::debug!(path = %path.display(), bytes = t.bytes, route = t.route.name(), elapsed_ms = t.elapsed.as_secs_f64() * 1e3, "storage read");
        Ok(t)
    }

    /// Writes all of `src` to `path` (replacing it), blocking the calling thread until the file
    /// is durable: the bytes go to a temporary file beside `path`, which is fsynced and renamed
    /// over `path`, and the directory is fsynced. A file that `path` named before is released on
    /// a thread of its own once the new one is durable: freeing a large file's blocks takes time
    /// (on the device machine's ext4, mounted with `discard`, replacing a 2 GiB file spent about
    /// 0.5 s there, a third of the save), which the caller no longer waits for.
    ///
    /// # Errors
    /// [`Error::Io`]: [`IoErrorKind::NotFound`] (no such directory, with
    /// `storage.create_dirs = false`; by default missing directories are created),
    /// [`IoErrorKind::PermissionDenied`], [`IoErrorKind::DiskFull`], [`IoErrorKind::Other`];
    /// device errors. On any error `path` is left as it was and the temporary file is removed.
    ///
    /// # Fallback
    /// As [`Storage::read`].
    pub fn write(&self, src: Src<'_>, path: &Path) -> Result<Transfer> {
        let started = Instant::now();
        let inner = &*self.inner;
        #[allow(unused_mut)] // Only fault injection changes it.
        let mut target = Target::create(path, inner.config.direct_io, inner.config.create_dirs)?;
        #[cfg(feature = "fault-injection")]
        target.fail_after(*inner.disk_full_after.lock());
        let len = src.len();
        target.reserve(len as u64)?;
        let tasks = plan::split(0, len, inner.task);
        let mut t = Transfer {
            bytes: len as u64,
            route: Route::Staged,
            gds_declined: None,
            buffered: None,
            note: None,
            tasks: tasks.len(),
            workers: inner.workers.min(tasks.len()),
            depth_probe: None,
            elapsed: Duration::ZERO,
            phases: Phases {
                open: started.elapsed(),
                ..Phases::default()
            },
        };
        let has_body = tasks.iter().any(|t| t.aligned);
        let depth = engine::Depth::Fixed(inner.workers);
        let src = if len == 0 {
            // An empty file: nothing to read from the source, the commit still happens.
            Src::Host(&[])
        } else {
            src
        };
        match src {
            Src::Host(buf) => {
                let job = host::HostSave {
                    dst: &target,
                    bounce: inner.bounce,
                    pieces: std::marker::PhantomData,
                };
                engine::run(&inner.pool, depth, &job, host::pieces(buf, tasks))?;
            }
            Src::Device(d) => {
                let job = device::DeviceSave {
                    dst: &target,
                    src: d,
                    bounce: inner.bounce,
                };
                engine::run(&inner.pool, depth, &job, unit_pieces(tasks))?;
            }
            #[cfg(feature = "cuda")]
            Src::Cuda(view) => cuda::with_src(view, |side| {
                if self.gds_first(&mut t, path, side, 0, true, GdsFile::Target(&target)) {
                    return Ok(());
                }
                let job = cuda::CudaSave {
                    dst: &target,
                    src: side,
                    lanes: &inner.lanes,
                };
                engine::run(&inner.pool, depth, &job, unit_pieces(tasks)).map(|_| ())
            })?,
        }
        if t.route == Route::Staged && has_body {
            t.buffered = target.buffered_reason();
        }
        let moved = started.elapsed();
        t.phases.transfer = moved.saturating_sub(t.phases.open + t.phases.gds_attempt);
        tracing::trace!(path = %target.path().display(), "committing");
        target.commit()?;
        self.count(&t);
        t.elapsed = started.elapsed();
        t.phases.commit = t.elapsed.saturating_sub(moved);
        tracing::debug!(path = %path.display(), bytes = t.bytes, route = t.route.name(), elapsed_ms = t.elapsed.as_secs_f64() * 1e3, "storage write");
        Ok(t)
    }

    /// Runs blocking work `f` on one of the storage threads ([`blocking`]: started as needed, at
    /// most [`blocking::MAX_THREADS`], and kept) and resolves with its result, on any executor. The building block of the asynchronous methods; useful for buffers of other
    /// backends (`Dest::Device`) that the caller owns.
    ///
    /// # Errors
    /// [`Error::Io`] when no thread can be started; [`Error::Cancelled`] if `f` panicked.
    pub async fn unblock<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Storage) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = futures::channel::oneshot::channel();
        let me = self.clone();
        blocking::spawn_then(
            move || f(&me),
            // The receiver may be gone (its future dropped); the work is done either way.
            move |out| {
                let _ = tx.send(out);
            },
        )
        .map_err(|e| Error::Io {
            path: PathBuf::new(),
            kind: IoErrorKind::Other,
            message: format!("starting a storage I/O thread: {e}"),
        })?;
        rx.await.map_err(|_| Error::Cancelled {
            reason: "the storage I/O thread ended without an answer".to_owned(),
        })
    }

    /// Loads `range` of `path` (the whole file for `None`) into a new host buffer.
    ///
    /// # Errors
    /// As [`Storage::read`].
    pub async fn load(
        &self,
        path: impl AsRef<Path>,
        range: Option<Range<u64>>,
    ) -> Result<(Vec<u8>, Transfer)> {
        let path = path.as_ref().to_owned();
        self.unblock(move |s| {
            let (offset, len) = resolve_range(&path, range)?;
            let mut buf = vec![0u8; len];
            let t = s.read(&path, offset, Dest::Host(&mut buf))?;
            Ok((buf, t))
        })
        .await?
    }

    /// Fills `buf` with `buf.as_dest().len()` bytes of `path` from byte `offset`, and hands it
    /// back. On error the buffer is dropped.
    ///
    /// # Errors
    /// As [`Storage::read`].
    pub async fn load_into<B: AsDest + 'static>(
        &self,
        path: impl AsRef<Path>,
        offset: u64,
        mut buf: B,
    ) -> Result<(B, Transfer)> {
        let path = path.as_ref().to_owned();
        self.unblock(move |s| {
            let t = s.read(&path, offset, buf.as_dest())?;
            Ok((buf, t))
        })
        .await?
    }

    /// Writes `buf` to `path` (see [`Storage::write`]) and hands it back. On error the buffer is
    /// dropped.
    ///
    /// # Errors
    /// As [`Storage::write`].
    pub async fn save<B: AsSrc + 'static>(
        &self,
        buf: B,
        path: impl AsRef<Path>,
    ) -> Result<(B, Transfer)> {
        let path = path.as_ref().to_owned();
        self.unblock(move |s| {
            let t = s.write(buf.as_src(), &path)?;
            Ok((buf, t))
        })
        .await?
    }

    /// Loads `range` of `path` (the whole file for `None`) into a new device buffer allocated on
    /// `stream`.
    ///
    /// # Errors
    /// As [`Storage::read`]; [`Error::OutOfMemory`] when the device cannot hold it.
    #[cfg(feature = "cuda")]
    pub async fn load_cuda(
        &self,
        path: impl AsRef<Path>,
        range: Option<Range<u64>>,
        stream: Arc<CudaStream>,
    ) -> Result<(CudaSlice<u8>, Transfer)> {
        let path = path.as_ref().to_owned();
        self.unblock(move |s| {
            let (offset, len) = resolve_range(&path, range)?;
            let mut buf = if len == 0 {
                stream.null::<u8>()
            } else {
                stream.alloc_zeros::<u8>(len)
            }
            .map_err(|e| cuda::driver_error("allocating the destination", e))?;
            let t = s.read(&path, offset, Dest::Cuda(buf.as_view_mut()))?;
            Ok((buf, t))
        })
        .await?
    }

    /// cuFile's attempt at a transfer of CUDA memory: `true` when it moved the bytes (route and
    /// note in `t`); `false` when it declined, with why in `t` (and its cost in
    /// `t.phases.gds_attempt`), logged once per reason and counted.
    #[cfg(feature = "cuda")]
    fn gds_first(
        &self,
        t: &mut Transfer,
        path: &Path,
        side: &cuda::DeviceSide,
        offset: u64,
        write: bool,
        file: GdsFile<'_>,
    ) -> bool {
        let attempt = Instant::now();
        match self.try_gds(path, side, offset, write, file) {
            Ok(note) => {
                t.route = Route::Gds;
                t.note = note;
                true
            }
            Err(d) => {
                t.phases.gds_attempt = attempt.elapsed();
                t.gds_declined = Some(d.detail.clone());
                self.log_declined(&d);
                false
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn try_gds(
        &self,
        path: &Path,
        side: &cuda::DeviceSide,
        offset: u64,
        write: bool,
        file: GdsFile<'_>,
    ) -> std::result::Result<Option<String>, Declined> {
        let cfg = &self.inner.config;
        if !cfg.enable_gpu_direct_storage {
            return Err(declined(
                "disabled",
                "storage.enable_gpu_direct_storage = false",
            ));
        }
        #[cfg(not(feature = "gds"))]
        {
            let _ = (path, side, offset, write, file);
            Err(declined(
                "not_compiled",
                "built without the `gds` feature of gpubridge-storage",
            ))
        }
        #[cfg(feature = "gds")]
        {
            if let Some(mount) = &cfg.mount_point {
                if !under(path, mount) {
                    return Err(declined(
                        "outside_mount_point",
                        format!(
                            "{} is not under storage.mount_point {}",
                            path.display(),
                            mount.display()
                        ),
                    ));
                }
            }
            let warnings = self.inner.gds.driver(cfg)?;
            let (direct, buffered) = match file {
                GdsFile::Source(s) => (s.direct_file(), s.buffered_reason()),
                GdsFile::Target(t) => (t.direct_file(), t.buffered_reason()),
            };
            let direct = direct.ok_or_else(|| {
                declined(
                    "no_o_direct",
                    format!(
                        "cuFile needs an O_DIRECT descriptor: {}",
                        buffered.unwrap_or_default()
                    ),
                )
            })?;
            let note = gds::transfer(
                &self.inner.pool,
                self.inner.workers,
                self.inner.task,
                direct,
                offset,
                side,
                write,
            )?;
            let mut notes: Vec<String> = warnings.to_vec();
            notes.extend(note);
            Ok((!notes.is_empty()).then(|| notes.join("; ")))
        }
    }

    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn log_declined(&self, d: &Declined) {
        metrics::counter!(names::STORAGE_GDS_DECLINED_TOTAL, "reason" => d.label).increment(1);
        if self.inner.logged.lock().insert(d.label) {
            if d.label == "disabled" {
                tracing::debug!(reason = d.label, "cuFile not used: {}", d.detail);
            } else {
                tracing::info!(
                    reason = d.label,
                    "cuFile not used, taking the host-staged path (logged once per reason): {}",
                    d.detail
                );
            }
        }
    }

    fn count(&self, t: &Transfer) {
        metrics::counter!(names::STORAGE_BYTES_TOTAL, "path" => t.route.name()).increment(t.bytes);
    }
}

/// Which open file cuFile would register (read only when built with `gds`).
#[cfg(feature = "cuda")]
#[cfg_attr(not(feature = "gds"), allow(dead_code))]
enum GdsFile<'a> {
    Source(&'a Source),
    Target(&'a Target),
}

/// Whether `path` lies under `mount` (both resolved; for a file not yet made, its directory).
#[cfg(feature = "gds")]
fn under(path: &Path, mount: &Path) -> bool {
    let resolved = path.canonicalize().or_else(|_| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        dir.unwrap_or(Path::new(".")).canonicalize()
    });
    match (resolved, mount.canonicalize()) {
        (Ok(p), Ok(m)) => p.starts_with(m),
        _ => false,
    }
}

fn unit_pieces(tasks: Vec<plan::Task>) -> Vec<(plan::Task, ())> {
    tasks.into_iter().map(|t| (t, ())).collect()
}

/// `(offset, len)` of `range` in `path`, the whole file for `None`.
/// The offset and length of `range` in `path` (the whole file for `None`), checked against the
/// file's size before the caller allocates a destination for it: a range past the end is
/// [`IoErrorKind::Truncated`] here, so that a hostile range never becomes a huge allocation.
fn resolve_range(path: &Path, range: Option<Range<u64>>) -> Result<(u64, usize)> {
    if let Some(r) = range.as_ref().filter(|r| r.end < r.start) {
        return Err(Error::InvalidInput {
            kernel: "storage".to_owned(),
            index: None,
            reason: format!("byte range {}..{} ends before it starts", r.start, r.end),
        });
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "reading metadata", &e))?;
    let (offset, len) = match range {
        Some(r) if r.end > meta.len() => {
            return Err(Error::Io {
                path: path.to_owned(),
                kind: IoErrorKind::Truncated,
                message: format!(
                    "bytes {}..{} were asked for, but the file has {} bytes",
                    r.start,
                    r.end,
                    meta.len()
                ),
            })
        }
        Some(r) => (r.start, r.end - r.start),
        None => (0, meta.len()),
    };
    let len = usize::try_from(len).map_err(|_| Error::InvalidInput {
        kernel: "storage".to_owned(),
        index: None,
        reason: format!("{len} bytes do not fit this machine's address space"),
    })?;
    Ok((offset, len))
}
