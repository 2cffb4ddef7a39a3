//! `kernels/blas/saxpy`: `alpha * x + y`, one alpha per item.

use std::sync::Arc;

use rayon::prelude::*;

use super::{check_wgsl_binding, offsets_input, prefix_offsets, split_concat, BLOCK, CPU_CHUNK};
use crate::cpu::CpuContext;
use crate::error::{Error, Result};
use crate::kernel::{Kernel, KernelSources};
use crate::plan::{pack_range, Arg, BufferId, Concat, Launch, Plan, PlanOutputs, PlanTarget};

/// One SAXPY: `alpha * x + y` with `x` and `y` of equal length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaxpyInput {
    /// The scalar.
    pub alpha: f32,
    /// Multiplied by `alpha`.
    pub x: Vec<f32>,
    /// Added.
    pub y: Vec<f32>,
}

/// `alpha * x + y` per item. Device forms fuse the multiply-add; the CPU form rounds twice (both
/// within the stated tolerance).
#[derive(Debug, Clone, Copy, Default)]
pub struct Saxpy;

impl Kernel for Saxpy {
    type Input = SaxpyInput;
    type Output = Vec<f32>;
    const ID: &'static str = "kernels/blas/saxpy";

    fn sources(&self) -> KernelSources {
        KernelSources {
            cuda: Some(include_str!("cuda/saxpy.cu")),
            wgsl: Some(include_str!("wgsl/saxpy.wgsl")),
        }
    }

    fn validate(&self, index: usize, s: &SaxpyInput) -> Result<()> {
        if s.x.len() != s.y.len() {
            return Err(Error::invalid_item(
                Self::ID,
                index,
                format!(
                    "vector lengths differ: x has {}, y has {}",
                    s.x.len(),
                    s.y.len()
                ),
            ));
        }
        Ok(())
    }

    fn device_bytes(&self, s: &SaxpyInput) -> usize {
        3 * 4 * s.x.len() + 12
    }

    fn run_cpu(&self, inputs: &[SaxpyInput], ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
        Ok(ctx.install(|| {
            inputs
                .par_iter()
                .map(|s| {
                    let a = s.alpha;
                    let mut out = vec![0f32; s.x.len()];
                    out.par_chunks_mut(CPU_CHUNK)
                        .zip(s.x.par_chunks(CPU_CHUNK).zip(s.y.par_chunks(CPU_CHUNK)))
                        .for_each(|(o, (x, y))| {
                            for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                                *o = a * x + y;
                            }
                        });
                    out
                })
                .collect()
        }))
    }

    fn plan(&self, inputs: &Arc<[SaxpyInput]>, target: &PlanTarget) -> Result<Plan> {
        let segments = inputs.len();
        let n: usize = inputs.iter().map(|s| s.x.len()).sum();
        let longest = inputs.iter().map(|s| s.x.len()).max().unwrap_or(0) as u64;
        let offsets = prefix_offsets(inputs.iter().map(|s| s.x.len()));
        let mut plan = Plan::new(Self::ID);
        let alphas: Vec<f32> = inputs.iter().map(|s| s.alpha).collect();
        let alpha = plan.input("alpha", segments * 4, move |dst, at| {
            pack_range(dst, at, &alphas)
        });
        let x = plan.input(
            "x",
            n * 4,
            Concat::new(inputs.clone(), |s: &SaxpyInput| &s.x).into_packer(),
        );
        let y = plan.input(
            "y",
            n * 4,
            Concat::new(inputs.clone(), |s: &SaxpyInput| &s.y).into_packer(),
        );
        let out = plan.output("out", n * 4);
        check_wgsl_binding(target, n)?;
        let offs = offsets_input(&mut plan, offsets, target);
        let blocks = longest.div_ceil(u64::from(BLOCK));
        let (gx, gy) = match target {
            PlanTarget::Cuda { max_grid_yz, .. } => (
                blocks.clamp(1, 4096) as u32,
                (segments as u32).clamp(1, *max_grid_yz),
            ),
            PlanTarget::Wgsl {
                max_workgroups_per_dim,
                ..
            } => (
                blocks.clamp(1, u64::from(*max_workgroups_per_dim)) as u32,
                (segments as u32).clamp(1, *max_workgroups_per_dim),
            ),
        };
        if n > 0 {
            plan.launch(Launch {
                entry: "saxpy",
                grid: [gx, gy, 1],
                block: [BLOCK, 1, 1],
                shared_mem_bytes: 0,
                args: smallvec::smallvec![
                    Arg::buf(alpha),
                    Arg::buf(x),
                    Arg::buf(y),
                    Arg::buf(out),
                    Arg::buf(offs),
                    Arg::U32(segments as u32),
                ],
            });
        }
        Ok(plan)
    }

    fn unpack_donated(
        &self,
        inputs: &mut [SaxpyInput],
        outputs: &PlanOutputs<'_>,
    ) -> Result<Vec<Vec<f32>>> {
        let out = outputs.f32s(BufferId(3))?;
        let total: usize = inputs.iter().map(|s| s.x.len()).sum();
        if out.len() < total {
            return Err(Error::invalid_batch(
                Self::ID,
                format!("the device returned {} of {total} floats", out.len()),
            ));
        }
        // Each result goes into its item's `y`, which has its length.
        let mut at = 0;
        let jobs: Vec<(Vec<f32>, usize, usize)> = inputs
            .iter_mut()
            .map(|s| {
                let start = at;
                at += s.x.len();
                (std::mem::take(&mut s.y), start, s.x.len())
            })
            .collect();
        let alloc = outputs.allocator();
        let fill = |(y, s, n): (Vec<f32>, usize, usize)| super::refill(y, &out[s..s + n], alloc);
        // Small batches stay on this thread: waking the pool costs more than their copies.
        Ok(if total >= super::PAR_COPY_MIN && jobs.len() > 1 {
            jobs.into_par_iter().map(fill).collect()
        } else {
            jobs.into_iter().map(fill).collect()
        })
    }

    fn unpack(&self, inputs: &[SaxpyInput], outputs: &PlanOutputs<'_>) -> Result<Vec<Vec<f32>>> {
        let out = outputs.f32s(BufferId(3))?;
        Ok(split_concat(
            &out,
            inputs.iter().map(|s| s.x.len()),
            outputs.allocator(),
        ))
    }
}
