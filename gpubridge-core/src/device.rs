//! The device-adapter trait family (in the manner of wgpu-hal) and the object-safe [`Backend`] face
//! that the bridge schedules onto.
//!
//! A backend crate implements [`Api`]: one type naming its instance, device, buffer, module and
//! graph types, each sub-trait pointing back to it, so everything inside a backend is statically
//! dispatched. Optional capabilities (graphs, pinned memory, direct storage) are default methods
//! that return [`Error::Unsupported`]; a backend without graphs names an uninhabited type such as
//! [`NoGraph`]. The bridge itself only sees [`Backend`], one virtual call per micro-batch, because
//! core sits below the backend crates and cannot name their types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuContext;
use crate::error::{Error, Result};
use crate::kernel::KernelSources;
use crate::plan::{Plan, PlanOutputs, PlanTarget};

/// The kinds of backend gpubridge knows, in the default fallback order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// NVIDIA GPUs through the CUDA driver (`gpubridge-cuda`).
    Cuda,
    /// Any WebGPU adapter through wgpu (`gpubridge-wgpu-fallback`, feature `wgpu`).
    Wgpu,
    /// The host's cores (`gpubridge-wgpu-fallback::cpu`, always compiled in).
    Cpu,
}

impl BackendKind {
    /// Every kind, in the default fallback order.
    pub const ALL: [BackendKind; 3] = [BackendKind::Cuda, BackendKind::Wgpu, BackendKind::Cpu];

    /// The lower-case name used in configuration, labels and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        }
    }

    /// Whether this backend runs on a GPU (or a GPU-like adapter).
    pub fn is_gpu(self) -> bool {
        match self {
            BackendKind::Cuda | BackendKind::Wgpu => true,
            BackendKind::Cpu => false,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cuda" => Ok(BackendKind::Cuda),
            "wgpu" => Ok(BackendKind::Wgpu),
            "cpu" => Ok(BackendKind::Cpu),
            other => Err(format!(
                "unknown backend {other:?} (expected cuda, wgpu or cpu)"
            )),
        }
    }
}

/// One device: a backend and its index within that backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// The backend.
    pub backend: BackendKind,
    /// Index within the backend, from 0.
    pub index: usize,
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.backend, self.index)
    }
}

/// What kind of hardware a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceType {
    /// A discrete GPU.
    DiscreteGpu,
    /// A GPU sharing memory with the host.
    IntegratedGpu,
    /// A software rasteriser exposed as a GPU (Mesa llvmpipe, SwiftShader).
    SoftwareGpu,
    /// The host processor.
    Cpu,
}

/// Static facts about a device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    /// Which device.
    pub id: DeviceId,
    /// Marketing name, for example `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Kind of hardware.
    pub device_type: DeviceType,
    /// Total memory in bytes.
    pub total_memory: u64,
    /// Streaming multiprocessors, compute units, or host threads.
    pub compute_units: u32,
    /// CUDA compute capability, where there is one.
    pub compute_capability: Option<(u32, u32)>,
    /// Anything else worth printing (driver version, adapter backend).
    pub details: String,
}

/// A device's memory right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryInfo {
    /// Total bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
}

/// A device's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Working normally.
    Healthy,
    /// Working, with a problem worth reporting (throttling, ECC errors).
    Degraded(String),
    /// Not usable.
    Lost(String),
}

/// An uninhabited type for capabilities a backend does not have (for example its graph type).
#[derive(Debug)]
pub enum NoGraph {}

/// The family of types that make up one backend.
pub trait Api: Sized + Send + Sync + 'static {
    /// Which backend this is.
    const KIND: BackendKind;
    /// Entry point: loads the driver and enumerates devices.
    type Instance: Instance<A = Self>;
    /// One device.
    type Device: Device<A = Self>;
    /// A device allocation.
    type Buffer: Send + Sync;
    /// A kernel's compiled code on one device.
    type Module: Send + Sync;
    /// A captured graph ([`NoGraph`] where graphs are not supported).
    type Graph: Send;
}

/// Loads a backend and finds its devices.
pub trait Instance: Sized + Send + Sync {
    /// The backend.
    type A: Api;

    /// Opens the backend.
    ///
    /// # Errors
    /// [`Error::Unsupported`] with the precise reason when the backend cannot be used here (a
    /// missing library, no adapter), never a panic.
    fn open(config: &crate::BridgeConfig) -> Result<Self>;

    /// Every usable device.
    ///
    /// # Errors
    /// As [`Instance::open`].
    fn enumerate(&self) -> Result<Vec<<Self::A as Api>::Device>>;
}

/// One device of a backend.
pub trait Device: Send + Sync {
    /// The backend.
    type A: Api;

    /// Static facts.
    fn info(&self) -> &DeviceInfo;

    /// Memory now.
    ///
    /// # Errors
    /// [`Error::DeviceLost`] or [`Error::Backend`] from the driver.
    fn memory(&self) -> Result<MemoryInfo>;

    /// Health now.
    fn health(&self) -> Health;

    /// Allocates `bytes` of device memory.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when the device or its pool limit refuses.
    fn alloc(&self, bytes: usize) -> Result<<Self::A as Api>::Buffer>;

    /// Copies `src` into `dst` at byte `offset`, in stream order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the range does not fit; driver errors.
    fn write(&self, dst: &mut <Self::A as Api>::Buffer, offset: usize, src: &[u8]) -> Result<()>;

    /// Copies from `src` at byte `offset` into `dst`, in stream order; complete after
    /// [`Device::synchronize`].
    ///
    /// # Errors
    /// As [`Device::write`].
    fn read(&self, src: &<Self::A as Api>::Buffer, offset: usize, dst: &mut [u8]) -> Result<()>;

    /// Compiles or loads the kernel's code for this device (cached by the backend).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the kernel has no form for this backend; compile errors as
    /// [`Error::Backend`] carrying the compiler's log.
    fn load_module(
        &self,
        kernel: &str,
        sources: &KernelSources,
    ) -> Result<<Self::A as Api>::Module>;

    /// Runs a plan on this device and hands its outputs to `f`. Once the inputs are packed, a
    /// device should drop the plan's packers ([`Plan::release_packers`]) before calling `f`: the
    /// batch's items are then the request's alone, and its kernel may reuse them for the outputs
    /// ([`Kernel::unpack_donated`](crate::Kernel::unpack_donated)).
    ///
    /// # Errors
    /// Any of the above.
    fn execute(
        &self,
        module: &<Self::A as Api>::Module,
        plan: &mut Plan,
        f: &mut dyn FnMut(PlanOutputs<'_>),
    ) -> Result<()>;

    /// Waits for all work on this device to finish.
    ///
    /// # Errors
    /// Driver errors.
    fn synchronize(&self) -> Result<()>;

    /// Captures a plan as a replayable graph. Optional.
    ///
    /// # Errors
    /// [`Error::Unsupported`] unless the backend has graphs.
    fn capture_graph(
        &self,
        module: &<Self::A as Api>::Module,
        plan: &Plan,
    ) -> Result<<Self::A as Api>::Graph> {
        let _ = (module, plan);
        Err(unsupported(Self::A::KIND, "graphs"))
    }

    /// Allocates page-locked host memory for staging. Optional.
    ///
    /// # Errors
    /// [`Error::Unsupported`] unless the backend has pinned memory.
    fn alloc_pinned(&self, bytes: usize) -> Result<Box<[u8]>> {
        let _ = bytes;
        Err(unsupported(Self::A::KIND, "pinned host memory"))
    }

    /// Reads `len` bytes of a file at `file_offset` straight into `dst` (GPUDirect Storage).
    /// Optional.
    ///
    /// # Errors
    /// [`Error::Unsupported`] unless the backend reads files directly into device memory.
    fn read_file_direct(
        &self,
        path: &std::path::Path,
        file_offset: u64,
        len: usize,
        dst: &mut <Self::A as Api>::Buffer,
    ) -> Result<usize> {
        let _ = (path, file_offset, len, dst);
        Err(unsupported(Self::A::KIND, "direct storage reads"))
    }
}

fn unsupported(backend: BackendKind, what: &str) -> Error {
    Error::Unsupported {
        backend,
        what: what.to_owned(),
    }
}

/// A job for the CPU backend: runs a kernel's CPU form with the pool's context.
pub type CpuJob = Box<dyn FnOnce(&CpuContext) + Send>;

/// Receives a plan's outputs (or its error) on the executor's thread.
pub type PlanCompletion = Box<dyn for<'a> FnOnce(Result<PlanOutputs<'a>>) + Send>;

/// Work handed to a backend's executor.
pub enum Work {
    /// Run a kernel's CPU form (CPU backend only).
    Cpu(CpuJob),
    /// Execute a plan and complete with its outputs (device backends).
    Plan {
        /// The plan.
        plan: Plan,
        /// The kernel's sources, for compiling on first use.
        sources: KernelSources,
        /// Called once with the outputs or the error.
        complete: PlanCompletion,
    },
}

/// The object-safe face of a backend that the bridge schedules onto.
///
/// # Stream ordering
/// `submit` only enqueues: it must not block the calling (async) thread. Completion is signalled
/// through the callbacks in [`Work`], from the backend's own executor threads.
pub trait Backend: Send + Sync + 'static {
    /// Which backend.
    fn kind(&self) -> BackendKind;

    /// Its devices (at least one, or the backend would not have been added).
    fn devices(&self) -> &[DeviceInfo];

    /// The plan target of `device`, or `None` for a backend that runs kernels' CPU forms.
    fn plan_target(&self, device: usize) -> Option<PlanTarget>;

    /// Whether this backend can run a kernel with these sources.
    fn can_run(&self, sources: &KernelSources) -> bool {
        match self.kind() {
            BackendKind::Cuda => sources.cuda.is_some(),
            BackendKind::Wgpu => sources.wgsl.is_some(),
            BackendKind::Cpu => true,
        }
    }

    /// Bytes one micro-batch may use on `device`, or `None` when there is no device memory to fit.
    fn memory_budget(&self, device: usize) -> Option<u64>;

    /// Current health of `device`. A `Lost` device is never chosen.
    fn health(&self, device: usize) -> Health;

    /// Free memory of `device` in bytes, as last sampled, where the backend knows it. Placement
    /// prefers devices with room for a micro-batch, then the least loaded, then the emptiest.
    fn free_memory(&self, device: usize) -> Option<u64> {
        let _ = device;
        None
    }

    /// Bytes of `device`'s memory pool rented out now, for a backend with a pool (`None`
    /// otherwise). With no work in flight it is 0: [`crate::GpuBridge::accounting`] reports it and
    /// the tests assert it after each test.
    fn memory_in_use(&self, device: usize) -> Option<u64> {
        let _ = device;
        None
    }

    /// Whether this backend may wake a parked caller ahead of a plan's result
    /// ([`Plan::early_wake`](crate::Plan::early_wake), [`crate::wake`]). The bridge gives plans
    /// an early wake, and polls briefly for it before parking, only for a backend that says so.
    fn wakes_early(&self) -> bool {
        false
    }

    /// Enqueues `work` on `device`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for work of the wrong kind, [`Error::DeviceLost`] for a gone device.
    /// When `submit` fails, the work's callback is never called.
    fn submit(&self, device: usize, work: Work) -> Result<()>;
}

/// Whether a backend could be used here, and if not, exactly why.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendStatus {
    /// Usable, with these devices.
    Ready(Vec<DeviceInfo>),
    /// Compiled in but not usable here; the reason is precise (for example
    /// `libcuda.so.1 not found`).
    Unavailable(String),
    /// Not compiled in; names the Cargo feature that would add it.
    NotCompiled {
        /// The facade's feature.
        feature: &'static str,
    },
}

/// One line of a backend report: `gpubridge devices` prints these.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendReport {
    /// Which backend.
    pub kind: BackendKind,
    /// Its status.
    pub status: BackendStatus,
}

impl BackendReport {
    /// The reason this backend is not in use, if it is not.
    pub fn unavailable_reason(&self) -> Option<String> {
        match &self.status {
            BackendStatus::Ready(_) => None,
            BackendStatus::Unavailable(why) => Some(why.clone()),
            BackendStatus::NotCompiled { feature } => Some(format!(
                "not compiled in (build with the `{feature}` feature)"
            )),
        }
    }
}
