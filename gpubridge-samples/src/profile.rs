//! `gpubridge profile <sample>`: runs a sample's workload and prints where the time went, phase by
//! phase, from the micro-batches' own reports (`ChunkReport`): queue, pack, h2d, launch or graph
//! replay, d2h and unpack, each with its busy time, share of wall time, mean and P99 per
//! micro-batch, bytes moved and achieved bandwidth against the pinned-copy bandwidth measured in
//! the same run (CUDA). The same phases are NVTX ranges (`gpubridge::nvtx`), so a capture under
//! `nsys profile` shows them on the timeline.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use gpubridge::kernels::{MatMul, MatMulInput, Sum, VectorAdd, VectorPair};
use gpubridge::nvtx::Phase;
use gpubridge::{BackendKind, BatchResult, BridgeConfig, ChunkReport, ExecutionHints, GpuBridge};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::BackendChoice;

/// Arguments of `gpubridge profile`.
#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    /// The workload: `vector` (the original's pairs of 1M floats added), `sum` (its 1000 vectors of
    /// 100 floats summed: small micro-batches, graph replays on CUDA) or `matrix` (one square
    /// multiply).
    pub sample: ProfileSample,
    /// Which backend; `auto` follows the fallback chain.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Timed runs of the workload (each verified against the reference).
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Untimed runs first (kernels compiled, staging and graphs made).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// `vector`: pairs per run.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// `vector`: floats per vector.
    #[arg(long, default_value_t = 1_000_000)]
    pub len: usize,
    /// `sum`: vectors per run.
    #[arg(long, default_value_t = 1000)]
    pub sum_vectors: usize,
    /// `sum`: floats per vector.
    #[arg(long, default_value_t = 100)]
    pub sum_len: usize,
    /// `matrix`: the side of the square matrices.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Seed of the random inputs (random when not given).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The workloads `profile` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileSample {
    /// Pairs of vectors added (`kernels/vector/add`).
    Vector,
    /// Small vectors summed (`kernels/sum`).
    Sum,
    /// A square f32 multiply (`kernels/matrix/multiply`).
    Matrix,
}

/// One phase's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseLine {
    /// The phase's name (its NVTX range's name; `hand-off` is the time between threads).
    pub phase: &'static str,
    /// Micro-batches in which the phase took time.
    pub count: usize,
    /// Time in the phase, summed over micro-batches.
    pub busy_s: f64,
    /// `busy_s` over the timed runs' wall time. Micro-batches on different lanes overlap, so the
    /// shares may sum past 1.
    pub share_of_wall: f64,
    /// Mean per micro-batch that had the phase.
    pub mean_s: f64,
    /// 99th percentile per micro-batch.
    pub p99_s: f64,
    /// Bytes the phase moved (h2d, d2h).
    pub bytes: u64,
    /// `bytes / busy_s`, where bytes moved.
    pub gbps: Option<f64>,
    /// The pinned-copy bandwidth of that direction measured in this run (CUDA).
    pub pinned_gbps: Option<f64>,
}

/// The whole report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// The workload.
    pub sample: String,
    /// Its size.
    pub case: String,
    /// The backend that ran most items.
    pub backend: String,
    /// The device that ran most items.
    pub device: String,
    /// Timed runs.
    pub iterations: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Micro-batches over the timed runs.
    pub micro_batches: usize,
    /// Of which replayed from a CUDA graph.
    pub graph_replays: usize,
    /// Wall time of the timed runs.
    pub wall_s: f64,
    /// Mean wall time of one run.
    pub run_mean_s: f64,
    /// Every output of every run matched the reference.
    pub verified: bool,
    /// The phases, in request order.
    pub phases: Vec<PhaseLine>,
    /// Pinned host-to-device and device-to-host bandwidth (raw cudarc, 256 MiB), where measured.
    pub pinned_h2d_gbps: Option<f64>,
    /// As above, device to host.
    pub pinned_d2h_gbps: Option<f64>,
}

/// What a workload hands back per run: the report of its batch and whether it verified.
struct Run {
    chunks: Vec<ChunkReport>,
    wall: Duration,
    device: Option<gpubridge::DeviceId>,
    verified: bool,
}

fn record<O>(result: &BatchResult<O>, wall: Duration, verified: bool) -> Run {
    Run {
        chunks: result.chunks.clone(),
        wall,
        device: result.device(),
        verified,
    }
}

fn random(rng: &mut SmallRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Runs `profile`.
pub fn run(args: ProfileArgs, mut config: BridgeConfig) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.iterations > 0, "--iterations must be at least 1");
    args.backend.configure(&mut config);
    let bridge = gpubridge::bridge(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let hints = args.backend.hints();
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = SmallRng::seed_from_u64(seed);
    let (case, runs) = rt.block_on(async {
        match args.sample {
            ProfileSample::Vector => vector(&bridge, &hints, &args, &mut rng).await,
            ProfileSample::Sum => sum(&bridge, &hints, &args, &mut rng).await,
            ProfileSample::Matrix => matrix(&bridge, &hints, &args, &mut rng).await,
        }
    })?;
    let device = runs.iter().rev().find_map(|r| r.device);
    let on_cuda = device.is_some_and(|d| d.backend == BackendKind::Cuda);
    let (h2d, d2h) = if on_cuda {
        pinned_bandwidth()
    } else {
        (None, None)
    };
    let profile = summarise(&args, case, &runs, device, &bridge, (h2d, d2h));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&profile)?);
    } else {
        print_table(&profile);
    }
    Ok(if profile.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(feature = "cuda")]
fn pinned_bandwidth() -> (Option<f64>, Option<f64>) {
    match gpubridge::cuda::baseline::Baseline::new() {
        Ok(b) => (
            b.h2d_pinned_gbps(256 << 20, 3).ok(),
            b.d2h_pinned_gbps(256 << 20, 3).ok(),
        ),
        Err(e) => {
            eprintln!("warning: pinned-copy bandwidth not measured: {e}");
            (None, None)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn pinned_bandwidth() -> (Option<f64>, Option<f64>) {
    (None, None)
}

async fn vector(
    bridge: &GpuBridge,
    hints: &ExecutionHints,
    args: &ProfileArgs,
    rng: &mut SmallRng,
) -> anyhow::Result<(String, Vec<Run>)> {
    let pairs: Vec<VectorPair> = (0..args.pairs)
        .map(|_| VectorPair {
            a: random(rng, args.len),
            b: random(rng, args.len),
        })
        .collect();
    let grain = bridge.batch::<VectorAdd>()?;
    let mut runs = Vec::new();
    for i in 0..args.warmup + args.iterations {
        let inputs = pairs.clone();
        let t = Instant::now();
        let result = grain.execute(inputs, hints.clone()).await?;
        let wall = t.elapsed();
        let verified = result.outputs.len() == pairs.len()
            && pairs.iter().zip(&result.outputs).all(|(p, o)| {
                o.len() == p.a.len() && p.a.iter().zip(&p.b).zip(o).all(|((a, b), o)| a + b == *o)
            });
        if i >= args.warmup {
            runs.push(record(&result, wall, verified));
        }
    }
    Ok((format!("add {} x {}", args.pairs, args.len), runs))
}

async fn sum(
    bridge: &GpuBridge,
    hints: &ExecutionHints,
    args: &ProfileArgs,
    rng: &mut SmallRng,
) -> anyhow::Result<(String, Vec<Run>)> {
    let grain = bridge.batch::<Sum>()?;
    let mut runs = Vec::new();
    for i in 0..args.warmup + args.iterations {
        // Fresh inputs every run: a replayed graph must not answer from a previous run's data.
        let vectors: Vec<Vec<f32>> = (0..args.sum_vectors)
            .map(|_| random(rng, args.sum_len))
            .collect();
        let want = crate::samples::vector::sum_reference(&vectors);
        let t = Instant::now();
        let result = grain.execute(vectors, hints.clone()).await?;
        let wall = t.elapsed();
        let verified = result.outputs.len() == want.len()
            && want
                .iter()
                .zip(&result.outputs)
                .all(|((w, mag), got)| (f64::from(*got) - w).abs() <= 1e-5 * mag.max(1.0));
        if i >= args.warmup {
            runs.push(record(&result, wall, verified));
        }
    }
    Ok((format!("sum {} x {}", args.sum_vectors, args.sum_len), runs))
}

async fn matrix(
    bridge: &GpuBridge,
    hints: &ExecutionHints,
    args: &ProfileArgs,
    rng: &mut SmallRng,
) -> anyhow::Result<(String, Vec<Run>)> {
    let s = args.size;
    anyhow::ensure!(s > 0, "--size must be at least 1");
    let input = MatMulInput {
        m: s,
        k: s,
        n: s,
        a: random(rng, s * s),
        b: random(rng, s * s),
    };
    // Entries checked per run against a float64 dot product, with the classical bound.
    let picks: Vec<(usize, usize)> = (0..256.min(s * s))
        .map(|_| (rng.random_range(0..s), rng.random_range(0..s)))
        .collect();
    let grain = bridge.batch::<MatMul>()?;
    let mut runs = Vec::new();
    for i in 0..args.warmup + args.iterations {
        let t = Instant::now();
        let result = grain.execute(vec![input.clone()], hints.clone()).await?;
        let wall = t.elapsed();
        let c = result
            .outputs
            .first()
            .map(|m| m.data.as_slice())
            .unwrap_or_default();
        let verified = c.len() == s * s
            && picks.iter().all(|&(r, col)| {
                let (mut dot, mut mag) = (0f64, 0f64);
                for k in 0..s {
                    let p = f64::from(input.a[r * s + k]) * f64::from(input.b[k * s + col]);
                    dot += p;
                    mag += p.abs();
                }
                let bound = (s as f64 + 2.0) * f64::from(f32::EPSILON) * mag;
                (f64::from(c[r * s + col]) - dot).abs() <= bound.max(1e-6)
            });
        if i >= args.warmup {
            runs.push(record(&result, wall, verified));
        }
    }
    Ok((format!("sgemm {s}^3"), runs))
}

/// The 99th percentile (nearest rank) of `v`, sorted here.
fn p99(v: &mut [Duration]) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn summarise(
    args: &ProfileArgs,
    case: String,
    runs: &[Run],
    device: Option<gpubridge::DeviceId>,
    bridge: &GpuBridge,
    (h2d, d2h): (Option<f64>, Option<f64>),
) -> Profile {
    let wall: Duration = runs.iter().map(|r| r.wall).sum();
    let chunks: Vec<&ChunkReport> = runs.iter().flat_map(|r| &r.chunks).collect();
    let phase = |p: Phase| -> PhaseLine {
        let mut times = Vec::new();
        let mut bytes = 0u64;
        for c in &chunks {
            let t = match p {
                Phase::Queue => c.queue,
                Phase::Pack => c.pack,
                Phase::Upload => c.upload,
                Phase::Launch if !c.graph_replayed => c.compute,
                Phase::Replay if c.graph_replayed => c.compute,
                Phase::Download => c.download,
                Phase::Unpack => c.unpack,
                _ => Duration::ZERO,
            };
            match p {
                Phase::Upload if !c.upload.is_zero() => bytes += c.bytes_in,
                Phase::Download if !c.download.is_zero() => bytes += c.bytes_out,
                _ => {}
            }
            if !t.is_zero() {
                times.push(t);
            }
        }
        line(
            p.name(),
            times,
            bytes,
            wall,
            match p {
                Phase::Upload => h2d,
                Phase::Download => d2h,
                _ => None,
            },
        )
    };
    // The executor's wait for a stream is not a phase of its own in the reports: it is the
    // device time of h2d, launch and d2h seen from the host.
    let mut phases: Vec<PhaseLine> = Phase::ALL
        .into_iter()
        .filter(|p| *p != Phase::Wait)
        .map(phase)
        .collect();
    // Not a phase of the work but of its travel: to the executor thread (or CPU pool) and back.
    let handoffs = chunks.iter().map(|c| c.handoff).filter(|t| !t.is_zero());
    phases.push(line("hand-off", handoffs.collect(), 0, wall, None));
    let device_name = device
        .and_then(|d| bridge.devices().into_iter().find(|i| i.id == d))
        .map(|i| format!("{} ({})", i.id, i.name))
        .unwrap_or_else(|| "-".to_owned());
    Profile {
        sample: format!("{:?}", args.sample).to_lowercase(),
        case,
        backend: device.map_or_else(|| "-".to_owned(), |d| d.backend.to_string()),
        device: device_name,
        iterations: runs.len(),
        warmup: args.warmup,
        micro_batches: chunks.len(),
        graph_replays: chunks.iter().filter(|c| c.graph_replayed).count(),
        wall_s: wall.as_secs_f64(),
        run_mean_s: wall.as_secs_f64() / runs.len().max(1) as f64,
        verified: !runs.is_empty() && runs.iter().all(|r| r.verified),
        phases,
        pinned_h2d_gbps: h2d,
        pinned_d2h_gbps: d2h,
    }
}

/// One line of the table: `times` (the non-zero spans of a phase, one per micro-batch) summed,
/// averaged and ranked against the run's `wall` time.
fn line(
    phase: &'static str,
    mut times: Vec<Duration>,
    bytes: u64,
    wall: Duration,
    pinned_gbps: Option<f64>,
) -> PhaseLine {
    let busy: Duration = times.iter().sum();
    let count = times.len();
    let gbps = (bytes > 0 && !busy.is_zero()).then(|| bytes as f64 / busy.as_secs_f64() / 1e9);
    PhaseLine {
        phase,
        count,
        busy_s: busy.as_secs_f64(),
        share_of_wall: if wall.is_zero() {
            0.0
        } else {
            busy.as_secs_f64() / wall.as_secs_f64()
        },
        mean_s: if count == 0 {
            0.0
        } else {
            busy.as_secs_f64() / count as f64
        },
        p99_s: p99(&mut times).as_secs_f64(),
        bytes,
        gbps,
        pinned_gbps,
    }
}

fn human_time(s: f64) -> String {
    if s == 0.0 {
        "-".to_owned()
    } else if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0 => "-".to_owned(),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

fn print_table(p: &Profile) {
    println!(
        "profile {} ({}) on {} [{}]: {} timed runs after {} warm-up, {} micro-batches ({} graph replays), wall {}, mean run {}, {}",
        p.sample,
        p.case,
        p.device,
        p.backend,
        p.iterations,
        p.warmup,
        p.micro_batches,
        p.graph_replays,
        human_time(p.wall_s),
        human_time(p.run_mean_s),
        if p.verified { "verified" } else { "WRONG RESULTS" }
    );
    println!(
        "{:<9} {:>7} {:>11} {:>7} {:>11} {:>11} {:>11} {:>10} {:>10}",
        "phase", "batches", "busy", "% wall", "mean", "p99", "bytes", "GB/s", "% pinned"
    );
    for l in &p.phases {
        println!(
            "{:<9} {:>7} {:>11} {:>6.1}% {:>11} {:>11} {:>11} {:>10} {:>10}",
            l.phase,
            l.count,
            human_time(l.busy_s),
            l.share_of_wall * 100.0,
            human_time(l.mean_s),
            human_time(l.p99_s),
            human_bytes(l.bytes),
            l.gbps.map_or_else(|| "-".to_owned(), |g| format!("{g:.1}")),
            match (l.gbps, l.pinned_gbps) {
                // Faster than a pinned copy: the span is only the part of the copies that compute
                // did not hide (a staged plan overlaps them), not their whole duration.
                (Some(g), Some(pin)) if pin > 0.0 && g > pin * 1.05 => "overlapped".to_owned(),
                (Some(g), Some(pin)) if pin > 0.0 => format!("{:.0}%", g / pin * 100.0),
                _ => "-".to_owned(),
            }
        );
    }
    if let (Some(h), Some(d)) = (p.pinned_h2d_gbps, p.pinned_d2h_gbps) {
        println!(
            "pinned copies measured now (raw cudarc, 256 MiB): h2d {h:.1} GB/s, d2h {d:.1} GB/s"
        );
    }
    println!(
        "busy = time in the phase summed over micro-batches; micro-batches on different lanes overlap, so shares can sum past 100%. \
         A replayed graph's copies are inside `replay`; h2d spans pipelined packing (each piece's upload waits for its packing); \
         `overlapped` marks copies partly hidden under compute (staged plans), whose span is only the unhidden part. \
         `hand-off` is the time between threads: submission to the executor (or CPU pool) and the outputs' way back, less the work. \
         Each phase but `hand-off` is also an NVTX range in the `gpubridge` domain (nsys profile --trace=cuda,nvtx)."
    );
    if p.micro_batches > 0 && p.phases.iter().all(|l| l.count == 0) {
        println!("no phase took measurable time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(p99(&mut v), Duration::from_micros(99));
        let mut one = vec![Duration::from_micros(5)];
        assert_eq!(p99(&mut one), Duration::from_micros(5));
        assert_eq!(p99(&mut []), Duration::ZERO);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_time(0.0), "-");
        assert_eq!(human_time(2.5e-6), "2.5 us");
        assert_eq!(human_time(0.0125), "12.50 ms");
        assert_eq!(human_bytes(0), "-");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn cpu_profile_of_sum_accounts_for_every_micro_batch() {
        let mut config = BridgeConfig::default();
        config.fallback.chain = vec![BackendKind::Cpu];
        config.batching.max_micro_batch = 100;
        let args = ProfileArgs {
            sample: ProfileSample::Sum,
            backend: BackendChoice::Cpu,
            iterations: 3,
            warmup: 1,
            pairs: 1,
            len: 1,
            sum_vectors: 1000,
            sum_len: 100,
            size: 1,
            seed: None,
            json: true,
        };
        let bridge = gpubridge::bridge(config).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut rng = SmallRng::seed_from_u64(rand::random());
        let (case, runs) = rt
            .block_on(sum(&bridge, &args.backend.hints(), &args, &mut rng))
            .unwrap();
        assert_eq!(runs.len(), 3);
        assert!(runs.iter().all(|r| r.verified));
        let device = runs[0].device;
        let p = summarise(&args, case, &runs, device, &bridge, (None, None));
        assert!(p.verified);
        assert_eq!(p.backend, "cpu");
        assert_eq!(
            p.micro_batches, 30,
            "1000 items in micro-batches of 100, 3 runs"
        );
        let line = |name: &str| p.phases.iter().find(|l| l.phase == name).unwrap();
        // The CPU runs each micro-batch's CPU form: all of it is `launch`, nothing is copied.
        assert_eq!(line("launch").count, 30);
        assert!(line("launch").busy_s > 0.0);
        for copy in ["h2d", "d2h", "pack", "unpack", "replay"] {
            assert_eq!(line(copy).count, 0, "{copy}");
            assert_eq!(line(copy).bytes, 0, "{copy}");
        }
        assert!(line("launch").p99_s <= line("launch").busy_s);
        // Each micro-batch went to the CPU pool and back: time between threads, beside the work.
        assert_eq!(line("hand-off").count, 30);
        assert_eq!(line("hand-off").bytes, 0);
        assert!(p.wall_s > 0.0 && line("launch").share_of_wall > 0.0);
    }
}
