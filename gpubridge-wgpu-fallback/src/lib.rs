//! The fallback backends of gpubridge: where work lands when there is no CUDA device.
//!
//! - `wgpu` (feature `wgpu`): the WebGPU compute backend. It drives any Vulkan or GL adapter
//!   through wgpu, hardware first; Mesa's llvmpipe (a software adapter on the CPU) is accepted
//!   and labelled as such when there is no hardware adapter. Kernels' WGSL forms are compiled once
//!   per device and entry point; buffers come from a size-class pool; each device is driven by its
//!   own executor thread. See `wgpu::WgpuBackend`.
//! - [`cpu`]: the host's cores, always compiled in and never behind a feature. It runs each
//!   kernel's CPU form (which is also the reference) on a dedicated rayon pool.
//!
//! [`wgpu_backend`] opens the wgpu backend or says precisely why it cannot (not compiled in,
//! disabled by `wgpu.enabled = false`, the Vulkan loader missing, no adapter found, none matching
//! `wgpu.adapter`); the `gpubridge` facade puts it between CUDA and the CPU.
//!
//! # Example
//! ```no_run
//! # #[cfg(feature = "wgpu")]
//! # fn demo() {
//! use gpubridge_core::{Backend, BridgeConfig};
//! match gpubridge_wgpu_fallback::wgpu::WgpuBackend::new(&BridgeConfig::default()) {
//!     Ok(b) => println!("wgpu: {:?}", b.devices()[0].name),
//!     Err(why) => println!("wgpu not in use: {why}"),
//! }
//! # }
//! ```

pub mod cpu;
mod host;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use cpu::CpuBackend;

use std::sync::Arc;

use gpubridge_core::{Backend, BackendKind, BackendReport, BackendStatus, BridgeConfig};

/// The wgpu backend if it can be used here, else the report saying exactly why not.
///
/// # Errors
/// A [`BackendReport`] with [`BackendStatus::NotCompiled`] without the `wgpu` feature, or
/// [`BackendStatus::Unavailable`] with the reason.
pub fn wgpu_backend(config: &BridgeConfig) -> Result<Arc<dyn Backend>, BackendReport> {
    #[cfg(feature = "wgpu")]
    {
        match self::wgpu::WgpuBackend::new(config) {
            Ok(b) => Ok(b),
            Err(why) => Err(BackendReport {
                kind: BackendKind::Wgpu,
                status: BackendStatus::Unavailable(why.to_string()),
            }),
        }
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = config;
        Err(BackendReport {
            kind: BackendKind::Wgpu,
            status: BackendStatus::NotCompiled { feature: "wgpu" },
        })
    }
}

/// Whether the wgpu backend can be used here: its devices, or why not (see [`wgpu_backend`]).
pub fn wgpu_status(config: &BridgeConfig) -> BackendReport {
    match wgpu_backend(config) {
        Ok(b) => BackendReport {
            kind: BackendKind::Wgpu,
            status: BackendStatus::Ready(b.devices().to_vec()),
        },
        Err(report) => report,
    }
}
