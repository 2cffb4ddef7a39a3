//! The fallback backends of gpubridge: where work lands when there is no CUDA device.
//!
//! - [`cpu`]: the host's cores, always compiled in and never behind a feature. It runs each
//!   kernel's CPU form (which is also the reference) on a dedicated rayon pool.
//! - `wgpu` (feature `wgpu`): the WebGPU compute backend. It is not built yet; with the feature on,
//!   [`wgpu_status`] says so, and the bridge moves on to the CPU.

pub mod cpu;

pub use cpu::CpuBackend;

use gpubridge_core::{BackendKind, BackendReport, BackendStatus};

/// Whether the wgpu backend can be used in this build, and why not.
pub fn wgpu_status() -> BackendReport {
    let status = if cfg!(feature = "wgpu") {
        BackendStatus::Unavailable("the wgpu backend is not implemented in this release".to_owned())
    } else {
        BackendStatus::NotCompiled { feature: "wgpu" }
    };
    BackendReport {
        kind: BackendKind::Wgpu,
        status,
    }
}
