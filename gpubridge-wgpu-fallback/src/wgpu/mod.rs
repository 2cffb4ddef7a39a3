//! The wgpu compute backend: any WebGPU-capable adapter (Vulkan first, then GL), software ones
//! such as Mesa's llvmpipe included, running kernels' WGSL forms.
//!
//! - [`discovery`]: which adapters are used and, when none, exactly why.
//! - [`device`]: the device-adapter family ([`Wgpu`], [`WgpuInstance`], [`WgpuDevice`]).
//! - `execute`: how one plan runs (staging, one compute pass, readback).
//! - `memory`: the buffer pool; `pipeline`: compiled WGSL, cached per source and entry point.
//! - `executor`: one thread per device; [`backend`]: [`WgpuBackend`], core's `Backend`.
//! - `error`: wgpu's errors as core's, and the error scopes that catch them.

pub mod backend;
pub mod device;
pub mod discovery;
mod error;
mod execute;
mod executor;
mod memory;
mod pipeline;

pub use backend::WgpuBackend;
pub use device::{Wgpu, WgpuBuffer, WgpuDevice, WgpuInstance};
pub use discovery::WgpuUnavailable;
pub use memory::PoolStats;
pub use pipeline::WgpuModule;
