//! The bridge's own cost per call, without a device: a small batch (10 x 100 f32 sum, TARGETS.md
//! P2's shape) and chains of 10, 100 and 1000 launches (P1's) through `batch`, on a profiling
//! double that completes every plan on the submitting thread with zeroed outputs. What is timed
//! is validation, planning, placement, submission, completion and unpacking alone: the part of
//! P1's and P2's latency that is the bridge's host code, which a profiler can then take apart
//! (`perf record -g target/release/examples/overhead`). The outputs are not results; nothing
//! here stands in for a backend outside this measurement.
//!
//! With `--executor-thread` the double answers on a thread of its own instead, after reading
//! every launch of the plan (as a CUDA graph replay compares them with its graph's nodes), and
//! frees the plan there: the shape of the real hand-off, so that what crossing threads costs
//! (the plan's memory moving between the cores' caches) shows. The chain rows come twice: steps
//! built for every call, and steps reused by key ([`Plan::reuse_steps`], as the bench's chain).
//!
//! `cargo run --release -p gpubridge-core --example overhead [-- ITERATIONS] [--executor-thread]
//! [--only-chain N] [--recorder]`; `--only-chain N` times nothing but the chain of `N` with its
//! steps reused (ITERATIONS calls), for a profiler such as `valgrind --tool=callgrind`;
//! `--recorder` installs a metrics recorder first (metrics-util's registry-backed debugging
//! recorder, as a service's Prometheus recorder would be), so that the bridge's per-request
//! metrics cost what they cost in a service that exports them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpubridge_core::device::{
    Backend, BackendKind, DeviceId, DeviceInfo, DeviceType, Health, Work,
};
use gpubridge_core::kernels::Sum;
use gpubridge_core::plan::{BufferRole, PlanOutputs, PlanTarget};
use gpubridge_core::{BridgeConfig, ExecutionHints, GpuBridge, Result};

/// A profiling double (named as one): reports one CUDA device and answers every plan at once,
/// with zeroed outputs, on the submitting thread or (`executor`) on a thread of its own.
struct InstantDouble {
    devices: Vec<DeviceInfo>,
    executor: Option<std::sync::Mutex<std::sync::mpsc::Sender<Work>>>,
}

/// Answers a plan with zeroed outputs, after reading its launches as an executor would.
fn answer(work: Work) {
    if let Work::Plan { plan, complete, .. } = work {
        let mut read = 0u64;
        for step in &plan.steps {
            if let gpubridge_core::plan::Step::Launch(l) = step {
                read = read.wrapping_add(u64::from(l.grid[0]) + l.args.len() as u64);
            }
        }
        std::hint::black_box(read);
        let outs: Vec<_> = plan
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| matches!(b.role, BufferRole::Output))
            .map(|(i, b)| (i, vec![0u8; b.len]))
            .collect();
        let ids = plan.output_ids();
        let slices = outs.iter().map(|(_, v)| v.as_slice()).collect();
        complete(Ok(PlanOutputs::new(ids, slices, Default::default())));
    }
}

impl Backend for InstantDouble {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }
    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }
    fn plan_target(&self, _device: usize) -> Option<PlanTarget> {
        Some(PlanTarget::Cuda {
            compute_capability: (9, 0),
            blas: false,
            max_grid_yz: 65535,
        })
    }
    fn can_run(&self, _sources: &gpubridge_core::KernelSources) -> bool {
        true
    }
    fn memory_budget(&self, _device: usize) -> Option<u64> {
        None
    }
    fn health(&self, _device: usize) -> Health {
        Health::Healthy
    }
    fn submit(&self, _device: usize, work: Work) -> Result<()> {
        match &self.executor {
            Some(tx) => {
                if let Ok(tx) = tx.lock() {
                    // The answering thread lives as long as the process.
                    let _ = tx.send(work);
                }
            }
            None => answer(work),
        }
        Ok(())
    }
}

/// The bench's chain: one copy and `n` bumps of 32 floats.
#[derive(Clone)]
struct ChainInput {
    x: Vec<f32>,
    /// Reuse the steps by key instead of building them.
    reuse: bool,
    n: u32,
}

struct Chain;

impl gpubridge_core::Kernel for Chain {
    type Input = ChainInput;
    type Output = Vec<f32>;
    const ID: &'static str = "overhead/chain";

    fn sources(&self) -> gpubridge_core::KernelSources {
        gpubridge_core::KernelSources {
            cuda: Some("extern \"C\" __global__ void chain_copy(const float* x, float* y) {}\n"),
            wgsl: None,
        }
    }

    fn validate(&self, _index: usize, _input: &ChainInput) -> Result<()> {
        Ok(())
    }

    fn device_bytes(&self, _input: &ChainInput) -> usize {
        256
    }

    fn run_cpu(
        &self,
        inputs: &[ChainInput],
        _ctx: &gpubridge_core::CpuContext,
    ) -> Result<Vec<Vec<f32>>> {
        Ok(inputs.iter().map(|i| i.x.clone()).collect())
    }

    fn plan(
        &self,
        inputs: &Arc<[ChainInput]>,
        _target: &PlanTarget,
    ) -> Result<gpubridge_core::plan::Plan> {
        use gpubridge_core::plan::{pack_range, Arg, Launch, Plan};
        let first = &inputs[0];
        let (x_vals, n) = (first.x.clone(), first.n);
        let mut plan = Plan::new(Self::ID);
        let x = plan.input("x", 128, move |dst, at| pack_range(dst, at, &x_vals));
        let y = plan.output("y", 128);
        let launches = || {
            std::iter::once(Launch::new(
                "chain_copy",
                [1, 1, 1],
                [32, 1, 1],
                &[Arg::buf(x), Arg::buf(y)],
            ))
            .chain((0..n).map(|_| Launch::new("chain_bump", [1, 1, 1], [32, 1, 1], &[Arg::buf(y)])))
        };
        if first.reuse {
            plan.reuse_steps(u64::from(n), |steps| {
                launches().for_each(|l| steps.launch(l))
            });
        } else {
            launches().for_each(|l| plan.launch(l));
        }
        Ok(plan)
    }

    fn unpack(&self, _inputs: &[ChainInput], outputs: &PlanOutputs<'_>) -> Result<Vec<Vec<f32>>> {
        Ok(vec![outputs
            .f32s(gpubridge_core::plan::BufferId(1))?
            .to_vec()])
    }
}

/// The dynamic batcher's cost per batch: `waves` waves of `n` concurrent singles (100-float
/// sums), each wave gathered into one batch, on the instant double; prints the runners' time per
/// batch (running: from taking the batch to having its answers, outside the double's own work)
/// and the wall time per wave.
fn time_singles(bridge: &GpuBridge, n: usize, waves: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let input: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let hints = ExecutionHints::default();
    let wave = || {
        rt.block_on(futures::future::join_all((0..n).map(|_| {
            let b = bridge.clone();
            let (x, h) = (input.clone(), hints.clone());
            rt.spawn(async move { b.single::<Sum>(x, h).await.map(|r| r.batch_size) })
        })))
    };
    for _ in 0..waves / 10 + 10 {
        wave();
    }
    let before = bridge.batcher_stats();
    let t = Instant::now();
    let mut sizes = 0usize;
    for _ in 0..waves {
        for r in wave() {
            sizes += r.unwrap().unwrap();
        }
    }
    let wall = t.elapsed();
    let after = bridge.batcher_stats();
    let (_, a) = &after[0];
    let b0 = before
        .iter()
        .find(|(k, _)| *k == after[0].0)
        .map(|(_, s)| s);
    let (batches, running) = match b0 {
        Some(b) => (a.batches - b.batches, a.running - b.running),
        None => (a.batches, a.running),
    };
    println!(
        "singles: {waves} waves of {n}: {:.1} us per wave, {batches} batches (mean size {:.0}), running {:.2} us per batch",
        wall.as_secs_f64() * 1e6 / waves as f64,
        sizes as f64 / (waves * n) as f64,
        running.as_secs_f64() * 1e6 / batches.max(1) as f64,
    );
}

fn main() {
    if std::env::args().any(|a| a == "--recorder") {
        metrics_util::debugging::DebuggingRecorder::new()
            .install()
            .expect("no other recorder is installed");
    }
    let iters: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let executor = std::env::args().any(|a| a == "--executor-thread").then(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Work>();
        std::thread::spawn(move || {
            for work in rx {
                answer(work);
            }
        });
        std::sync::Mutex::new(tx)
    });
    let args: Vec<String> = std::env::args().collect();
    let singles: Option<usize> = args
        .iter()
        .position(|a| a == "--singles")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let mut config = BridgeConfig::default();
    if let Some(n) = singles {
        // Each wave of `n` singles one batch, taken as soon as it is complete.
        config.batching.max_batch = n;
        config.batching.max_micro_batch = config.batching.max_micro_batch.max(n);
        config.batching.max_queue_delay_us = 100_000;
        config.batching.batches_in_flight = 1;
    }
    let mut b = GpuBridge::builder(config);
    b.register(Sum).unwrap();
    b.register(Chain).unwrap();
    b.add_backend(Arc::new(InstantDouble {
        devices: vec![DeviceInfo {
            id: DeviceId {
                backend: BackendKind::Cuda,
                index: 0,
            },
            name: "instant profiling double".into(),
            device_type: DeviceType::DiscreteGpu,
            total_memory: 1 << 34,
            compute_units: 1,
            compute_capability: Some((9, 0)),
            details: String::new(),
        }],
        executor,
    }));
    let bridge = b.build().unwrap();
    let hints = ExecutionHints::default().spin_wait(Duration::from_millis(1));
    let only_chain: Option<u32> = args
        .iter()
        .position(|a| a == "--only-chain")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok());
    let chain = bridge.batch::<Chain>().unwrap();
    // The P50 of `calls` chains of `n` after 50 untimed ones, printed.
    let time_chain = |n: u32, reuse: bool, calls: usize| {
        let mut t = Vec::with_capacity(calls);
        for i in 0..calls + 50 {
            let input = vec![ChainInput {
                x: vec![1.0; 32],
                reuse,
                n,
            }];
            let s = Instant::now();
            let r = futures::executor::block_on(chain.execute(input, hints.clone())).unwrap();
            if i >= 50 {
                t.push(s.elapsed());
            }
            std::hint::black_box(r);
        }
        t.sort();
        println!(
            "chain {n}, steps {}: P50 {:.2} us per call",
            if reuse { "reused" } else { "built" },
            t[t.len() / 2].as_secs_f64() * 1e6
        );
    };
    if let Some(n) = only_chain {
        time_chain(n, true, iters);
        return;
    }
    if let Some(n) = singles {
        time_singles(&bridge, n, iters);
        return;
    }
    let grain = bridge.batch::<Sum>().unwrap();
    let batch: Vec<Vec<f32>> = (0..10)
        .map(|i| (0..100).map(|j| (i * j) as f32).collect())
        .collect();
    let mut lat = Vec::with_capacity(iters);
    for i in 0..iters + 1000 {
        let input = batch.clone();
        let t = Instant::now();
        let r = futures::executor::block_on(grain.execute(input, hints.clone())).unwrap();
        if i >= 1000 {
            lat.push(t.elapsed());
        }
        std::hint::black_box(r);
    }
    lat.sort();
    for (n, reuse) in [10u32, 100, 1000]
        .into_iter()
        .flat_map(|n| [(n, false), (n, true)])
    {
        time_chain(n, reuse, (iters / n as usize).max(200));
    }
    println!(
        "bridge overhead per call (10 x 100 sum, instant double): P50 {:.2} us, P90 {:.2} us, P99 {:.2} us",
        lat[lat.len() / 2].as_secs_f64() * 1e6,
        lat[lat.len() * 9 / 10].as_secs_f64() * 1e6,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e6
    );
}
