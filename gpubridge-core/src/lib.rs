//! The core of gpubridge: typed kernels, plans, the device-adapter traits, and the bridge runtime
//! that places batches on devices and falls back along the backend chain.
//!
//! This crate touches no GPU library and holds no `unsafe`; backends live in their own crates
//! (`gpubridge-cuda`, `gpubridge-wgpu-fallback`) and the `gpubridge` facade wires them in.
//!
//! # Main types
//! - [`Kernel`]: one computation with a stable id, typed input and output, and its CUDA C, WGSL
//!   and CPU forms; [`KernelCatalog`] registers and resolves them ([`kernels`] has the built-ins).
//! - [`Plan`]: what a kernel asks of a device (buffers, launches), so that no backend knows any
//!   kernel's types.
//! - [`Api`], [`Instance`], [`Device`]: the trait family a backend implements; [`Backend`] is the
//!   object-safe face the bridge schedules onto.
//! - [`GpuBridge`] and [`BatchGrain`]: `bridge.batch::<K>()?.execute(inputs, hints).await`.
//! - [`BridgeConfig`]: TOML plus `GPUBRIDGE__SECTION__KEY` overrides.
//! - [`Error`]: one enum, variants named by what the caller can do.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use gpubridge_core::kernels::{Sum, VectorAdd};
//! use gpubridge_core::{Backend, BridgeConfig, ExecutionHints, GpuBridge};
//!
//! // `cpu` comes from a backend crate; the `gpubridge` facade adds every compiled-in backend.
//! async fn demo(cpu: Arc<dyn Backend>) -> gpubridge_core::Result<()> {
//!     let bridge = GpuBridge::builder(BridgeConfig::default())
//!         .kernel(VectorAdd)?
//!         .kernel(Sum)?
//!         .backend(cpu)
//!         .build()?;
//!     let sums = bridge.batch::<Sum>()?.execute(vec![vec![1.0, 2.0, 3.0]], ExecutionHints::default()).await?;
//!     assert_eq!(sums.outputs, vec![6.0]);
//!     Ok(())
//! }
//! ```

pub mod accounting;
pub mod batcher;
pub mod bridge;
pub mod catalog;
pub mod circuit;
pub mod config;
pub mod conformance;
pub mod cpu;
pub mod device;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod hints;
pub mod janitor;
pub mod kernel;
pub mod kernels;
mod metric_handles;
pub mod nvtx;
pub mod plan;
pub mod readiness;
mod slots;
pub mod stream;
pub mod tenants;
pub mod testing;
pub mod threads;
pub mod wake;

pub use accounting::{Accounting, BatcherOccupancy};
pub use batcher::{BatcherStats, ShutdownReport, SingleResult};
pub use bridge::{BatchGrain, BridgeBuilder, GpuBridge};
pub use catalog::{KernelCatalog, KernelDescriptor};
pub use circuit::{CircuitBreaker, CircuitState};
pub use config::BridgeConfig;
pub use cpu::CpuContext;
pub use device::{
    Api, Backend, BackendKind, BackendReport, BackendStatus, Device, DeviceId, DeviceInfo,
    DeviceType, Health, Instance, MemoryInfo, NoGraph, Work,
};
pub use error::{Error, ErrorClass, IoErrorKind, Result};
pub use hints::{BatchResult, ChunkReport, ExecutionHints, FallbackEvent, Preference, Priority};
pub use kernel::{DynKernel, Kernel, KernelSources};
pub use plan::{bucket_len, Plan, PlanOutputs, PlanShape, PlanTarget};
pub use readiness::{DeviceReadiness, Readiness};
pub use stream::{StreamReceiver, StreamSender};
pub use tenants::TenantUsage;
pub use threads::prefault_stack;
pub use wake::EarlyWake;
