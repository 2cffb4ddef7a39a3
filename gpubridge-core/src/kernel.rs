//! Kernels: one registered computation, its stable id, its typed input and output, and every form
//! of itself (CUDA C, WGSL, and a multi-threaded CPU form that is also the reference).

use std::sync::Arc;

use crate::cpu::CpuContext;
use crate::error::Result;
use crate::plan::{Plan, PlanOutputs, PlanTarget};

/// The device sources of a kernel. A backend runs the form it supports; a kernel without a form
/// for a backend is `Unsupported` there and falls back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSources {
    /// CUDA C source, compiled by NVRTC once per device architecture. Entry points are
    /// `extern "C" __global__`.
    pub cuda: Option<&'static str>,
    /// WGSL source; entry points are `@compute` functions.
    pub wgsl: Option<&'static str>,
}

impl KernelSources {
    /// A stable 64-bit FNV-1a hash of both sources, used to key compiled-code caches and to check
    /// that the code about to run is the code that was registered.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [self.cuda.unwrap_or(""), "\0", self.wgsl.unwrap_or("")] {
            for byte in part.bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }
}

/// One computation that the bridge can run, in every form it has.
///
/// Implementations are stateless descriptions (the data travels in `Input`), registered once with
/// [`crate::KernelCatalog::register`]. See the built-in kernels in [`crate::kernels`] for examples.
///
/// # Contract
/// - [`Kernel::validate`] rejects every input that a form could not handle; after it passes,
///   [`Kernel::run_cpu`] and the device forms must agree (within the kernel's documented tolerance).
/// - [`Kernel::run_cpu`] returns exactly one output per input, in input order.
/// - [`Kernel::plan`] and [`Kernel::unpack`] together do the same on a device.
pub trait Kernel: Send + Sync + 'static {
    /// One item of a batch.
    type Input: Send + Sync + 'static;
    /// The result for one item.
    type Output: Send + 'static;

    /// Stable id, for example `"kernels/vector/add"`.
    const ID: &'static str;

    /// Device sources. The default has none (CPU only).
    fn sources(&self) -> KernelSources {
        KernelSources::default()
    }

    /// Checks one input. `index` is its position in the batch, for the error message.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] naming the item and what is wrong with it.
    fn validate(&self, index: usize, input: &Self::Input) -> Result<()>;

    /// Device bytes one item needs (inputs, outputs and scratch), used to split a batch so that a
    /// micro-batch fits the device.
    fn device_bytes(&self, input: &Self::Input) -> usize;

    /// The CPU form, also the reference: runs the batch on the context's thread pool.
    ///
    /// # Errors
    /// Only for conditions `validate` cannot see (for example a result too large to allocate).
    fn run_cpu(&self, inputs: &[Self::Input], ctx: &CpuContext) -> Result<Vec<Self::Output>>;

    /// Builds the device plan for `inputs` on `target`. A kernel whose launches are the same from
    /// batch to batch (many of them, say) builds them once with [`Plan::reuse_steps`].
    ///
    /// # Errors
    /// [`crate::Error::Unsupported`] when the kernel has no form for the target (the default).
    fn plan(&self, inputs: &Arc<[Self::Input]>, target: &PlanTarget) -> Result<Plan> {
        let _ = inputs;
        Err(crate::Error::Unsupported {
            backend: target.backend(),
            what: format!("kernel {} has no {} form", Self::ID, target.backend()),
        })
    }

    /// Turns the downloaded outputs of the plan made by [`Kernel::plan`] into typed outputs.
    ///
    /// # Errors
    /// [`crate::Error::Backend`] when an output buffer is missing (a backend bug).
    fn unpack(
        &self,
        inputs: &[Self::Input],
        outputs: &PlanOutputs<'_>,
    ) -> Result<Vec<Self::Output>> {
        let _ = (inputs, outputs);
        Err(crate::Error::Unsupported {
            backend: crate::BackendKind::Cpu,
            what: format!("kernel {} has no device form", Self::ID),
        })
    }

    /// [`Kernel::unpack`] with the micro-batch's inputs donated: the caller moved them into the
    /// request, the device has read them, and nothing will read them again, so an implementation
    /// may reuse their allocations for its outputs (already-mapped memory: no fresh pages to
    /// fault in, no allocation to free later). The bridge calls it only when it holds the inputs
    /// alone, and never for the dynamic batcher's batches of singles (which must come back
    /// unchanged from a failed run, to be run again in pieces); otherwise it calls
    /// [`Kernel::unpack`]. The default does just that.
    ///
    /// # Errors
    /// As [`Kernel::unpack`]. An implementation should fail before it changes any input: inputs
    /// changed by a failed call cannot be retried elsewhere, and the bridge reports the error
    /// without a fallback.
    fn unpack_donated(
        &self,
        inputs: &mut [Self::Input],
        outputs: &PlanOutputs<'_>,
    ) -> Result<Vec<Self::Output>> {
        self.unpack(inputs, outputs)
    }

    /// [`Kernel::run_cpu`] with the micro-batch's inputs donated (see [`Kernel::unpack_donated`]):
    /// an implementation may compute in place in its inputs' memory. The default calls
    /// [`Kernel::run_cpu`].
    ///
    /// # Errors
    /// As [`Kernel::run_cpu`], with the rule of [`Kernel::unpack_donated`] on changed inputs.
    fn run_cpu_donated(
        &self,
        inputs: &mut [Self::Input],
        ctx: &CpuContext,
    ) -> Result<Vec<Self::Output>> {
        self.run_cpu(inputs, ctx)
    }
}

/// Object-safe view of a [`Kernel`] with its types fixed, as the bridge stores it.
pub trait DynKernel<I, O>: Send + Sync {
    /// See [`Kernel::ID`].
    fn id(&self) -> &'static str;
    /// See [`Kernel::sources`].
    fn sources(&self) -> KernelSources;
    /// See [`Kernel::validate`].
    ///
    /// # Errors
    /// As [`Kernel::validate`].
    fn validate(&self, index: usize, input: &I) -> Result<()>;
    /// See [`Kernel::device_bytes`].
    fn device_bytes(&self, input: &I) -> usize;
    /// See [`Kernel::run_cpu`].
    ///
    /// # Errors
    /// As [`Kernel::run_cpu`].
    fn run_cpu(&self, inputs: &[I], ctx: &CpuContext) -> Result<Vec<O>>;
    /// See [`Kernel::plan`].
    ///
    /// # Errors
    /// As [`Kernel::plan`].
    fn plan(&self, inputs: &Arc<[I]>, target: &PlanTarget) -> Result<Plan>;
    /// See [`Kernel::unpack`].
    ///
    /// # Errors
    /// As [`Kernel::unpack`].
    fn unpack(&self, inputs: &[I], outputs: &PlanOutputs<'_>) -> Result<Vec<O>>;
    /// See [`Kernel::unpack_donated`].
    ///
    /// # Errors
    /// As [`Kernel::unpack_donated`].
    fn unpack_donated(&self, inputs: &mut [I], outputs: &PlanOutputs<'_>) -> Result<Vec<O>>;
    /// See [`Kernel::run_cpu_donated`].
    ///
    /// # Errors
    /// As [`Kernel::run_cpu_donated`].
    fn run_cpu_donated(&self, inputs: &mut [I], ctx: &CpuContext) -> Result<Vec<O>>;
}

impl<K: Kernel> DynKernel<K::Input, K::Output> for K {
    fn id(&self) -> &'static str {
        K::ID
    }
    fn sources(&self) -> KernelSources {
        Kernel::sources(self)
    }
    fn validate(&self, index: usize, input: &K::Input) -> Result<()> {
        Kernel::validate(self, index, input)
    }
    fn device_bytes(&self, input: &K::Input) -> usize {
        Kernel::device_bytes(self, input)
    }
    fn run_cpu(&self, inputs: &[K::Input], ctx: &CpuContext) -> Result<Vec<K::Output>> {
        Kernel::run_cpu(self, inputs, ctx)
    }
    fn plan(&self, inputs: &Arc<[K::Input]>, target: &PlanTarget) -> Result<Plan> {
        Kernel::plan(self, inputs, target)
    }
    fn unpack(&self, inputs: &[K::Input], outputs: &PlanOutputs<'_>) -> Result<Vec<K::Output>> {
        Kernel::unpack(self, inputs, outputs)
    }
    fn unpack_donated(
        &self,
        inputs: &mut [K::Input],
        outputs: &PlanOutputs<'_>,
    ) -> Result<Vec<K::Output>> {
        Kernel::unpack_donated(self, inputs, outputs)
    }
    fn run_cpu_donated(&self, inputs: &mut [K::Input], ctx: &CpuContext) -> Result<Vec<K::Output>> {
        Kernel::run_cpu_donated(self, inputs, ctx)
    }
}
