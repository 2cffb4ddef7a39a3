//! One executor thread per device: it owns the device's context, its lanes (a stream each, with
//! pinned staging and timing events), compiled modules, memory pool, graph cache and cuBLAS
//! handle, and runs the plans sent to it, completing them in order.
//!
//! # Stream ordering
//! A plan runs on one lane as: inputs packed into the lane's pinned staging piece by piece, each
//! piece's H2D copy enqueued as soon as it is packed (so packing overlaps the upload), then every
//! step (launches, cuBLAS calls), then one D2H copy. The executor then starts the next plan on the
//! next lane before it waits for the first, so one micro-batch's packing and upload overlap the
//! previous one's kernels and download. Outputs are handed to the plan's completion while still in
//! pinned staging (so unpacking is one copy), then the plan's device block goes back to the pool.
//! Graph captures and replays run on lane 0 after earlier plans have completed.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas;
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use gpubridge_core::nvtx::{self, Phase};
use gpubridge_core::plan::{
    run_packer, Arg, BufferId, BufferRole, ExecStats, Plan, PlanOutputs, Step, Steps,
};
use gpubridge_core::{bucket_len, BackendKind, BridgeConfig, Error, KernelSources, Result};
use parking_lot::{Mutex, RwLock};

use crate::compile::PtxCache;
use crate::memory::{DevicePool, PinnedBuffer};
use gpubridge_telemetry::names;

/// Alignment of each buffer inside pinned staging.
const STAGING_ALIGN: usize = 256;

/// Work for an executor thread.
pub(crate) enum Job {
    Plan {
        plan: Plan,
        sources: KernelSources,
        complete: gpubridge_core::device::PlanCompletion,
    },
    /// Release the caches (see [`crate::CudaBackend::release_caches`]) once the plans before it
    /// have finished, and answer with what was released.
    Release(mpsc::SyncSender<Released>),
    Shutdown,
}

/// What [`crate::CudaBackend::release_caches`] gave back on one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Cached graphs destroyed (resident ones are kept).
    pub graphs: u64,
    /// Device and pinned bytes those graphs owned.
    pub graph_bytes: u64,
    /// Idle pool memory freed to the driver, in bytes.
    pub pool_bytes: u64,
    /// Pinned staging freed (the streams' own, grown to the largest plan each had run), in
    /// bytes.
    pub staging_bytes: u64,
    /// Plan shapes forgotten (seen once, or failed to capture).
    pub shapes: u64,
}

/// The shared state of an executor that other threads may read.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set when the device hit a sticky error; every later submission fails with it.
    pub lost: Mutex<Option<String>>,
    /// Pool statistics after the last plan.
    pub pool: Mutex<crate::memory::PoolStats>,
    /// Graph cache statistics.
    pub graphs: Mutex<GraphStats>,
    /// Plans started while an earlier plan was still in flight on another lane (their packing
    /// and upload overlapped its kernels and download).
    pub overlapped: std::sync::atomic::AtomicU64,
    /// Free device memory in bytes, sampled by the executor (at most every
    /// [`FREE_MEMORY_EVERY`]) for placement.
    pub free_memory: std::sync::atomic::AtomicU64,
    /// Every function the executor has loaded, for callers that run tiny plans themselves.
    pub functions: Mutex<HashMap<FunctionKey, SharedFunction>>,
    /// The stream and mapped buffer on which a spinning caller runs a tiny plan itself (see
    /// [`run_inline`]); `None` when `cuda.inline_tiny_plans` is off or the executor has ended.
    pub inline: Mutex<Option<InlineLane>>,
    /// Plans run on their caller's thread (zero-copy plans and graph replays).
    pub inline_runs: std::sync::atomic::AtomicU64,
    /// Of those, replays of a cached graph.
    pub inline_replays: std::sync::atomic::AtomicU64,
    /// The cached graphs by bucketed plan shape, for spinning callers that replay one on their
    /// own thread (see [`run_inline`]). The executor adds and evicts them; a caller only reads.
    pub graph_index: RwLock<HashMap<gpubridge_core::PlanShape, Arc<SharedGraph>>>,
    /// The graph cache's clock, advanced by every replay (least recently used first out).
    pub graph_clock: AtomicU64,
    /// Streams the executor has made: one per lane and the inline lane's at start, two more per
    /// lane when it first runs a staged plan (see [`Lane::copies`]).
    pub streams: AtomicU64,
    /// Whether tiny plans are captured as graphs on their shape's second run (graphs on, with a
    /// budget that holds one): see [`run_inline`].
    pub tiny_graphs: std::sync::atomic::AtomicBool,
    /// Tiny plan shapes with no graph yet that spinning callers handed to the executor, and how
    /// many times, so that it sees each shape twice and captures it (see [`run_inline`]); a
    /// shape is forgotten when captured, and all of them past [`MAX_SHAPES_REMEMBERED`].
    pub tiny_handed: Mutex<HashMap<gpubridge_core::PlanShape, u8>>,
    /// `cuda.early_wake_us` in nanoseconds: how long before a graph replay's expected end the
    /// executor wakes a parked caller ([`gpubridge_core::wake`]); 0 never.
    pub early_wake_ns: AtomicU64,
}

/// A loaded function by (kernel, its CUDA source's address and length, entry point).
pub(crate) type FunctionKey = (&'static str, usize, usize, &'static str);

/// A function handle shared with callers that run tiny plans on their own threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharedFunction(sys::CUfunction);

// SAFETY: a `CUfunction` is valid in its context from any thread. Its module stays loaded for
// as long as the executor lives (the executor never unloads one), and callers use it only while
// they hold the inline lane, which the executor takes away before it ends.
unsafe impl Send for SharedFunction {}
// SAFETY: as above; the handle is only read.
unsafe impl Sync for SharedFunction {}

/// What a spinning caller needs to run a tiny plan on its own thread: the device's context, a
/// stream of its own and mapped pinned memory of its own (apart from the executor's, so the two
/// never wait for each other).
pub(crate) struct InlineLane {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    mapped: PinnedBuffer,
    label: String,
}

impl std::fmt::Debug for InlineLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineLane")
            .field("device", &self.label)
            .finish_non_exhaustive()
    }
}

/// How often the executor samples the device's free memory.
const FREE_MEMORY_EVERY: Duration = Duration::from_millis(100);

/// Counters of a device's CUDA graph cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Replays of a cached graph.
    pub hits: u64,
    /// Captures of a new graph.
    pub misses: u64,
    /// Graphs evicted (least recently used first) to stay within `cuda.graph_cache_mb`.
    pub evictions: u64,
    /// Captures that failed; those plan shapes run as stream launches.
    pub capture_failures: u64,
    /// Replays that first updated kernel-node parameters in place: a batch of another size in
    /// the same bucket (or other scalar arguments) reused a cached graph instead of a capture.
    pub updated_replays: u64,
    /// Kernel nodes updated in place (`cuGraphExecKernelNodeSetParams`) over all replays.
    pub node_updates: u64,
    /// Graphs cached now (resident ones included).
    pub entries: u64,
    /// Device and pinned bytes the cached graphs own (resident ones included).
    pub bytes: u64,
    /// Of those, the device bytes: blocks rented from the pool that the graphs keep.
    pub device_bytes: u64,
    /// Graphs kept for resident plans (requests with `persistent` set), outside the LRU.
    pub resident_entries: u64,
    /// Device and pinned bytes the resident graphs own (at most `cuda.resident_mb`).
    pub resident_bytes: u64,
    /// Resident graphs that made room for another resident plan (least recently used first).
    pub resident_evictions: u64,
    /// Plan shapes seen once and remembered, to be captured if they come again (at most
    /// [`MAX_SHAPES_REMEMBERED`]: beyond it the memory is cleared, so a stream of one-off shapes,
    /// such as multiplies of ever-new sizes, cannot grow it).
    pub shapes_seen_once: u64,
    /// Plan shapes remembered as failing to capture (at most [`MAX_SHAPES_REMEMBERED`]).
    pub shapes_failed: u64,
    /// Replays whose plan shared the very step list the graph's kernel nodes last ran
    /// ([`Plan::reuse_steps`](gpubridge_core::plan::Plan::reuse_steps)): neither compared with
    /// the nodes nor updated.
    pub same_steps_replays: u64,
    /// Captures whose graph copies its inputs and outputs with a kernel through mapped pinned
    /// staging rather than with copy-engine memcpy nodes (both at most 64 KiB: see
    /// `GRAPH_KERNEL_COPY_MAX` in the executor).
    pub kernel_copy_captures: u64,
    /// Of those, captures whose kernels read the inputs straight from the mapped staging, with
    /// no copy into device memory: no library step, and no input an argument of more than one
    /// launch (each input then crosses the bus about once, as the copy would have carried it).
    pub mapped_input_captures: u64,
    /// Of the kernel-copy captures, those whose kernels write the outputs straight into the
    /// mapped staging, with no copy out of device memory: no library step, and no output an
    /// argument of more than one launch.
    pub mapped_output_captures: u64,
    /// Replays of such graphs waited for by their signal word rather than by the stream (see
    /// the executor's `Signal`): known done about 2 us sooner on the H200.
    pub signalled_replays: u64,
    /// Replays whose parked caller the executor woke ahead of the replay's expected end
    /// (`cuda.early_wake_us`, [`gpubridge_core::wake`]).
    pub early_wakes: u64,
    /// Plans whose cached graph a spinning caller held for longer than the executor waits
    /// (`GRAPH_BUSY_WAIT` in the executor, 100 us): run unreplayed (zero-copy or stream launches) instead of waiting
    /// behind a caller whose replay or completion is slow.
    pub busy_fallbacks: u64,
    /// Graphs evicted while a spinning caller held them: taken out of the cache at once and
    /// destroyed (their pool block returned) once the caller let go, rather than waited for.
    pub deferred_evictions: u64,
    /// Of those, graphs not destroyed yet: their caller still holds them.
    pub dying: u64,
}

/// How long the executor waits for a cached graph that a spinning caller is replaying before it
/// runs the plan unreplayed instead ([`GraphStats::busy_fallbacks`]). A replay of a graph small
/// enough to replay on a caller's thread takes microseconds; a caller holding it longer is slow
/// (its thread preempted, its completion slow, the device slow), and every plan of the device
/// would wait behind it.
const GRAPH_BUSY_WAIT: Duration = Duration::from_micros(100);

/// The most plan shapes the graph cache remembers as seen once, and as failed; past it, that
/// memory starts over. One-off shapes (a multiply of new sizes each time, say) would otherwise
/// grow it for as long as the process lives.
pub const MAX_SHAPES_REMEMBERED: usize = 4096;

/// Waits for the next job: spins briefly first, since requests often come back to back and a
/// sleeping thread takes tens of microseconds to wake.
fn next_job(rx: &mpsc::Receiver<Job>) -> Option<Job> {
    let t = Instant::now();
    let mut spins = 0u32;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
            Err(mpsc::TryRecvError::Disconnected) => return None,
        }
        spins += 1;
        // Reading the clock can cost a system call on some virtual machines: check it rarely.
        if spins.is_multiple_of(CLOCK_EVERY) && t.elapsed() >= JOB_SPIN {
            return rx.recv().ok();
        }
    }
}

/// Spin loops read the clock once every this many iterations.
const CLOCK_EVERY: u32 = 64;

/// How long an idle executor spins for the next job before it sleeps.
const JOB_SPIN: Duration = Duration::from_micros(100);

/// Maps a driver error to core's error, by what the caller can do.
pub(crate) fn driver_error(device: &str, what: &str, e: result::DriverError) -> Error {
    use sys::CUresult::*;
    match e.0 {
        CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfMemory {
            device: device.to_owned(),
            requested: 0,
            reason: format!("{what}: {e}"),
        },
        CUDA_ERROR_ILLEGAL_ADDRESS
        | CUDA_ERROR_LAUNCH_FAILED
        | CUDA_ERROR_ECC_UNCORRECTABLE
        | CUDA_ERROR_HARDWARE_STACK_ERROR
        | CUDA_ERROR_ILLEGAL_INSTRUCTION
        | CUDA_ERROR_MISALIGNED_ADDRESS
        | CUDA_ERROR_INVALID_ADDRESS_SPACE
        | CUDA_ERROR_INVALID_PC
        | CUDA_ERROR_CONTEXT_IS_DESTROYED
        | CUDA_ERROR_DEVICE_UNAVAILABLE
        | CUDA_ERROR_NO_DEVICE => Error::DeviceLost {
            device: device.to_owned(),
            reason: format!("{what}: {e}"),
        },
        _ => Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("{device}: {what}: {e}"),
            transient: false,
        },
    }
}

struct Blas(cublas::sys::cublasHandle_t);

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle came from `cublasCreate` and is destroyed once, on its own thread.
        if let Err(e) = unsafe { cublas::result::destroy_handle(self.0) } {
            tracing::warn!("cublasDestroy failed: {e:?}");
        }
    }
}

struct LoadedModule {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// What the executor found when it started.
pub(crate) struct Started {
    pub blas: bool,
}

/// One stream with its own pinned staging and timing events. An executor has
/// `cuda.streams_per_device` lanes, so that while one micro-batch's kernels and download run on
/// one lane, the next micro-batch is packed and uploaded on another.
struct Lane {
    stream: Arc<CudaStream>,
    events: [CudaEvent; 4],
    staging_in: PinnedBuffer,
    staging_out: PinnedBuffer,
    /// Upload and download streams of a staged plan (see [`enqueue_staged`]); the lane's stream
    /// computes and, at the end, waits for both, so waiting for it waits for the whole plan.
    /// Made when the lane first runs a staged plan: a context whose later-made streams run work
    /// runs every kernel slower for good (docs/PERFORMANCE.md, eighteenth session), so streams
    /// that may never be needed are not made.
    copies: Option<CopyStreams>,
    /// Events ordering the three streams of a staged plan, created as needed and reused.
    marks: Vec<CudaEvent>,
}

impl Lane {
    /// Makes the lane's copy streams if it has none yet; whether it has them now (a failure is
    /// logged: the plan then runs unstaged).
    fn ensure_copies(&mut self, ctx: &Arc<CudaContext>, shared: &Shared, label: &str) -> bool {
        if self.copies.is_some() {
            return true;
        }
        match ctx
            .new_stream()
            .and_then(|copy_in| Ok((copy_in, ctx.new_stream()?)))
        {
            Ok((copy_in, copy_out)) => {
                shared.streams.fetch_add(2, Ordering::Relaxed);
                self.copies = Some(CopyStreams { copy_in, copy_out });
                true
            }
            Err(e) => {
                tracing::debug!(device = %label, "no copy streams for a staged plan, it runs unstaged: {e}");
                false
            }
        }
    }
}

/// A lane's upload and download streams (see [`Lane::copies`]).
struct CopyStreams {
    copy_in: Arc<CudaStream>,
    copy_out: Arc<CudaStream>,
}

/// A plan enqueued on a lane and not yet completed.
struct InFlight {
    lane: usize,
    block: crate::memory::DeviceBuffer,
    outputs: Vec<(BufferId, usize, usize)>,
    plan: Plan,
    complete: gpubridge_core::device::PlanCompletion,
    /// When the executor took the job.
    taken: Instant,
    /// Host time packing its inputs.
    pack: Duration,
}

struct Executor {
    label: String,
    arch: (u32, u32),
    ctx: Arc<CudaContext>,
    /// Lane 0 also runs graph captures and replays.
    lanes: Vec<Lane>,
    next_lane: usize,
    blas: Option<Blas>,
    ptx: PtxCache,
    modules: HashMap<(&'static str, usize, usize), LoadedModule>,
    /// Kernel sources that failed to compile, with NVRTC's message.
    failed_modules: HashMap<(&'static str, usize, usize), String>,
    pool: DevicePool,
    shared: Arc<Shared>,
    graphs: GraphCache,
    /// Large output vectors ask for huge pages (`memory.huge_page_outputs`).
    huge_pages: bool,
    /// Staged plans run staged (`cuda.staged_plans`).
    staged: bool,
    /// Small graphs' kernels may use their inputs and outputs in the mapped staging
    /// (`cuda.mapped_graph_buffers`, [`Mapped`]).
    mapped_buffers: bool,
    /// When free memory was last sampled.
    free_sampled: Instant,
    /// When the pool last released the idle memory of unused classes.
    idle_released: Instant,
    /// How often it does (`memory.idle_release_s`).
    idle_release_every: Duration,
    /// Zero-copy staging for tiny plans.
    mapped: PinnedBuffer,
    /// Large outputs being unpacked off this thread, and their staging coming back.
    unpacking: Arc<Unpacking>,
    /// The graphs' copy kernel ([`COPY_SOURCE`]), loaded at the first capture that uses it.
    copy_kernel: CopyKernel,
}

/// The state of the executor's copy kernel.
enum CopyKernel {
    Unloaded,
    /// Loaded (the functions keep their module alive): the copy kernel and the signal kernel.
    Ready(CudaFunction, CudaFunction),
    /// It did not compile or load (logged once); graphs copy with memcpy nodes.
    Failed,
}

/// Large outputs are unpacked on the rayon pool rather than on the executor thread, so that the
/// executor packs and uploads the next micro-batch meanwhile: the lane's output staging goes with
/// the unpack and a spare takes its place. The staging comes back here once unpacked, to be
/// freed or reused on the executor thread (pinned memory is freed with the context current).
#[derive(Default)]
struct Unpacking {
    returned: Mutex<Vec<PinnedBuffer>>,
    outstanding: std::sync::atomic::AtomicUsize,
}

/// Outputs at least this large are unpacked off the executor thread (see [`Unpacking`]).
const UNPACK_OFF_THREAD: usize = 4 << 20;
/// At most this many unpacks run off the executor thread at once; beyond it the executor unpacks
/// itself, which bounds the pinned staging in circulation to `lanes + MAX_UNPACKING` buffers.
const MAX_UNPACKING: usize = 2;

/// Plans whose buffers all fit in this many bytes, with no scratch, no library calls and at most
/// [`ZERO_COPY_MAX_LAUNCHES`] launches, run zero-copy: kernels read their inputs from and write
/// their outputs to mapped pinned memory, so there is no copy to wait for. Bus reads are slower
/// than device memory, so only small payloads take this path. While graphs are on, such a plan
/// runs zero-copy only until its shape's graph is captured (its second run): the graph, whose
/// kernels use the same mapped staging ([`Mapped`]), is known done by its signal word sooner
/// than a stream by `cuStreamQuery`.
const ZERO_COPY_MAX_BYTES: usize = 64 << 10;
/// More launches than this are better replayed as a graph.
const ZERO_COPY_MAX_LAUNCHES: usize = 2;
/// A captured graph whose inputs and outputs are each at most this many bytes copies them with a
/// kernel of its own ([`COPY_SOURCE`]) through mapped pinned staging instead of copy-engine memcpy
/// nodes. On the H200 a chain of ten small kernels between two 128-byte memcpy nodes replayed in
/// 17.4 us most times and 25.6 us in about one replay of three (the hand-offs between the copy
/// engine and the SMs), with kernel copies in 16.5 to 17.7 us every time (`examples/replay_modes`,
/// docs/PERFORMANCE.md).
const GRAPH_KERNEL_COPY_MAX: usize = 64 << 10;
/// The copy kernel of [`GRAPH_KERNEL_COPY_MAX`]: `n` bytes from `src` to `dst`, 16 at a time when
/// both are 16-byte aligned; and the signal kernel those graphs end with: one thread counts the
/// replay in a device word and, after a system-wide fence, writes the count into a word of the
/// graph's mapped output staging, which the replaying thread watches ([`Signal`]). Library
/// code, compiled once per device like a kernel's source.
pub(crate) const COPY_SOURCE: &str = r#"
extern "C" __global__ void gpubridge_copy(const unsigned char* __restrict__ src,
                                          unsigned char* __restrict__ dst,
                                          unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    unsigned long long start = 0;
    if ((((unsigned long long)src | (unsigned long long)dst) & 15ull) == 0) {
        const uint4* s = (const uint4*)src;
        uint4* d = (uint4*)dst;
        unsigned long long words = n / 16;
        for (unsigned long long k = i; k < words; k += stride) d[k] = s[k];
        start = words * 16;
    }
    for (unsigned long long k = start + i; k < n; k += stride) dst[k] = src[k];
}
extern "C" __global__ void gpubridge_signal(unsigned int* counter, volatile unsigned int* word) {
    unsigned int c = *counter + 1u;
    *counter = c;
    __threadfence_system();
    *word = c;
}
"#;
/// Graphs of plans up to this size replay on a spinning caller's thread (see [`run_inline`]);
/// larger ones go to the executor, whose unpack uses huge pages and whose copies overlap.
const INLINE_REPLAY_MAX_BYTES: usize = 1 << 20;

/// A cached graph that both the executor and spinning callers replay: whoever replays it holds
/// the lock from packing the inputs until the outputs are delivered, which serialises every use
/// of the graph (CUDA graphs are not internally synchronised) and of its staging. `None` once
/// the executor has evicted it; only the executor takes it out, on its own thread, so the graph
/// is destroyed and its block returned with the context current.
pub(crate) struct SharedGraph {
    entry: Mutex<Option<GraphEntry>>,
    /// Device and pinned bytes the graph owns (fixed at capture).
    bytes: usize,
    /// Of those, the pool block's bytes.
    device_bytes: usize,
    /// [`Shared::graph_clock`] at its last replay.
    last_used: AtomicU64,
    /// Kept for resident plans: counted in the resident budget and never evicted by the LRU of
    /// ordinary graphs. A resident plan replays on its caller's thread only a resident graph
    /// (the executor decides when an ordinary graph becomes resident). Written by the executor.
    resident: AtomicBool,
}

impl std::fmt::Debug for SharedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedGraph")
            .field("bytes", &self.bytes)
            .field("resident", &self.resident)
            .finish_non_exhaustive()
    }
}

/// A captured plan: the graph and everything it was captured with, so a replay is "pack inputs
/// into this staging, launch once".
struct GraphEntry {
    graph: cudarc::driver::CudaGraph,
    block: crate::memory::DeviceBuffer,
    staging_in: PinnedBuffer,
    staging_out: PinnedBuffer,
    /// Byte offset of every buffer in the block and in staging (the bucket's layout).
    offsets: Vec<usize>,
    /// Where the kernels find the buffers: all in the block, or the inputs or outputs in the
    /// mapped staging, uncopied ([`Mapped`]).
    bases: Bases,
    in_total: usize,
    bytes: usize,
    /// The kernel nodes, one per launch in plan order, with the parameters they hold now; empty
    /// for a plan with a library step (keyed by its exact shape, never updated).
    nodes: Vec<KernelNode>,
    /// Whether `nodes` holds the graph's node handles, so that parameters can be updated in place.
    /// When the captured graph is not the expected chain it is replayed only as captured.
    updatable: bool,
    /// The shared step list ([`Steps::is_reused`]) whose launches the kernel nodes hold now: a
    /// plan with the same list runs the same launches, so its replay skips the comparison.
    applied: Option<Steps>,
    executions: u64,
    /// Captured from a plan with a library (cuBLAS) step.
    library: bool,
    /// Its copies are made by the copy kernel ([`GRAPH_KERNEL_COPY_MAX`]).
    kernel_copies: bool,
    /// The kernel whose plan it was captured from.
    kernel: &'static str,
    /// The device address where its kernels write the outputs: in the block, or in the mapped
    /// output staging ([`Mapped`]).
    outputs_at: sys::CUdeviceptr,
    /// How a replay of a kernel-copy graph is known done ([`Signal`]); `None` for other graphs,
    /// and once a wait for the signal failed (replays then wait for the stream).
    signal: Option<Signal>,
    /// About the shortest time from launch to done of its recent replays (see [`ReplayTime`]),
    /// from which a parked caller is woken ahead; `None` before its first replay.
    replay_time: Option<ReplayTime>,
}

/// A kernel-copy graph's last node, the signal kernel of [`COPY_SOURCE`], counts the graph's
/// replays in a device word of its block and writes the count into a word of its mapped output
/// staging after a system-wide fence, so the outputs are in host memory once the word holds
/// the count of the replay just launched. The replaying thread watches that word instead of
/// polling the stream: on the H200 the word shows a replay done about 2.3 us before
/// `cuStreamQuery` does, which is most of the cost of the extra node for a short chain
/// (docs/PERFORMANCE.md, nineteenth session). The stream may still be finishing the graph's
/// last node when the word is seen; everything after it on the stream, and the graph's next
/// launch (launches of one graph are ordered), waits for it, and it touches no memory after
/// the word.
struct Signal {
    /// Byte offset of the word in the output staging.
    word_at: usize,
    /// Replays launched since capture (the value the word holds after the last one).
    count: u32,
}

// SAFETY: the graph, its node and function handles and its staging are valid from any thread
// with the device's context current, which every user of an entry binds first; an entry is only
// reached through its `SharedGraph` lock, so no two threads touch it at once (as CUDA requires
// of a graph); it is dropped by the executor thread (see `SharedGraph`).
unsafe impl Send for GraphEntry {}

/// A kernel node of a cached graph and the launch parameters it was last given.
struct KernelNode {
    node: sys::CUgraphNode,
    func: sys::CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    values: LaunchValues,
}

/// A launch's argument values, each in an 8-byte slot (see [`launch_values`]).
type LaunchValues = smallvec::SmallVec<[u64; 8]>;

/// Graphs by bucketed plan shape ([`Plan::bucket_shape`]), least recently used evicted first under
/// a byte budget. Batches whose buffer sizes fall in the same buckets share one graph: its block
/// and staging are sized for the bucket, and before a replay the kernel nodes whose grid or
/// arguments differ from the plan's are updated in place, which costs a few microseconds against
/// a capture's hundreds. The executor thread is the only user, so lookups and captures need no
/// lock: the original's double-checked capture lock is replaced by single ownership.
struct GraphCache {
    enabled: bool,
    budget: usize,
    /// Bytes of ordinary (evictable) graphs.
    used: usize,
    /// `cuda.resident_mb` in bytes, and the bytes resident graphs own.
    resident_budget: usize,
    resident_used: usize,
    /// Device bytes (pool blocks) every cached graph keeps, kept as entries come and go.
    device_bytes: usize,
    /// The executor's copy of [`Shared::graph_index`]: looked up with no lock.
    entries: HashMap<gpubridge_core::PlanShape, Arc<SharedGraph>>,
    /// Shapes seen once: a shape is captured the second time it runs, so one-off plans never
    /// pay for a capture.
    seen: HashMap<gpubridge_core::PlanShape, u32>,
    failed: std::collections::HashSet<gpubridge_core::PlanShape>,
    /// Graphs evicted while a spinning caller held them, out of the cache and its counts,
    /// destroyed once free ([`Executor::bury_dying`]).
    dying: Vec<Arc<SharedGraph>>,
}

/// Plans larger than this run as pipelined stream launches: their copies dominate, and the
/// stream path overlaps packing with the upload.
const GRAPH_MAX_PLAN: usize = 16 << 20;

/// Starts the executor thread of device `ordinal` and waits until its context is ready.
pub(crate) fn spawn(
    ordinal: usize,
    arch: (u32, u32),
    config: &BridgeConfig,
    ptx: PtxCache,
    shared: Arc<Shared>,
) -> Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>, Started)> {
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Started>>();
    let label = format!("cuda:{ordinal}");
    let pool_limit = (config.memory.pool_size_mb as usize).saturating_mul(1 << 20);
    let graphs = (
        config.cuda.enable_graphs,
        (config.cuda.graph_cache_mb as usize).saturating_mul(1 << 20),
        (config.cuda.resident_mb as usize).saturating_mul(1 << 20),
    );
    shared.tiny_graphs.store(
        graphs.0 && graphs.1 >= ZERO_COPY_MAX_BYTES,
        Ordering::Relaxed,
    );
    shared.early_wake_ns.store(
        config.cuda.early_wake_us.saturating_mul(1000),
        Ordering::Relaxed,
    );
    let huge_pages = config.memory.huge_page_outputs;
    let idle_release_every = Duration::from_secs(config.memory.idle_release_s.max(1));
    let staged_plans = config.cuda.staged_plans;
    let mapped_buffers = config.cuda.mapped_graph_buffers;
    let inline = config.cuda.inline_tiny_plans;
    let lanes = config.cuda.streams_per_device.max(1);
    let handle = std::thread::Builder::new()
        .name(format!("gpubridge-{label}"))
        .spawn(move || {
            gpubridge_core::prefault_stack();
            let mut ex =
                match Executor::new(ordinal, arch, label, pool_limit, graphs, lanes, ptx, shared) {
                    Ok(mut ex) => {
                        ex.huge_pages = huge_pages;
                        ex.idle_release_every = idle_release_every;
                        ex.staged = staged_plans;
                        ex.mapped_buffers = mapped_buffers;
                        if inline {
                            ex.open_inline_lane();
                        }
                        ex
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
            ex.sample_free_memory();
            let _ = ready_tx.send(Ok(Started {
                blas: ex.blas.is_some(),
            }));
            let mut pending = std::collections::VecDeque::<InFlight>::new();
            loop {
                // With work in flight, take a new job only if one is already waiting; otherwise
                // finish the oldest plan (its kernels ran while this thread packed the next one).
                let job = if pending.is_empty() {
                    next_job(&rx)
                } else {
                    match rx.try_recv() {
                        Ok(job) => Some(job),
                        Err(mpsc::TryRecvError::Empty) => {
                            if let Some(f) = pending.pop_front() {
                                ex.finish(f);
                            }
                            continue;
                        }
                        Err(mpsc::TryRecvError::Disconnected) => None,
                    }
                };
                match job {
                    Some(Job::Plan {
                        plan,
                        sources,
                        complete,
                    }) => ex.handle(plan, &sources, complete, &mut pending),
                    Some(Job::Release(answer)) => {
                        while let Some(f) = pending.pop_front() {
                            ex.finish(f);
                        }
                        let _ = answer.send(ex.release_caches());
                    }
                    Some(Job::Shutdown) | None => break,
                }
            }
            while let Some(f) = pending.pop_front() {
                ex.finish(f);
            }
            ex.drain_unpacking();
            // Its mapped memory is freed here, with the context current; a caller running a
            // plan on it finishes first (the lock). Then no caller can replay a graph either.
            drop(ex.shared.inline.lock().take());
            ex.release_graphs();
        })
        .map_err(|e| Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("cannot start the executor thread: {e}"),
            transient: false,
        })?;
    let started = ready_rx.recv().map_err(|_| Error::Backend {
        backend: BackendKind::Cuda,
        message: "the executor thread exited while starting".to_owned(),
        transient: false,
    })??;
    Ok((tx, handle, started))
}

impl Executor {
    #[allow(clippy::too_many_arguments)] // Called once, from `spawn`, with each setting named.
    fn new(
        ordinal: usize,
        arch: (u32, u32),
        label: String,
        pool_limit: usize,
        (graphs_on, graph_budget, resident_budget): (bool, usize, usize),
        lanes: usize,
        ptx: PtxCache,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let drv = |what: &str, e| driver_error(&label, what, e);
        let ctx = CudaContext::new(ordinal).map_err(|e| drv("creating the context", e))?;
        // SAFETY: this context's streams are ordered by this thread alone (one stream, explicit
        // synchronisation), so cudarc's event tracking is not needed; it would also break capture.
        unsafe { ctx.disable_event_tracking() };
        ctx.bind_to_thread()
            .map_err(|e| drv("cuCtxSetCurrent", e))?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let ev = || ctx.new_event(timing).map_err(|e| drv("cuEventCreate", e));
        let lanes = (0..lanes)
            .map(|_| {
                let lane = Lane {
                    stream: ctx.new_stream().map_err(|e| drv("cuStreamCreate", e))?,
                    events: [ev()?, ev()?, ev()?, ev()?],
                    staging_in: PinnedBuffer::empty(),
                    staging_out: PinnedBuffer::empty(),
                    copies: None,
                    marks: Vec::new(),
                };
                shared.streams.fetch_add(1, Ordering::Relaxed);
                Ok(lane)
            })
            .collect::<Result<Vec<Lane>>>()?;
        let stream = lanes[0].stream.clone();
        // SAFETY: only probes whether libcublas can be loaded.
        let blas = if unsafe { cublas::sys::is_culib_present() } {
            match cublas::result::create_handle() {
                Ok(h) => {
                    // SAFETY: `h` is a fresh handle and the stream lives as long as the executor.
                    match unsafe { cublas::result::set_stream(h, stream.cu_stream() as _) } {
                        Ok(()) => Some(Blas(h)),
                        Err(e) => {
                            tracing::warn!(device = %label, "cublasSetStream failed, matrix multiply uses the built-in kernel: {e:?}");
                            drop(Blas(h));
                            None
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(device = %label, "cublasCreate failed, matrix multiply uses the built-in kernel: {e:?}");
                    None
                }
            }
        } else {
            tracing::info!(device = %label, "libcublas not found; matrix multiply uses the built-in kernel");
            None
        };
        Ok(Self {
            pool: DevicePool::new(label.clone(), pool_limit),
            label,
            arch,
            ctx,
            lanes,
            next_lane: 0,
            blas,
            ptx,
            modules: HashMap::new(),
            failed_modules: HashMap::new(),
            shared,
            graphs: GraphCache {
                enabled: graphs_on,
                budget: graph_budget,
                used: 0,
                resident_budget,
                resident_used: 0,
                device_bytes: 0,
                entries: HashMap::new(),
                seen: HashMap::new(),
                failed: Default::default(),
                dying: Vec::new(),
            },
            huge_pages: true,
            staged: true,
            mapped_buffers: true,
            mapped: PinnedBuffer::mapped(),
            copy_kernel: CopyKernel::Unloaded,
            free_sampled: Instant::now(),
            idle_released: Instant::now(),
            idle_release_every: crate::memory::IDLE_RELEASE_EVERY,
            unpacking: Arc::default(),
        })
    }

    /// Creates the stream spinning callers run tiny plans on (see [`run_inline`]). Without it
    /// (the stream cannot be created), every plan goes through this thread.
    fn open_inline_lane(&mut self) {
        match self.ctx.new_stream() {
            Ok(stream) => {
                self.shared.streams.fetch_add(1, Ordering::Relaxed);
                *self.shared.inline.lock() = Some(InlineLane {
                    ctx: self.ctx.clone(),
                    stream,
                    mapped: PinnedBuffer::mapped(),
                    label: self.label.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(device = %self.label, "no stream for inline plans, all go through the executor: {e}");
            }
        }
    }

    /// Takes one job: a cached or newly captured graph runs at once; anything else is enqueued on
    /// a free lane and completes later, in order, in [`Executor::finish`].
    fn handle(
        &mut self,
        plan: Plan,
        sources: &KernelSources,
        complete: gpubridge_core::device::PlanCompletion,
        pending: &mut std::collections::VecDeque<InFlight>,
    ) {
        let taken = Instant::now();
        // Graphs evicted while callers held them, destroyed once free (before this plan runs,
        // so that its caller sees them gone).
        self.bury_dying(false);
        if let Some(why) = self.shared.lost.lock().clone() {
            let e = Error::DeviceLost {
                device: self.label.clone(),
                reason: why,
            };
            fail_plan(plan, complete, e);
            return;
        }
        // A tiny plan runs zero-copy until its shape's graph is captured (on its second run),
        // then replays it: the graph's completion word is seen sooner than the stream's.
        let tiny = zero_copy_candidate(&plan);
        // Graphs replay on lane 0 and wait for it: first let earlier work complete, in order.
        if self.graphs.enabled && !plan.steps.is_empty() {
            let cached = self.cached_graph(&plan);
            let candidate = cached.is_some() || self.graph_candidate(&plan);
            if candidate {
                while let Some(f) = pending.pop_front() {
                    self.finish(f);
                }
                let graph = match self.graph_to_replay(&plan, sources, cached) {
                    Ok(graph) => graph,
                    Err(e) => {
                        self.fail(plan, complete, e);
                        return;
                    }
                };
                // A spinning caller may be replaying it on its own thread: wait for it a little,
                // then run the plan unreplayed below rather than stall the device behind it.
                let held = graph
                    .as_ref()
                    .map(|g| (g, g.entry.try_lock_for(GRAPH_BUSY_WAIT)));
                if let Some((_, None)) = held {
                    self.shared.graphs.lock().busy_fallbacks += 1;
                }
                if let Some((graph, Some(mut guard))) = held {
                    if let Some(entry) = guard.as_mut() {
                        touch(&self.shared, graph);
                        match replay(
                            entry,
                            &plan,
                            &self.lanes[0].stream,
                            &self.label,
                            &self.shared,
                        ) {
                            Ok(Some((outputs, mut stats))) => {
                                stats.executor = taken.elapsed();
                                let spent = release_inputs(plan);
                                let staging = graph_outputs(entry, &outputs);
                                deliver(complete, &outputs, staging, stats, self.huge_pages);
                                drop(guard);
                                drop(spent);
                                self.publish_stats();
                                return;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                drop(guard);
                                self.fail(plan, complete, e);
                                return;
                            }
                        }
                    }
                }
            }
        }
        // The paths below are not timed: a parked caller is not woken early.
        decline_early_wake(&plan);
        if tiny {
            while let Some(f) = pending.pop_front() {
                self.finish(f);
            }
            match self.run_zero_copy(&plan, sources) {
                Ok((outputs, out_start, out_end, mut stats)) => {
                    stats.executor = taken.elapsed();
                    let spent = release_inputs(plan);
                    let huge = self.huge_pages;
                    let staging = &self.mapped.slice_mut(out_end)[out_start..];
                    deliver(complete, &outputs, staging, stats, huge);
                    drop(spent);
                    self.publish_stats();
                }
                Err(e) => {
                    self.fail(plan, complete, e);
                }
            }
            return;
        }
        if pending.len() >= self.lanes.len() {
            if let Some(f) = pending.pop_front() {
                self.finish(f);
            }
        }
        let lane = self.next_lane;
        self.next_lane = (self.next_lane + 1) % self.lanes.len();
        if !pending.is_empty() {
            self.shared
                .overlapped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match self.start(&plan, sources, lane) {
            Ok((block, outputs, pack)) => pending.push_back(InFlight {
                lane,
                block,
                outputs,
                plan,
                complete,
                taken,
                pack,
            }),
            Err(e) => {
                self.fail(plan, complete, e);
            }
        }
    }

    fn fail(&mut self, plan: Plan, complete: gpubridge_core::device::PlanCompletion, e: Error) {
        note_lost(&self.shared, &self.label, &e);
        fail_plan(plan, complete, e);
        self.publish_stats();
    }

    fn publish_stats(&mut self) {
        if self.free_sampled.elapsed() >= FREE_MEMORY_EVERY {
            self.sample_free_memory();
        }
        if self.idle_released.elapsed() >= self.idle_release_every {
            self.idle_released = Instant::now();
            self.pool.release_unused();
        }
        *self.shared.pool.lock() = self.pool.stats();
        let mut g = self.shared.graphs.lock();
        g.entries = self.graphs.entries.len() as u64;
        g.bytes = (self.graphs.used + self.graphs.resident_used) as u64;
        g.device_bytes = self.graphs.device_bytes as u64;
        g.resident_entries = self
            .graphs
            .entries
            .values()
            .filter(|e| e.resident.load(Ordering::Relaxed))
            .count() as u64;
        g.resident_bytes = self.graphs.resident_used as u64;
        g.shapes_seen_once = self.graphs.seen.len() as u64;
        g.shapes_failed = self.graphs.failed.len() as u64;
    }

    /// Reads the device's free memory (`cuMemGetInfo`) into the shared state. Memory the pool
    /// holds idle counts as free: the pool hands it out before it allocates.
    fn sample_free_memory(&mut self) {
        self.free_sampled = Instant::now();
        match result::mem_get_info() {
            Ok((free, _total)) => {
                let free = free as u64 + self.pool.stats().idle as u64;
                self.shared
                    .free_memory
                    .store(free, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(device = %self.label, "cuMemGetInfo failed: {e}"),
        }
    }

    /// Waits for a plan's lane, hands its outputs to its completion, returns its block.
    fn finish(&mut self, f: InFlight) {
        let range = nvtx::range(Phase::Wait, 0);
        let waited = wait_stream(&self.lanes[f.lane].stream, &self.label, &mut None);
        drop(range);
        self.pool.give_back(f.block);
        match waited {
            Ok(()) => {
                let lane = &mut self.lanes[f.lane];
                let ms = |a: usize, b: usize| {
                    lane.events[a]
                        .elapsed_ms(&lane.events[b])
                        .map(|m| Duration::from_secs_f64(f64::from(m.max(0.0)) / 1e3))
                        .unwrap_or_default()
                };
                let (upload, download) = (ms(0, 1), ms(2, 3));
                let stats = ExecStats {
                    compute: ms(1, 2),
                    transfer: upload + download,
                    graph_replayed: false,
                    executor: f.taken.elapsed(),
                    pack: f.pack,
                    upload,
                    download,
                };
                let total = f
                    .outputs
                    .iter()
                    .map(|(_, off, len)| off + len)
                    .max()
                    .unwrap_or(0);
                let huge = self.huge_pages;
                let u = &self.unpacking;
                if total >= UNPACK_OFF_THREAD
                    && u.outstanding.load(std::sync::atomic::Ordering::Acquire) < MAX_UNPACKING
                {
                    let spare = u.returned.lock().pop().unwrap_or_else(PinnedBuffer::empty);
                    let mut staging = std::mem::replace(&mut lane.staging_out, spare);
                    let u = u.clone();
                    u.outstanding
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    // The plan goes before the completion runs: the batch's inputs are then the
                    // completion's alone, to reuse for the outputs (`Kernel::unpack_donated`).
                    // Its packers hold only shared references to them, so this is cheap.
                    drop(f.plan);
                    let (complete, outputs) = (f.complete, f.outputs);
                    rayon::spawn(move || {
                        deliver(complete, &outputs, staging.slice_mut(total), stats, huge);
                        u.returned.lock().push(staging);
                        u.outstanding
                            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    });
                    self.publish_stats();
                    return;
                }
                drop(f.plan);
                let staging: &[u8] = lane.staging_out.slice_mut(total);
                deliver(f.complete, &f.outputs, staging, stats, huge);
                self.publish_stats();
            }
            Err(e) => {
                self.fail(f.plan, f.complete, e);
            }
        }
    }

    /// Waits for the unpacks running off this thread, then frees their staging here.
    fn drain_unpacking(&mut self) {
        while self
            .unpacking
            .outstanding
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        let returned = std::mem::take(&mut *self.unpacking.returned.lock());
        drop(returned);
    }

    /// The functions of `plan`'s launches, compiling and loading the kernel's module on first use.
    /// The copy kernel of [`GRAPH_KERNEL_COPY_MAX`], compiled (or read from the PTX cache) and
    /// loaded on first use; `None` when that failed, once and for all (graphs then copy with
    /// memcpy nodes, as they did before).
    fn copy_function(&mut self) -> Option<(sys::CUfunction, sys::CUfunction)> {
        match &self.copy_kernel {
            CopyKernel::Ready(copy, signal) => {
                return Some((copy.cu_function(), signal.cu_function()))
            }
            CopyKernel::Failed => return None,
            CopyKernel::Unloaded => {}
        }
        let sources = KernelSources {
            cuda: Some(COPY_SOURCE),
            wgsl: None,
        };
        let loaded = (|| -> Result<(CudaFunction, CudaFunction)> {
            let (ptx, _) =
                self.ptx
                    .ptx("gpubridge_copy", COPY_SOURCE, sources.hash(), self.arch)?;
            self.ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .and_then(|module| {
                    Ok((
                        module.load_function("gpubridge_copy")?,
                        module.load_function("gpubridge_signal")?,
                    ))
                })
                .map_err(|e| driver_error(&self.label, "loading the copy kernel", e))
        })();
        match loaded {
            Ok((copy, signal)) => {
                let f = (copy.cu_function(), signal.cu_function());
                self.copy_kernel = CopyKernel::Ready(copy, signal);
                Some(f)
            }
            Err(e) => {
                tracing::warn!(device = %self.label, "the graphs' copy kernel is not available, small graphs copy with memcpy nodes: {e}");
                self.copy_kernel = CopyKernel::Failed;
                None
            }
        }
    }

    fn functions(&mut self, plan: &Plan, sources: &KernelSources) -> Result<Vec<sys::CUfunction>> {
        let entries: Vec<&'static str> = launch_entries(plan).collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let source = sources.cuda.ok_or_else(|| Error::Unsupported {
            backend: BackendKind::Cuda,
            what: format!("kernel {} has no CUDA form", plan.kernel),
        })?;
        // Sources are `&'static str`s: their address identifies them without hashing the text on
        // every launch; the text is hashed once, when the module is loaded, for the PTX cache key.
        let key = (plan.kernel, source.as_ptr() as usize, source.len());
        if let Some(why) = self.failed_modules.get(&key) {
            return Err(Error::Unsupported {
                backend: BackendKind::Cuda,
                what: why.clone(),
            });
        }
        if !self.modules.contains_key(&key) {
            let t = Instant::now();
            // A kernel whose source does not compile cannot run on this backend, however healthy
            // the device: report it as unsupported so the work falls back without tripping the
            // device's circuit breaker.
            let (ptx, cached) = self
                .ptx
                .ptx(plan.kernel, source, sources.hash(), self.arch)
                .map_err(|e| match e {
                    Error::Backend { message, .. } => {
                        // Remember it: the same source will not compile next time either.
                        self.failed_modules.insert(key, message.clone());
                        Error::Unsupported {
                            backend: BackendKind::Cuda,
                            what: message,
                        }
                    }
                    other => other,
                })?;
            let module = self
                .ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(|e| driver_error(&self.label, "cuModuleLoadData", e))?;
            tracing::info!(device = %self.label, kernel = plan.kernel, cached, "module ready in {:?}", t.elapsed());
            self.modules.insert(
                key,
                LoadedModule {
                    _module: module,
                    functions: HashMap::new(),
                },
            );
        }
        let loaded = self.modules.get_mut(&key).ok_or_else(|| Error::Backend {
            backend: BackendKind::Cuda,
            message: "module cache lost an entry".to_owned(),
            transient: false,
        })?;
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            if !loaded.functions.contains_key(entry) {
                let f = loaded
                    ._module
                    .load_function(entry)
                    .map_err(|e| Error::Unsupported {
                        backend: BackendKind::Cuda,
                        what: format!("kernel {} has no entry point {entry:?}: {e}", plan.kernel),
                    })?;
                self.shared.functions.lock().insert(
                    (key.0, key.1, key.2, entry),
                    SharedFunction(f.cu_function()),
                );
                loaded.functions.insert(entry, f);
            }
            out.push(loaded.functions[entry].cu_function());
        }
        Ok(out)
    }

    /// Where every buffer of the plan goes. Every buffer lives in one pooled device block:
    /// inputs first (so their upload is one contiguous range, copied piece by piece while the next
    /// piece is packed), then outputs (downloaded with one copy), then scratch. Returns the layout
    /// and the block's size.
    fn layout(plan: &Plan) -> (Layout, usize) {
        Self::layout_with(plan, false)
    }

    /// [`Executor::layout`], with every buffer given its bucket's size ([`bucket_len`]) when
    /// `bucketed`: a graph captured with that layout serves every plan of the bucket. The
    /// inputs' and outputs' lengths stay the plan's own.
    fn layout_with(plan: &Plan, bucketed: bool) -> (Layout, usize) {
        let size = |n: usize| if bucketed { bucket_len(n) } else { n };
        let align = |n: usize| size(n).div_ceil(STAGING_ALIGN) * STAGING_ALIGN;
        let mut layout = Layout {
            offsets: vec![0; plan.buffers.len()],
            inputs: Vec::new(),
            outputs: Vec::new(),
            in_total: 0,
            out_start: 0,
            out_end: 0,
        };
        let mut at = 0;
        for (i, b) in plan.buffers.iter().enumerate() {
            if let BufferRole::Input(_) = b.role {
                layout.offsets[i] = at;
                layout.inputs.push((i, at, b.len));
                at += align(b.len);
            }
        }
        layout.in_total = at;
        layout.out_start = at;
        for (i, b) in plan.buffers.iter().enumerate() {
            if let BufferRole::Output = b.role {
                layout.offsets[i] = at;
                layout
                    .outputs
                    .push((BufferId(i as u32), at - layout.out_start, b.len));
                at += align(b.len);
            }
        }
        layout.out_end = at;
        for (i, b) in plan.buffers.iter().enumerate() {
            if let BufferRole::Scratch = b.role {
                layout.offsets[i] = at;
                at += align(b.len);
            }
        }
        (layout, at)
    }

    /// The graph to run the plan as, if one is cached or this is its shape's second run (then
    /// captured now); `None` when the plan should run as stream launches instead.
    fn graph_to_replay(
        &mut self,
        plan: &Plan,
        sources: &KernelSources,
        cached: Option<Arc<SharedGraph>>,
    ) -> Result<Option<Arc<SharedGraph>>> {
        // A cached graph needs neither the functions nor a fresh layout.
        if cached.is_some() {
            return Ok(cached);
        }
        let functions = self.functions(plan, sources)?;
        let (layout, total) = Self::layout_with(plan, !has_library_step(plan));
        let shape = self.graph_for(plan, &functions, &layout, total);
        Ok(shape.and_then(|shape| self.graphs.entries.get(&shape).cloned()))
    }

    /// Runs a tiny plan zero-copy on lane 0: packs its inputs into mapped memory, launches with
    /// pointers into that memory, waits. Returns the output layout, where the outputs start and
    /// end in the mapped buffer, and timings.
    #[allow(clippy::type_complexity)] // A private return type read right at the call.
    fn run_zero_copy(
        &mut self,
        plan: &Plan,
        sources: &KernelSources,
    ) -> Result<(Vec<(BufferId, usize, usize)>, usize, usize, ExecStats)> {
        let functions = self.functions(plan, sources)?;
        let (layout, total) = Self::layout(plan);
        self.mapped.ensure(total.max(1), &self.label)?;
        let stats = zero_copy(
            &self.lanes[0].stream,
            &mut self.mapped,
            &self.label,
            plan,
            &functions,
            &layout,
        )?;
        Ok((layout.outputs, layout.out_start, layout.out_end, stats))
    }

    /// Whether a plan is small enough for the graph path (the graph cache decides the rest).
    fn graph_candidate(&self, plan: &Plan) -> bool {
        plan.device_bytes() <= GRAPH_MAX_PLAN && plan.device_bytes() <= self.graphs.budget
    }

    /// Enqueues the plan on `lane`: packs and uploads its inputs piece by piece, runs its steps,
    /// downloads its outputs. Returns the rented block (held until the plan finishes) and where
    /// the outputs will be in the lane's staging.
    #[allow(clippy::type_complexity)] // A private return type read right at the call.
    fn start(
        &mut self,
        plan: &Plan,
        sources: &KernelSources,
        lane: usize,
    ) -> Result<(
        crate::memory::DeviceBuffer,
        Vec<(BufferId, usize, usize)>,
        Duration,
    )> {
        let functions = self.functions(plan, sources)?;
        let (layout, total) = Self::layout(plan);
        let out_len = layout.out_end - layout.out_start;
        let l = &mut self.lanes[lane];
        l.staging_in.ensure(layout.in_total, &self.label)?;
        l.staging_out.ensure(out_len, &self.label)?;
        let block = self.pool.rent(total.max(1))?;
        let l = &mut self.lanes[lane];
        // A staged plan needs the lane's copy streams; if they cannot be made, it runs unstaged.
        let staged_now = self.staged
            && staged(plan, &layout)
            && l.ensure_copies(&self.ctx, &self.shared, &self.label);
        let result = if staged_now {
            enqueue_staged(
                l,
                &self.ctx,
                self.blas.as_ref(),
                &self.label,
                plan,
                &functions,
                block.ptr,
                &layout,
            )
        } else {
            enqueue(
                &l.stream,
                Some(&l.events),
                self.blas.as_ref(),
                &self.label,
                plan,
                &functions,
                Bases::block(block.ptr),
                &layout,
                l.staging_in.slice_mut(layout.in_total),
                l.staging_out.slice_mut(out_len),
                true,
                true,
            )
        };
        match result {
            Ok(pack) => Ok((block, layout.outputs, pack)),
            Err(e) => {
                // Nothing may still be using the block when it goes back: a staged plan that
                // failed half-way (a kernel's packer that panicked, say) may have uploads and
                // downloads queued on the lane's copy streams, which the lane's own stream was
                // not yet told to wait for.
                let l = &self.lanes[lane];
                let copies = l.copies.iter().flat_map(|c| [&c.copy_in, &c.copy_out]);
                for stream in std::iter::once(&l.stream).chain(copies) {
                    let _ = wait_stream(stream, &self.label, &mut None);
                }
                self.pool.give_back(block);
                Err(e)
            }
        }
    }

    /// The cached graph of `plan`'s shape, if there is one (the shape is computed once per plan).
    fn cached_graph(&mut self, plan: &Plan) -> Option<Arc<SharedGraph>> {
        if !self.graphs.enabled || self.graphs.entries.is_empty() || plan.steps.is_empty() {
            return None;
        }
        self.graphs.entries.get(&plan.bucket_shape()).cloned()
    }

    /// The cached graph for this plan's bucket, capturing it on the bucket's second run (on the
    /// first for a resident plan).
    fn graph_for(
        &mut self,
        plan: &Plan,
        functions: &[sys::CUfunction],
        layout: &Layout,
        total: usize,
    ) -> Option<gpubridge_core::PlanShape> {
        let g = &mut self.graphs;
        // A resident plan may use the resident budget instead of the LRU's.
        let resident = plan.resident && total <= g.resident_budget;
        if !g.enabled
            || plan.steps.is_empty()
            || total > GRAPH_MAX_PLAN
            || (total > g.budget && !resident)
        {
            return None;
        }
        let shape = plan.bucket_shape();
        if let Some(e) = g.entries.get(&shape) {
            if resident
                && !e.resident.load(Ordering::Relaxed)
                && g.resident_used + e.bytes <= g.resident_budget
            {
                // An ordinary graph that a resident plan now uses: kept from now on.
                e.resident.store(true, Ordering::Relaxed);
                g.used -= e.bytes;
                g.resident_used += e.bytes;
            }
            return Some(shape);
        }
        if g.failed.contains(&shape) {
            return None;
        }
        if !resident {
            if g.seen.len() >= MAX_SHAPES_REMEMBERED && !g.seen.contains_key(&shape) {
                g.seen = HashMap::new();
            }
            let seen = g.seen.entry(shape).or_insert(0);
            *seen += 1;
            if *seen < 2 {
                return None;
            }
        }
        g.seen.remove(&shape);
        match self.capture(plan, functions, layout, total) {
            Ok(entry) => {
                metrics::counter!(names::GRAPH_CACHE_TOTAL, "result" => "miss").increment(1);
                {
                    let mut stats = self.shared.graphs.lock();
                    stats.misses += 1;
                    stats.kernel_copy_captures += u64::from(entry.kernel_copies);
                    stats.mapped_input_captures += u64::from(entry.bases.inputs_mapped());
                    stats.mapped_output_captures += u64::from(entry.bases.outputs_mapped());
                }
                let (bytes, device_bytes) = (entry.bytes, entry.block.size);
                let fits_resident = resident && bytes <= self.graphs.resident_budget;
                if !fits_resident && bytes > self.graphs.budget {
                    // Its device block fitted, but with its pinned staging (rounded up) the
                    // entry is larger than the whole cache: not kept, so that the cache stays
                    // within its budget; the shape runs as stream launches.
                    tracing::debug!(device = %self.label, kernel = plan.kernel, bytes, budget = self.graphs.budget, "graph larger than its cache, not kept");
                    self.destroy_entry(entry);
                    self.remember_failed(shape);
                    return None;
                }
                if resident {
                    while self.graphs.resident_used + bytes > self.graphs.resident_budget
                        && self.evict_lru(true)
                    {}
                }
                let kept_resident =
                    resident && self.graphs.resident_used + bytes <= self.graphs.resident_budget;
                if kept_resident {
                    self.graphs.resident_used += bytes;
                } else {
                    while self.graphs.used + bytes > self.graphs.budget && self.evict_lru(false) {}
                    self.graphs.used += bytes;
                }
                self.graphs.device_bytes += device_bytes;
                let graph = Arc::new(SharedGraph {
                    entry: Mutex::new(Some(entry)),
                    bytes,
                    device_bytes,
                    last_used: AtomicU64::new(self.shared.graph_clock.load(Ordering::Relaxed)),
                    resident: AtomicBool::new(kept_resident),
                });
                self.shared.graph_index.write().insert(shape, graph.clone());
                self.graphs.entries.insert(shape, graph);
                // Spinning callers may hand this shape again once its graph is gone (evicted,
                // or the caches released), so that it is captured again.
                self.shared.tiny_handed.lock().remove(&shape);
                Some(shape)
            }
            Err(e) => {
                tracing::warn!(device = %self.label, kernel = plan.kernel, "graph capture failed, this plan shape runs as stream launches: {e}");
                self.remember_failed(shape);
                self.shared.graphs.lock().capture_failures += 1;
                None
            }
        }
    }

    /// Evicts the least recently used graph among the resident ones or the ordinary ones;
    /// `false` when there is none.
    fn evict_lru(&mut self, resident: bool) -> bool {
        let Some(shape) = self
            .graphs
            .entries
            .iter()
            .filter(|(_, e)| e.resident.load(Ordering::Relaxed) == resident)
            .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
            .map(|(k, _)| *k)
        else {
            return false;
        };
        if let Some((g, executions)) = self.drop_graph(&shape) {
            tracing::debug!(device = %self.label, executions, resident, "evicting a graph");
            if g.resident.load(Ordering::Relaxed) {
                self.shared.graphs.lock().resident_evictions += 1;
            }
            metrics::counter!(names::GRAPH_CACHE_TOTAL, "result" => "evict").increment(1);
            self.shared.graphs.lock().evictions += 1;
        }
        true
    }

    /// Removes the graph of `shape` from the cache, destroys it (see [`Executor::take_graph`])
    /// and takes its bytes off the cache's counts; returns it and how often it was replayed.
    fn drop_graph(&mut self, shape: &gpubridge_core::PlanShape) -> Option<(Arc<SharedGraph>, u64)> {
        let g = self.graphs.entries.remove(shape)?;
        let executions = self.take_graph(shape, &g);
        if g.resident.load(Ordering::Relaxed) {
            self.graphs.resident_used -= g.bytes;
        } else {
            self.graphs.used -= g.bytes;
        }
        self.graphs.device_bytes -= g.device_bytes;
        Some((g, executions))
    }

    /// Takes a graph out of the callers' index and out of its shared slot, then destroys it and
    /// returns its block to the pool; a graph that a caller is replaying now joins the dying, to
    /// be destroyed once free ([`Executor::bury_dying`]) rather than waited for. Returns how
    /// often it was replayed (0 for a dying one).
    fn take_graph(&mut self, shape: &gpubridge_core::PlanShape, graph: &Arc<SharedGraph>) -> u64 {
        self.shared.graph_index.write().remove(shape);
        // No caller finds it from here on; one that already holds it finishes first.
        match take_entry(graph, false) {
            Some(Some(entry)) => self.destroy_entry(entry),
            Some(None) => 0,
            None => {
                self.graphs.dying.push(graph.clone());
                let mut stats = self.shared.graphs.lock();
                stats.deferred_evictions += 1;
                stats.dying = self.graphs.dying.len() as u64;
                0
            }
        }
    }

    /// Destroys the dying graphs ([`GraphCache::dying`]) that no caller holds now, or, with
    /// `wait`, all of them, waiting for their callers.
    fn bury_dying(&mut self, wait: bool) {
        if self.graphs.dying.is_empty() {
            return;
        }
        for graph in std::mem::take(&mut self.graphs.dying) {
            match take_entry(&graph, wait) {
                Some(entry) => {
                    if let Some(entry) = entry {
                        self.destroy_entry(entry);
                    }
                }
                None => self.graphs.dying.push(graph),
            }
        }
        self.shared.graphs.lock().dying = self.graphs.dying.len() as u64;
    }

    /// Destroys a graph and returns its block to the pool; returns how often it was replayed.
    fn destroy_entry(&mut self, entry: GraphEntry) -> u64 {
        let GraphEntry {
            graph,
            block,
            executions,
            ..
        } = entry;
        drop(graph);
        self.pool.give_back(block);
        executions
    }

    /// Remembers that `shape` runs as stream launches (a failed capture, or a graph larger than
    /// its cache), forgetting all such shapes once there are too many.
    fn remember_failed(&mut self, shape: gpubridge_core::PlanShape) {
        if self.graphs.failed.len() >= MAX_SHAPES_REMEMBERED {
            self.graphs.failed = std::collections::HashSet::new();
        }
        self.graphs.failed.insert(shape);
    }

    /// Destroys every ordinary cached graph (resident ones stay: their plans asked to be kept
    /// hot), frees the streams' pinned staging, forgets the plan shapes remembered, and frees the
    /// pool's idle memory. Runs with nothing in flight (the caller finished it first).
    fn release_caches(&mut self) -> Released {
        let mut released = Released::default();
        let ordinary: Vec<gpubridge_core::PlanShape> = self
            .graphs
            .entries
            .iter()
            .filter(|(_, e)| !e.resident.load(Ordering::Relaxed))
            .map(|(k, _)| *k)
            .collect();
        for shape in ordinary {
            if let Some((g, _)) = self.drop_graph(&shape) {
                released.graphs += 1;
                released.graph_bytes += g.bytes as u64;
            }
        }
        // Graphs evicted while callers held them: their callers have finished or soon will.
        self.bury_dying(true);
        // The lanes' pinned staging (grown to the largest plan each has run) and the spares of
        // off-thread unpacks: nothing is in flight, so none is in use.
        self.drain_unpacking();
        for lane in &mut self.lanes {
            released.staging_bytes +=
                (lane.staging_in.capacity() + lane.staging_out.capacity()) as u64;
            lane.staging_in = PinnedBuffer::empty();
            lane.staging_out = PinnedBuffer::empty();
        }
        released.shapes = (self.graphs.seen.len() + self.graphs.failed.len()) as u64;
        self.graphs.seen = HashMap::new();
        self.graphs.failed = std::collections::HashSet::new();
        *self.shared.tiny_handed.lock() = HashMap::new();
        let idle = self.pool.stats().idle;
        self.pool.trim();
        released.pool_bytes = idle.saturating_sub(self.pool.stats().idle) as u64;
        self.sample_free_memory();
        self.publish_stats();
        tracing::debug!(device = %self.label, ?released, "released the caches");
        released
    }

    /// Destroys every cached graph (the executor is ending). Callers can no longer reach them:
    /// the inline lane they would replay on is gone.
    fn release_graphs(&mut self) {
        let entries = std::mem::take(&mut self.graphs.entries);
        for (shape, g) in &entries {
            self.take_graph(shape, g);
        }
        self.bury_dying(true);
        self.graphs.used = 0;
        self.graphs.resident_used = 0;
        self.graphs.device_bytes = 0;
    }

    /// Captures the plan's copies and steps on the stream into a graph that owns its block and
    /// staging.
    fn capture(
        &mut self,
        plan: &Plan,
        functions: &[sys::CUfunction],
        layout: &Layout,
        total: usize,
    ) -> Result<GraphEntry> {
        let out_len = layout.out_end - layout.out_start;
        // The copy kernel and the signal kernel, both or neither.
        let (copy, signal) =
            if layout.in_total <= GRAPH_KERNEL_COPY_MAX && out_len <= GRAPH_KERNEL_COPY_MAX {
                self.copy_function().unzip()
            } else {
                (None, None)
            };
        let new_staging = || match copy {
            Some(_) => PinnedBuffer::mapped(),
            None => PinnedBuffer::empty(),
        };
        let mut staging_in = new_staging();
        let mut staging_out = new_staging();
        // The signal's words: the count after the block's buffers, the word after the outputs.
        let (counter_at, word_at) = (total.next_multiple_of(16), out_len.next_multiple_of(64));
        staging_in.ensure(layout.in_total, &self.label)?;
        staging_out.ensure(
            if signal.is_some() {
                word_at + 4
            } else {
                out_len
            },
            &self.label,
        )?;
        let block = self.pool.rent(if signal.is_some() {
            counter_at + 16
        } else {
            total.max(1)
        })?;
        let label = self.label.clone();
        let (in_dev, out_dev) = (staging_in.device_ptr(), staging_out.device_ptr());
        // Small inputs and outputs that one launch each uses stay in the mapped staging.
        let mapped = match self.mapped_buffers {
            true => Mapped::of(plan),
            false => Mapped::NONE,
        };
        let mut bases = Bases::block(block.ptr);
        if copy.is_some() && layout.in_total > 0 && mapped.inputs {
            bases.inputs = in_dev;
        }
        if copy.is_some() && out_len > 0 && mapped.outputs {
            bases.outputs = out_dev.wrapping_sub(layout.out_start as u64);
        }
        let copy_in_node = copy.is_some() && layout.in_total > 0 && !bases.inputs_mapped();
        let copy_out_node = copy.is_some() && out_len > 0 && !bases.outputs_mapped();
        if signal.is_some() {
            // Both words start at zero: the count on the device (synchronously, as the first
            // replay may be launched on another stream), the word in the staging.
            staging_out.slice_mut(word_at + 4)[word_at..].fill(0);
            let zeroed = (|| {
                let stream = &self.lanes[0].stream;
                // SAFETY: 4 bytes of the block just rented, which nothing else uses yet.
                unsafe {
                    result::memset_d8_async(block.ptr + counter_at as u64, 0, 4, stream.cu_stream())
                }?;
                stream.synchronize()
            })();
            if let Err(e) = zeroed {
                self.pool.give_back(block);
                return Err(driver_error(&self.label, "cuMemsetD8Async", e));
            }
        }
        let captured = (|| -> Result<cudarc::driver::CudaGraph> {
            let stream = &self.lanes[0].stream;
            stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(|e| driver_error(&label, "cuStreamBeginCapture", e))?;
            let copy_in = |f| match copy_in_node {
                false => Ok(()),
                true => launch_copy(stream, f, in_dev, block.ptr, layout.in_total, &label),
            };
            let copy_out = |f| match copy_out_node {
                false => Ok(()),
                true => launch_copy(
                    stream,
                    f,
                    block.ptr + layout.out_start as u64,
                    out_dev,
                    out_len,
                    &label,
                ),
            };
            let signal_last = |f| {
                launch_signal(
                    stream,
                    f,
                    block.ptr + counter_at as u64,
                    out_dev + word_at as u64,
                    &label,
                )
            };
            let enqueued = copy.map_or(Ok(()), copy_in).and_then(|()| {
                enqueue(
                    stream,
                    None,
                    self.blas.as_ref(),
                    &label,
                    plan,
                    functions,
                    bases,
                    layout,
                    staging_in.slice_mut(layout.in_total),
                    staging_out.slice_mut(out_len),
                    false,
                    copy.is_none(),
                )
                .and_then(|_| copy.map_or(Ok(()), copy_out))
                .and_then(|()| signal.map_or(Ok(()), signal_last))
            });
            // End the capture whatever happened, so the stream leaves capture mode.
            let graph = stream
                .end_capture(sys::CUgraphInstantiate_flags(0))
                .map_err(|e| driver_error(&label, "cuStreamEndCapture", e));
            enqueued?;
            let graph = graph?.ok_or_else(|| Error::Backend {
                backend: BackendKind::Cuda,
                message: "capture produced no graph".to_owned(),
                transient: false,
            })?;
            // Not uploaded ahead (`cuGraphUpload`): on driver 580 an uploaded graph that has
            // not been launched yet slows every graph of the context ~20%, for good if it is
            // destroyed unlaunched (docs/PERFORMANCE.md, nineteenth session). Its first launch
            // uploads it.
            Ok(graph)
        })();
        match captured {
            Ok(graph) => {
                let (nodes, updatable) = if has_library_step(plan) {
                    (Vec::new(), false)
                } else {
                    let copies = (
                        copy_in_node,
                        usize::from(copy_out_node) + usize::from(signal.is_some()),
                    );
                    kernel_nodes(&graph, plan, functions, &layout.offsets, bases, copies)
                };
                if !updatable && !has_library_step(plan) {
                    tracing::debug!(device = %self.label, kernel = plan.kernel, "captured graph is not a chain of the plan's launches; it replays only as captured");
                }
                let outputs_at = bases.outputs.wrapping_add(layout.out_start as u64);
                Ok(GraphEntry {
                    graph,
                    bytes: block.size + staging_in.capacity() + staging_out.capacity(),
                    block,
                    staging_in,
                    staging_out,
                    offsets: layout.offsets.clone(),
                    bases,
                    in_total: layout.in_total,
                    nodes,
                    updatable,
                    applied: plan.steps.if_reused(),
                    executions: 0,
                    library: has_library_step(plan),
                    kernel_copies: copy.is_some(),
                    kernel: plan.kernel,
                    outputs_at,
                    signal: signal.map(|_| Signal { word_at, count: 0 }),
                    replay_time: None,
                })
            }
            Err(e) => {
                self.pool.give_back(block);
                Err(e)
            }
        }
    }
}

/// Brings a cached graph's kernel nodes to this plan's parameters (in place, where they differ),
/// packs the plan's inputs into the graph's staging, replays it on `stream` and waits. The
/// device's context must be current on this thread. Returns where the outputs are in the graph's
/// output staging ([`graph_outputs`]), or `None` (nothing touched) when the graph cannot take
/// this plan's parameters and the plan should run as stream launches.
#[allow(clippy::type_complexity)] // A private return type read right at the call.
fn replay(
    entry: &mut GraphEntry,
    plan: &Plan,
    stream: &CudaStream,
    label: &str,
    shared: &Shared,
) -> Result<Option<(Vec<(BufferId, usize, usize)>, ExecStats)>> {
    let Some(sync) = update_nodes(entry, plan, label)? else {
        return Ok(None);
    };
    let mut inputs: smallvec::SmallVec<[(usize, usize, usize); 8]> = smallvec::SmallVec::new();
    let mut outputs = Vec::new();
    let mut out_start = usize::MAX;
    for (i, b) in plan.buffers.iter().enumerate() {
        let Some(&at) = entry.offsets.get(i) else {
            return Ok(None);
        };
        match b.role {
            BufferRole::Input(_) => inputs.push((i, at, b.len)),
            BufferRole::Output => {
                out_start = out_start.min(at);
                outputs.push((BufferId(i as u32), at, b.len));
            }
            BufferRole::Scratch => {}
        }
    }
    for o in &mut outputs {
        o.1 -= out_start;
    }
    let t = Instant::now();
    // A parked caller whose result is near is woken now, while this thread packs and launches.
    let mut ahead = early_wake(plan, entry.replay_time, shared, t);
    if ahead.is_none() {
        decline_early_wake(plan);
    }
    Ahead::tick(&mut ahead, t);
    let range = nvtx::range(Phase::Pack, entry.in_total as u64);
    let packed = pack_piece(plan, &inputs, entry.staging_in.slice_mut(entry.in_total), 0);
    drop(range);
    packed?;
    let pack = t.elapsed();
    let t = Instant::now();
    let range = nvtx::range(Phase::Replay, entry.bytes as u64);
    // SAFETY: the executable graph is this entry's and used by this thread alone (the lock); its
    // last replay is done with the entry's memory (waited for before the lock was let go; a
    // signalled replay's last node may still be ending, touching nothing, and this launch is
    // ordered after it); `stream` is a live stream of the context the caller made current. The
    // graph's copies read and write the entry's staging and block, which the entry keeps alive.
    unsafe { result::graph::launch(entry.graph.cu_graph_exec(), stream.cu_stream()) }
        .map_err(|e| driver_error(label, "cuGraphLaunch", e))?;
    drop(range);
    entry.executions += 1;
    let range = nvtx::range(Phase::Wait, 0);
    let launched = Instant::now();
    let signalled = match entry.signal.as_mut() {
        Some(signal) => {
            signal.count = signal.count.wrapping_add(1);
            let (at, count) = (signal.word_at, signal.count);
            // No slice of the staging is borrowed while the graph writes it: the word by address.
            // SAFETY: `at + 4` is within the staging (sized so at capture), which is 64-byte
            // aligned at `at` in a page-aligned allocation, alive while the entry is, and written
            // at `at` only by the graph's signal kernel.
            let waited = unsafe {
                let word = entry.staging_out.host_ptr().add(at);
                wait_signal(stream, word.cast::<AtomicU32>(), count, label, &mut ahead)
            };
            if !matches!(waited, Ok(true)) {
                // The word no longer follows the replays (or the replay failed): later ones
                // wait for the stream.
                entry.signal = None;
            }
            waited?
        }
        None => {
            wait_stream(stream, label, &mut ahead)?;
            false
        }
    };
    drop(range);
    entry.replay_time = Some(ReplayTime::next(entry.replay_time, launched.elapsed()));
    let woke = Ahead::woken(&ahead);
    metrics::counter!(names::GRAPH_CACHE_TOTAL, "result" => "hit").increment(1);
    {
        let mut g = shared.graphs.lock();
        g.hits += 1;
        g.signalled_replays += u64::from(signalled);
        g.early_wakes += u64::from(woke);
        match sync {
            NodeSync::SameSteps => g.same_steps_replays += 1,
            NodeSync::Updated(0) => {}
            NodeSync::Updated(n) => {
                g.updated_replays += 1;
                g.node_updates += n;
            }
        }
    }
    Ok(Some((
        outputs,
        ExecStats {
            compute: t.elapsed(),
            graph_replayed: true,
            pack,
            ..ExecStats::default()
        },
    )))
}

/// The device addresses where the outputs of `kernel`'s cached graphs start (a diagnostic:
/// [`crate::CudaBackend::graph_outputs`]).
pub(crate) fn graph_outputs_of(shared: &Shared, kernel: &str) -> Vec<u64> {
    let graphs: Vec<Arc<SharedGraph>> = shared.graph_index.read().values().cloned().collect();
    graphs
        .iter()
        .filter_map(|g| {
            g.entry
                .lock()
                .as_ref()
                .filter(|e| e.kernel == kernel)
                .map(|e| e.outputs_at)
        })
        .collect()
}

/// Marks a graph as just used, for the LRU.
fn touch(shared: &Shared, graph: &SharedGraph) {
    let now = shared.graph_clock.fetch_add(1, Ordering::Relaxed) + 1;
    graph.last_used.store(now, Ordering::Relaxed);
}

/// The graph's output staging, up to the end of the last output that [`replay`] placed there.
fn graph_outputs<'e>(entry: &'e mut GraphEntry, outputs: &[(BufferId, usize, usize)]) -> &'e [u8] {
    let total = outputs
        .iter()
        .map(|(_, off, len)| off + len)
        .max()
        .unwrap_or(0);
    entry.staging_out.slice_mut(total)
}

/// Whether a plan calls a library (cuBLAS), whose captured nodes cannot be updated in place.
fn has_library_step(plan: &Plan) -> bool {
    plan.steps.iter().any(|s| matches!(s, Step::Gemm(_)))
}

/// The argument values of launch `l`, each in an 8-byte slot whose low bytes hold the argument in
/// the width the kernel declares: buffer arguments become device pointers into their buffers,
/// laid out by `offsets` from `bases`.
fn launch_values(
    plan: &Plan,
    l: &gpubridge_core::plan::Launch,
    offsets: &[usize],
    bases: Bases,
) -> Result<LaunchValues> {
    l.args
        .iter()
        .map(|a| match a {
            Arg::Buffer { id, offset } => bases.address(plan, offsets, *id, *offset),
            Arg::U32(v) => Ok(u64::from(*v)),
            Arg::U64(v) => Ok(*v),
            Arg::F32(v) => Ok(u64::from(v.to_bits())),
        })
        .collect()
}

/// Whether launch `l`'s argument values (as [`launch_values`] computes them) are `values`,
/// without building them: a replay checks every launch of its plan, so this runs once per launch
/// per call.
fn same_values(
    plan: &Plan,
    l: &gpubridge_core::plan::Launch,
    offsets: &[usize],
    bases: Bases,
    values: &[u64],
) -> bool {
    l.args.len() == values.len()
        && l.args.iter().zip(values).all(|(a, v)| match a {
            Arg::Buffer { id, offset } => bases.at(plan, offsets, *id, *offset) == Some(*v),
            Arg::U32(x) => u64::from(*x) == *v,
            Arg::U64(x) => x == v,
            Arg::F32(x) => u64::from(x.to_bits()) == *v,
        })
}

/// Finds the kernel nodes of a freshly captured graph, one per launch of `plan` in order, by
/// walking the chain a single-stream capture produces. Returns them with whether the walk found
/// exactly the expected chain (only then may their parameters be updated in place).
fn kernel_nodes(
    graph: &cudarc::driver::CudaGraph,
    plan: &Plan,
    functions: &[sys::CUfunction],
    offsets: &[usize],
    bases: Bases,
    (copy_in, tail): (bool, usize),
) -> (Vec<KernelNode>, bool) {
    let launches: Vec<&gpubridge_core::plan::Launch> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::Launch(l) => Some(l),
            Step::Gemm(_) => None,
        })
        .collect();
    let mut found = Vec::with_capacity(launches.len());
    // SAFETY: the graph is alive; each query writes at most the count it is given.
    let walked = unsafe {
        let g = graph.cu_graph();
        let mut n = 1usize;
        let mut node: sys::CUgraphNode = std::ptr::null_mut();
        let mut ok =
            sys::cuGraphGetRootNodes(g, &mut node, &mut n) == sys::CUresult::CUDA_SUCCESS && n == 1;
        while ok {
            let mut ty = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
            if sys::cuGraphNodeGetType(node, &mut ty) != sys::CUresult::CUDA_SUCCESS {
                ok = false;
                break;
            }
            if ty == sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
                found.push(node);
            }
            let mut count = 0usize;
            if sys::cuGraphNodeGetDependentNodes_v2(
                node,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut count,
            ) != sys::CUresult::CUDA_SUCCESS
            {
                ok = false;
                break;
            }
            match count {
                0 => break,
                1 => {
                    let mut next: sys::CUgraphNode = std::ptr::null_mut();
                    let mut one = 1usize;
                    ok = sys::cuGraphNodeGetDependentNodes_v2(
                        node,
                        &mut next,
                        std::ptr::null_mut(),
                        &mut one,
                    ) == sys::CUresult::CUDA_SUCCESS
                        && one == 1;
                    node = next;
                }
                _ => ok = false,
            }
        }
        ok
    };
    // The copy kernels' nodes, first and last, and the signal's, last, are not the plan's
    // launches (`tail`: the nodes after them).
    let copies = usize::from(copy_in) + tail;
    if walked && found.len() >= copies {
        found.truncate(found.len() - tail);
        found.drain(..usize::from(copy_in));
    }
    let updatable = walked && found.len() == launches.len() && functions.len() == launches.len();
    let mut nodes = Vec::with_capacity(launches.len());
    for (i, l) in launches.iter().enumerate() {
        let Ok(values) = launch_values(plan, l, offsets, bases) else {
            return (Vec::new(), false);
        };
        nodes.push(KernelNode {
            node: if updatable {
                found[i]
            } else {
                std::ptr::null_mut()
            },
            func: functions.get(i).copied().unwrap_or(std::ptr::null_mut()),
            grid: l.grid,
            block: l.block,
            shared: l.shared_mem_bytes,
            values,
        });
    }
    (nodes, updatable)
}

/// Brings `entry`'s kernel nodes to `plan`'s launch parameters, updating in place the nodes that
/// differ. Returns how many were updated, or `None` when some differ and the graph cannot be
/// updated (nothing is changed then).
fn update_nodes(entry: &mut GraphEntry, plan: &Plan, label: &str) -> Result<Option<NodeSync>> {
    if entry.nodes.is_empty() {
        // Keyed by the exact shape: the captured parameters are the plan's.
        return Ok(Some(NodeSync::Updated(0)));
    }
    if entry
        .applied
        .as_ref()
        .is_some_and(|s| s.ptr_eq(&plan.steps))
    {
        // The very launches the nodes were last given (the list is immutable while shared, and
        // alive while held here, so its address cannot be another list's).
        return Ok(Some(NodeSync::SameSteps));
    }
    // Until every node below holds this plan's launches, no list may skip the comparison: an
    // update that fails half-way leaves the nodes holding neither list.
    entry.applied = None;
    let mut changed: smallvec::SmallVec<[(usize, LaunchValues); 4]> = smallvec::SmallVec::new();
    let mut i = 0;
    for step in &plan.steps {
        let Step::Launch(l) = step else { continue };
        let Some(node) = entry.nodes.get(i) else {
            return Ok(None);
        };
        if node.grid != l.grid
            || node.block != l.block
            || node.shared != l.shared_mem_bytes
            || !same_values(plan, l, &entry.offsets, entry.bases, &node.values)
        {
            if !entry.updatable {
                return Ok(None);
            }
            changed.push((i, launch_values(plan, l, &entry.offsets, entry.bases)?));
        }
        i += 1;
    }
    if i != entry.nodes.len() {
        return Ok(None);
    }
    let updates = changed.len() as u64;
    let mut launches = plan.steps.iter().filter_map(|s| match s {
        Step::Launch(l) => Some(l),
        Step::Gemm(_) => None,
    });
    let mut at = 0;
    for (idx, mut values) in changed {
        let Some(l) = launches.nth(idx - at) else {
            return Ok(None);
        };
        at = idx + 1;
        let node = &mut entry.nodes[idx];
        let mut params: smallvec::SmallVec<[*mut c_void; 8]> = values
            .iter_mut()
            .map(|v| (v as *mut u64).cast::<c_void>())
            .collect();
        let p = sys::CUDA_KERNEL_NODE_PARAMS {
            func: node.func,
            gridDimX: l.grid[0],
            gridDimY: l.grid[1],
            gridDimZ: l.grid[2],
            blockDimX: l.block[0],
            blockDimY: l.block[1],
            blockDimZ: l.block[2],
            sharedMemBytes: l.shared_mem_bytes,
            kernelParams: params.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: the node belongs to this entry's graph, whose executable graph is idle (every
        // replay is waited for before the next); the function is the one it was captured with;
        // each parameter points to an 8-byte slot that lives until the call returns (the driver
        // copies them), holding the argument in the width the kernel declares. Buffer arguments
        // point inside the entry's block, at the bucket layout's offsets (each plan buffer fits
        // its bucket).
        let rc = unsafe {
            sys::cuGraphExecKernelNodeSetParams_v2(entry.graph.cu_graph_exec(), node.node, &p)
        };
        if rc != sys::CUresult::CUDA_SUCCESS {
            return Err(driver_error(
                label,
                "cuGraphExecKernelNodeSetParams",
                result::DriverError(rc),
            ));
        }
        node.grid = l.grid;
        node.block = l.block;
        node.shared = l.shared_mem_bytes;
        node.values = values;
    }
    entry.applied = plan.steps.if_reused();
    Ok(Some(NodeSync::Updated(updates)))
}

/// What bringing a graph's kernel nodes to a plan's launches took ([`update_nodes`]).
enum NodeSync {
    /// The plan's step list is the one the nodes last ran: nothing compared.
    SameSteps,
    /// The launches were compared and this many nodes updated.
    Updated(u64),
}

/// Runs a plan zero-copy on `stream`: packs its inputs into `mapped` (already large enough for
/// `layout`), launches with pointers into that memory, and waits (even after a failed enqueue:
/// launches already queued read the mapped memory). The outputs are then in `mapped` at the
/// layout's output range. Returns the pack and compute times.
fn zero_copy(
    stream: &CudaStream,
    mapped: &mut PinnedBuffer,
    label: &str,
    plan: &Plan,
    functions: &[sys::CUfunction],
    layout: &Layout,
) -> Result<ExecStats> {
    let t = Instant::now();
    let range = nvtx::range(Phase::Pack, layout.in_total as u64);
    let packed = pack_piece(plan, &layout.inputs, mapped.slice_mut(layout.in_total), 0);
    drop(range);
    packed?;
    let pack = t.elapsed();
    let t = Instant::now();
    // Zero-copy plans have no library step: no cuBLAS handle is needed.
    let enqueued = enqueue(
        stream,
        None,
        None,
        label,
        plan,
        functions,
        Bases::block(mapped.device_ptr()),
        layout,
        &mut [],
        &mut [],
        false,
        false,
    );
    let range = nvtx::range(Phase::Wait, 0);
    let waited = wait_stream(stream, label, &mut None);
    drop(range);
    enqueued?;
    waited?;
    Ok(ExecStats {
        compute: t.elapsed(),
        pack,
        ..ExecStats::default()
    })
}

/// Marks the device lost when `e` says so (a sticky driver error): every later submission
/// then fails with it.
fn note_lost(shared: &Shared, label: &str, e: &Error) {
    if let Error::DeviceLost { reason, .. } = e {
        tracing::error!(device = %label, "device lost: {reason}");
        *shared.lost.lock() = Some(reason.clone());
    }
}

/// The entry points of a plan's launches, in order.
fn launch_entries(plan: &Plan) -> impl Iterator<Item = &'static str> + '_ {
    plan.steps.iter().filter_map(|s| match s {
        Step::Launch(l) => Some(l.entry),
        Step::Gemm(_) => None,
    })
}

/// Work handed back by [`run_inline`], to go to the executor as usual.
pub(crate) type NotInline = (Plan, KernelSources, gpubridge_core::device::PlanCompletion);

/// Runs a plan on the calling thread when its caller spins anyway ([`Plan::caller_spins`]) and no
/// other caller holds the device's inline lane: its cached graph replayed ([`replay_inline`]),
/// or, for a tiny plan (one that qualifies for zero-copy) whose functions the executor has
/// loaded (the first run of a kernel goes through the executor, which compiles it), run
/// zero-copy as the executor would. The two thread hand-offs, to the executor and back, are
/// skipped. A tiny plan's graph replays sooner than a zero-copy run (its completion word is seen
/// before the stream reports done: P2's P50 13.4-13.5 us against 14.8-15.9 on the H200, run DL),
/// so while graphs are on ([`Shared::tiny_graphs`]) a tiny shape with no graph yet goes to the
/// executor up to twice ([`Shared::tiny_handed`]), which captures it on its second run (and then
/// forgets the count, so that a shape whose graph is later evicted is handed again); after two
/// hand-offs with no capture it runs zero-copy here whenever its graph cannot replay.
/// Completes the plan (with its outputs or the error) and returns `None`, or hands the work back
/// untouched.
pub(crate) fn run_inline(
    shared: &Shared,
    plan: Plan,
    sources: KernelSources,
    complete: gpubridge_core::device::PlanCompletion,
) -> Option<NotInline> {
    let taken = Instant::now();
    if !plan.caller_spins {
        return Some((plan, sources, complete));
    }
    let tiny = zero_copy_candidate(&plan);
    // `None` from the replay: done there (its graph replayed); `Some`: the work handed back.
    let ((plan, sources, complete), uncached) =
        replay_inline(shared, plan, sources, complete, taken)?;
    if !tiny || uncached.is_some_and(|shape| hand_for_capture(shared, shape)) {
        return Some((plan, sources, complete));
    }
    let Some(mut guard) = shared.inline.try_lock() else {
        return Some((plan, sources, complete));
    };
    let Some(source) = sources.cuda else {
        return Some((plan, sources, complete));
    };
    let functions: Option<Vec<sys::CUfunction>> = {
        let known = shared.functions.lock();
        launch_entries(&plan)
            .map(|entry| {
                known
                    .get(&(plan.kernel, source.as_ptr() as usize, source.len(), entry))
                    .map(|f| f.0)
            })
            .collect()
    };
    let (Some(lane), Some(functions)) = (guard.as_mut(), functions) else {
        return Some((plan, sources, complete));
    };
    let (layout, total) = Executor::layout(&plan);
    if lane.ctx.bind_to_thread().is_err() || lane.mapped.ensure(total.max(1), &lane.label).is_err()
    {
        return Some((plan, sources, complete));
    }
    let ran = zero_copy(
        &lane.stream,
        &mut lane.mapped,
        &lane.label,
        &plan,
        &functions,
        &layout,
    );
    let stats = match ran {
        Ok(stats) => ExecStats {
            executor: taken.elapsed(),
            ..stats
        },
        Err(e) => {
            note_lost(shared, &lane.label, &e);
            drop(guard);
            fail_plan(plan, complete, e);
            return None;
        }
    };
    let spent = release_inputs(plan);
    let staging = &lane.mapped.slice_mut(layout.out_end)[layout.out_start..];
    // Tiny outputs: the plain allocator (huge pages are for large vectors).
    deliver(complete, &layout.outputs, staging, stats, false);
    drop(guard);
    drop(spent);
    shared
        .inline_runs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    None
}

/// Whether a tiny plan whose `shape` has no graph cached goes to the executor so that it sees
/// the shape twice and captures it ([`run_inline`]): graphs are on and it has been handed over
/// fewer than two times. (A plan whose graph is cached but busy runs zero-copy on its caller's
/// thread instead.)
fn hand_for_capture(shared: &Shared, shape: gpubridge_core::PlanShape) -> bool {
    if !shared.tiny_graphs.load(Ordering::Relaxed) {
        return false;
    }
    let mut handed = shared.tiny_handed.lock();
    if handed.len() >= MAX_SHAPES_REMEMBERED && !handed.contains_key(&shape) {
        handed.clear();
    }
    let times = handed.entry(shape).or_insert(0);
    if *times >= 2 {
        return false;
    }
    *times += 1;
    true
}

/// Replays a cached graph on the calling thread, as the executor would replay it, when the plan's
/// graph is cached (the executor captures it, on the shape's second run), no other caller holds
/// the device's inline lane and nobody is replaying that graph now. The two thread hand-offs are
/// skipped, which for a short chain of kernels is a large part of a call. Completes the plan and
/// returns `None`, or hands the work back untouched, with the plan's bucketed shape when it was
/// looked up and no graph of it is cached.
fn replay_inline(
    shared: &Shared,
    plan: Plan,
    sources: KernelSources,
    complete: gpubridge_core::device::PlanCompletion,
    taken: Instant,
) -> Option<(NotInline, Option<gpubridge_core::PlanShape>)> {
    if plan.steps.is_empty() || plan.device_bytes() > INLINE_REPLAY_MAX_BYTES {
        return Some(((plan, sources, complete), None));
    }
    let Some(mut lane) = shared.inline.try_lock().filter(|l| l.is_some()) else {
        return Some(((plan, sources, complete), None));
    };
    let shape = plan.bucket_shape();
    let Some(graph) = shared.graph_index.read().get(&shape).cloned() else {
        return Some(((plan, sources, complete), Some(shape)));
    };
    if plan.resident && !graph.resident.load(Ordering::Relaxed) {
        return Some(((plan, sources, complete), None));
    }
    let Some(mut slot) = graph.entry.try_lock() else {
        return Some(((plan, sources, complete), None));
    };
    // Library calls stay on the executor: a captured cuBLAS call uses the handle's workspace,
    // which the executor's own calls use too.
    let (Some(l), Some(entry)) = (lane.as_mut(), slot.as_mut().filter(|e| !e.library)) else {
        return Some(((plan, sources, complete), None));
    };
    if l.ctx.bind_to_thread().is_err() {
        return Some(((plan, sources, complete), None));
    }
    match replay(entry, &plan, &l.stream, &l.label, shared) {
        Ok(Some((outputs, mut stats))) => {
            touch(shared, &graph);
            stats.executor = taken.elapsed();
            let spent = release_inputs(plan);
            // Tiny outputs: the plain allocator (huge pages are for large vectors).
            deliver(
                complete,
                &outputs,
                graph_outputs(entry, &outputs),
                stats,
                false,
            );
            drop(slot);
            drop(lane);
            drop(spent);
            shared.inline_runs.fetch_add(1, Ordering::Relaxed);
            shared.inline_replays.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ok(None) => {
            drop(slot);
            drop(lane);
            Some(((plan, sources, complete), None))
        }
        Err(e) => {
            note_lost(shared, &l.label, &e);
            drop(slot);
            drop(lane);
            fail_plan(plan, complete, e);
            None
        }
    }
}

/// Takes a cached graph's entry out of its slot: `Some(None)` when it was already gone, `None`
/// when a caller holds it and `wait` is off (with `wait`, waits for that caller).
fn take_entry(graph: &SharedGraph, wait: bool) -> Option<Option<GraphEntry>> {
    let mut slot = if wait {
        graph.entry.lock()
    } else {
        graph.entry.try_lock()?
    };
    Some(slot.take())
}

/// Whether a plan is small and simple enough to run zero-copy (see [`ZERO_COPY_MAX_BYTES`]).
fn zero_copy_candidate(plan: &Plan) -> bool {
    // Only launches, and few of them: a long chain is not walked.
    (1..=ZERO_COPY_MAX_LAUNCHES).contains(&plan.steps.len())
        && plan.device_bytes() <= ZERO_COPY_MAX_BYTES
        && plan.steps.iter().all(|s| matches!(s, Step::Launch(_)))
        && plan
            .buffers
            .iter()
            .all(|b| !matches!(b.role, BufferRole::Scratch))
}

/// Drops what of a finished plan holds the batch's inputs (its buffers' packers:
/// [`Plan::release_packers`], as every backend does), before its completion, so that the inputs
/// are then the batch's alone to reuse; returns the rest, to be dropped once the caller has its
/// outputs (a chain of a thousand launches takes microseconds to free).
fn release_inputs(mut plan: Plan) -> Plan {
    plan.release_packers();
    plan
}

/// Fails a plan: what of it holds the batch's inputs goes first, as on success
/// ([`release_inputs`]), so that they are the batch's alone again when its completion hears of
/// the error (a batch of single requests is split then, to find the items that failed alone).
fn fail_plan(plan: Plan, complete: gpubridge_core::device::PlanCompletion, e: Error) {
    let spent = release_inputs(plan);
    complete(Err(e));
    drop(spent);
}

/// Hands a finished plan's outputs (in pinned staging) to its completion.
fn deliver(
    complete: gpubridge_core::device::PlanCompletion,
    outputs: &[(BufferId, usize, usize)],
    staging: &[u8],
    stats: ExecStats,
    huge_pages: bool,
) {
    let ids = outputs.iter().map(|(id, ..)| *id).collect();
    let slices = outputs
        .iter()
        .map(|(_, off, len)| staging.get(*off..*off + *len).unwrap_or(&[]))
        .collect();
    let outputs = PlanOutputs::new(ids, slices, stats);
    complete(Ok(if huge_pages {
        outputs.with_allocator(crate::huge_page_vec_f32)
    } else {
        outputs
    }));
}

/// A parked caller to wake ahead of a replay's expected end ([`early_wake`]).
struct Ahead<'a> {
    wake: &'a gpubridge_core::EarlyWake,
    /// When to wake it.
    at: Instant,
    /// How long it may busy-poll for its result once woken.
    spin: Duration,
    woken: bool,
}

impl Ahead<'_> {
    /// Wakes `ahead`'s caller once `now` is past its time. Whether the waiting thread may block
    /// now: not before the wake, nor during the caller's spin that follows it (the result is
    /// expected then, and a blocked thread would see it late).
    fn tick(ahead: &mut Option<Self>, now: Instant) -> bool {
        let Some(a) = ahead else {
            return true;
        };
        if !a.woken && now >= a.at {
            a.wake.wake(a.spin);
            a.woken = true;
        }
        a.woken && now >= a.at + a.spin
    }

    /// Whether `ahead`'s caller was woken.
    fn woken(ahead: &Option<Self>) -> bool {
        ahead.as_ref().is_some_and(|a| a.woken)
    }
}

/// Whether a wait begun at `since` should now block rather than spin: past [`SPIN_WAIT`], and
/// not before `ahead`'s caller is woken nor while it spins for its result (woken here when due).
fn time_to_block(ahead: &mut Option<Ahead<'_>>, since: Instant) -> bool {
    let now = Instant::now();
    Ahead::tick(ahead, now) && now - since > SPIN_WAIT
}

/// Tells `plan`'s parked caller, if it has an early wake, that none will come.
fn decline_early_wake(plan: &Plan) {
    if let Some(w) = &plan.early_wake {
        w.decline();
    }
}

/// Replays expected to take longer than this do not wake their caller early: the executor would
/// spin all that while (rather than block in `cuStreamSynchronize`) for a gain that is small
/// against it.
const EARLY_WAKE_MAX: Duration = Duration::from_millis(5);

/// When to wake `plan`'s parked caller for a replay starting `now` of a graph whose replays took
/// `time`: `cuda.early_wake_us` before it ends (at once when that is sooner, before the inputs
/// are packed), the caller then spinning for at most three times as long. `None` when the caller
/// spins (it has no early wake), early wakes are off, the graph has not replayed yet, or its
/// replays take longer than [`EARLY_WAKE_MAX`].
fn early_wake<'a>(
    plan: &'a Plan,
    time: Option<ReplayTime>,
    shared: &Shared,
    now: Instant,
) -> Option<Ahead<'a>> {
    let wake = plan.early_wake.as_ref()?;
    let lead = Duration::from_nanos(shared.early_wake_ns.load(Ordering::Relaxed));
    let time = time?.0;
    if lead.is_zero() || time > EARLY_WAKE_MAX {
        return None;
    }
    Some(Ahead {
        wake,
        at: time.checked_sub(lead).map_or(now, |d| now + d),
        spin: lead * 3,
        woken: false,
    })
}

/// About the shortest launch-to-done time of a graph's recent replays: it falls to a shorter
/// replay's at once and rises toward a longer one's by a sixteenth of the gap, so that a caller
/// woken from it is seldom woken after its result (a batch of another size in the same bucket,
/// or a slower spell of the device, moves it within a few dozen replays).
#[derive(Debug, Clone, Copy)]
struct ReplayTime(Duration);

impl ReplayTime {
    fn next(prev: Option<Self>, took: Duration) -> Self {
        Self(match prev {
            None => took,
            Some(Self(low)) if took <= low => took,
            Some(Self(low)) => low + (took - low) / 16,
        })
    }
}

/// Waits until the signal word at `word` holds `count` ([`Signal`]): spins on the word, asking
/// the stream now and then whether it failed (a failed graph never writes the word), and blocks
/// in `cuStreamSynchronize` after [`SPIN_WAIT`]. `Ok(true)` when the word showed the replay
/// done; `Ok(false)` when the stream finished without the word holding `count` (the replay is
/// done all the same, and the word is not to be trusted again: logged once). Wakes `ahead`'s
/// caller when due, and does not block while it spins for its result.
///
/// # Safety
/// `word` must point to 4 bytes of mapped pinned memory that stay alive during the call.
unsafe fn wait_signal(
    stream: &CudaStream,
    word: *const AtomicU32,
    count: u32,
    label: &str,
    ahead: &mut Option<Ahead<'_>>,
) -> Result<bool> {
    // SAFETY: the caller's promise; the device writes the word, the host only reads it.
    let word = unsafe { &*word };
    let cs = stream.cu_stream();
    let t = Instant::now();
    let mut spins = 0u32;
    let finished = || {
        let seen = word.load(Ordering::Acquire);
        if seen != count {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::warn!(device = %label, seen, count, "a graph's replay finished without its signal word; that graph's replays now wait for the stream");
            });
        }
        seen == count
    };
    Ahead::tick(ahead, t);
    loop {
        if word.load(Ordering::Acquire) == count {
            return Ok(true);
        }
        spins += 1;
        if spins.is_multiple_of(CLOCK_EVERY) {
            // SAFETY: `cs` is a live stream of this executor.
            match unsafe { sys::cuStreamQuery(cs) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(finished()),
                sys::CUresult::CUDA_ERROR_NOT_READY => {
                    if time_to_block(ahead, t) {
                        stream
                            .synchronize()
                            .map_err(|e| driver_error(label, "cuStreamSynchronize", e))?;
                        return Ok(finished());
                    }
                }
                other => {
                    return Err(driver_error(
                        label,
                        "cuStreamQuery",
                        result::DriverError(other),
                    ))
                }
            }
        }
        std::hint::spin_loop();
    }
}

/// Enqueues the signal kernel of [`COPY_SOURCE`] on `stream` (one thread): counts in the device
/// word at `counter` and writes the count to the mapped word at `word` ([`Signal`]).
fn launch_signal(
    stream: &CudaStream,
    f: sys::CUfunction,
    counter: sys::CUdeviceptr,
    word: sys::CUdeviceptr,
    label: &str,
) -> Result<()> {
    let (mut counter, mut word) = (counter, word);
    let mut params = [
        (&mut counter as *mut u64).cast::<c_void>(),
        (&mut word as *mut u64).cast::<c_void>(),
    ];
    // SAFETY: `gpubridge_signal` takes two pointers, given here: 4 bytes of a rented block and 4
    // bytes of mapped staging that the caller keeps alive as long as the stream's work, or the
    // graph captured from it.
    unsafe { result::launch_kernel(f, (1, 1, 1), (1, 1, 1), 0, stream.cu_stream(), &mut params) }
        .map_err(|e| driver_error(label, "cuLaunchKernel (signal)", e))
}

/// Waits for `stream`: spins on `cuStreamQuery` for a short while (a sleeping wait costs more
/// than a small plan's whole run), then blocks; wakes `ahead`'s caller when due, and does not
/// block while it spins for its result.
fn wait_stream(stream: &CudaStream, label: &str, ahead: &mut Option<Ahead<'_>>) -> Result<()> {
    let cs = stream.cu_stream();
    let t = Instant::now();
    let mut spins = 0u32;
    Ahead::tick(ahead, t);
    loop {
        // SAFETY: `cs` is a live stream of this executor.
        match unsafe { sys::cuStreamQuery(cs) } {
            sys::CUresult::CUDA_SUCCESS => return Ok(()),
            sys::CUresult::CUDA_ERROR_NOT_READY => {
                spins += 1;
                if spins.is_multiple_of(CLOCK_EVERY) && time_to_block(ahead, t) {
                    return stream
                        .synchronize()
                        .map_err(|e| driver_error(label, "cuStreamSynchronize", e));
                }
                std::hint::spin_loop();
            }
            other => {
                return Err(driver_error(
                    label,
                    "cuStreamQuery",
                    result::DriverError(other),
                ))
            }
        }
    }
}

/// Enqueues a plan on `stream`: uploads (packing piece by piece when `pack`), steps, download.
/// With `events`, records the four timing events around the phases. Used for stream execution
/// and, with `pack` and `events` off, inside a graph capture. The copies (`copies`) go to and
/// from the block at `bases.block`; the steps find their buffers by `bases`.
#[allow(clippy::too_many_arguments)] // The parts of the executor one enqueue touches, borrowed apart.
fn enqueue(
    stream: &CudaStream,
    events: Option<&[CudaEvent; 4]>,
    blas: Option<&Blas>,
    label: &str,
    plan: &Plan,
    functions: &[sys::CUfunction],
    bases: Bases,
    layout: &Layout,
    staging_in: &mut [u8],
    staging_out: &mut [u8],
    pack: bool,
    copies: bool,
) -> Result<Duration> {
    let drv = |what: &str, e| driver_error(label, what, e);
    let cs = stream.cu_stream();
    let base = bases.block;
    let mut packing = Duration::ZERO;
    let record = |i: usize| -> Result<()> {
        match events {
            Some(ev) => ev[i].record(stream).map_err(|e| drv("cuEventRecord", e)),
            None => Ok(()),
        }
    };
    record(0)?;
    if copies && pack && layout.in_total > SMALL_PLAN {
        let t = Instant::now();
        let _range = nvtx::range(Phase::Pack, layout.in_total as u64);
        pack_and_upload(
            plan,
            &layout.inputs,
            &mut staging_in[..layout.in_total],
            base,
            cs,
            label,
            &mut |_| Ok(()),
        )?;
        packing += t.elapsed();
    }
    let mut rest: &mut [u8] = staging_in;
    let mut done = 0;
    while copies && !(pack && layout.in_total > SMALL_PLAN) && done < layout.in_total {
        let piece_len = if !pack || layout.in_total <= SMALL_PLAN {
            layout.in_total
        } else {
            PIECE.min(layout.in_total - done)
        };
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(piece_len);
        rest = tail;
        if pack {
            let t = Instant::now();
            let _range = nvtx::range(Phase::Pack, piece_len as u64);
            pack_piece(plan, &layout.inputs, piece, done)?;
            packing += t.elapsed();
        }
        let _range = nvtx::range(Phase::Upload, piece_len as u64);
        // SAFETY: the destination range lies inside the rented block (sized for the whole
        // layout); the pinned source is not written again until the stream is synchronised.
        unsafe { result::memcpy_htod_async(base + done as u64, &*piece, cs) }
            .map_err(|e| drv("cuMemcpyHtoDAsync", e))?;
        done += piece_len;
    }
    record(1)?;
    let range = nvtx::range(Phase::Launch, plan.steps.len() as u64);
    let mut next_fn = functions.iter();
    for step in &plan.steps {
        let f = step_function(plan, step, &mut next_fn)?;
        enqueue_step(cs, blas, label, plan, step, f, bases, layout)?;
    }
    drop(range);
    record(2)?;
    let out_len = layout.out_end - layout.out_start;
    if copies && out_len > 0 {
        let _range = nvtx::range(Phase::Download, out_len as u64);
        let staging = &mut staging_out[..out_len];
        // SAFETY: the destination is our pinned staging (alive and untouched until after the
        // synchronisation); the source range lies inside the block.
        unsafe { result::memcpy_dtoh_async(staging, base + layout.out_start as u64, cs) }
            .map_err(|e| drv("cuMemcpyDtoHAsync", e))?;
    }
    record(3)?;
    Ok(packing)
}

/// Enqueues the copy kernel ([`COPY_SOURCE`]): `n` bytes from `src` to `dst` (device addresses,
/// either of them mapped pinned memory), with one 16-byte load per thread for up to
/// [`GRAPH_KERNEL_COPY_MAX`] bytes.
pub(crate) fn launch_copy(
    stream: &CudaStream,
    f: sys::CUfunction,
    src: sys::CUdeviceptr,
    dst: sys::CUdeviceptr,
    n: usize,
    label: &str,
) -> Result<()> {
    let (blocks, threads) = copy_grid(n);
    let (mut src, mut dst, mut n) = (src, dst, n as u64);
    let mut params = [
        (&mut src as *mut u64).cast::<c_void>(),
        (&mut dst as *mut u64).cast::<c_void>(),
        (&mut n as *mut u64).cast::<c_void>(),
    ];
    // SAFETY: `gpubridge_copy` takes two pointers and a 64-bit count, given here; both ranges
    // are `n` bytes the caller owns (a rented block, mapped pinned staging) until the stream's
    // work, or the graph captured from it, is done.
    unsafe {
        result::launch_kernel(
            f,
            (blocks as u32, 1, 1),
            (threads as u32, 1, 1),
            0,
            stream.cu_stream(),
            &mut params,
        )
    }
    .map_err(|e| driver_error(label, "cuLaunchKernel (copy)", e))
}

/// The copy kernel's grid for `n` bytes: (blocks, threads per block), one 16-byte word per
/// thread up to 64 blocks of 256 (256 KiB; larger copies loop).
fn copy_grid(n: usize) -> (usize, usize) {
    let words = n.div_ceil(16);
    let threads = words.next_multiple_of(32).clamp(32, 256);
    (words.div_ceil(threads).clamp(1, 64), threads)
}

/// Whether a plan runs staged ([`enqueue_staged`]): its kernel gave stages and its inputs are
/// large enough to be uploaded in pieces.
fn staged(plan: &Plan, layout: &Layout) -> bool {
    layout.in_total > SMALL_PLAN
        && plan
            .stages
            .iter()
            .any(|s| s.needs.is_some() || s.yields.is_some())
}

/// Enqueues a staged plan on `lane` across three streams: inputs packed and uploaded piece by
/// piece on the upload stream; each step on the lane's stream as soon as the inputs its stage
/// needs have been enqueued (an event orders it after their copies); each range a step yields
/// downloaded on the download stream right after that step, while later steps run; the rest of
/// the outputs after the last step. The lane's stream then waits for both copy streams, so
/// waiting for it waits for the whole plan.
#[allow(clippy::too_many_arguments)] // The parts of the executor one enqueue touches, borrowed apart.
fn enqueue_staged(
    lane: &mut Lane,
    ctx: &Arc<CudaContext>,
    blas: Option<&Blas>,
    label: &str,
    plan: &Plan,
    functions: &[sys::CUfunction],
    base: sys::CUdeviceptr,
    layout: &Layout,
) -> Result<Duration> {
    let drv = |what: &str, e| driver_error(label, what, e);
    let Some(copies) = lane.copies.as_ref() else {
        return Err(Error::Backend {
            backend: BackendKind::Cuda,
            message: format!("{label}: a staged plan on a lane without copy streams"),
            transient: false,
        });
    };
    let (compute, cin, cout) = (
        lane.stream.cu_stream(),
        copies.copy_in.cu_stream(),
        copies.copy_out.cu_stream(),
    );
    let out_len = layout.out_end - layout.out_start;
    let staging_out = lane.staging_out.slice_mut(out_len).as_mut_ptr();
    let marks = &mut lane.marks;
    let events = &lane.events;
    let mut used = 0;
    // `from` -> `to`: `to` waits for everything enqueued on `from` so far.
    let mut order = |from: sys::CUstream, to: sys::CUstream| -> Result<()> {
        if used == marks.len() {
            marks.push(
                ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(|e| drv("cuEventCreate", e))?,
            );
        }
        let e = marks[used].cu_event();
        used += 1;
        // SAFETY: `e` is an event of this context; both streams are live streams of this lane.
        unsafe {
            result::event::record(e, from).map_err(|e| drv("cuEventRecord", e))?;
            result::stream::wait_event(to, e, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
                .map_err(|e| drv("cuStreamWaitEvent", e))
        }
    };
    let download = |block_at: usize, len: usize| -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the destination lies inside the lane's output staging (`out_len` bytes, which
        // holds every output at its layout offset), untouched until the lane is synchronised; the
        // source range lies inside the block.
        unsafe {
            let dst =
                std::slice::from_raw_parts_mut(staging_out.add(block_at - layout.out_start), len);
            result::memcpy_dtoh_async(dst, base + block_at as u64, cout)
        }
        .map_err(|e| drv("cuMemcpyDtoHAsync", e))
    };
    let need = |i: usize| match plan.stage_of(i).needs {
        Some((id, bytes)) => layout.offsets[id.0 as usize] + bytes,
        None => layout.in_total,
    };
    let record =
        |i: usize, s: &Arc<CudaStream>| events[i].record(s).map_err(|e| drv("cuEventRecord", e));
    record(0, &copies.copy_in)?;
    let mut step = 0;
    let mut launches = functions.iter();
    let mut yielded: Vec<(usize, usize)> = Vec::new();
    let mut first = true;
    let mut run_ready = |uploaded: usize| -> Result<()> {
        if step < plan.steps.len() && need(step) <= uploaded {
            order(cin, compute)?;
        }
        while step < plan.steps.len() && need(step) <= uploaded {
            if first {
                record(1, &lane.stream)?;
                first = false;
            }
            let s = &plan.steps[step];
            let f = step_function(plan, s, &mut launches)?;
            enqueue_step(compute, blas, label, plan, s, f, Bases::block(base), layout)?;
            if let Some((id, r)) = plan.stage_of(step).yields {
                order(compute, cout)?;
                let at = layout.offsets[id.0 as usize] + r.start;
                download(at, r.len())?;
                yielded.push((at, at + r.len()));
            }
            step += 1;
        }
        Ok(())
    };
    let t = Instant::now();
    let range = nvtx::range(Phase::Pack, layout.in_total as u64);
    pack_and_upload(
        plan,
        &layout.inputs,
        &mut lane.staging_in.slice_mut(layout.in_total)[..layout.in_total],
        base,
        cin,
        label,
        &mut run_ready,
    )?;
    drop(range);
    let packing = t.elapsed();
    // Whatever is left (steps needing every input), then the lane's stream waits for the last
    // upload even if no step did.
    run_ready(usize::MAX)?;
    order(cin, compute)?;
    record(2, &lane.stream)?;
    // The outputs no step yielded, after the last step.
    order(compute, cout)?;
    yielded.sort_unstable();
    let mut at = layout.out_start;
    for (s, e) in yielded
        .iter()
        .copied()
        .chain([(layout.out_end, layout.out_end)])
    {
        if s > at {
            download(at, s - at)?;
        }
        at = at.max(e);
    }
    record(3, &copies.copy_out)?;
    order(cout, compute)?;
    Ok(packing)
}

/// The function a step launches, taken in order from the plan's `functions` (`None` for a library
/// step).
fn step_function<'f>(
    plan: &Plan,
    step: &Step,
    functions: &mut impl Iterator<Item = &'f sys::CUfunction>,
) -> Result<Option<sys::CUfunction>> {
    match step {
        Step::Launch(_) => functions
            .next()
            .copied()
            .map(Some)
            .ok_or_else(|| Error::invalid_batch(plan.kernel, "more launches than entry points")),
        Step::Gemm(_) => Ok(None),
    }
}

/// Enqueues one step of `plan` on stream `cs`: a launch of `f`, or a cuBLAS call.
#[allow(clippy::too_many_arguments)] // The parts of the executor one step touches, borrowed apart.
fn enqueue_step(
    cs: sys::CUstream,
    blas: Option<&Blas>,
    label: &str,
    plan: &Plan,
    step: &Step,
    f: Option<sys::CUfunction>,
    bases: Bases,
    layout: &Layout,
) -> Result<()> {
    let drv = |what: &str, e| driver_error(label, what, e);
    let ptr = |a: &Arg| -> Result<sys::CUdeviceptr> {
        match a {
            Arg::Buffer { id, offset } => bases.address(plan, &layout.offsets, *id, *offset),
            other => Err(Error::invalid_batch(
                plan.kernel,
                format!("expected a buffer argument, got {other:?}"),
            )),
        }
    };
    match step {
        Step::Launch(l) => {
            let f = f.ok_or_else(|| {
                Error::invalid_batch(plan.kernel, "more launches than entry points")
            })?;
            let mut values = launch_values(plan, l, &layout.offsets, bases)?;
            let mut params: smallvec::SmallVec<[*mut c_void; 8]> = values
                .iter_mut()
                .map(|v| (v as *mut u64).cast::<c_void>())
                .collect();
            let g = (l.grid[0], l.grid[1], l.grid[2]);
            let b = (l.block[0], l.block[1], l.block[2]);
            // SAFETY: `f` is a function of a module loaded in this context; each parameter
            // points to an 8-byte slot whose low bytes hold the argument in the width the
            // kernel declares (little-endian), and the driver copies them at enqueue time.
            // Buffer arguments point into the rented block (or, for a small graph's inputs or
            // outputs, the mapped staging: `Bases`), inside their buffers (checked by
            // `Plan::check`), which stay alive until the stream is synchronised or, captured,
            // as long as the graph.
            unsafe { result::launch_kernel(f, g, b, l.shared_mem_bytes, cs, &mut params) }
                .map_err(|e| drv(&format!("cuLaunchKernel({})", l.entry), e))?;
        }
        Step::Gemm(g) => {
            let blas = blas.ok_or_else(|| Error::Unsupported {
                backend: BackendKind::Cuda,
                what: "cuBLAS is not loaded".to_owned(),
            })?;
            // The handle is shared by every lane: point it at this plan's stream.
            // SAFETY: the handle and the stream are both alive for the executor's life.
            unsafe { cublas::result::set_stream(blas.0, cs as _) }.map_err(|e| Error::Backend {
                backend: BackendKind::Cuda,
                message: format!("{label}: cublasSetStream: {e:?}"),
                transient: false,
            })?;
            let (a, b, c) = (ptr(&g.a)?, ptr(&g.b)?, ptr(&g.c)?);
            let (m, k, n) = (g.m as i32, g.k as i32, g.n as i32);
            let (alpha, beta) = (1.0f32, 0.0f32);
            use cublas::sys::cublasOperation_t::CUBLAS_OP_N;
            // Row-major C = A B is column-major C^T = B^T A^T: swap the operands.
            // SAFETY: the handle is bound to this stream; A, B and C are inside the block
            // and hold m*k, k*n and m*n floats (the kernel's plan sized them); leading
            // dimensions match the row-major layout.
            unsafe {
                cublas::result::sgemm(
                    blas.0,
                    CUBLAS_OP_N,
                    CUBLAS_OP_N,
                    n,
                    m,
                    k,
                    &alpha,
                    b as *const f32,
                    n,
                    a as *const f32,
                    k,
                    &beta,
                    c as *mut f32,
                    n,
                )
            }
            .map_err(|e| Error::Backend {
                backend: BackendKind::Cuda,
                message: format!("{label}: cublasSgemm: {e:?}"),
                transient: false,
            })?;
        }
    }
    Ok(())
}

/// Where each buffer of a plan sits in its device block and in staging.
struct Layout {
    /// Byte offset of every buffer in the device block.
    offsets: Vec<usize>,
    /// Inputs: (buffer index, offset in block and input staging, length).
    inputs: Vec<(usize, usize, usize)>,
    /// Outputs: (id, offset in output staging, length).
    outputs: Vec<(BufferId, usize, usize)>,
    in_total: usize,
    out_start: usize,
    out_end: usize,
}

/// Where a plan's buffers are on the device: every buffer in the rented block, at its layout
/// offset, except that a kernel-copy graph's kernels may find its inputs at the same offsets in
/// the mapped input staging and its outputs where the output copy would have put them in the
/// mapped output staging ([`Mapped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bases {
    block: sys::CUdeviceptr,
    inputs: sys::CUdeviceptr,
    /// The address an output's block offset is added to (the output staging's address less
    /// the block offset where the outputs start; wrapping).
    outputs: sys::CUdeviceptr,
}

impl Bases {
    /// Every buffer in the block at `block`.
    fn block(block: sys::CUdeviceptr) -> Self {
        Self {
            block,
            inputs: block,
            outputs: block,
        }
    }

    /// The device address of byte `offset` of buffer `id`, laid out by `offsets`.
    fn at(&self, plan: &Plan, offsets: &[usize], id: BufferId, offset: usize) -> Option<u64> {
        let i = id.0 as usize;
        let base = match plan.buffers.get(i)?.role {
            BufferRole::Input(_) => self.inputs,
            BufferRole::Output => self.outputs,
            BufferRole::Scratch => self.block,
        };
        Some(base.wrapping_add((offsets.get(i)? + offset) as u64))
    }

    /// [`Bases::at`], or the typed error for a buffer the plan does not have.
    fn address(&self, plan: &Plan, offsets: &[usize], id: BufferId, offset: usize) -> Result<u64> {
        self.at(plan, offsets, id, offset)
            .ok_or_else(|| Error::invalid_batch(plan.kernel, format!("plan names buffer {}", id.0)))
    }

    /// Whether the kernels read the inputs from the mapped staging.
    fn inputs_mapped(&self) -> bool {
        self.inputs != self.block
    }

    /// Whether the kernels write the outputs to the mapped staging.
    fn outputs_mapped(&self) -> bool {
        self.outputs != self.block
    }
}

/// Which of a small kernel-copy graph's buffers its kernels use in the mapped staging rather
/// than in device memory, leaving out the copy (a node, and the host memory's latency: on the
/// H200 about 1 us of a short chain's replay; `replay_modes inputs`, docs/PERFORMANCE.md,
/// twentieth session): the inputs, when no input is an argument of more than one launch, and
/// the outputs, when no output is; never with a library step. Each such buffer then crosses the
/// bus about once, as the copy would have carried it. A kernel that reads a buffer many times
/// over (or reads back what it wrote) pays the bus each time; a buffer shared by several
/// launches keeps its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapped {
    inputs: bool,
    outputs: bool,
}

impl Mapped {
    /// Both sides copied.
    const NONE: Self = Self {
        inputs: false,
        outputs: false,
    };

    fn of(plan: &Plan) -> Self {
        // How many launches name each buffer (naming it twice in one launch is one use).
        let mut users: smallvec::SmallVec<[u8; 8]> = smallvec::smallvec![0; plan.buffers.len()];
        for step in &plan.steps {
            let Step::Launch(l) = step else {
                return Self::NONE;
            };
            let mut named: smallvec::SmallVec<[u32; 8]> = smallvec::SmallVec::new();
            for a in &l.args {
                if let Arg::Buffer { id, .. } = a {
                    if !named.contains(&id.0) {
                        named.push(id.0);
                    }
                }
            }
            for id in named {
                if let Some(u) = users.get_mut(id as usize) {
                    *u = u.saturating_add(1);
                }
            }
        }
        let once = |side: fn(&BufferRole) -> bool| {
            plan.buffers
                .iter()
                .zip(&users)
                .filter(|(b, _)| side(&b.role))
                .all(|(_, &u)| u <= 1)
        };
        Self {
            inputs: once(|r| matches!(r, BufferRole::Input(_))),
            outputs: once(|r| matches!(r, BufferRole::Output)),
        }
    }
}

/// Plans whose inputs fit in this many bytes are packed on the executor thread in one go.
const SMALL_PLAN: usize = 1 << 20;
/// Larger inputs are packed and uploaded in pieces of this size, so that packing one piece
/// overlaps the copy of the one before.
const PIECE: usize = 8 << 20;
/// How long a wait spins before it blocks.
const SPIN_WAIT: Duration = Duration::from_micros(500);
/// Smallest range one packing task handles.
const PACK_TASK: usize = 256 << 10;

/// Packs a large plan's whole input region into `staging` and uploads it to `base` piece by
/// piece: every piece's packing is spawned on the rayon pool at once (tasks of [`PACK_TASK`]
/// bytes, taken in order), and this thread enqueues each piece's H2D copy as soon as its last
/// task is done. The pool packs without a barrier between pieces, and the upload trails the
/// packing by about one piece.
fn pack_and_upload(
    plan: &Plan,
    inputs: &[(usize, usize, usize)],
    staging: &mut [u8],
    base: sys::CUdeviceptr,
    cs: sys::CUstream,
    label: &str,
    uploaded: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let total = staging.len();
    let pieces = total.div_ceil(PIECE);
    let task = PACK_TASK.max(PIECE / (rayon::current_num_threads().max(1) * 2));
    let left: Vec<AtomicUsize> = (0..pieces)
        .map(|p| AtomicUsize::new((PIECE.min(total - p * PIECE)).div_ceil(task)))
        .collect();
    // Every slice below is made from this one pointer, so the tasks' ranges (disjoint) and the
    // copies' ranges (each read only after its tasks are done) never alias a live borrow.
    let src = SendPtr(staging.as_mut_ptr());
    // The first packer that panicked (kernel code): the plan fails with it, nothing is uploaded
    // after it is seen.
    let panicked: Mutex<Option<Error>> = Mutex::new(None);
    let panicked = &panicked;
    let mut result = Ok(());
    rayon::in_place_scope(|scope| {
        for (p, left) in left.iter().enumerate() {
            let end = (p * PIECE + PIECE).min(total);
            let mut from = p * PIECE;
            while from < end {
                let n = task.min(end - from);
                scope.spawn(move |_| {
                    let src = src;
                    // SAFETY: bytes `from .. from + n` lie inside `staging` and belong to this
                    // task alone until it decrements its piece's counter.
                    let dst = unsafe { std::slice::from_raw_parts_mut(src.0.add(from), n) };
                    pack_overlap(plan, inputs, dst, from, panicked);
                    // Counted down whatever the packer did, so the uploads never wait for ever.
                    left.fetch_sub(1, Ordering::Release);
                });
                from += n;
            }
        }
        for (p, left) in left.iter().enumerate() {
            let mut spins = 0u32;
            while left.load(Ordering::Acquire) > 0 {
                spins += 1;
                if spins.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            if result.is_ok() {
                if let Some(e) = panicked.lock().take() {
                    result = Err(e);
                }
            }
            if result.is_err() {
                continue;
            }
            let at = p * PIECE;
            let len = PIECE.min(total - at);
            // SAFETY: every task writing bytes `at .. at + len` has finished (the counter reached
            // zero with Acquire after their Release), so nothing writes them any more; the range
            // lies inside `staging`, which stays untouched until the stream is synchronised, and
            // the destination lies inside the rented block (sized for the whole layout).
            let piece = unsafe { std::slice::from_raw_parts(src.0.add(at), len) };
            let _range = nvtx::range(Phase::Upload, len as u64);
            // SAFETY: as above.
            match unsafe { result::memcpy_htod_async(base + at as u64, piece, cs) } {
                Ok(()) => result = uploaded(at + len),
                Err(e) => result = Err(driver_error(label, "cuMemcpyHtoDAsync", e)),
            }
        }
    });
    result
}

/// Packs the bytes `from .. from + dst.len()` of the input region into `dst`: each input
/// overlapping the range packs its part. A packer that panics (kernel code) leaves its part
/// unwritten, and the first such error is kept in `panicked` for the plan.
fn pack_overlap(
    plan: &Plan,
    inputs: &[(usize, usize, usize)],
    dst: &mut [u8],
    from: usize,
    panicked: &Mutex<Option<Error>>,
) {
    let to = from + dst.len();
    for &(i, off, len) in inputs {
        let (s, e) = (off.max(from), (off + len).min(to));
        if s < e {
            if let BufferRole::Input(pack) = &plan.buffers[i].role {
                let packed = run_packer(
                    plan.kernel,
                    BackendKind::Cuda,
                    pack,
                    &mut dst[s - from..e - from],
                    s - off,
                );
                if let Err(e) = packed {
                    panicked.lock().get_or_insert(e);
                }
            }
        }
    }
}

/// A pointer into pinned staging handed to packing tasks (each writes a disjoint range).
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: the pointee is pinned host memory that outlives the scope the tasks run in, and the
// tasks write disjoint ranges of it.
unsafe impl Send for SendPtr {}

/// Packs the bytes `at .. at + piece.len()` of the input region into `piece`: each input overlapping
/// the range packs its part, split across the rayon pool when the piece is large.
fn pack_piece(
    plan: &Plan,
    inputs: &[(usize, usize, usize)],
    piece: &mut [u8],
    at: usize,
) -> Result<()> {
    let tasks = (piece.len() / PACK_TASK).clamp(1, rayon::current_num_threads().max(1) * 2);
    let per = piece.len().div_ceil(tasks).div_ceil(64) * 64;
    // The first packer that panicked (kernel code), for the plan's error.
    let panicked = Mutex::new(None);
    let fill = |dst: &mut [u8], from: usize| pack_overlap(plan, inputs, dst, from, &panicked);
    if tasks == 1 {
        fill(piece, at);
    } else {
        use rayon::prelude::*;
        piece
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(t, dst)| fill(dst, at + t * per));
    }
    panicked.into_inner().map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::{copy_grid, Bases, Mapped, COPY_SOURCE, GRAPH_KERNEL_COPY_MAX};
    use gpubridge_core::plan::{Arg, BufferId, Gemm, Launch, Plan};

    /// The graphs' copy kernel compiles through NVRTC for sm_90 wherever NVRTC loads (CI
    /// installs it); elsewhere it skips unless `GPUBRIDGE_REQUIRE_NVRTC=1` or
    /// `GPUBRIDGE_REQUIRE_GPU=1`.
    #[test]
    fn the_copy_kernel_compiles_for_sm_90() {
        if let Err(e) = crate::nvrtc_version() {
            let required = ["GPUBRIDGE_REQUIRE_NVRTC", "GPUBRIDGE_REQUIRE_GPU"]
                .iter()
                .any(|v| std::env::var(v).is_ok_and(|v| v == "1"));
            assert!(!required, "NVRTC is required here: {e}");
            eprintln!("skipped: {e}");
            return;
        }
        let ptx = crate::compile("gpubridge_copy", COPY_SOURCE, (9, 0)).unwrap();
        assert!(ptx.contains(".entry gpubridge_copy("), "{ptx}");
        assert!(ptx.contains(".entry gpubridge_signal("), "{ptx}");
        // The signal's fence is system-wide (the host reads the outputs once it sees the word).
        assert!(
            ptx.contains("membar.sys") || ptx.contains("fence.sc.sys"),
            "{ptx}"
        );
    }

    /// Every copy a graph makes with the kernel is one word per thread: no thread loops.
    #[test]
    fn the_copy_grid_covers_a_graph_copy_in_one_pass() {
        for n in [
            1,
            15,
            16,
            17,
            128,
            4095,
            4096,
            40_000,
            GRAPH_KERNEL_COPY_MAX,
        ] {
            let (blocks, threads) = copy_grid(n);
            assert!(blocks * threads * 16 >= n, "{n}: {blocks} x {threads}");
            assert!((32..=256).contains(&threads) && threads % 32 == 0, "{n}");
            assert!(blocks == 1 || threads == 256, "{n}: {blocks} x {threads}");
        }
        assert_eq!(copy_grid(128), (1, 32));
        assert_eq!(copy_grid(GRAPH_KERNEL_COPY_MAX), (16, 256));
    }

    fn plan_of(steps: impl FnOnce(&mut Plan, [BufferId; 3])) -> Plan {
        let mut plan = Plan::new("test/inputs");
        let a = plan.input("a", 64, |_, _| {});
        let b = plan.input("b", 64, |_, _| {});
        let y = plan.output("y", 64);
        steps(&mut plan, [a, b, y]);
        plan
    }

    fn launch(args: &[Arg]) -> Launch {
        Launch::new("k", [1, 1, 1], [16, 1, 1], args)
    }

    /// A graph's inputs (outputs) stay in the mapped staging only when no input (output) is an
    /// argument of more than one launch (naming it twice in one launch is one use) and no
    /// library step uses them.
    #[test]
    fn buffers_stay_mapped_only_when_each_is_used_by_one_launch() {
        let both = |inputs, outputs| Mapped { inputs, outputs };
        let once = plan_of(|p, [a, b, y]| {
            p.launch(launch(&[
                Arg::buf(a),
                Arg::buf(b),
                Arg::buf(y),
                Arg::U32(16),
            ]));
        });
        assert_eq!(Mapped::of(&once), both(true, true));
        let same_launch_twice = plan_of(|p, [a, b, y]| {
            p.launch(launch(&[
                Arg::buf(a),
                Arg::Buffer { id: a, offset: 32 },
                Arg::buf(b),
                Arg::buf(y),
            ]));
        });
        assert_eq!(Mapped::of(&same_launch_twice), both(true, true));
        let chained_output = plan_of(|p, [a, b, y]| {
            p.launch(launch(&[
                Arg::buf(a),
                Arg::buf(b),
                Arg::buf(y),
                Arg::U32(16),
            ]));
            p.launch(launch(&[Arg::buf(y), Arg::F32(1.0)]));
        });
        assert_eq!(Mapped::of(&chained_output), both(true, false));
        let shared_input = plan_of(|p, [a, b, y]| {
            p.launch(launch(&[Arg::buf(a), Arg::buf(b)]));
            p.launch(launch(&[Arg::buf(y), Arg::buf(a)]));
        });
        assert_eq!(Mapped::of(&shared_input), both(false, true));
        let library = plan_of(|p, [a, b, y]| {
            p.gemm(Gemm {
                m: 4,
                k: 4,
                n: 4,
                a: Arg::buf(a),
                b: Arg::buf(b),
                c: Arg::buf(y),
            });
        });
        assert_eq!(Mapped::of(&library), both(false, false));
    }

    /// Inputs resolve to the input base, outputs to where the output copy would put them in the
    /// output staging, and the rest to the block, each at its layout offset; a buffer the plan
    /// does not have resolves to nothing.
    #[test]
    fn bases_place_mapped_buffers_in_staging_and_the_rest_in_the_block() {
        let mut plan = plan_of(|_, _| {});
        plan.scratch("s", 64);
        // a, b and y as the layout places them (inputs first), then the scratch.
        let offsets = [0, 64, 128, 192];
        let split = Bases {
            block: 0x10_0000,
            inputs: 0x20_0000,
            outputs: 0x30_0000u64.wrapping_sub(128),
        };
        assert!(split.inputs_mapped() && split.outputs_mapped());
        assert_eq!(split.at(&plan, &offsets, BufferId(0), 4), Some(0x20_0004));
        assert_eq!(split.at(&plan, &offsets, BufferId(1), 0), Some(0x20_0040));
        assert_eq!(split.at(&plan, &offsets, BufferId(2), 8), Some(0x30_0008));
        assert_eq!(split.at(&plan, &offsets, BufferId(3), 0), Some(0x10_00c0));
        assert_eq!(split.at(&plan, &offsets, BufferId(4), 0), None);
        let whole = Bases::block(0x10_0000);
        assert!(!whole.inputs_mapped() && !whole.outputs_mapped());
        assert_eq!(whole.at(&plan, &offsets, BufferId(1), 0), Some(0x10_0040));
        assert_eq!(whole.at(&plan, &offsets, BufferId(2), 0), Some(0x10_0080));
    }
}
