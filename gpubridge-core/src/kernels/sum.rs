//! `kernels/sum`: the original's `float[] -> float` benchmark kernel.

use std::sync::Arc;

use rayon::prelude::*;

use super::{check_wgsl_binding, offsets_input, prefix_offsets, sum_f64, BLOCK, CPU_CHUNK};
use crate::cpu::CpuContext;
use crate::error::Result;
use crate::kernel::{Kernel, KernelSources};
use crate::plan::{Arg, BufferId, Concat, Launch, Plan, PlanOutputs, PlanTarget};

/// Vectors no longer than this on average are summed a warp each on CUDA.
const WARP_PER_VECTOR_MAX_MEAN: usize = 1024;

/// The sum of each vector. An empty vector sums to `0.0`. The CPU form accumulates in float64
/// and rounds once; device forms reduce in float32 trees (see the module's tolerances).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;

impl Kernel for Sum {
    type Input = Vec<f32>;
    type Output = f32;
    const ID: &'static str = "kernels/sum";

    fn sources(&self) -> KernelSources {
        KernelSources {
            cuda: Some(include_str!("cuda/sum.cu")),
            wgsl: Some(include_str!("wgsl/sum.wgsl")),
        }
    }

    fn validate(&self, _index: usize, _input: &Vec<f32>) -> Result<()> {
        Ok(())
    }

    fn device_bytes(&self, v: &Vec<f32>) -> usize {
        4 * v.len() + 8 + 4
    }

    fn run_cpu(&self, inputs: &[Vec<f32>], ctx: &CpuContext) -> Result<Vec<f32>> {
        Ok(ctx.install(|| {
            inputs
                .par_iter()
                .map(|v| {
                    if v.len() <= CPU_CHUNK {
                        sum_f64(v) as f32
                    } else {
                        v.par_chunks(CPU_CHUNK).map(sum_f64).sum::<f64>() as f32
                    }
                })
                .collect()
        }))
    }

    fn plan(&self, inputs: &Arc<[Vec<f32>]>, target: &PlanTarget) -> Result<Plan> {
        let segments = inputs.len();
        let n: usize = inputs.iter().map(Vec::len).sum();
        let offsets = prefix_offsets(inputs.iter().map(Vec::len));
        let mut plan = Plan::new(Self::ID);
        let data = plan.input(
            "data",
            n * 4,
            Concat::new(inputs.clone(), |v: &Vec<f32>| v).into_packer(),
        );
        check_wgsl_binding(target, n)?;
        let offs = offsets_input(&mut plan, offsets, target);
        // Short vectors on CUDA: a warp per vector (8 per block) instead of a block per vector.
        let warp_per_vector = matches!(target, PlanTarget::Cuda { .. })
            && n <= WARP_PER_VECTOR_MAX_MEAN * segments.max(1);
        let grid = match target {
            PlanTarget::Cuda { .. } if warp_per_vector => {
                segments.div_ceil(BLOCK as usize / 32).clamp(1, 1 << 20) as u32
            }
            PlanTarget::Cuda { .. } => segments.clamp(1, 1 << 20) as u32,
            PlanTarget::Wgsl {
                max_workgroups_per_dim,
                ..
            } => (segments as u32).clamp(1, *max_workgroups_per_dim),
        };
        let out = plan.output("out", segments * 4);
        if segments > 0 {
            plan.launch(Launch {
                entry: if warp_per_vector {
                    "segmented_sum_warp"
                } else {
                    "segmented_sum"
                },
                grid: [grid, 1, 1],
                block: [BLOCK, 1, 1],
                shared_mem_bytes: 0,
                args: smallvec::smallvec![
                    Arg::buf(data),
                    Arg::buf(offs),
                    Arg::buf(out),
                    Arg::U32(segments as u32),
                ],
            });
        }
        Ok(plan)
    }

    fn unpack(&self, inputs: &[Vec<f32>], outputs: &PlanOutputs<'_>) -> Result<Vec<f32>> {
        let out = outputs.f32s(BufferId(2))?;
        Ok(out.iter().take(inputs.len()).copied().collect())
    }
}
