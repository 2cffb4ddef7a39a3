//! The raw CUDA baselines every benchmark row is a ratio against: each runs on the device and
//! checks its own results (the chain's values, the SGEMM's product, the small batch's sums), so a
//! ratio is never taken against a baseline that skipped its work. Skips without a GPU unless
//! `GPUBRIDGE_REQUIRE_GPU=1`.

use std::time::Duration;

use gpubridge_cuda::baseline::{median, percentile, Baseline};

fn baseline() -> Option<Baseline> {
    match Baseline::new() {
        Ok(b) => Some(b),
        Err(e) if std::env::var("GPUBRIDGE_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("a GPU is required here: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn all_positive(times: &[Duration], n: usize) {
    assert_eq!(times.len(), n);
    assert!(times.iter().all(|t| !t.is_zero()), "{times:?}");
}

#[test]
fn medians_and_percentiles_rank_the_samples() {
    let ms = Duration::from_millis;
    let mut v = vec![ms(5), ms(1), ms(4), ms(2), ms(3)];
    assert_eq!(median(&mut v), ms(3));
    assert_eq!(percentile(&mut v, 0.0), ms(1));
    assert_eq!(percentile(&mut v, 1.0), ms(5));
    assert_eq!(percentile(&mut v, 0.8), ms(4));
    assert_eq!(median(&mut []), Duration::ZERO);
}

#[test]
fn copies_allocations_and_launches_are_timed() {
    let Some(base) = baseline() else { return };
    assert!(!base.device_name().is_empty());
    for gbps in [
        base.h2d_pinned_gbps(8 << 20, 3).unwrap(),
        base.d2h_pinned_gbps(8 << 20, 3).unwrap(),
    ] {
        assert!(gbps.is_finite() && gbps > 0.1, "{gbps} GB/s");
    }
    all_positive(&base.alloc_async_pairs(1 << 20, 50).unwrap(), 50);
    all_positive(&base.pool_pairs(1 << 20, 50).unwrap(), 50);
    all_positive(&base.launch_round_trips(20).unwrap(), 20);
    assert!(base.host_register_seconds(1 << 20).unwrap() > 0.0);
    let (whole, pieces, fresh) = base.host_copy_gbps(16 << 20).unwrap();
    assert!([whole, pieces, fresh]
        .iter()
        .all(|g| g.is_finite() && *g > 0.0));
}

#[test]
fn the_chain_baseline_computes_its_chain_both_ways() {
    let Some(mut base) = baseline() else { return };
    assert_eq!(base.last_chain_spin(), None);
    for n in [1, 10] {
        let (stream, graph) = base.chain_per_kernel(n, 5).unwrap();
        assert!(!stream.is_zero() && !graph.is_zero());
        assert!(base.last_chain_spin().is_some_and(|t| !t.is_zero()));
    }
}

#[test]
fn the_sgemm_and_small_batch_baselines_check_their_results() {
    let Some(base) = baseline() else { return };
    let (round, gemm, blocks) = base.cublas_sgemm(256, 2).unwrap();
    assert!(round >= gemm, "{round:?} round trip vs {gemm:?} multiply");
    assert!(!blocks.is_zero());
    all_positive(&base.small_batch_graph(30).unwrap(), 30);
}
