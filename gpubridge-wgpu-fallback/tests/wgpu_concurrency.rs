//! Many requests at once on one wgpu device: every one completes with the right answer, the
//! pool ends with nothing rented, and buffers are reused rather than made anew per plan. A stress
//! test of the executor thread, the pool and the staging buffers under the bridge's concurrency.
//! Skips without an adapter unless `GPUBRIDGE_REQUIRE_WGPU=1`.

#![cfg(feature = "wgpu")]

use gpubridge_core::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge_core::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use gpubridge_wgpu_fallback::wgpu::WgpuBackend;
use rand::{Rng, SeedableRng};

#[test]
fn concurrent_requests_all_complete_correctly_and_reuse_buffers() {
    let mut config = BridgeConfig::default();
    config.batching.max_in_flight = 3;
    let Some(wgpu) = WgpuBackend::or_skip(&config) else {
        return;
    };
    let bridge = GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .kernel(Sum)
        .unwrap()
        .backend(wgpu.clone())
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let on_wgpu = ExecutionHints::default().on_backend(BackendKind::Wgpu);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..48u64 {
            let add = bridge.batch::<VectorAdd>().unwrap();
            let sum = bridge.batch::<Sum>().unwrap();
            let hints = on_wgpu.clone().max_micro_batch(1 + t as usize % 3);
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(rand::random::<u64>() ^ t);
                let n = 1 + t as usize % 5;
                let pairs: Vec<VectorPair> = (0..n)
                    .map(|_| {
                        let len = rng.random_range(0..5000);
                        VectorPair {
                            a: (0..len).map(|_| rng.random_range(-1e3f32..1e3)).collect(),
                            b: (0..len).map(|_| rng.random_range(-1e3f32..1e3)).collect(),
                        }
                    })
                    .collect();
                let r = add.execute(pairs.clone(), hints.clone()).await.unwrap();
                assert_eq!(r.outputs.len(), n);
                for (p, o) in pairs.iter().zip(&r.outputs) {
                    let want: Vec<f32> = p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect();
                    assert_eq!(o, &want);
                }
                // Small integers sum exactly in any order.
                let vs: Vec<Vec<f32>> = (0..n)
                    .map(|_| {
                        let len = rng.random_range(0..3000);
                        (0..len)
                            .map(|_| rng.random_range(-8i32..=8) as f32)
                            .collect()
                    })
                    .collect();
                let r = sum.execute(vs.clone(), hints).await.unwrap();
                for (v, got) in vs.iter().zip(&r.outputs) {
                    assert_eq!(*got, v.iter().sum::<f32>());
                }
            }));
        }
        for t in tasks {
            t.await.expect("no task panicked");
        }
    });
    let stats = wgpu.pool_stats(0).unwrap();
    eprintln!("pool after the run: {stats:?}");
    assert_eq!(stats.in_use, 0, "every buffer went back");
    assert_eq!(stats.failures, 0);
    assert!(
        stats.hits > stats.misses,
        "buffers are reused across plans: {stats:?}"
    );
    gpubridge_core::testing::assert_quiescent(&bridge);
}
