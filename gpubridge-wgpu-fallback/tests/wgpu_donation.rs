//! A batch through the wgpu backend hands its items to the kernel for its outputs: the executor
//! drops the plan's packers once the inputs are uploaded (`Plan::release_packers`), so the items
//! are the request's alone when the outputs come back, and vector add writes each sum into its
//! pair's `a` (`Kernel::unpack_donated`). Sums checked against the CPU's on random inputs. Skips
//! without an adapter unless `GPUBRIDGE_REQUIRE_WGPU=1` (llvmpipe in CI).

#![cfg(feature = "wgpu")]

use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;
use rand::{Rng, SeedableRng};

#[test]
fn a_wgpu_batch_writes_its_sums_into_the_donated_inputs() {
    let config = BridgeConfig::default();
    let Some(backend) = WgpuBackend::or_skip(&config) else {
        return;
    };
    let mut b = GpuBridge::builder(config);
    b.register(VectorAdd).unwrap();
    b.add_backend(backend);
    let b = b.build().unwrap();
    let grain = b.batch::<VectorAdd>().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for round in 0..3 {
        let pairs: Vec<VectorPair> = (0..6)
            .map(|_| {
                let n = rng.random_range(1..40_000);
                VectorPair {
                    a: (0..n).map(|_| rng.random_range(-1e3..1e3)).collect(),
                    b: (0..n).map(|_| rng.random_range(-1e3..1e3)).collect(),
                }
            })
            .collect();
        let want: Vec<Vec<f32>> = pairs
            .iter()
            .map(|p| p.a.iter().zip(&p.b).map(|(x, y)| x + y).collect())
            .collect();
        let donors: Vec<usize> = pairs.iter().map(|p| p.a.as_ptr() as usize).collect();
        let r = futures::executor::block_on(grain.execute(
            pairs,
            ExecutionHints::default().on_backend(BackendKind::Wgpu),
        ))
        .unwrap();
        assert_eq!(r.backend(), Some(BackendKind::Wgpu));
        assert_eq!(r.outputs, want, "round {round}");
        let reused: Vec<usize> = r.outputs.iter().map(|o| o.as_ptr() as usize).collect();
        assert_eq!(
            reused, donors,
            "round {round}: the sums are not in the inputs' memory"
        );
    }
    gpubridge_core::testing::assert_quiescent(&b);
}
