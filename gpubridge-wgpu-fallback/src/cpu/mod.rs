//! The CPU backend: the host's cores as one device.
//!
//! It implements core's device-adapter family ([`Cpu`] is its [`Api`](gpubridge_core::Api)) for the device facts and
//! host buffers, and core's [`Backend`](gpubridge_core::Backend) for the bridge, where each micro-batch runs the kernel's
//! CPU form on a rayon pool of `cpu.threads` workers. Plans are not executed here: a kernel's CPU
//! form is faster than interpreting its device plan on the host.

mod device;

pub use device::{Cpu, CpuBackend, CpuDevice, CpuInstance};
