//! The matrix sample: square f32 matrix multiplies through `kernels/matrix/multiply`.

use std::time::Instant;

use gpubridge::kernels::{MatMul, MatMulInput};
use gpubridge::{ExecutionHints, GpuBridge};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Row, Sizes};

/// Output entries checked against a float64 dot product per multiply (all of them when fewer).
const CHECKED: usize = 4096;

/// Whether `e` says that a backend the caller pinned, and which is in use, cannot run a product
/// this large (a WGSL adapter's storage binding limit, say): that size is skipped with a note,
/// where an unavailable backend stays an error.
fn beyond_backend(bridge: &GpuBridge, hints: &ExecutionHints, e: &gpubridge::Error) -> bool {
    matches!(
        e,
        gpubridge::Error::Unsupported { .. } | gpubridge::Error::NoBackendAvailable { .. }
    ) && hints
        .backend
        .is_some_and(|b| bridge.backends().contains(&b))
}

/// Runs one multiply per size, checking sampled entries against the float64 reference with the
/// classical bound `(k + 2) eps sum |a b|`. A size that a pinned backend cannot run (see
/// [`beyond_backend`]) is skipped with a note on stderr.
///
/// # Errors
/// When the bridge cannot run the work.
pub async fn run(
    bridge: &GpuBridge,
    hints: &ExecutionHints,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Row>> {
    let seed = sizes.seed();
    let grain = bridge.batch::<MatMul>()?;
    let mut rows = Vec::new();
    for &s in &sizes.matrix_sizes {
        let mut rng = SmallRng::seed_from_u64(seed ^ s as u64);
        let input = MatMulInput {
            m: s,
            k: s,
            n: s,
            a: (0..s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            b: (0..s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        };
        let (a, b) = (input.a.clone(), input.b.clone());
        let mut run = Vec::with_capacity(sizes.warmup + 1);
        for _ in 0..sizes.warmup {
            run.push(grain.execute(vec![input.clone()], hints.clone()).await);
        }
        let t = Instant::now();
        run.push(grain.execute(vec![input], hints.clone()).await);
        let secs = t.elapsed().as_secs_f64();
        let result = match run.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(mut r) => match r.pop() {
                Some(last) => last,
                None => continue,
            },
            Err(e) if beyond_backend(bridge, hints, &e) => {
                eprintln!("matrix: sgemm {s}^3 not run: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let c = result
            .outputs
            .first()
            .map(|m| m.data.as_slice())
            .unwrap_or_default();
        let total = s * s;
        let mut bad = 0;
        let checks = CHECKED.min(total);
        for t in 0..checks {
            let idx = if checks == total {
                t
            } else {
                rng.random_range(0..total)
            };
            let (i, j) = (idx / s.max(1), idx % s.max(1));
            let (mut want, mut mag) = (0f64, 0f64);
            for p in 0..s {
                let x = f64::from(a[i * s + p]) * f64::from(b[p * s + j]);
                want += x;
                mag += x.abs();
            }
            let got = c.get(idx).copied().map_or(f64::NAN, f64::from);
            if (got - want).abs().is_nan()
                || (got - want).abs() > (s as f64 + 2.0) * f64::from(f32::EPSILON) * mag
            {
                bad += 1;
            }
        }
        rows.push(Row {
            sample: "matrix",
            case: format!("sgemm {s}^3"),
            backend: result.backend().map(|b| b.to_string()).unwrap_or_default(),
            device: result.device().map(|d| d.to_string()).unwrap_or_default(),
            seconds: secs,
            throughput: 2.0 * (s as f64).powi(3) / secs / 1e9,
            unit: "GFLOP/s",
            rate: 1.0 / secs,
            rate_unit: "multiplies/s",
            verified: bad == 0 && c.len() == total,
            check: if bad == 0 {
                format!("{checks} entries")
            } else {
                format!("{bad} of {checks} entries differ")
            },
            micro_batches: result.chunks.len(),
            seed,
        });
    }
    Ok(rows)
}
