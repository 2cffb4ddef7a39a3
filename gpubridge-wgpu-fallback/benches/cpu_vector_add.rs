//! TARGETS.md P10: the CPU fallback's vector add against the machine's memcpy bandwidth, both on
//! all cores and measured in the same run.
//!
//! Bandwidth counts bytes read plus bytes written: a memcpy of `n` floats moves `8n` bytes, a
//! vector add of `n` floats `12n`. Rows:
//! - `memcpy`: a parallel copy into a buffer whose pages are already mapped (the baseline);
//! - `bridge`: `bridge.batch::<VectorAdd>().execute(..)` on the CPU backend with the original's
//!   sample shape, `pairs` pairs of `len` floats (`n = pairs * len`), fresh output vectors per call
//!   as the API returns them;
//! - `cpu_form_prefaulted`: the kernel's inner loop into already-mapped outputs, to show how much
//!   of any gap is the allocation of fresh outputs.
//!
//! `GPUBRIDGE_BENCH_PAIRS` and `GPUBRIDGE_BENCH_LEN` set the shape (default 100 x 1M, the
//! original's vector sample).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::executor::block_on;
use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use gpubridge_wgpu_fallback::CpuBackend;
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn p10(c: &mut Criterion) {
    let (pairs, len) = (
        env_or("GPUBRIDGE_BENCH_PAIRS", 100),
        env_or("GPUBRIDGE_BENCH_LEN", 1_000_000),
    );
    let n = pairs * len;
    let config = BridgeConfig::default();
    let cpu = CpuBackend::new(&config).expect("cpu backend");
    let pool = cpu.device().context().clone();
    let bridge = GpuBridge::builder(config)
        .kernel(VectorAdd)
        .expect("kernel")
        .backend(cpu)
        .build()
        .expect("bridge");
    let grain = bridge.batch::<VectorAdd>().expect("registered");
    let input: Vec<VectorPair> = (0..pairs)
        .map(|p| VectorPair {
            a: (0..len).map(|i| (p + i) as f32).collect(),
            b: (0..len).map(|i| (len - i) as f32).collect(),
        })
        .collect();
    let mut dst: Vec<Vec<f32>> = (0..pairs).map(|_| vec![1f32; len]).collect();

    let mut g = c.benchmark_group("p10_cpu_vector_add");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((8 * n) as u64));
    g.bench_function("memcpy", |bench| {
        bench.iter(|| {
            pool.install(|| {
                dst.par_iter_mut().zip(&input).for_each(|(d, p)| {
                    d.par_chunks_mut(CHUNK)
                        .zip(p.a.par_chunks(CHUNK))
                        .for_each(|(d, s)| d.copy_from_slice(s))
                });
            })
        })
    });
    g.throughput(Throughput::Bytes((12 * n) as u64));
    g.bench_function("cpu_form_prefaulted", |bench| {
        bench.iter(|| {
            pool.install(|| {
                dst.par_iter_mut().zip(&input).for_each(|(d, p)| {
                    d.par_chunks_mut(CHUNK)
                        .zip(p.a.par_chunks(CHUNK).zip(p.b.par_chunks(CHUNK)))
                        .for_each(|(o, (x, y))| {
                            for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
                                *o = x + y;
                            }
                        })
                });
            })
        })
    });
    let hints = ExecutionHints::default().on_backend(BackendKind::Cpu);
    g.bench_function("bridge", |bench| {
        bench.iter_batched(
            || input.clone(),
            |batch| {
                let r = block_on(grain.execute(batch, hints.clone())).expect("vector add runs");
                assert_eq!(r.outputs.len(), pairs);
                r
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, p10);
criterion_main!(benches);
