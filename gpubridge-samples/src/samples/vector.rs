//! The vector sample: the original's 100 pairs x 1M floats through `kernels/vector/add`, and its
//! benchmark's 1000 vectors x 100 floats through `kernels/sum`.

use std::time::Instant;

use gpubridge::kernels::{Sum, VectorAdd, VectorPair};
use gpubridge::{ExecutionHints, GpuBridge};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{progress, Row, Sizes};

fn random_vectors(count: usize, len: usize, seed: u64, what: &str) -> Vec<Vec<f32>> {
    let pb = progress(count as u64, what);
    let v = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut rng =
                SmallRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let v: Vec<f32> = (0..len).map(|_| rng.random::<f32>() * 100.0).collect();
            pb.inc(1);
            v
        })
        .collect();
    pb.finish_and_clear();
    v
}

/// Each vector's float64 sum and the sum of its magnitudes (the scale of its rounding error).
pub fn sum_reference(vectors: &[Vec<f32>]) -> Vec<(f64, f64)> {
    vectors
        .iter()
        .map(|v| {
            (
                v.iter().map(|x| f64::from(*x)).sum(),
                v.iter().map(|x| f64::from(x.abs())).sum(),
            )
        })
        .collect()
}

/// Runs both cases and verifies every output element against a float64 reference.
///
/// # Errors
/// When the bridge cannot run the work (for example the chosen backend is not usable here).
pub async fn run(
    bridge: &GpuBridge,
    hints: &ExecutionHints,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Row>> {
    let seed = sizes.seed();
    let (n, len) = (sizes.pairs, sizes.len);
    let mut a = random_vectors(n, len, seed, "inputs a").into_iter();
    let b = random_vectors(n, len, seed.wrapping_add(1), "inputs b");
    let pairs: Vec<VectorPair> = b
        .into_iter()
        .map(|b| VectorPair {
            a: a.next().unwrap_or_default(),
            b,
        })
        .collect();
    // The reference needs the inputs after the bridge has consumed them, so keep a copy.
    let reference = pairs.clone();
    let add = bridge.batch::<VectorAdd>()?;
    for _ in 0..sizes.warmup {
        add.execute(reference.clone(), hints.clone()).await?;
    }
    let t = Instant::now();
    let result = add.execute(pairs, hints.clone()).await?;
    let secs = t.elapsed().as_secs_f64();
    let pb = progress(n as u64, "verifying");
    let bad = reference
        .par_iter()
        .zip(&result.outputs)
        .map(|(p, out)| {
            pb.inc(1);
            let wrong = out.len() != p.a.len()
                || p.a.iter().zip(&p.b).zip(out).any(|((x, y), o)| {
                    let want = f64::from(*x) + f64::from(*y);
                    (f64::from(*o) - want).abs() > f64::from(f32::EPSILON) * want.abs()
                });
            usize::from(wrong)
        })
        .sum::<usize>();
    pb.finish_and_clear();
    let bytes = (3 * 4 * n * len) as f64;
    let device = result.device().map(|d| d.to_string()).unwrap_or_default();
    let backend = result.backend().map(|b| b.to_string()).unwrap_or_default();
    let mut rows = vec![Row {
        sample: "vector",
        case: format!("add {n} x {len}"),
        backend,
        device,
        seconds: secs,
        throughput: bytes / secs / 1e9,
        unit: "GB/s",
        rate: n as f64 / secs,
        rate_unit: "pairs/s",
        verified: bad == 0 && result.outputs.len() == n,
        check: if bad == 0 {
            format!("all {} elements", n * len)
        } else {
            format!("{bad} vectors differ")
        },
        micro_batches: result.chunks.len(),
        seed,
    }];

    let (m, l) = (sizes.sum_vectors, sizes.sum_len);
    let vectors = random_vectors(m, l, seed.wrapping_add(2), "sum inputs");
    let want = sum_reference(&vectors);
    let sum = bridge.batch::<Sum>()?;
    for _ in 0..sizes.warmup {
        sum.execute(vectors.clone(), hints.clone()).await?;
    }
    let t = Instant::now();
    let result = sum.execute(vectors, hints.clone()).await?;
    let secs = t.elapsed().as_secs_f64();
    let bad = want
        .iter()
        .zip(&result.outputs)
        .filter(|((w, mag), got)| (f64::from(**got) - w).abs() > 1e-5 * mag)
        .count();
    rows.push(Row {
        sample: "vector",
        case: format!("sum {m} x {l}"),
        backend: result.backend().map(|b| b.to_string()).unwrap_or_default(),
        device: result.device().map(|d| d.to_string()).unwrap_or_default(),
        seconds: secs,
        throughput: (4 * m * l) as f64 / secs / 1e9,
        unit: "GB/s",
        rate: m as f64 / secs,
        rate_unit: "vectors/s",
        verified: bad == 0 && result.outputs.len() == m,
        check: if bad == 0 {
            format!("all {m} sums")
        } else {
            format!("{bad} sums differ")
        },
        micro_batches: result.chunks.len(),
        seed,
    });
    Ok(rows)
}
