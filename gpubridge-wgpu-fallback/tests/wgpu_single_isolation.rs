//! One caller's poison single request on the wgpu backend (`testing::PoisonAdd`: its packer or
//! its unpacking panics)
//! fails that caller alone: the batcher runs the batch again in halves and every other caller of
//! the batch gets its sum from the adapter (llvmpipe in CI). The wgpu executor drops the plan's
//! packers, which share the items, before it answers (`Plan::release_packers`), so the halves
//! are run at once. Skips without an adapter unless `GPUBRIDGE_REQUIRE_WGPU=1`.

#![cfg(feature = "wgpu")]

use gpubridge_core::kernels::VectorPair;
use gpubridge_core::testing::PoisonAdd;
use gpubridge_core::{
    BackendKind, BridgeConfig, CircuitState, DeviceId, ExecutionHints, GpuBridge,
};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;
use rand::{Rng, SeedableRng};

#[test]
fn a_poison_single_fails_alone_and_its_batch_mates_get_their_sums() {
    let mut config = BridgeConfig::default();
    config.batching.max_batch = 16;
    config.batching.max_queue_delay_us = 10_000_000;
    let Some(backend) = WgpuBackend::or_skip(&config) else {
        return;
    };
    let mut b = GpuBridge::builder(config);
    b.register(PoisonAdd).unwrap();
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
        pairs[packer].a[0] = PoisonAdd::IN_PACKER;
        pairs[unpacker].a[0] = PoisonAdd::IN_UNPACK;
        let answers = futures::executor::block_on(futures::future::join_all(
            pairs
                .iter()
                .map(|p| b.single::<PoisonAdd>(p.clone(), on_wgpu.clone())),
        ));
        let context = format!("round {round}");
        PoisonAdd::check_singles(&pairs, answers, BackendKind::Wgpu, 16, &context);
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
