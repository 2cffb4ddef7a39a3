//! The CUDA backend of gpubridge.
//!
//! Everything CUDA is loaded at run time (cudarc's `dynamic-loading`), so this crate builds and its
//! callers run on machines without CUDA: a missing library is reported as a reason, never a panic.
//!
//! # Status
//! This release has **discovery only**: [`probe`] checks that the driver library is present,
//! initialises it, and lists every device with its name, compute capability, memory and SM count,
//! or says precisely why CUDA is not usable. Kernel execution (NVRTC compilation with a PTX cache,
//! pooled memory, pinned staging, CUDA graphs, cuBLAS) is the next milestone; until it lands the
//! bridge reports CUDA as found but not yet executable and runs work on the next backend.

mod discovery;

pub use discovery::{probe, CudaDevice, CudaUnavailable};
