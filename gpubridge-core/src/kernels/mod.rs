//! The built-in kernels, each with its CUDA C, WGSL and CPU forms.
//!
//! | id | input | output | CPU form |
//! |---|---|---|---|
//! | `kernels/vector/add` | [`VectorPair`] | `Vec<f32>` | element-wise, chunks in parallel |
//! | `kernels/sum` | `Vec<f32>` | `f32` | f64 accumulation in 8 lanes, chunks in parallel |
//! | `kernels/blas/saxpy` | [`SaxpyInput`] | `Vec<f32>` | element-wise, chunks in parallel |
//! | `kernels/matrix/multiply` | [`MatMulInput`] | [`Matrix`] | row blocks of a blocked SGEMM in parallel |
//! | `kernels/graph/connected_components` | [`Graph`] | `Vec<u32>` (smallest node of each node's component) | lock-free union-find on atomics, edge chunks in parallel |
//!
//! NaN and infinities are data: every form propagates them as IEEE-754 arithmetic does (a NaN in
//! a summed vector gives a NaN sum, `+inf + 1` is `+inf`), and none rejects them.
//!
//! # Tolerances against the float64 reference (the conformance suite checks these)
//! - vector add: `|got - ref| <= eps * |ref|` (one rounding).
//! - sum: `|got - ref| <= 1e-5 * sum |x|`, and exact for small-integer data (every partial sum
//!   below 2^24 is exact in f32, whatever the summation order).
//! - SAXPY: `|got - ref| <= 2 eps (|a x| + |y|)` (fused or unfused multiply-add).
//! - matrix multiply: `|got - ref| <= (k + 2) eps sum_j |a_ij b_jk|` (the classical GEMM bound).
//! - connected components: exact (labels are the smallest node of each component on every form).

mod connected_components;
mod matmul;
mod saxpy;
mod sum;
mod vector_add;

pub use connected_components::{largest_node, union_find_labels, ConnectedComponents, Graph};
pub use matmul::{MatMul, MatMulInput, Matrix};
pub use saxpy::{Saxpy, SaxpyInput};
pub use sum::Sum;
pub use vector_add::{VectorAdd, VectorPair};

use rayon::prelude::*;

use crate::catalog::KernelCatalog;
use crate::error::Result;
use crate::plan::{pack_range, BufferId, Plan, PlanTarget};

/// Elements handled by one parallel task of a CPU form: large enough to amortise scheduling,
/// small enough to balance two to a hundred cores.
pub(crate) const CPU_CHUNK: usize = 1 << 16;

/// Threads per block (CUDA) and invocations per workgroup (WGSL) of the 1-D kernels.
pub(crate) const BLOCK: u32 = 256;

/// Registers every built-in kernel.
///
/// # Errors
/// [`crate::Error::InvalidInput`] if one of their ids is already taken.
pub fn register_builtins(catalog: &mut KernelCatalog) -> Result<()> {
    catalog.register(VectorAdd)?;
    catalog.register(Sum)?;
    catalog.register(Saxpy)?;
    catalog.register(MatMul)?;
    catalog.register(ConnectedComponents::default())?;
    Ok(())
}

/// Byte offsets (element offsets times 4 or 8) of concatenated items, with the total at the end.
pub(crate) fn prefix_offsets(lens: impl Iterator<Item = usize>) -> Vec<u64> {
    let mut out = vec![0u64];
    let mut acc = 0u64;
    for l in lens {
        acc += l as u64;
        out.push(acc);
    }
    out
}

/// Sums `x` in float64 with eight independent lanes, so the loop vectorises.
pub(crate) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f64::from(*v);
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|v| f64::from(*v)).sum::<f64>()
}

/// Cuts `flat` into consecutive vectors of the given lengths, copying in parallel when large
/// (fresh output pages fault on first write; many threads fault them faster).
pub(crate) fn split_concat(
    flat: &[f32],
    lens: impl Iterator<Item = usize>,
    alloc: crate::plan::AllocF32,
) -> Vec<Vec<f32>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    for l in lens {
        ranges.push((at, l));
        at += l;
    }
    let piece = |&(s, l): &(usize, usize)| {
        flat.get(s..s + l)
            .map(|x| par_to_vec(x, alloc))
            .unwrap_or_default()
    };
    if at >= PAR_COPY_MIN && ranges.len() > 1 {
        ranges.par_iter().map(piece).collect()
    } else {
        ranges.iter().map(piece).collect()
    }
}

/// `src` copied into `v`'s memory when it is large enough (a donated input's allocation, already
/// mapped: see [`crate::Kernel::unpack_donated`]), in parallel chunks when large; otherwise into
/// a fresh vector from `alloc`.
pub(crate) fn refill(mut v: Vec<f32>, src: &[f32], alloc: crate::plan::AllocF32) -> Vec<f32> {
    if v.len() < src.len() {
        return par_to_vec(src, alloc);
    }
    v.truncate(src.len());
    if src.len() < PAR_COPY_MIN {
        v.copy_from_slice(src);
    } else {
        v.par_chunks_mut(CPU_CHUNK)
            .zip(src.par_chunks(CPU_CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
    }
    v
}

/// Below this many elements a copy runs on the calling thread.
pub(crate) const PAR_COPY_MIN: usize = 1 << 18;

/// `src.to_vec()`, in parallel chunks when large, into a vector from `alloc`.
pub(crate) fn par_to_vec(src: &[f32], alloc: crate::plan::AllocF32) -> Vec<f32> {
    if src.len() < PAR_COPY_MIN {
        return src.to_vec();
    }
    let mut v = alloc(src.len());
    v.par_extend(src.par_iter().copied());
    v
}

/// Checks that a WGSL target can bind `elems` floats in one storage buffer and index them with
/// `u32`; other targets always can.
pub(crate) fn check_wgsl_binding(target: &PlanTarget, elems: usize) -> Result<()> {
    if let PlanTarget::Wgsl {
        max_storage_buffer_bytes,
        ..
    } = target
    {
        let bytes = elems as u64 * 4;
        if bytes > *max_storage_buffer_bytes || elems as u64 >= u64::from(u32::MAX) {
            return Err(crate::Error::Unsupported {
                backend: target.backend(),
                what: format!("{bytes} bytes exceed the adapter's storage binding limit"),
            });
        }
    }
    Ok(())
}

/// Adds the segment offsets as an input in the target's index width: `u64` for CUDA, `u32` for
/// WGSL (which has no 64-bit integers; [`check_wgsl_binding`] keeps them in range).
pub(crate) fn offsets_input(plan: &mut Plan, offsets: Vec<u64>, target: &PlanTarget) -> BufferId {
    match target {
        PlanTarget::Cuda { .. } => plan.input("offsets", offsets.len() * 8, move |dst, at| {
            pack_range(dst, at, &offsets)
        }),
        PlanTarget::Wgsl { .. } => {
            let o32: Vec<u32> = offsets.iter().map(|o| *o as u32).collect();
            plan.input("offsets", o32.len() * 4, move |dst, at| {
                pack_range(dst, at, &o32)
            })
        }
    }
}

/// Grid size for a grid-stride 1-D launch over `n` elements.
pub(crate) fn grid_1d(n: u64, max: u32) -> u32 {
    n.div_ceil(u64::from(BLOCK)).clamp(1, u64::from(max)) as u32
}
