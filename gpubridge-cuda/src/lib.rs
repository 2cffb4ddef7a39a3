//! The CUDA backend of gpubridge.
//!
//! Everything CUDA is loaded at run time (cudarc's `dynamic-loading`), so this crate builds and its
//! callers run on machines without CUDA: a missing library is a reason, never a panic.
//!
//! # What it does
//! - [`probe`]: checks that the driver library is present, initialises it, and lists every device
//!   (name, compute capability, memory, SM count), or says precisely why CUDA is not usable.
//! - [`CudaBackend`]: core's `Backend` over those devices. Each device has an executor thread
//!   that owns its context, stream, modules, memory pool and pinned staging, and runs plans:
//!   kernels' CUDA C is compiled by NVRTC for the device's architecture once, its PTX cached on
//!   disk ([`PtxCache`]: key = source hash, architecture, NVRTC version); inputs are packed into
//!   pinned staging, copied, the plan's launches (and cuBLAS SGEMMs) run, outputs come back.
//! - CUDA graphs: a plan shape seen a second time is captured (its uploads, launches, SGEMMs and
//!   download) into a graph that owns its device block and pinned staging; later runs of that
//!   shape pack into the staging and replay the graph once. Least recently used graphs are evicted
//!   under `cuda.graph_cache_mb`; a failed capture leaves that shape on stream launches.
//! - Batch sizes share a graph by bucket (the graph is keyed by the bucket, and a batch of another
//!   size in it updates the kernel nodes' parameters in place instead of capturing again); one
//!   micro-batch's copies overlap another's compute on a second stream; tiny plans read their
//!   inputs through mapped host memory (zero-copy), on the caller's own thread when it spins
//!   (`cuda.inline_tiny_plans`). Figures: `docs/PERFORMANCE.md`.
//! - [`CudaBackend::release_caches`] gives back what a device keeps only for speed (cached graphs,
//!   pinned staging, idle pool memory) for a service that goes quiet, or a leak check at rest.

mod backend;
pub mod baseline;
mod compile;
mod discovery;
mod executor;
mod host_alloc;
mod memory;

pub use backend::CudaBackend;
pub use compile::{compile, default_cache_dir, nvrtc_version, PtxCache};
pub use discovery::{pci_locations, probe, CudaDevice, CudaUnavailable, DRIVER_LIBRARY};
pub use executor::{GraphStats, Released, MAX_SHAPES_REMEMBERED};
pub use host_alloc::huge_page_vec_f32;
pub use memory::{size_class, DevicePool, PoolStats, IDLE_RELEASE_EVERY};
