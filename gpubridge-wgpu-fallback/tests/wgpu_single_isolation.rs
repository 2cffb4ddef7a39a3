//! One caller's poison single request on the wgpu backend (its packer or its unpacking panics)
//! fails that caller alone: the batcher runs the batch again in halves and every other caller of
//! the batch gets its sum from the adapter (llvmpipe in CI). The wgpu executor holds the plan,
//! whose packers share the items, until after it has answered, so this also covers the bridge's
//! wait for a backend to let go of a failed batch's items. Skips without an adapter unless
//! `GPUBRIDGE_REQUIRE_WGPU=1`.

#![cfg(feature = "wgpu")]

use std::sync::Arc;

use gpubridge_core::conformance::wgpu_required;
use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::plan::{BufferRole, Plan, PlanOutputs, PlanTarget};
use gpubridge_core::{
    BackendKind, BridgeConfig, CircuitState, CpuContext, DeviceId, Error, ExecutionHints,
    GpuBridge, Kernel, KernelSources, Result,
};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;
use rand::{Rng, SeedableRng};

/// Vector add that panics in its packers for a batch holding a pair whose first value is -7,
/// and in its unpacking for one holding a pair whose first value is -9.
struct PickyAdd;

impl Kernel for PickyAdd {
    type Input = VectorPair;
    type Output = Vec<f32>;
    const ID: &'static str = "tests/picky-add";

    fn sources(&self) -> KernelSources {
        VectorAdd.sources()
    }

    fn validate(&self, index: usize, input: &VectorPair) -> Result<()> {
        VectorAdd.validate(index, input)
    }

    fn device_bytes(&self, input: &VectorPair) -> usize {
        VectorAdd.device_bytes(input)
    }

    fn run_cpu(&self, inputs: &[VectorPair], ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
        VectorAdd.run_cpu(inputs, ctx)
    }

    fn plan(&self, inputs: &Arc<[VectorPair]>, target: &PlanTarget) -> Result<Plan> {
        let poison = inputs.iter().any(|p| p.a.first() == Some(&-7.0));
        let mut plan = VectorAdd.plan(inputs, target)?;
        plan.kernel = Self::ID;
        for b in plan
            .buffers
            .iter_mut()
            .filter(|b| matches!(b.role, BufferRole::Input(_)))
        {
            if let BufferRole::Input(pack) = std::mem::replace(&mut b.role, BufferRole::Scratch) {
                b.role = BufferRole::Input(Box::new(move |dst: &mut [u8], at: usize| {
                    assert!(!poison, "poisoned input");
                    pack(dst, at)
                }));
            }
        }
        Ok(plan)
    }

    fn unpack(&self, inputs: &[VectorPair], outputs: &PlanOutputs<'_>) -> Result<Vec<Vec<f32>>> {
        assert!(
            inputs.iter().all(|p| p.a.first() != Some(&-9.0)),
            "poisoned output"
        );
        VectorAdd.unpack(inputs, outputs)
    }
}

#[test]
fn a_poison_single_fails_alone_and_its_batch_mates_get_their_sums() {
    let mut config = BridgeConfig::default();
    config.batching.max_batch = 16;
    config.batching.max_queue_delay_us = 10_000_000;
    let backend = match WgpuBackend::new(&config) {
        Ok(b) => b,
        Err(why) => {
            assert!(!wgpu_required(), "wgpu is required here: {why}");
            eprintln!("skipped: wgpu not available: {why}");
            return;
        }
    };
    let mut b = GpuBridge::builder(config);
    b.register(PickyAdd).unwrap();
    b.add_backend(backend);
    let b = b.build().unwrap();
    let on_wgpu = ExecutionHints::default().on_backend(BackendKind::Wgpu);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random());
    for round in 0..3 {
        let mut pairs: Vec<VectorPair> = (0..16)
            .map(|_| VectorPair {
                a: (0..500).map(|_| rng.random_range(-1e3..1e3)).collect(),
                b: (0..500).map(|_| rng.random_range(-1e3..1e3)).collect(),
            })
            .collect();
        let packer = rng.random_range(0..16);
        let unpacker = (packer + rng.random_range(1..16)) % 16;
        pairs[packer].a[0] = -7.0;
        pairs[unpacker].a[0] = -9.0;
        let answers = futures::executor::block_on(futures::future::join_all(
            pairs
                .iter()
                .map(|p| b.single::<PickyAdd>(p.clone(), on_wgpu.clone())),
        ));
        for (i, (pair, answer)) in pairs.iter().zip(answers).enumerate() {
            let at = format!("round {round}, caller {i}");
            match answer {
                Ok(r) => {
                    assert!(i != packer && i != unpacker, "{at}: poison answered");
                    let want: Vec<f32> = pair.a.iter().zip(&pair.b).map(|(x, y)| x + y).collect();
                    assert_eq!(r.output, want, "{at}");
                    assert_eq!(r.batch_size, 16, "{at}");
                    assert_eq!(r.backend, Some(BackendKind::Wgpu), "{at}");
                }
                Err(Error::KernelPanicked {
                    backend: BackendKind::Wgpu,
                    message,
                    ..
                }) => {
                    let want = if i == packer {
                        "poisoned input"
                    } else {
                        assert_eq!(i, unpacker, "{at}: {message}");
                        "poisoned output"
                    };
                    assert_eq!(message, want, "{at}");
                }
                Err(e) => panic!("{at}: {e:?}"),
            }
        }
    }
    assert_eq!(
        b.circuit_state(DeviceId {
            backend: BackendKind::Wgpu,
            index: 0
        }),
        Some(CircuitState::Closed)
    );
    gpubridge_core::testing::assert_quiescent(&b);
}
