//! The original's five benchmarks (its `GpuBridgeBenchmarks`), as criterion benches, plus the
//! sum kernel's throughput against batch size on every usable backend.
//!
//! - `seed/small_batch_cpu_fallback`: the sum of 10 vectors of 100 floats, on the CPU backend;
//! - `seed/small_batch_gpu`: the same on the first GPU backend (CUDA, else wgpu);
//! - `seed/large_batch_gpu`: the sum of 10 vectors of 1M floats on the GPU;
//! - `seed/persistent_stream`: a resident-mode stream (`persistent` hint) started, fed 100
//!   vectors of 100 floats, drained and stopped;
//! - `seed/memory_pool_allocation`: 100 rents of 1 MiB from the CUDA device pool, then 100
//!   returns, beside the same with `cuMemAllocAsync`/`cuMemFreeAsync` (the baseline);
//! - `sum_throughput/<backend>/<n>`: batches of `n` vectors of 100 floats (elements per second
//!   against `n`: the throughput curve `cargo xtask bench` draws).
//!
//! Inputs are moved into each request, as a caller's are; the copies are made outside the timing
//! (`iter_batched`). A GPU bench is left out, with the reason printed, where there is no GPU backend (CI). Run
//! with `cargo bench -p gpubridge --features cuda,wgpu --bench seed` (`-- --quick` for a short
//! run); `cargo xtask bench` runs it and folds its results into the report.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use gpubridge::kernels::Sum;
use gpubridge::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use rand::{Rng, SeedableRng};

fn vectors(n: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    bridge: GpuBridge,
    gpu: Option<BackendKind>,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bridge = gpubridge::bridge(BridgeConfig::default()).expect("bridge");
    let backends = bridge.backends();
    let gpu = [BackendKind::Cuda, BackendKind::Wgpu]
        .into_iter()
        .find(|b| backends.contains(b));
    match gpu {
        Some(b) => eprintln!("GPU benches on {b}"),
        None => eprintln!(
            "no GPU backend here, GPU benches left out: {}",
            bridge
                .reports()
                .iter()
                .filter_map(|r| Some(format!("{}: {}", r.kind, r.unavailable_reason()?)))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
    Setup { rt, bridge, gpu }
}

/// One batch of sums on `backend`, checked (a wrong answer would make every figure meaningless).
/// The inputs are moved into the request, as a caller's would be.
fn sum_batch(s: &Setup, inputs: Vec<Vec<f32>>, backend: BackendKind) {
    let n = inputs.len();
    let grain = s.bridge.batch::<Sum>().expect("sum is registered");
    let out =
        s.rt.block_on(grain.execute(inputs, ExecutionHints::default().on_backend(backend)))
            .expect("sum batch");
    assert_eq!(out.outputs.len(), n);
    black_box(out);
}

/// Times `sum_batch` on fresh copies of `inputs`, the copying left out of the timing.
fn bench_sums(
    b: &mut criterion::Bencher<'_>,
    s: &Setup,
    inputs: &[Vec<f32>],
    backend: BackendKind,
) {
    b.iter_batched(
        || inputs.to_vec(),
        |v| sum_batch(s, v, backend),
        BatchSize::LargeInput,
    );
}

fn seed(c: &mut Criterion) {
    let s = setup();
    let small = vectors(10, 100, 1);
    let large = vectors(10, 1_000_000, 2);
    let mut g = c.benchmark_group("seed");
    g.bench_function("small_batch_cpu_fallback", |b| {
        bench_sums(b, &s, &small, BackendKind::Cpu);
    });
    if let Some(gpu) = s.gpu {
        g.bench_function("small_batch_gpu", |b| bench_sums(b, &s, &small, gpu));
        g.sample_size(20);
        g.throughput(Throughput::Bytes((10 * 1_000_000 * 4) as u64));
        g.bench_function("large_batch_gpu", |b| bench_sums(b, &s, &large, gpu));
        g.sample_size(100);
    }
    let stream_items = vectors(100, 100, 3);
    let want: Vec<f32> = stream_items
        .iter()
        .map(|v| v.iter().map(|&x| f64::from(x)).sum::<f64>() as f32)
        .collect();
    g.throughput(Throughput::Elements(100));
    g.bench_function("persistent_stream", |b| {
        b.iter(|| {
            s.rt.block_on(async {
                let hints = ExecutionHints {
                    persistent: true,
                    ..ExecutionHints::default()
                };
                let (tx, mut rx) = s.bridge.stream::<Sum>(hints, 128).expect("stream");
                let feed = async {
                    for v in &stream_items {
                        tx.send(v.clone()).await.expect("send");
                    }
                    tx.close();
                };
                let drain = async {
                    let mut i = 0;
                    while let Some(r) = rx.recv().await {
                        let got = r.expect("stream item");
                        assert!((got - want[i]).abs() <= 1e-4 * (1.0 + want[i].abs()));
                        i += 1;
                    }
                    assert_eq!(i, stream_items.len());
                };
                futures::join!(feed, drain);
            });
        });
    });
    pool(&mut g);
    g.finish();

    let mut g = c.benchmark_group("sum_throughput");
    let mut backends = vec![BackendKind::Cpu];
    backends.extend(s.gpu);
    for backend in backends {
        for n in [10usize, 100, 1000, 10_000] {
            let inputs = vectors(n, 100, n as u64);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(backend.to_string(), n), &inputs, |b, i| {
                bench_sums(b, &s, i, backend);
            });
        }
    }
    g.finish();
}

/// The original's pool benchmark on the CUDA device pool, beside the driver's stream-ordered
/// allocator; left out without CUDA.
fn pool(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let base = match gpubridge_cuda::baseline::Baseline::new() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("memory_pool_allocation left out: {why}");
            return;
        }
    };
    g.throughput(Throughput::Elements(100));
    let mut pool = gpubridge_cuda::DevicePool::new("cuda:0".to_owned(), 1 << 30);
    g.bench_function("memory_pool_allocation", |b| {
        b.iter(|| {
            let rented: Vec<_> = (0..100)
                .map(|_| pool.rent(1 << 20).expect("rent"))
                .collect();
            for buf in rented {
                pool.give_back(black_box(buf));
            }
        });
    });
    g.bench_function("memory_alloc_async_pairs_baseline", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let pairs = base
                    .alloc_async_pairs(1 << 20, 100)
                    .expect("cuMemAllocAsync");
                black_box(pairs);
                total += t.elapsed();
            }
            total
        });
    });
}

criterion_group!(benches, seed);
criterion_main!(benches);
