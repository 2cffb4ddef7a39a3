//! `kernels/vector/add`: the original's `VectorPair -> float[]` sample kernel.

use std::sync::Arc;

use rayon::prelude::*;

use super::{check_wgsl_binding, grid_1d, split_concat, BLOCK, CPU_CHUNK};
use crate::cpu::CpuContext;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, KernelSources};
use crate::plan::{Arg, Concat, Launch, Plan, PlanOutputs, PlanTarget};

/// Two vectors of equal length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VectorPair {
    /// Left operand.
    pub a: Vec<f32>,
    /// Right operand.
    pub b: Vec<f32>,
}

/// Element-wise `a + b` of each pair. Unequal lengths are [`Error::InvalidInput`].
#[derive(Debug, Clone, Copy, Default)]
pub struct VectorAdd;

impl Kernel for VectorAdd {
    type Input = VectorPair;
    type Output = Vec<f32>;
    const ID: &'static str = "kernels/vector/add";

    fn sources(&self) -> KernelSources {
        KernelSources {
            cuda: Some(include_str!("cuda/vector_add.cu")),
            wgsl: Some(include_str!("wgsl/vector_add.wgsl")),
        }
    }

    fn validate(&self, index: usize, p: &VectorPair) -> Result<()> {
        if p.a.len() != p.b.len() {
            return Err(Error::invalid_item(
                Self::ID,
                index,
                format!(
                    "vector lengths differ: a has {}, b has {}",
                    p.a.len(),
                    p.b.len()
                ),
            ));
        }
        Ok(())
    }

    fn device_bytes(&self, p: &VectorPair) -> usize {
        3 * 4 * p.a.len()
    }

    fn run_cpu(&self, inputs: &[VectorPair], ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
        Ok(ctx.install(|| {
            inputs
                .par_iter()
                .map(|p| {
                    let mut out = vec![0f32; p.a.len()];
                    out.par_chunks_mut(CPU_CHUNK)
                        .zip(p.a.par_chunks(CPU_CHUNK).zip(p.b.par_chunks(CPU_CHUNK)))
                        .for_each(|(o, (a, b))| {
                            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                                *o = a + b;
                            }
                        });
                    out
                })
                .collect()
        }))
    }

    fn plan(&self, inputs: &Arc<[VectorPair]>, target: &PlanTarget) -> Result<Plan> {
        let n: usize = inputs.iter().map(|p| p.a.len()).sum();
        let bytes = n * 4;
        let mut plan = Plan::new(Self::ID);
        let a = plan.input(
            "a",
            bytes,
            Concat::new(inputs.clone(), |p: &VectorPair| &p.a).into_packer(),
        );
        let b = plan.input(
            "b",
            bytes,
            Concat::new(inputs.clone(), |p: &VectorPair| &p.b).into_packer(),
        );
        let out = plan.output("out", bytes);
        if n == 0 {
            return Ok(plan);
        }
        check_wgsl_binding(target, n)?;
        let (grid, n_arg) = match target {
            PlanTarget::Cuda { .. } => (grid_1d(n as u64, 1 << 20), Arg::U64(n as u64)),
            PlanTarget::Wgsl {
                max_workgroups_per_dim,
                ..
            } => (
                grid_1d(n as u64, *max_workgroups_per_dim),
                Arg::U32(n as u32),
            ),
        };
        plan.launch(Launch {
            entry: "vector_add",
            grid: [grid, 1, 1],
            block: [BLOCK, 1, 1],
            shared_mem_bytes: 0,
            args: smallvec::smallvec![Arg::buf(a), Arg::buf(b), Arg::buf(out), n_arg],
        });
        Ok(plan)
    }

    fn unpack_donated(
        &self,
        inputs: &mut [VectorPair],
        outputs: &PlanOutputs<'_>,
    ) -> Result<Vec<Vec<f32>>> {
        let out = outputs.f32s(crate::plan::BufferId(2))?;
        let total: usize = inputs.iter().map(|p| p.a.len()).sum();
        if out.len() < total {
            return Err(Error::invalid_batch(
                Self::ID,
                format!("the device returned {} of {total} floats", out.len()),
            ));
        }
        // Each result goes into its pair's `a`, which has its length.
        let mut at = 0;
        let jobs: Vec<(Vec<f32>, usize)> = inputs
            .iter_mut()
            .map(|p| {
                let a = std::mem::take(&mut p.a);
                let start = at;
                at += a.len();
                (a, start)
            })
            .collect();
        let alloc = outputs.allocator();
        let fill = |(a, s): (Vec<f32>, usize)| {
            let n = a.len();
            super::refill(a, &out[s..s + n], alloc)
        };
        // Small batches stay on this thread: waking the pool costs more than their copies.
        Ok(if total >= super::PAR_COPY_MIN && jobs.len() > 1 {
            jobs.into_par_iter().map(fill).collect()
        } else {
            jobs.into_iter().map(fill).collect()
        })
    }

    fn run_cpu_donated(
        &self,
        inputs: &mut [VectorPair],
        ctx: &CpuContext,
    ) -> Result<Vec<Vec<f32>>> {
        // In place: `a += b`, returned as the result.
        Ok(ctx.install(|| {
            inputs
                .par_iter_mut()
                .map(|p| {
                    let mut a = std::mem::take(&mut p.a);
                    a.par_chunks_mut(CPU_CHUNK)
                        .zip(p.b.par_chunks(CPU_CHUNK))
                        .for_each(|(a, b)| {
                            for (a, b) in a.iter_mut().zip(b) {
                                *a += b;
                            }
                        });
                    a
                })
                .collect()
        }))
    }

    fn unpack(&self, inputs: &[VectorPair], outputs: &PlanOutputs<'_>) -> Result<Vec<Vec<f32>>> {
        let out = outputs.f32s(crate::plan::BufferId(2))?;
        Ok(split_concat(
            &out,
            inputs.iter().map(|p| p.a.len()),
            outputs.allocator(),
        ))
    }
}
