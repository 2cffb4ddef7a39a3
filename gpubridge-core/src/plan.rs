//! Plans: how a typed batch meets a device without the device knowing any kernel's types.
//!
//! A kernel turns a batch of typed inputs into a [`Plan`]: named buffers (host bytes to upload,
//! sizes of outputs to download, scratch), the [`Step`]s to run in order (kernel launches with their
//! grid, block and arguments, or a library call such as a GEMM), and the results of a plan come back
//! as [`PlanOutputs`] that the kernel unpacks into typed outputs. The plan's [`PlanShape`] (everything
//! but the data) keys graph caches and buffer reuse.
//!
//! # Argument conventions
//! - CUDA: arguments are passed to the entry point in order; a buffer argument is a device pointer
//!   (plus its byte offset), scalars are passed by value with their exact width.
//! - WGSL: buffer arguments bind to `@group(0)` at bindings `0..` in argument order; scalar arguments
//!   are packed, 4 bytes each in order, into one uniform buffer bound right after the last buffer.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use crate::device::BackendKind;
use crate::error::{Error, Result};

/// Fills part of a plan input's bytes: `pack(dst, offset)` writes the input's bytes
/// `offset .. offset + dst.len()` into `dst`. Called directly into the backend's staging memory,
/// possibly for several disjoint ranges at once from several threads (so that packing is parallel
/// and overlaps the copies), so packing costs one pass over the data.
pub type Packer = Box<dyn Fn(&mut [u8], usize) + Send + Sync>;

/// Runs a kernel's packer into `dst` (the bytes of its buffer from `at`), catching a panic: a
/// kernel's own code that panics fails the request ([`Error::KernelPanicked`]), never the backend's
/// thread. Backends call every packer through this.
///
/// # Errors
/// [`Error::KernelPanicked`] when the packer panicked (`dst` may then be partly written).
pub fn run_packer(
    kernel: &str,
    backend: BackendKind,
    pack: &Packer,
    dst: &mut [u8],
    at: usize,
) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pack(dst, at)))
        .map_err(|p| Error::kernel_panicked(kernel, backend, &*p))
}

/// Index of a buffer within its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferId(pub u32);

/// What a plan buffer is for.
pub enum BufferRole {
    /// Uploaded before the first step; the packer writes exactly the buffer's length.
    Input(Packer),
    /// Downloaded after the last step and handed to the kernel's unpack.
    Output,
    /// Device-only working memory, neither uploaded nor downloaded.
    Scratch,
}

impl std::fmt::Debug for BufferRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BufferRole::Input(_) => "Input",
            BufferRole::Output => "Output",
            BufferRole::Scratch => "Scratch",
        })
    }
}

/// One buffer of a plan.
#[derive(Debug)]
pub struct PlanBuffer {
    /// A name for logs and errors (`"a"`, `"offsets"`).
    pub name: &'static str,
    /// Size in bytes.
    pub len: usize,
    /// What it is for.
    pub role: BufferRole,
}

/// One argument of a launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// A buffer of the plan, starting `offset` bytes in.
    Buffer {
        /// The buffer.
        id: BufferId,
        /// Byte offset into it.
        offset: usize,
    },
    /// A 32-bit unsigned scalar.
    U32(u32),
    /// A 64-bit unsigned scalar (CUDA only; WGSL has no 64-bit integers).
    U64(u64),
    /// A 32-bit float scalar.
    F32(f32),
}

impl Arg {
    /// The whole buffer `id`.
    pub fn buf(id: BufferId) -> Self {
        Arg::Buffer { id, offset: 0 }
    }
}

/// A launch's arguments: up to eight stored inline, so a plan of many launches does not allocate
/// once per launch.
pub type Args = smallvec::SmallVec<[Arg; 8]>;

/// One kernel launch.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The entry point's name in the kernel's source.
    pub entry: &'static str,
    /// Grid (CUDA blocks) or workgroup counts (WGSL), x y z.
    pub grid: [u32; 3],
    /// Block size (CUDA threads per block). WGSL fixes it in the source; it is recorded here too.
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes (CUDA).
    pub shared_mem_bytes: u32,
    /// Arguments, in order.
    pub args: Args,
}

impl Launch {
    /// A launch of `entry` with no dynamic shared memory.
    pub fn new(entry: &'static str, grid: [u32; 3], block: [u32; 3], args: &[Arg]) -> Self {
        Self {
            entry,
            grid,
            block,
            shared_mem_bytes: 0,
            args: Args::from_slice(args),
        }
    }
}

/// A row-major single-precision GEMM, `c = a * b`, run by the backend's BLAS where it has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    /// Rows of `a` and `c`.
    pub m: u32,
    /// Columns of `a`, rows of `b`.
    pub k: u32,
    /// Columns of `b` and `c`.
    pub n: u32,
    /// The `m x k` input.
    pub a: Arg,
    /// The `k x n` input.
    pub b: Arg,
    /// The `m x n` output.
    pub c: Arg,
}

/// One step of a plan; steps run in order on one stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Launch an entry point of the kernel's own source.
    Launch(Launch),
    /// Call the backend's BLAS.
    Gemm(Gemm),
}

/// What a backend offers a kernel to plan for.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanTarget {
    /// A CUDA device: steps launch entry points of the kernel's CUDA C source.
    Cuda {
        /// Compute capability, for example `(9, 0)`.
        compute_capability: (u32, u32),
        /// Whether [`Step::Gemm`] is available (cuBLAS loaded).
        blas: bool,
        /// Maximum grid size in y and z (x is effectively unbounded).
        max_grid_yz: u32,
    },
    /// A WebGPU adapter: steps dispatch entry points of the kernel's WGSL source.
    Wgsl {
        /// Maximum workgroups per dispatch dimension.
        max_workgroups_per_dim: u32,
        /// Maximum size of one storage buffer binding, in bytes.
        max_storage_buffer_bytes: u64,
    },
}

impl PlanTarget {
    /// The backend kind this target belongs to.
    pub fn backend(&self) -> BackendKind {
        match self {
            PlanTarget::Cuda { .. } => BackendKind::Cuda,
            PlanTarget::Wgsl { .. } => BackendKind::Wgpu,
        }
    }
}

/// A complete unit of device work for one micro-batch.
#[derive(Debug)]
pub struct Plan {
    /// The kernel that made it.
    pub kernel: &'static str,
    /// Buffers, indexed by [`BufferId`].
    pub buffers: Vec<PlanBuffer>,
    /// Steps, run in order. Built by [`Plan::launch`] and [`Plan::gemm`], or shared with
    /// earlier plans of the same kernel through [`Plan::reuse_steps`].
    pub steps: Steps,
    /// What each step reads and writes, when the kernel says so (see [`Stage`]): empty, or one
    /// per step. Lets a backend start a step as soon as the inputs it needs have arrived and send
    /// its results back while later steps run.
    pub stages: Vec<Stage>,
    /// Keep what runs this plan resident on the device between batches (the request's
    /// [`crate::ExecutionHints::persistent`]): on CUDA its graph, with the device block and
    /// pinned staging the graph owns, is captured on first sight and never evicted by other
    /// plans, within `cuda.resident_mb`. Backends without such state ignore it. Set by the
    /// bridge, not by kernels.
    pub resident: bool,
    /// The caller waits for this plan by spinning (the request's
    /// [`crate::ExecutionHints::spin_wait`]), so its thread is busy either way: a backend may run
    /// a tiny plan on the submitting thread instead of handing it to its executor and back (CUDA
    /// does, for zero-copy plans, when `cuda.inline_tiny_plans` is on). Set by the bridge, not by
    /// kernels.
    pub caller_spins: bool,
    /// How a backend may wake this plan's caller ahead of its result, when the caller parks
    /// rather than spins (see [`crate::wake`]): a backend that can tell when the plan will be
    /// done wakes it shortly before, so that the caller's wake-up overlaps the device's last
    /// microseconds (CUDA does for graph replays, `cuda.early_wake_us`). `None` when the caller
    /// spins. Set by the bridge, not by kernels.
    pub early_wake: Option<crate::wake::EarlyWake>,
}

/// What one step of a plan needs and produces, for a backend that overlaps copies with compute.
///
/// Inputs arrive in buffer order, each input buffer whole before the next, so a step needing
/// the first `bytes` of input `needs.0` also needs every input buffer declared before it. A
/// backend that does not pipeline ignores stages: every step then waits for all inputs and every
/// output is copied back after the last step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stage {
    /// The step may start once this input buffer's first this-many bytes (and all input buffers
    /// before it) are on the device. `None`: once every input is.
    pub needs: Option<(BufferId, usize)>,
    /// Bytes of an output buffer this step completes: they can be copied back as soon as the
    /// step is done (no later step writes them).
    pub yields: Option<(BufferId, std::ops::Range<usize>)>,
}

/// A plan's steps: read as a slice of [`Step`]s (and written as one, copy-on-write), held in
/// one shared allocation so that plans reusing the same steps ([`Plan::reuse_steps`]) neither
/// rebuild nor copy them. Their hashes (for [`Plan::shape`] and [`Plan::bucket_shape`]) are
/// computed once per list, not once per plan.
#[derive(Clone, Default)]
pub struct Steps(Arc<StepList>);

#[derive(Default)]
struct StepList {
    steps: Vec<Step>,
    /// From the step cache of [`Plan::reuse_steps`]: the same list serves every plan of its key.
    reused: bool,
    hashes: OnceLock<StepHashes>,
    /// The buffer sizes against which [`Plan::check`] found every step's buffer arguments valid
    /// (a reused list is checked once per sizes, not per plan).
    checked: OnceLock<BufferLens>,
}

/// A plan's buffer sizes, in buffer order.
type BufferLens = smallvec::SmallVec<[usize; 8]>;

impl Clone for StepList {
    fn clone(&self) -> Self {
        Self {
            steps: self.steps.clone(),
            reused: false,
            hashes: OnceLock::new(),
            checked: OnceLock::new(),
        }
    }
}

/// The steps' contributions to a plan's exact and bucketed shapes.
#[derive(Debug, Clone, Copy)]
struct StepHashes {
    exact: u64,
    /// `None` when a step calls a library (its bucketed shape is then its exact shape).
    bucket: Option<u64>,
}

impl Steps {
    /// The steps as a slice.
    pub fn as_slice(&self) -> &[Step] {
        &self.0.steps
    }

    /// Whether `self` and `other` are the same list (not merely equal ones). Two plans whose
    /// steps are the same list run the same launches with the same arguments: a backend that
    /// compared one plan's launches with a cached graph need not compare the other's.
    pub fn ptr_eq(&self, other: &Steps) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether this list came from the step cache of [`Plan::reuse_steps`] (and so may be shared
    /// with later plans of the same kernel and key).
    pub fn is_reused(&self) -> bool {
        self.0.reused
    }

    /// This list, if it came from the step cache (see [`Steps::is_reused`]): what a backend
    /// holds to know that a later plan with the same list needs no comparison.
    pub fn if_reused(&self) -> Option<Steps> {
        self.is_reused().then(|| self.clone())
    }

    fn push(&mut self, step: Step) {
        Arc::make_mut(&mut self.0).changed().push(step);
    }

    fn hashes(&self) -> StepHashes {
        *self.0.hashes.get_or_init(|| hash_steps(&self.0.steps))
    }
}

impl StepList {
    /// The list for writing: its hashes are computed again when next asked for.
    fn changed(&mut self) -> &mut Vec<Step> {
        self.hashes = OnceLock::new();
        self.checked = OnceLock::new();
        // Edited: no longer the list the cache hands out (even if the cache let go of it).
        self.reused = false;
        &mut self.steps
    }
}

impl std::ops::Deref for Steps {
    type Target = [Step];
    fn deref(&self) -> &[Step] {
        &self.0.steps
    }
}

impl std::ops::DerefMut for Steps {
    /// Copies the list first if another plan shares it.
    fn deref_mut(&mut self) -> &mut [Step] {
        Arc::make_mut(&mut self.0).changed()
    }
}

impl<'a> IntoIterator for &'a Steps {
    type Item = &'a Step;
    type IntoIter = std::slice::Iter<'a, Step>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.steps.iter()
    }
}

impl<'a> IntoIterator for &'a mut Steps {
    type Item = &'a mut Step;
    type IntoIter = std::slice::IterMut<'a, Step>;
    /// Copies the list first if another plan shares it.
    fn into_iter(self) -> Self::IntoIter {
        Arc::make_mut(&mut self.0).changed().iter_mut()
    }
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.steps.iter()).finish()
    }
}

impl PartialEq for Steps {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || self.as_slice() == other.as_slice()
    }
}

impl From<Vec<Step>> for Steps {
    fn from(steps: Vec<Step>) -> Self {
        Steps(Arc::new(StepList {
            steps,
            reused: false,
            hashes: OnceLock::new(),
            checked: OnceLock::new(),
        }))
    }
}

/// Both step hashes in one pass over the steps.
fn hash_steps(steps: &[Step]) -> StepHashes {
    let mut exact = FxHasher::default();
    let mut bucket = FxHasher::default();
    let mut library = false;
    for s in steps {
        match s {
            Step::Launch(l) => {
                0u8.hash(&mut exact);
                // Entry names are `&'static str`s: their address stands for their text.
                let entry = (l.entry.as_ptr() as usize, l.entry.len());
                entry.hash(&mut exact);
                l.grid.hash(&mut exact);
                l.block.hash(&mut exact);
                l.shared_mem_bytes.hash(&mut exact);
                for a in &l.args {
                    hash_arg(a, &mut exact);
                }
                entry.hash(&mut bucket);
                l.block.hash(&mut bucket);
                l.shared_mem_bytes.hash(&mut bucket);
                for a in &l.args {
                    match a {
                        Arg::Buffer { id, .. } => (0u8, id.0).hash(&mut bucket),
                        Arg::U32(_) => 1u8.hash(&mut bucket),
                        Arg::U64(_) => 2u8.hash(&mut bucket),
                        Arg::F32(_) => 3u8.hash(&mut bucket),
                    }
                }
            }
            Step::Gemm(g) => {
                library = true;
                1u8.hash(&mut exact);
                (g.m, g.k, g.n).hash(&mut exact);
                for a in [&g.a, &g.b, &g.c] {
                    hash_arg(a, &mut exact);
                }
            }
        }
    }
    StepHashes {
        exact: exact.finish(),
        bucket: (!library).then(|| bucket.finish()),
    }
}

/// Steps being built for [`Plan::reuse_steps`].
#[derive(Debug, Default)]
pub struct StepsBuilder {
    steps: Vec<Step>,
    stages: Vec<Stage>,
}

impl StepsBuilder {
    /// Appends a launch (as [`Plan::launch`]).
    pub fn launch(&mut self, launch: Launch) {
        self.steps.push(Step::Launch(launch));
    }

    /// Appends a GEMM (as [`Plan::gemm`]).
    pub fn gemm(&mut self, gemm: Gemm) {
        self.steps.push(Step::Gemm(gemm));
    }

    /// Says what the last step appended needs and yields (as [`Plan::stage`]).
    pub fn stage(&mut self, stage: Stage) {
        set_last_stage(&mut self.stages, self.steps.len(), stage);
    }
}

/// Gives the last of `steps` steps `stage` (and the steps before it without one the default).
fn set_last_stage(stages: &mut Vec<Stage>, steps: usize, stage: Stage) {
    if steps == 0 {
        return;
    }
    stages.resize(steps, Stage::default());
    stages[steps - 1] = stage;
}

/// A plan's buffers as the step cache tells them apart: each one's size and role.
type BufferSignature = smallvec::SmallVec<[(usize, std::mem::Discriminant<BufferRole>); 8]>;

/// Step lists kept by [`Plan::reuse_steps`], by kernel id, key and buffers (their sizes and
/// roles, compared exactly). Fx-hashed: the lookup runs on every plan that reuses its steps
/// (SipHash was a twentieth of a small call's instructions), and the keys come from registered
/// kernels, not from callers.
#[derive(Default)]
struct StepCache {
    lists: HashMap<
        (&'static str, u64, BufferSignature),
        CachedSteps,
        std::hash::BuildHasherDefault<FxHasher>,
    >,
    bytes: usize,
    clock: u64,
}

struct CachedSteps {
    steps: Steps,
    stages: Vec<Stage>,
    bytes: usize,
    /// The cache's clock when last used.
    used: u64,
}

impl CachedSteps {
    /// Gives `plan` this list and its stages, used at `clock`.
    fn lend_to(&mut self, plan: &mut Plan, clock: u64) {
        self.used = clock;
        plan.steps = self.steps.clone();
        plan.stages.clone_from(&self.stages);
    }
}

fn list_bytes(steps: usize, stages: usize) -> usize {
    steps
        .saturating_mul(std::mem::size_of::<Step>())
        .saturating_add(stages.saturating_mul(std::mem::size_of::<Stage>()))
}

/// The step cache holds lists of at most this many bytes of steps in all; the least recently
/// used go first. A longer list is built for every plan and not kept.
pub const STEP_CACHE_MAX_BYTES: usize = 16 << 20;

/// The step cache holds at most this many lists.
pub const STEP_CACHE_MAX_LISTS: usize = 256;

static STEP_CACHE: OnceLock<parking_lot::Mutex<StepCache>> = OnceLock::new();

fn step_cache() -> &'static parking_lot::Mutex<StepCache> {
    STEP_CACHE.get_or_init(Default::default)
}

/// The step cache's size now: lists and bytes of steps (for tests and diagnostics).
pub fn step_cache_usage() -> (usize, usize) {
    let c = step_cache().lock();
    (c.lists.len(), c.bytes)
}

/// Empties the step cache (it fills again as plans come); returns the lists and bytes of steps
/// it held. Part of giving back what the process keeps only for speed, as
/// `CudaBackend::release_caches` does for a device.
pub fn release_step_cache() -> (usize, usize) {
    let mut c = step_cache().lock();
    let held = (c.lists.len(), c.bytes);
    c.lists = HashMap::default();
    c.bytes = 0;
    held
}

/// The shape of a plan without its data: kernel, buffer sizes and roles, steps. Equal shapes can
/// replay the same CUDA graph and reuse the same buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanShape(pub u64);

impl Plan {
    /// An empty plan for `kernel`.
    pub fn new(kernel: &'static str) -> Self {
        Self {
            kernel,
            buffers: Vec::new(),
            steps: Steps::default(),
            stages: Vec::new(),
            resident: false,
            caller_spins: false,
            early_wake: None,
        }
    }

    /// Adds an input buffer of `len` bytes filled by `pack` (see [`Packer`]).
    pub fn input(
        &mut self,
        name: &'static str,
        len: usize,
        pack: impl Fn(&mut [u8], usize) + Send + Sync + 'static,
    ) -> BufferId {
        self.push(name, len, BufferRole::Input(Box::new(pack)))
    }

    /// Drops the input buffers' packers, each replaced by one that writes nothing; for a backend
    /// once it has packed the inputs (or given up on the plan). What the packers captured (the
    /// batch's items, shared with the request) is then the request's alone again, so that its
    /// kernel may reuse their memory for the outputs
    /// ([`Kernel::unpack_donated`](crate::Kernel::unpack_donated)) and a batch of singles that
    /// failed can be split at once. Buffer sizes and roles stay as they were.
    pub fn release_packers(&mut self) {
        for b in &mut self.buffers {
            if let BufferRole::Input(pack) = &mut b.role {
                // A closure that captures nothing: no allocation.
                *pack = Box::new(|_: &mut [u8], _: usize| {});
            }
        }
    }

    /// Adds an output buffer of `len` bytes.
    pub fn output(&mut self, name: &'static str, len: usize) -> BufferId {
        self.push(name, len, BufferRole::Output)
    }

    /// Adds a device-only scratch buffer of `len` bytes.
    pub fn scratch(&mut self, name: &'static str, len: usize) -> BufferId {
        self.push(name, len, BufferRole::Scratch)
    }

    fn push(&mut self, name: &'static str, len: usize, role: BufferRole) -> BufferId {
        let id = BufferId(self.buffers.len() as u32);
        self.buffers.push(PlanBuffer { name, len, role });
        id
    }

    /// Appends a launch.
    pub fn launch(&mut self, launch: Launch) {
        self.steps.push(Step::Launch(launch));
    }

    /// Appends a GEMM.
    pub fn gemm(&mut self, gemm: Gemm) {
        self.steps.push(Step::Gemm(gemm));
    }

    /// Appends steps that depend only on `key`, the plan's kernel and its buffers (their number,
    /// roles and sizes), building them with `build` the first time and reusing that list for
    /// every later plan with the same kernel, key and buffers. Declare the buffers first.
    ///
    /// For kernels whose launches are many and the same from batch to batch (a chain of a
    /// hundred small kernels, say): the plan then costs neither the building nor the freeing of
    /// its launches, the list is read by every thread without being copied between their caches,
    /// and a backend that has checked one plan's launches against a cached graph knows the next
    /// plan's are the same (CUDA skips the comparison). `key` must capture everything else the
    /// steps depend on (a chain's length, a grid computed from something other than a buffer's
    /// size, the [`PlanTarget`] where the kernel plans differently per device): steps reused
    /// for a different computation would run it. [`Plan::check`] still checks every plan's
    /// steps against its own buffers.
    ///
    /// A plan that has steps already gets the built ones appended, uncached. Lists are kept up to
    /// [`STEP_CACHE_MAX_BYTES`] in all (least recently used first out), at most
    /// [`STEP_CACHE_MAX_LISTS`] of them.
    pub fn reuse_steps(&mut self, key: u64, build: impl FnOnce(&mut StepsBuilder)) {
        let mut built = StepsBuilder::default();
        if !self.steps.is_empty() || !self.stages.is_empty() {
            build(&mut built);
            let base = self.steps.len();
            for step in built.steps {
                self.steps.push(step);
            }
            if !built.stages.is_empty() {
                self.stages.resize(base, Stage::default());
                self.stages.extend(built.stages);
            }
            return;
        }
        let buffers: BufferSignature = self
            .buffers
            .iter()
            .map(|b| (b.len, std::mem::discriminant(&b.role)))
            .collect();
        let id = (self.kernel, key, buffers);
        {
            let mut c = step_cache().lock();
            c.clock += 1;
            let clock = c.clock;
            if let Some(hit) = c.lists.get_mut(&id) {
                hit.lend_to(self, clock);
                return;
            }
        }
        build(&mut built);
        let StepsBuilder {
            mut steps,
            mut stages,
        } = built;
        // The cache counts what it holds: no spare capacity.
        steps.shrink_to_fit();
        stages.shrink_to_fit();
        let bytes = list_bytes(steps.len(), stages.len());
        let keep = bytes <= STEP_CACHE_MAX_BYTES;
        let steps = Steps(Arc::new(StepList {
            steps,
            reused: keep,
            hashes: OnceLock::new(),
            checked: OnceLock::new(),
        }));
        if keep {
            // Hashed once, here, before any plan shares the list.
            steps.hashes();
            let mut c = step_cache().lock();
            c.clock += 1;
            let used = c.clock;
            if let Some(theirs) = c.lists.get_mut(&id) {
                // Another thread built the same list meanwhile: every plan shares theirs.
                theirs.lend_to(self, used);
                return;
            }
            while c.bytes + bytes > STEP_CACHE_MAX_BYTES || c.lists.len() >= STEP_CACHE_MAX_LISTS {
                let Some(oldest) = c
                    .lists
                    .iter()
                    .min_by_key(|(_, v)| v.used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(gone) = c.lists.remove(&oldest) {
                    c.bytes -= gone.bytes;
                }
            }
            c.bytes += bytes;
            c.lists.insert(
                id,
                CachedSteps {
                    steps: steps.clone(),
                    stages: stages.clone(),
                    bytes,
                    used,
                },
            );
        }
        self.steps = steps;
        self.stages = stages;
    }

    /// Says what the last step appended needs and yields (see [`Stage`]). Steps appended without
    /// a stage get the default one (all inputs, no early output).
    pub fn stage(&mut self, stage: Stage) {
        set_last_stage(&mut self.stages, self.steps.len(), stage);
    }

    /// The stage of step `i` (the default when none was given).
    pub fn stage_of(&self, i: usize) -> Stage {
        self.stages.get(i).cloned().unwrap_or_default()
    }

    /// Ids of the output buffers, in the order [`PlanOutputs`] holds them.
    pub fn output_ids(&self) -> Vec<BufferId> {
        self.buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b.role, BufferRole::Output))
            .map(|(i, _)| BufferId(i as u32))
            .collect()
    }

    /// Total bytes of all buffers: what the plan needs on the device.
    pub fn device_bytes(&self) -> usize {
        self.buffers.iter().map(|b| b.len).sum()
    }

    /// The plan's shape (see [`PlanShape`]). Hashed with a fast non-cryptographic hash: it runs
    /// on every execution to find a cached graph. The steps' part is hashed once per step list
    /// (see [`Steps`]).
    pub fn shape(&self) -> PlanShape {
        let mut h = FxHasher::default();
        self.kernel.hash(&mut h);
        for b in &self.buffers {
            b.len.hash(&mut h);
            std::mem::discriminant(&b.role).hash(&mut h);
        }
        h.write_u64(self.steps.hashes().exact);
        PlanShape(h.finish())
    }

    /// The plan's bucketed shape: what a graph cache keys by so that batches of nearby sizes
    /// share one graph. Buffer sizes are rounded up by [`bucket_len`]; launches contribute their
    /// entry point, block, shared memory and the kinds of their arguments (and which buffer each
    /// buffer argument names), but not their grid, scalar values or buffer offsets, which a
    /// backend updates in place before a replay. A plan with a library step ([`Step::Gemm`]) has
    /// nodes a backend cannot update, so its bucketed shape is its exact [`shape`](Self::shape).
    pub fn bucket_shape(&self) -> PlanShape {
        let Some(steps) = self.steps.hashes().bucket else {
            return self.shape();
        };
        let mut h = FxHasher::default();
        self.kernel.hash(&mut h);
        0xB0u8.hash(&mut h);
        for b in &self.buffers {
            bucket_len(b.len).hash(&mut h);
            std::mem::discriminant(&b.role).hash(&mut h);
        }
        h.write_u64(steps);
        PlanShape(h.finish())
    }

    /// Checks the plan's internal consistency: every buffer argument names a buffer of the plan and
    /// its offset lies inside it. Backends call this before touching a device.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the kernel when an argument is out of range.
    pub fn check(&self) -> Result<()> {
        let check_arg = |a: &Arg| -> Result<()> {
            if let Arg::Buffer { id, offset } = a {
                let Some(b) = self.buffers.get(id.0 as usize) else {
                    return Err(Error::invalid_batch(
                        self.kernel,
                        format!("plan names buffer {} of {}", id.0, self.buffers.len()),
                    ));
                };
                if *offset > b.len {
                    return Err(Error::invalid_batch(
                        self.kernel,
                        format!(
                            "offset {offset} past the end of buffer {:?} ({} bytes)",
                            b.name, b.len
                        ),
                    ));
                }
            }
            Ok(())
        };
        // A reused list already found valid against buffers of these sizes is not walked again
        // (a chain of a thousand launches would be, on every call).
        let list = &self.steps.0;
        let known = list.reused
            && list.checked.get().is_some_and(|lens| {
                lens.len() == self.buffers.len()
                    && lens.iter().zip(&self.buffers).all(|(l, b)| *l == b.len)
            });
        if !known {
            for s in &self.steps {
                match s {
                    Step::Launch(l) => l.args.iter().try_for_each(check_arg)?,
                    Step::Gemm(g) => [g.a, g.b, g.c].iter().try_for_each(check_arg)?,
                }
            }
            if list.reused {
                let _ = list
                    .checked
                    .set(self.buffers.iter().map(|b| b.len).collect());
            }
        }
        if self.stages.len() > self.steps.len() {
            return Err(Error::invalid_batch(
                self.kernel,
                format!(
                    "{} stages for {} steps",
                    self.stages.len(),
                    self.steps.len()
                ),
            ));
        }
        for st in &self.stages {
            let buffer = |id: BufferId, end: usize, role: &str| -> Result<()> {
                match self.buffers.get(id.0 as usize) {
                    Some(b)
                        if end <= b.len
                            && matches!(
                                (&b.role, role),
                                (BufferRole::Input(_), "input") | (BufferRole::Output, "output")
                            ) =>
                    {
                        Ok(())
                    }
                    _ => Err(Error::invalid_batch(
                        self.kernel,
                        format!(
                            "stage names {role} buffer {} up to byte {end}, which it does not have",
                            id.0
                        ),
                    )),
                }
            };
            if let Some((id, bytes)) = st.needs {
                buffer(id, bytes, "input")?;
            }
            if let Some((id, r)) = &st.yields {
                if r.start > r.end {
                    return Err(Error::invalid_batch(
                        self.kernel,
                        "stage yields an empty range backwards",
                    ));
                }
                buffer(*id, r.end, "output")?;
            }
        }
        Ok(())
    }
}

/// The size class a buffer of `len` bytes is given in a bucketed graph (see
/// [`Plan::bucket_shape`]): at least 4 KiB, otherwise `len` rounded up to a multiple of an eighth
/// of its power of two, so a bucket wastes at most 12.5% (`5000 -> 5120`, `1_000_000 ->
/// 1_048_576`, `1_100_000 -> 1_179_648`). Zero stays zero.
pub fn bucket_len(len: usize) -> usize {
    const MIN: usize = 4 << 10;
    if len == 0 {
        return 0;
    }
    if len <= MIN {
        return MIN;
    }
    // The step is an eighth of the largest power of two not above `len`.
    let top = usize::BITS - 1 - len.leading_zeros();
    let step = 1usize << (top - 3);
    len.div_ceil(step).saturating_mul(step)
}

/// The Fx hash (rustc's): one multiply and rotate per word. Not DoS-resistant, which plan shapes
/// (built by registered kernels, not by callers) do not need.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ]));
        }
        for b in chunks.remainder() {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

fn hash_arg(a: &Arg, h: &mut impl Hasher) {
    match a {
        Arg::Buffer { id, offset } => (0u8, id.0, *offset).hash(h),
        Arg::U32(v) => (1u8, *v).hash(h),
        Arg::U64(v) => (2u8, *v).hash(h),
        Arg::F32(v) => (3u8, v.to_bits()).hash(h),
    }
}

/// The downloaded output buffers of an executed plan, borrowed from the backend's staging memory.
pub struct PlanOutputs<'a> {
    ids: Vec<BufferId>,
    bytes: Vec<&'a [u8]>,
    /// How the plan ran.
    pub stats: ExecStats,
    alloc_f32: AllocF32,
}

/// Allocates an empty `Vec<f32>` with room for `n` values, for unpacking large outputs. A backend
/// may supply one that prepares the memory (for example asks for huge pages, so that first writes
/// fault far fewer pages).
pub type AllocF32 = fn(usize) -> Vec<f32>;

fn plain_alloc_f32(n: usize) -> Vec<f32> {
    Vec::with_capacity(n)
}

/// How a plan ran on its device, reported by the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExecStats {
    /// Time in kernels (or the replayed graph).
    pub compute: std::time::Duration,
    /// Time in host-device copies.
    pub transfer: std::time::Duration,
    /// Whether a captured graph was replayed.
    pub graph_replayed: bool,
    /// Time the device's executor spent on the plan, from taking it to handing its outputs on
    /// (zero where the backend does not measure it).
    pub executor: std::time::Duration,
    /// Host time packing the inputs into staging (zero where the backend has no staging).
    pub pack: std::time::Duration,
    /// Device time in host-to-device copies, where the backend times them apart (part of
    /// `transfer`; inside `compute` for a replayed graph).
    pub upload: std::time::Duration,
    /// Device time in device-to-host copies, where the backend times them apart (part of
    /// `transfer`; inside `compute` for a replayed graph).
    pub download: std::time::Duration,
}

impl<'a> PlanOutputs<'a> {
    /// Pairs each output buffer id with its bytes.
    pub fn new(ids: Vec<BufferId>, bytes: Vec<&'a [u8]>, stats: ExecStats) -> Self {
        debug_assert_eq!(ids.len(), bytes.len());
        Self {
            ids,
            bytes,
            stats,
            alloc_f32: plain_alloc_f32,
        }
    }

    /// Uses `alloc` for the output vectors kernels build while unpacking.
    pub fn with_allocator(mut self, alloc: AllocF32) -> Self {
        self.alloc_f32 = alloc;
        self
    }

    /// The allocator for output vectors (see [`AllocF32`]).
    pub fn allocator(&self) -> AllocF32 {
        self.alloc_f32
    }

    /// The bytes of output buffer `id`.
    ///
    /// # Errors
    /// [`Error::Backend`] if the backend did not return that buffer (a backend bug, reported
    /// rather than panicking).
    pub fn bytes(&self, id: BufferId) -> Result<&'a [u8]> {
        self.ids
            .iter()
            .position(|i| *i == id)
            .map(|p| self.bytes[p])
            .ok_or_else(|| Error::Backend {
                backend: BackendKind::Cpu,
                message: format!("plan output buffer {} missing", id.0),
                transient: false,
            })
    }

    /// The output buffer `id` as `f32`s, borrowed when aligned, copied otherwise.
    ///
    /// # Errors
    /// As [`PlanOutputs::bytes`].
    pub fn f32s(&self, id: BufferId) -> Result<Cow<'a, [f32]>> {
        let b = self.bytes(id)?;
        Ok(match bytemuck::try_cast_slice::<u8, f32>(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(
                b.chunks_exact(4)
                    .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        })
    }
}

/// Writes bytes `offset .. offset + dst.len()` of `values` (as native-endian bytes) into `dst`:
/// the [`Packer`] of an input that is one slice. Bytes past the end of `values` are zeroed.
pub fn pack_range<T: bytemuck::Pod>(dst: &mut [u8], offset: usize, values: &[T]) {
    let src: &[u8] = bytemuck::cast_slice(values);
    let start = offset.min(src.len());
    let end = (offset + dst.len()).min(src.len());
    let n = end - start;
    dst[..n].copy_from_slice(&src[start..end]);
    dst[n..].fill(0);
}

/// An input made of one `f32` field of every item, concatenated (each item's data optionally
/// starting at a multiple of an alignment, gaps zeroed): packs any byte range in
/// `O(log items + range)`.
pub struct Concat<T> {
    items: std::sync::Arc<[T]>,
    field: fn(&T) -> &[f32],
    /// Byte offset of each item's data.
    starts: Vec<usize>,
    len: usize,
}

impl<T: Send + Sync + 'static> Concat<T> {
    /// The plain concatenation of `field` over `items`.
    pub fn new(items: std::sync::Arc<[T]>, field: fn(&T) -> &[f32]) -> Self {
        Self::aligned(items, field, 1)
    }

    /// The concatenation with each item's data starting at a multiple of `align` bytes (and the
    /// total rounded up to it).
    pub fn aligned(items: std::sync::Arc<[T]>, field: fn(&T) -> &[f32], align: usize) -> Self {
        let align = align.max(1);
        let mut starts = Vec::with_capacity(items.len());
        let mut at = 0;
        for it in items.iter() {
            starts.push(at);
            at += (4 * field(it).len()).div_ceil(align) * align;
        }
        Self {
            items,
            field,
            starts,
            len: at,
        }
    }

    /// Byte offset of item `i`'s data.
    pub fn start(&self, i: usize) -> usize {
        self.starts[i]
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes bytes `offset .. offset + dst.len()` of the concatenation into `dst` (zeros in
    /// alignment gaps and past the end).
    pub fn pack(&self, dst: &mut [u8], offset: usize) {
        let end = offset + dst.len();
        let mut cursor = offset;
        // The last item starting at or before `offset`.
        let mut i = self
            .starts
            .partition_point(|s| *s <= offset)
            .saturating_sub(1);
        while cursor < end && i < self.items.len() {
            let src: &[u8] = bytemuck::cast_slice((self.field)(&self.items[i]));
            let (s, e) = (self.starts[i], self.starts[i] + src.len());
            if cursor < s {
                let gap_end = s.min(end);
                dst[cursor - offset..gap_end - offset].fill(0);
                cursor = gap_end;
            }
            let to = end.min(e);
            if cursor < to {
                dst[cursor - offset..to - offset].copy_from_slice(&src[cursor - s..to - s]);
                cursor = to;
            }
            i += 1;
        }
        dst[cursor - offset..].fill(0);
    }

    /// This concatenation as a plan input's packer.
    pub fn into_packer(self) -> impl Fn(&mut [u8], usize) + Send + Sync + 'static {
        move |dst, offset| self.pack(dst, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_waste_at_most_an_eighth() {
        assert_eq!(bucket_len(0), 0);
        assert_eq!(bucket_len(1), 4096);
        assert_eq!(bucket_len(4096), 4096);
        assert_eq!(bucket_len(5000), 5120);
        assert_eq!(bucket_len(1 << 20), 1 << 20);
        assert_eq!(bucket_len(1_100_000), 1_179_648);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % (1 << 34)) as usize + 1;
            let b = bucket_len(len);
            assert!(b >= len, "{len} -> {b}");
            assert!(len <= 4096 || (b - len) * 8 <= len, "{len} -> {b}");
            assert_eq!(bucket_len(b), b, "a bucket is its own bucket");
        }
    }

    fn chain(items: usize, scale: f32) -> Plan {
        let mut p = Plan::new("test/chain");
        let x = p.input("x", items * 4, |_, _| {});
        let y = p.output("y", items * 4);
        p.launch(Launch::new(
            "scale",
            [(items as u32).div_ceil(256), 1, 1],
            [256, 1, 1],
            &[
                Arg::buf(x),
                Arg::buf(y),
                Arg::F32(scale),
                Arg::U32(items as u32),
            ],
        ));
        p
    }

    #[test]
    fn nearby_batch_sizes_share_a_bucket_but_not_a_shape() {
        let (a, b) = (chain(1000, 2.0), chain(1020, 3.0));
        assert_ne!(a.shape(), b.shape());
        assert_eq!(a.bucket_shape(), b.bucket_shape());
        // Far apart sizes, or another argument kind, are another bucket.
        assert_ne!(a.bucket_shape(), chain(4000, 2.0).bucket_shape());
        let mut c = chain(1000, 2.0);
        if let Step::Launch(l) = &mut c.steps[0] {
            l.args[2] = Arg::U32(2);
        }
        assert_ne!(a.bucket_shape(), c.bucket_shape());
    }

    #[test]
    fn stages_must_name_buffers_of_the_right_role_and_size() {
        let mut p = chain(100, 1.0);
        p.stage(Stage {
            needs: Some((BufferId(0), 400)),
            yields: Some((BufferId(1), 0..400)),
        });
        p.check().unwrap();
        assert_eq!(p.stage_of(0).needs, Some((BufferId(0), 400)));
        for bad in [
            Stage {
                needs: Some((BufferId(0), 401)),
                yields: None,
            },
            Stage {
                needs: Some((BufferId(1), 4)),
                yields: None,
            },
            Stage {
                needs: None,
                yields: Some((BufferId(0), 0..4)),
            },
            Stage {
                needs: None,
                yields: Some((BufferId(1), 0..401)),
            },
        ] {
            let mut q = chain(100, 1.0);
            q.stage(bad.clone());
            assert!(
                matches!(q.check(), Err(Error::InvalidInput { .. })),
                "{bad:?}"
            );
        }
    }

    /// A copy and `n` bumps (their entry names from one place, so their addresses agree).
    fn bump_launches(x: BufferId, y: BufferId, n: u32) -> impl Iterator<Item = Launch> {
        std::iter::once(Launch::new(
            "copy",
            [1, 1, 1],
            [32, 1, 1],
            &[Arg::buf(x), Arg::buf(y)],
        ))
        .chain(
            (0..n).map(move |i| {
                Launch::new("bump", [1, 1, 1], [32, 1, 1], &[Arg::buf(y), Arg::U32(i)])
            }),
        )
    }

    /// A plan of `kernel` with two buffers and `n + 1` launches reused under `key`.
    fn reused(kernel: &'static str, key: u64, n: u32, out_len: usize) -> Plan {
        let mut p = Plan::new(kernel);
        let x = p.input("x", 128, |_, _| {});
        let y = p.output("y", out_len);
        p.reuse_steps(key, |s| {
            bump_launches(x, y, n).for_each(|l| s.launch(l));
            s.stage(Stage {
                needs: None,
                yields: Some((y, 0..4)),
            });
        });
        p
    }

    #[test]
    fn reused_steps_are_one_list_per_kernel_key_and_buffers() {
        let a = reused("test/reuse-a", 7, 100, 128);
        let b = reused("test/reuse-a", 7, 100, 128);
        assert!(a.steps.ptr_eq(&b.steps) && a.steps.is_reused());
        assert_eq!(a.steps.len(), 101);
        assert_eq!(b.stage_of(100).yields, Some((BufferId(1), 0..4)));
        assert_eq!((a.shape(), a.bucket_shape()), (b.shape(), b.bucket_shape()));
        // Another key, kernel or buffer size: another list.
        for other in [
            reused("test/reuse-a", 8, 100, 128),
            reused("test/reuse-b", 7, 100, 128),
            reused("test/reuse-a", 7, 100, 256),
        ] {
            assert!(!a.steps.ptr_eq(&other.steps));
        }
        // The same launches built by hand hash the same as the reused ones.
        let mut built = Plan::new("test/reuse-a");
        let x = built.input("x", 128, |_, _| {});
        let y = built.output("y", 128);
        bump_launches(x, y, 100).for_each(|l| built.launch(l));
        built.stage(Stage {
            needs: None,
            yields: Some((y, 0..4)),
        });
        assert!(!built.steps.is_reused());
        assert_eq!(built.steps, a.steps);
        assert_eq!(
            (built.shape(), built.bucket_shape()),
            (a.shape(), a.bucket_shape())
        );
    }

    /// A reused list is walked by [`Plan::check`] once per buffer sizes; a plan holding it whose
    /// buffers differ (here one gone, so the launches name a missing buffer) is checked in full.
    #[test]
    fn a_reused_list_is_checked_again_when_the_buffers_differ() {
        let a = reused("test/reuse-check", 1, 50, 128);
        a.check().unwrap();
        assert!(a.steps.0.checked.get().is_some());
        let b = reused("test/reuse-check", 1, 50, 128);
        assert!(b.steps.ptr_eq(&a.steps));
        b.check().unwrap();
        let mut c = reused("test/reuse-check", 1, 50, 128);
        assert!(c.steps.ptr_eq(&a.steps));
        c.buffers.pop();
        assert!(matches!(c.check(), Err(Error::InvalidInput { .. })));
        let mut d = reused("test/reuse-check", 1, 50, 128);
        d.buffers[1].len = 64;
        d.check().unwrap();
    }

    #[test]
    fn writing_a_reused_list_copies_it_and_rehashes() {
        let a = reused("test/reuse-write", 1, 10, 128);
        let mut b = reused("test/reuse-write", 1, 10, 128);
        let (shape, bucket) = (b.shape(), b.bucket_shape());
        if let Step::Launch(l) = &mut b.steps[3] {
            l.args[1] = Arg::U32(99);
        }
        assert!(!a.steps.ptr_eq(&b.steps) && !b.steps.is_reused());
        assert!(matches!(&a.steps[3], Step::Launch(l) if l.args[1] == Arg::U32(2)));
        assert_ne!(b.shape(), shape, "a scalar is part of the exact shape");
        assert_eq!(b.bucket_shape(), bucket, "but not of the bucketed one");
        if let Step::Launch(l) = &mut b.steps[3] {
            l.block = [64, 1, 1];
        }
        assert_ne!(b.bucket_shape(), bucket);
        // The cache still hands out the list as built; iterating one mutably copies it too.
        let mut c = reused("test/reuse-write", 1, 10, 128);
        assert!(c.steps.ptr_eq(&a.steps));
        for step in &mut c.steps {
            if let Step::Launch(l) = step {
                l.grid = [2, 1, 1];
            }
        }
        assert!(!c.steps.ptr_eq(&a.steps) && !c.steps.is_reused());
        assert!(matches!(&a.steps[0], Step::Launch(l) if l.grid == [1, 1, 1]));
        assert_ne!(c.shape(), a.shape());
    }

    #[test]
    fn a_plan_with_steps_gets_the_built_ones_appended_uncached() {
        let mut p = chain(100, 1.0);
        let y = BufferId(1);
        p.reuse_steps(5, |s| {
            s.launch(Launch::new("again", [1, 1, 1], [32, 1, 1], &[Arg::buf(y)]));
            s.stage(Stage {
                needs: None,
                yields: Some((y, 0..8)),
            });
        });
        assert_eq!(p.steps.len(), 2);
        assert!(!p.steps.is_reused());
        assert_eq!(p.stage_of(0), Stage::default());
        assert_eq!(p.stage_of(1).yields, Some((y, 0..8)));
        p.check().unwrap();
    }

    #[test]
    fn the_step_cache_stays_within_its_bounds() {
        // Lists of about 3 MiB each: the cache keeps at most five of them.
        let per = (3 << 20) / std::mem::size_of::<Step>();
        let lists: Vec<Plan> = (0..12)
            .map(|k| reused("test/reuse-bounds", k, per as u32, 128))
            .collect();
        let (count, bytes) = step_cache_usage();
        assert!(bytes <= STEP_CACHE_MAX_BYTES, "{bytes}");
        assert!(count <= STEP_CACHE_MAX_LISTS, "{count}");
        // The last one built is kept; the first was evicted and is built afresh.
        assert!(reused("test/reuse-bounds", 11, per as u32, 128)
            .steps
            .ptr_eq(&lists[11].steps));
        assert!(!reused("test/reuse-bounds", 0, per as u32, 128)
            .steps
            .ptr_eq(&lists[0].steps));
        // A list larger than the whole cache is built for every plan and not kept.
        let huge = STEP_CACHE_MAX_BYTES / std::mem::size_of::<Step>() + 1;
        let h = reused("test/reuse-huge", 0, huge as u32, 128);
        assert!(!h.steps.is_reused());
        assert!(!reused("test/reuse-huge", 0, huge as u32, 128)
            .steps
            .ptr_eq(&h.steps));
    }

    #[test]
    fn a_library_step_keeps_the_exact_shape() {
        let mut p = Plan::new("test/gemm");
        let a = p.input("a", 64, |_, _| {});
        let b = p.input("b", 64, |_, _| {});
        let c = p.output("c", 64);
        p.gemm(Gemm {
            m: 4,
            k: 4,
            n: 4,
            a: Arg::buf(a),
            b: Arg::buf(b),
            c: Arg::buf(c),
        });
        assert_eq!(p.bucket_shape(), p.shape());
    }
}
