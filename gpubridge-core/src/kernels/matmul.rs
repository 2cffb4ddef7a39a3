//! `kernels/matrix/multiply`: row-major f32 matrix multiply of any `m x k x n`.

use std::sync::Arc;

use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::cpu::CpuContext;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, KernelSources};
use crate::plan::{Arg, BufferId, Concat, Gemm, Launch, Plan, PlanOutputs, PlanTarget, Stage};

/// Inputs of one multiply: `a` is `m x k`, `b` is `k x n`, both row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatMulInput {
    /// Rows of `a`.
    pub m: usize,
    /// Columns of `a`, rows of `b`.
    pub k: usize,
    /// Columns of `b`.
    pub n: usize,
    /// `m * k` values, row-major.
    pub a: Vec<f32>,
    /// `k * n` values, row-major.
    pub b: Vec<f32>,
}

/// A row-major matrix.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub data: Vec<f32>,
}

/// `c = a * b`. Shapes that do not match their data are [`Error::InvalidInput`]; a zero dimension
/// is allowed (`k = 0` gives zeros).
#[derive(Debug, Clone, Copy, Default)]
pub struct MatMul;

/// Device buffers place each item's matrix at a multiple of this many bytes (WGSL's binding
/// offset alignment, and good for coalescing).
const ALIGN: usize = 256;

/// Products moving at least this many bytes (a, b and c) run as staged row blocks on a BLAS
/// target (see [`Stage`]).
const PIPELINE_MIN_BYTES: usize = 32 << 20;
/// Into about this many row blocks.
const PIPELINE_BLOCKS: usize = 8;
/// Of at least, and a multiple of, this many rows.
const PIPELINE_MIN_ROWS: usize = 64;

fn aligned(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Bytes of `c`, aligned, or `None` when they do not fit the address space: with `k = 0` a
/// valid input can declare any `m x n` with no data.
fn c_bytes(x: &MatMulInput) -> Option<usize> {
    x.m.checked_mul(x.n)?
        .checked_mul(4)?
        .checked_next_multiple_of(ALIGN)
        .filter(|b| *b <= isize::MAX as usize)
}

impl Kernel for MatMul {
    type Input = MatMulInput;
    type Output = Matrix;
    const ID: &'static str = "kernels/matrix/multiply";

    fn sources(&self) -> KernelSources {
        KernelSources {
            cuda: Some(include_str!("cuda/matmul.cu")),
            wgsl: Some(include_str!("wgsl/matmul.wgsl")),
        }
    }

    fn validate(&self, index: usize, x: &MatMulInput) -> Result<()> {
        let shape = |rows: usize, cols: usize, len: usize, name: &str| -> Result<()> {
            match rows.checked_mul(cols) {
                Some(want) if want == len => Ok(()),
                Some(want) => Err(Error::invalid_item(
                    Self::ID,
                    index,
                    format!("{name} is declared {rows} x {cols} ({want} values) but holds {len}"),
                )),
                None => Err(Error::invalid_item(
                    Self::ID,
                    index,
                    format!("{name} shape {rows} x {cols} overflows"),
                )),
            }
        };
        shape(x.m, x.k, x.a.len(), "a")?;
        shape(x.k, x.n, x.b.len(), "b")?;
        if x.m.checked_mul(x.n).is_none() {
            return Err(Error::invalid_item(
                Self::ID,
                index,
                format!("c shape {} x {} overflows", x.m, x.n),
            ));
        }
        Ok(())
    }

    fn device_bytes(&self, x: &MatMulInput) -> usize {
        // Saturating: an output too large for the address space (found by the batch_decode
        // fuzz target) counts as the largest item there can be, and runs alone.
        aligned(4 * x.a.len())
            .saturating_add(aligned(4 * x.b.len()))
            .saturating_add(c_bytes(x).unwrap_or(usize::MAX))
    }

    fn run_cpu(&self, inputs: &[MatMulInput], ctx: &CpuContext) -> Result<Vec<Matrix>> {
        let threads = ctx.threads();
        ctx.install(|| inputs.par_iter().map(|x| cpu_gemm(x, threads)).collect())
    }

    fn plan(&self, inputs: &Arc<[MatMulInput]>, target: &PlanTarget) -> Result<Plan> {
        // Every size below is computed from the declared shapes: refuse outputs that cannot
        // exist before any of that arithmetic runs.
        let c_total = inputs
            .iter()
            .try_fold(0usize, |sum, x| sum.checked_add(c_bytes(x)?))
            .filter(|b| *b <= isize::MAX as usize);
        if c_total.is_none() {
            return Err(Error::Unsupported {
                backend: target.backend(),
                what: "a product larger than the address space".to_owned(),
            });
        }
        let mut plan = Plan::new(Self::ID);
        let a_cat = Concat::aligned(inputs.clone(), |x: &MatMulInput| &x.a, ALIGN);
        let b_cat = Concat::aligned(inputs.clone(), |x: &MatMulInput| &x.b, ALIGN);
        let a_off: Vec<usize> = (0..inputs.len()).map(|i| a_cat.start(i)).collect();
        let b_off: Vec<usize> = (0..inputs.len()).map(|i| b_cat.start(i)).collect();
        let mut c_off = Vec::with_capacity(inputs.len());
        let mut c_len = 0;
        for x in inputs.iter() {
            c_off.push(c_len);
            c_len += aligned(4 * x.m * x.n);
        }
        let (a_len, b_len) = (a_cat.len(), b_cat.len());
        // `b` first: a row block of `c` needs all of `b` but only its rows of `a`, so with the
        // inputs arriving in this order a large product can start before `a` has all arrived.
        let b = plan.input("b", b_len, b_cat.into_packer());
        let a = plan.input("a", a_len, a_cat.into_packer());
        let c = plan.output("c", c_len);
        let (blas, max_grid) = match target {
            PlanTarget::Cuda {
                blas, max_grid_yz, ..
            } => (*blas, *max_grid_yz),
            PlanTarget::Wgsl {
                max_workgroups_per_dim,
                max_storage_buffer_bytes,
            } => {
                let biggest = a_len.max(b_len).max(c_len) as u64;
                if biggest > *max_storage_buffer_bytes {
                    return Err(Error::Unsupported {
                        backend: target.backend(),
                        what: format!("{biggest} bytes exceed the adapter's storage binding limit"),
                    });
                }
                (false, *max_workgroups_per_dim)
            }
        };
        for (i, x) in inputs.iter().enumerate() {
            if x.m == 0 || x.n == 0 {
                continue;
            }
            let (m, k, n) = (dim(x.m, target)?, dim(x.k, target)?, dim(x.n, target)?);
            let (av, bv, cv) = (
                Arg::Buffer {
                    id: a,
                    offset: a_off[i],
                },
                Arg::Buffer {
                    id: b,
                    offset: b_off[i],
                },
                Arg::Buffer {
                    id: c,
                    offset: c_off[i],
                },
            );
            if blas && k > 0 {
                // A large product runs as row blocks, each staged: it needs its rows of `a` (and
                // all of `b`, which arrives first) and yields its rows of `c`, so a pipelining
                // backend overlaps the upload of `a` and the download of `c` with the multiply.
                let bytes = 4 * (x.m * x.k + x.k * x.n + x.m * x.n);
                let rows = if bytes >= PIPELINE_MIN_BYTES && x.m >= 2 * PIPELINE_MIN_ROWS {
                    x.m.div_ceil(PIPELINE_BLOCKS)
                        .div_ceil(PIPELINE_MIN_ROWS)
                        .saturating_mul(PIPELINE_MIN_ROWS)
                } else {
                    x.m
                };
                let mut r0 = 0;
                while r0 < x.m {
                    let r1 = (r0 + rows).min(x.m);
                    plan.gemm(Gemm {
                        m: dim(r1 - r0, target)?,
                        k,
                        n,
                        a: Arg::Buffer {
                            id: a,
                            offset: a_off[i] + 4 * r0 * x.k,
                        },
                        b: bv,
                        c: Arg::Buffer {
                            id: c,
                            offset: c_off[i] + 4 * r0 * x.n,
                        },
                    });
                    if rows < x.m {
                        plan.stage(Stage {
                            needs: Some((a, a_off[i] + 4 * r1 * x.k)),
                            yields: Some((c, c_off[i] + 4 * r0 * x.n..c_off[i] + 4 * r1 * x.n)),
                        });
                    }
                    r0 = r1;
                }
                continue;
            }
            let (gx, gy) = (n.div_ceil(16), m.div_ceil(16));
            if gx > max_grid || gy > max_grid {
                return Err(Error::Unsupported {
                    backend: target.backend(),
                    what: format!(
                        "a {m} x {n} result needs more than {max_grid} tiles per dimension"
                    ),
                });
            }
            plan.launch(Launch {
                entry: "matmul_f32",
                grid: [gx, gy, 1],
                block: [16, 16, 1],
                shared_mem_bytes: 0,
                args: smallvec::smallvec![av, bv, cv, Arg::U32(m), Arg::U32(k), Arg::U32(n)],
            });
        }
        Ok(plan)
    }

    fn unpack_donated(
        &self,
        inputs: &mut [MatMulInput],
        outputs: &PlanOutputs<'_>,
    ) -> Result<Vec<Matrix>> {
        let c = outputs.f32s(BufferId(2))?;
        let mut at = 0;
        let mut jobs = Vec::with_capacity(inputs.len());
        for x in inputs.iter() {
            let len = x.m * x.n;
            let start = at / 4;
            at += aligned(4 * len);
            if c.len() < start + len {
                return Err(Error::invalid_batch(
                    Self::ID,
                    format!(
                        "the device returned {} floats, {} needed",
                        c.len(),
                        start + len
                    ),
                ));
            }
            jobs.push((start, len));
        }
        let alloc = outputs.allocator();
        // Each product goes into the larger of its operands' allocations when one is big enough.
        Ok(inputs
            .iter_mut()
            .zip(jobs)
            .map(|(x, (start, len))| {
                let donor = if x.a.len() >= x.b.len() {
                    std::mem::take(&mut x.a)
                } else {
                    std::mem::take(&mut x.b)
                };
                Matrix {
                    rows: x.m,
                    cols: x.n,
                    data: super::refill(donor, &c[start..start + len], alloc),
                }
            })
            .collect())
    }

    fn unpack(&self, inputs: &[MatMulInput], outputs: &PlanOutputs<'_>) -> Result<Vec<Matrix>> {
        let c = outputs.f32s(BufferId(2))?;
        let mut at = 0;
        Ok(inputs
            .iter()
            .map(|x| {
                let len = x.m * x.n;
                let start = at / 4;
                at += aligned(4 * len);
                Matrix {
                    rows: x.m,
                    cols: x.n,
                    data: c
                        .get(start..start + len)
                        .map(|x| super::par_to_vec(x, outputs.allocator()))
                        .unwrap_or_default(),
                }
            })
            .collect())
    }
}

fn dim(v: usize, target: &PlanTarget) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Unsupported {
        backend: target.backend(),
        what: format!("matrix dimension {v} exceeds u32"),
    })
}

/// One multiply on the CPU: row blocks of `c` in parallel, each a blocked SGEMM
/// (`matrixmultiply` through `ndarray`).
fn cpu_gemm(x: &MatMulInput, threads: usize) -> Result<Matrix> {
    let (m, k, n) = (x.m, x.k, x.n);
    // The output's size is declared, not carried: `k = 0` makes any `m x n` valid with no data
    // at all. Allocated fallibly, so that a product larger than memory is `OutOfMemory` instead
    // of aborting the process (found by the batch_decode fuzz target).
    let len = m.saturating_mul(n);
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(len)
        .map_err(|e| Error::OutOfMemory {
            device: "cpu".to_owned(),
            requested: len.saturating_mul(4),
            reason: format!("the {m} x {n} product: {e}"),
        })?;
    data.resize(len, 0.0);
    if m == 0 || n == 0 || k == 0 {
        return Ok(Matrix {
            rows: m,
            cols: n,
            data,
        });
    }
    let shape_err = |e: ndarray::ShapeError| Error::invalid_batch(MatMul::ID, e.to_string());
    let b = ArrayView2::from_shape((k, n), &x.b).map_err(shape_err)?;
    // Enough blocks to balance the pool, each at least 32 rows so the SGEMM kernel stays efficient.
    let rows_per_block = m.div_ceil(threads.max(1) * 4).max(32);
    data.par_chunks_mut(rows_per_block * n)
        .enumerate()
        .try_for_each(|(bi, block)| {
            let r0 = bi * rows_per_block;
            let rows = block.len() / n;
            let a = ArrayView2::from_shape((rows, k), &x.a[r0 * k..(r0 + rows) * k])
                .map_err(shape_err)?;
            let mut c = ArrayViewMut2::from_shape((rows, n), block).map_err(shape_err)?;
            ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut c);
            Ok::<(), Error>(())
        })?;
    Ok(Matrix {
        rows: m,
        cols: n,
        data,
    })
}
