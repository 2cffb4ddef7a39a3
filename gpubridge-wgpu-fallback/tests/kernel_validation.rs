//! Kernel validation on a device backend: a kernel whose device code differs from the code it
//! was registered with is neither compiled nor launched (`KernelSourceChanged`), and a kernel
//! whose code is unchanged runs. On wgpu (llvmpipe in CI); skips without an adapter unless
//! `GPUBRIDGE_REQUIRE_WGPU=1`.

#![cfg(feature = "wgpu")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gpubridge_core::kernels::Sum;
use gpubridge_core::plan::{PlanOutputs, PlanTarget};
use gpubridge_core::{
    BackendKind, BridgeConfig, CpuContext, Error, ExecutionHints, GpuBridge, Kernel, KernelSources,
    Result,
};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;

/// Sum's WGSL, registered; after registration the kernel hands out a variant with one more
/// statement, as code swapped in behind the catalog's back would be.
const REGISTERED: &str = include_str!("../../gpubridge-core/src/kernels/wgsl/sum.wgsl");
const SWAPPED: &str = concat!(
    include_str!("../../gpubridge-core/src/kernels/wgsl/sum.wgsl"),
    "\n// swapped in after registration\n"
);

/// `Sum` under another id, whose sources change after the first call (registration).
struct Shifty {
    calls: Arc<AtomicUsize>,
}

impl Kernel for Shifty {
    type Input = Vec<f32>;
    type Output = f32;
    const ID: &'static str = "test/shifty-sum";

    fn sources(&self) -> KernelSources {
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        KernelSources {
            cuda: None,
            wgsl: Some(if first { REGISTERED } else { SWAPPED }),
        }
    }
    fn validate(&self, index: usize, input: &Vec<f32>) -> Result<()> {
        Sum.validate(index, input)
    }
    fn device_bytes(&self, input: &Vec<f32>) -> usize {
        Sum.device_bytes(input)
    }
    fn run_cpu(&self, inputs: &[Vec<f32>], ctx: &CpuContext) -> Result<Vec<f32>> {
        Sum.run_cpu(inputs, ctx)
    }
    fn plan(
        &self,
        inputs: &Arc<[Vec<f32>]>,
        target: &PlanTarget,
    ) -> Result<gpubridge_core::plan::Plan> {
        let mut plan = Sum.plan(inputs, target)?;
        plan.kernel = Self::ID;
        Ok(plan)
    }
    fn unpack(&self, inputs: &[Vec<f32>], outputs: &PlanOutputs<'_>) -> Result<Vec<f32>> {
        Sum.unpack(inputs, outputs)
    }
}

#[test]
fn swapped_device_code_is_refused_and_registered_code_runs() {
    let config = BridgeConfig::default();
    let Some(backend) = WgpuBackend::or_skip(&config) else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let mut b = GpuBridge::builder(config);
    b.register(Sum).unwrap();
    b.register(Shifty {
        calls: calls.clone(),
    })
    .unwrap();
    b.add_backend(backend);
    let bridge = b.build().unwrap();
    let on_wgpu = ExecutionHints::default().on_backend(BackendKind::Wgpu);
    let inputs = vec![vec![1.0f32, 2.0, 3.0]; 4];

    let r = futures::executor::block_on(
        bridge
            .batch::<Shifty>()
            .unwrap()
            .execute(inputs.clone(), on_wgpu.clone()),
    );
    assert!(
        matches!(&r, Err(Error::KernelSourceChanged { id, registered, found })
            if id == Shifty::ID && registered != found),
        "{r:?}"
    );
    let ok = futures::executor::block_on(bridge.batch::<Sum>().unwrap().execute(inputs, on_wgpu))
        .unwrap();
    assert_eq!(ok.outputs, vec![6.0; 4]);
    gpubridge_core::testing::assert_quiescent(&bridge);
}
