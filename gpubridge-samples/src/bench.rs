//! `gpubridge bench`: the TARGETS.md rows, each measured through the bridge and against a baseline
//! measured in the same run on the same card (raw cudarc calls, raw copies, a plain memcpy).
//! Rows W1 and W2 measure the wgpu backend (vector add, matrix multiply) against the CPU backend
//! on the same inputs in the same run; they have no target.
//!
//! Prints a table and writes the rows as a JSON array in TARGETS.md's report format.

#[cfg(feature = "cuda")]
use std::time::Duration;
use std::time::Instant;

use futures::executor::block_on;
use gpubridge::kernels::{VectorAdd, VectorPair};
use gpubridge::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use rayon::prelude::*;
use serde_json::{json, Value};

#[cfg(feature = "cuda")]
use gpubridge::cuda::baseline::{median, percentile, Baseline};

#[path = "bench_storage.rs"]
mod storage_rows;
// P9 (connected components) lives in its own file.
#[path = "bench_graph.rs"]
mod bench_graph;

#[cfg(feature = "cuda")]
/// `bench/chain`: a chain of `n` tiny kernels over 32 floats (the first writes `x + 1` to the
/// output, the other `n - 1` add 1 to it in place), the plan shape TARGETS.md P1 measures: the
/// same `n` kernels as the raw baseline's chain. Its CPU form is the reference: `x + n`.
mod chain {
    use std::sync::Arc;

    use gpubridge::plan::{pack_range, Arg, BufferId, Launch, Plan, PlanOutputs, PlanTarget};
    use gpubridge::{CpuContext, Error, Kernel, KernelSources, Result};

    /// 32 floats and a chain length.
    #[derive(Clone)]
    pub struct ChainInput {
        pub x: Vec<f32>,
        pub n: u32,
    }

    pub struct Chain;

    impl Kernel for Chain {
        type Input = ChainInput;
        type Output = Vec<f32>;
        const ID: &'static str = "bench/chain";

        fn sources(&self) -> KernelSources {
            KernelSources {
                cuda: Some(
                    "extern \"C\" __global__ void chain_first(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x] + 1.0f; }\n\
                     extern \"C\" __global__ void chain_bump(float* y) { y[threadIdx.x] += 1.0f; }\n",
                ),
                wgsl: None,
            }
        }

        fn validate(&self, index: usize, input: &ChainInput) -> Result<()> {
            if input.n == 0 {
                return Err(Error::invalid_item(
                    Self::ID,
                    index,
                    "a chain has at least one kernel",
                ));
            }
            if input.x.len() != 32 {
                return Err(Error::invalid_item(
                    Self::ID,
                    index,
                    "x must hold 32 floats",
                ));
            }
            Ok(())
        }

        fn device_bytes(&self, _input: &ChainInput) -> usize {
            256
        }

        fn run_cpu(&self, inputs: &[ChainInput], _ctx: &CpuContext) -> Result<Vec<Vec<f32>>> {
            Ok(inputs
                .iter()
                .map(|i| i.x.iter().map(|v| v + i.n as f32).collect())
                .collect())
        }

        fn plan(&self, inputs: &Arc<[ChainInput]>, target: &PlanTarget) -> Result<Plan> {
            let PlanTarget::Cuda { .. } = target else {
                return Err(Error::Unsupported {
                    backend: target.backend(),
                    what: "bench/chain is CUDA only".to_owned(),
                });
            };
            let first = inputs
                .first()
                .ok_or_else(|| Error::invalid_batch(Self::ID, "empty"))?;
            let (x_vals, n) = (first.x.clone(), first.n);
            let mut plan = Plan::new(Self::ID);
            let x = plan.input("x", 128, move |dst, at| pack_range(dst, at, &x_vals));
            let y = plan.output("y", 128);
            // The launches depend on the chain's length alone: built once per length.
            plan.reuse_steps(u64::from(n), |steps| {
                steps.launch(Launch::new(
                    "chain_first",
                    [1, 1, 1],
                    [32, 1, 1],
                    &[Arg::buf(x), Arg::buf(y)],
                ));
                for _ in 1..n {
                    steps.launch(Launch::new(
                        "chain_bump",
                        [1, 1, 1],
                        [32, 1, 1],
                        &[Arg::buf(y)],
                    ));
                }
            });
            Ok(plan)
        }

        fn unpack(
            &self,
            _inputs: &[ChainInput],
            outputs: &PlanOutputs<'_>,
        ) -> Result<Vec<Vec<f32>>> {
            Ok(vec![outputs.f32s(BufferId(1))?.to_vec()])
        }
    }
}

/// P1's samples of bridge calls: per call, its time, the executor's device time, hand-offs,
/// request start to submission, the job from taken to outputs ready and the unpack; whether
/// every call replayed a graph and whether one was wrong.
#[cfg(feature = "cuda")]
struct Calls {
    total: Vec<Duration>,
    device: Vec<Duration>,
    handoff: Vec<Duration>,
    queue: Vec<Duration>,
    executor: Vec<Duration>,
    unpack: Vec<Duration>,
    replayed: bool,
    wrong: bool,
}

#[cfg(feature = "cuda")]
impl Calls {
    fn new(reps: usize) -> Self {
        Self {
            total: Vec::with_capacity(reps),
            device: Vec::with_capacity(reps),
            handoff: Vec::with_capacity(reps),
            queue: Vec::with_capacity(reps),
            executor: Vec::with_capacity(reps),
            unpack: Vec::with_capacity(reps),
            replayed: true,
            wrong: false,
        }
    }
}

/// Options of `gpubridge bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Only these rows, comma separated (for example `P2,P4`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Write the rows as JSON here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Small sizes and few iterations: checks the harness, not the figures.
    #[arg(long)]
    pub quick: bool,
}

impl BenchArgs {
    /// Whether row `id` is to run (`--only` empty, or naming it).
    fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o.eq_ignore_ascii_case(id))
    }
}

struct Ctx {
    /// P1's raw kernel-copy graphs of chains of 10 and 100 (chain, us per kernel), measured
    /// before any bridge existed in the process: the note compares them with the same graphs at
    /// P1's turn.
    pre_bridge_chain: Vec<(u32, f64)>,
    args: BenchArgs,
    card: String,
    date: String,
    command: String,
    rows: Vec<Value>,
}

impl Ctx {
    fn wants(&self, id: &str) -> bool {
        self.args.wants(id)
    }

    #[allow(clippy::too_many_arguments)] // One row of the report, every field named by TARGETS.md.
    fn row(
        &mut self,
        id: &str,
        metric: &str,
        value: Option<f64>,
        unit: &str,
        baseline: &str,
        baseline_value: Option<f64>,
        ratio: Option<f64>,
        target: &str,
        pass: Option<bool>,
        note: &str,
    ) {
        let pass = if self.args.quick {
            Value::Null
        } else {
            json!(pass)
        };
        self.rows.push(json!({
            "id": id, "metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "pass": pass,
            "card": self.card, "date": self.date, "command": self.command, "note": note,
        }));
    }
}

/// `GPUBRIDGE_BENCH_CHECKPOINTS=1`: prints, at points of the run, the per-kernel time of a raw
/// kernel-copy graph of a chain of 100 (200 replays), to find what in the process slows every
/// graph (a diagnostic for P1; nothing is printed without the variable).
#[cfg(feature = "cuda")]
fn checkpoint(label: &str) {
    use std::sync::Mutex;
    static BASE: Mutex<Option<Baseline>> = Mutex::new(None);
    if std::env::var_os("GPUBRIDGE_BENCH_CHECKPOINTS").is_none() {
        return;
    }
    let Ok(mut slot) = BASE.lock() else { return };
    if slot.is_none() {
        *slot = Baseline::new().ok();
    }
    if let Some(b) = slot.as_mut() {
        match b.chain_graph_kernel_copies_timed(100, 200) {
            Ok((host, device)) => eprintln!(
                "checkpoint {label:<56} raw kernel-copy chain of 100: {:.3} us/kernel, on the device {:.3}",
                us(host),
                us(device)
            ),
            Err(e) => eprintln!("checkpoint {label}: {e}"),
        }
    }
}

#[cfg(feature = "cuda")]
fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Today's date as `YYYY-MM-DD` (the report rows' `date`).
pub(crate) fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs the selected rows.
///
/// # Errors
/// When the bridge cannot be built or a file cannot be written.
pub fn run(args: BenchArgs, config: BridgeConfig) -> anyhow::Result<()> {
    // P1's raw graphs before anything of the bridge is on the device (none where CUDA is not).
    #[cfg(feature = "cuda")]
    let pre_bridge_chain = match args.wants("P1").then(Baseline::new) {
        Some(Ok(mut b)) => {
            let reps = if args.quick { 20 } else { 300 };
            [10u32, 100]
                .into_iter()
                .filter_map(|n| Some((n, us(b.chain_graph_kernel_copies(n as usize, reps).ok()?))))
                .collect()
        }
        _ => Vec::new(),
    };
    #[cfg(not(feature = "cuda"))]
    let pre_bridge_chain = Vec::new();
    #[cfg(feature = "cuda")]
    checkpoint("process start");
    let bridge = gpubridge::bridge(config)?;
    #[cfg(feature = "cuda")]
    checkpoint("after the bridge is built");
    let cuda = bridge.backends().contains(&BackendKind::Cuda);
    let gpu_name = bridge
        .devices()
        .into_iter()
        .find(|d| d.id.backend == BackendKind::Cuda)
        .map(|d| d.name);
    let cpu_name = bridge
        .devices()
        .into_iter()
        .find(|d| d.id.backend == BackendKind::Cpu)
        .map(|d| format!("{} ({} threads)", d.name, d.compute_units));
    let mut command = "gpubridge bench".to_owned();
    if args.quick {
        command.push_str(" --quick");
    }
    if !args.only.is_empty() {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    let mut cx = Ctx {
        pre_bridge_chain,
        card: gpu_name.clone().or(cpu_name.clone()).unwrap_or_default(),
        date: today(),
        command,
        rows: Vec::new(),
        args,
    };

    if cx.wants("P10") {
        let card = std::mem::replace(&mut cx.card, cpu_name.clone().unwrap_or_default());
        p10(&mut cx, &bridge)?;
        cx.card = card;
    }
    if cx.wants("W1") || cx.wants("W2") {
        // Where CUDA is usable the bridge has no wgpu backend (`wgpu.alongside_cuda`): these rows
        // get a bridge of wgpu and the CPU, closed again before the CUDA rows.
        let own = if bridge.backends().contains(&BackendKind::Wgpu) {
            None
        } else {
            let mut config = bridge.config().clone();
            config.fallback.chain = vec![BackendKind::Wgpu, BackendKind::Cpu];
            Some(gpubridge::bridge(config)?)
        };
        wgpu_rows(
            &mut cx,
            own.as_ref().unwrap_or(&bridge),
            cpu_name.unwrap_or_default(),
        )?;
    }
    // P6, P7: files to device memory (gpubridge-storage), skipped with the reason without a GPU.
    storage_rows::rows(&mut cx)?;
    if cuda {
        #[cfg(feature = "cuda")]
        gpu_rows(&mut cx, &bridge)?;
    } else {
        let why = bridge
            .reports()
            .iter()
            .find(|r| r.kind == BackendKind::Cuda)
            .and_then(|r| r.unavailable_reason())
            .unwrap_or_default();
        for id in ["P1", "P2", "P4", "P5", "P8", "P11"] {
            if cx.wants(id) {
                cx.row(
                    id,
                    "needs a CUDA device",
                    None,
                    "",
                    "",
                    None,
                    None,
                    "",
                    None,
                    &format!("not measured: {why}"),
                );
            }
        }
    }
    if cx.wants("P9") {
        bench_graph::p9(&mut cx, &bridge)?;
    }
    print_table(&cx.rows);
    if let Some(path) = &cx.args.out {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&cx.rows)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_table(rows: &[Value]) {
    println!("| id | metric | value | baseline | ratio | target | pass | note |");
    println!("|---|---|---|---|---|---|---|---|");
    let num = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{x:.3}"))
            .unwrap_or_else(|| "-".to_owned())
    };
    for r in rows {
        println!(
            "| {} | {} | {} {} | {} ({}) | {} | {} | {} | {} |",
            r["id"].as_str().unwrap_or_default(),
            r["metric"].as_str().unwrap_or_default(),
            num(&r["value"]),
            r["unit"].as_str().unwrap_or_default(),
            num(&r["baseline_value"]),
            r["baseline"].as_str().unwrap_or_default(),
            num(&r["ratio"]),
            r["target"].as_str().unwrap_or_default(),
            r["pass"],
            r["note"].as_str().unwrap_or_default(),
        );
    }
}

fn pairs(n: usize, len: usize) -> Vec<VectorPair> {
    (0..n)
        .into_par_iter()
        .map(|p| VectorPair {
            a: (0..len).map(|i| (i + p) as f32 * 0.5).collect(),
            b: (0..len).map(|i| (len - i) as f32).collect(),
        })
        .collect()
}

/// P2 (diagnostics): the round trip of two thread hand-offs as the bridge makes them to an
/// executor thread and back, without a device; and the small batch through the bridge on the CPU
/// backend. Both P50, in microseconds.
#[cfg(feature = "cuda")]
fn handoff_diagnostics(
    bridge: &GpuBridge,
    batch: &[Vec<f32>],
    iters: usize,
) -> anyhow::Result<(f64, f64)> {
    use gpubridge::kernels::Sum;
    type Reply = tokio::sync::oneshot::Sender<u64>;
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Reply)>();
    let server = std::thread::spawn(move || {
        let mut idle = 0u64;
        loop {
            match rx.try_recv() {
                Ok((v, reply)) => {
                    let _ = reply.send(v + 1);
                    idle = 0;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    idle += 1;
                    if idle > 1 << 28 {
                        break;
                    }
                    std::hint::spin_loop();
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            }
        }
    });
    let mut hops = Vec::with_capacity(iters);
    for i in 0..iters as u64 + 100 {
        let (rtx, mut rrx) = tokio::sync::oneshot::channel();
        let t = Instant::now();
        tx.send((i, rtx))?;
        let v = loop {
            match rrx.try_recv() {
                Ok(v) => break v,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(e) => anyhow::bail!("hand-off thread stopped: {e}"),
            }
        };
        anyhow::ensure!(v == i + 1);
        if i >= 100 {
            hops.push(t.elapsed());
        }
    }
    drop(tx);
    let _ = server.join();
    let grain = bridge.batch::<Sum>()?;
    let cpu = ExecutionHints::default()
        .on_backend(BackendKind::Cpu)
        .spin_wait(Duration::from_millis(1));
    let mut lat = Vec::with_capacity(iters);
    for i in 0..iters + 100 {
        let b = batch.to_vec();
        let t = Instant::now();
        let r = block_on(grain.execute(b, cpu.clone()))?;
        if i >= 100 {
            lat.push(t.elapsed());
        }
        std::hint::black_box(r);
    }
    Ok((us(median(&mut hops)), us(median(&mut lat))))
}

/// P1 (diagnostic): a batch of another size in a cached graph's bucket replays that graph with its
/// kernel nodes updated in place; this row sets the cost of such a call against a call that
/// captures a graph (a new bucket's second batch), both through the bridge, vector add of 10 pairs.
#[cfg(feature = "cuda")]
fn graph_update_row(
    cx: &mut Ctx,
    bridge: &GpuBridge,
    on_cuda: &ExecutionHints,
) -> anyhow::Result<()> {
    let reps = if cx.args.quick { 20 } else { 500 };
    let grain = bridge.batch::<VectorAdd>()?;
    let call = |len: usize| -> anyhow::Result<(Duration, bool)> {
        let inputs = pairs(10, len);
        let t = Instant::now();
        let r = block_on(grain.execute(inputs, on_cuda.clone()))?;
        let took = t.elapsed();
        anyhow::ensure!(r.outputs.len() == 10 && r.outputs[9].len() == len);
        // pairs(): a[i] = (i + p) / 2 and b[i] = len - i, so the last pair's last sum is known.
        anyhow::ensure!(
            r.outputs[9][len - 1] == (len + 8) as f32 * 0.5 + 1.0,
            "vector add wrong"
        );
        Ok((took, r.graph_replayed()))
    };
    for _ in 0..3 {
        call(1000)?;
        call(1010)?;
    }
    let (mut steady, mut updated) = (Vec::new(), Vec::new());
    let mut all_replayed = true;
    for _ in 0..reps {
        let (t, r) = call(1000)?;
        steady.push(t);
        all_replayed &= r;
    }
    for i in 0..reps {
        // Alternating lengths: every call changes the kernel's length argument.
        let (t, r) = call(if i % 2 == 0 { 1010 } else { 1000 })?;
        updated.push(t);
        all_replayed &= r;
    }
    // A new bucket each time (lengths 12% apart and up): its first batch runs as stream launches,
    // its second captures the graph, and that call is the one timed.
    let mut captures = Vec::new();
    let mut len = 1200usize;
    for _ in 0..if cx.args.quick { 4 } else { 12 } {
        call(len)?;
        let (t, r) = call(len)?;
        anyhow::ensure!(r, "the second batch of a bucket replays its new graph");
        captures.push(t);
        len = len * 9 / 8 + 64;
    }
    let (steady, updated, capture) = (
        us(median(&mut steady)),
        us(median(&mut updated)),
        us(median(&mut captures)),
    );
    cx.row(
        "P1",
        "diagnostic: call whose batch size differs from its cached graph's (vector add, 10 pairs of 1000/1010 floats), graph kernel node updated in place, median",
        Some(updated),
        "us",
        "the call that captures a new bucket's graph (capture, instantiate, upload, replay), median",
        Some(capture),
        Some(updated / capture),
        "in-place update where it beats re-capture (diagnostic)",
        Some(all_replayed && updated < capture),
        &format!(
            "same size every call (no update) {steady:.1} us; every timed call replayed a graph: {all_replayed}; {reps} calls each, {} captures",
            captures.len()
        ),
    );
    Ok(())
}

/// Timed calls of each P8 variant (the best is reported: the host's memory traffic varies).
#[cfg(feature = "cuda")]
const P8_REPS: usize = 8;

/// P10: CPU vector add through the bridge against a parallel memcpy into mapped memory.
fn p10(cx: &mut Ctx, bridge: &GpuBridge) -> anyhow::Result<()> {
    let (n, len, reps) = if cx.args.quick {
        (4, 100_000, 3)
    } else {
        (100, 1_000_000, 7)
    };
    let input = pairs(n, len);
    let mut dst: Vec<Vec<f32>> = (0..n).map(|_| vec![1f32; len]).collect();
    let mut copies = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        dst.par_iter_mut().zip(&input).for_each(|(d, p)| {
            d.par_chunks_mut(1 << 16)
                .zip(p.a.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s))
        });
        copies.push(t.elapsed());
    }
    let grain = bridge.batch::<VectorAdd>()?;
    let hints = ExecutionHints::default().on_backend(BackendKind::Cpu);
    let mut adds = Vec::new();
    for _ in 0..reps {
        let batch = input.clone();
        let t = Instant::now();
        let r = block_on(grain.execute(batch, hints.clone()))?;
        adds.push(t.elapsed());
        drop(r);
    }
    copies.sort();
    adds.sort();
    let memcpy = (8 * n * len) as f64 / copies[reps / 2].as_secs_f64() / 1e9;
    let add = (12 * n * len) as f64 / adds[reps / 2].as_secs_f64() / 1e9;
    let ratio = add / memcpy;
    cx.row(
        "P10",
        &format!("CPU vector add through the bridge, {n} x {len} f32, results in the donated inputs' memory (a += b)"),
        Some(add),
        "GB/s",
        "parallel memcpy into mapped memory, all cores",
        Some(memcpy),
        Some(ratio),
        ">= 0.70x memcpy bandwidth",
        Some(ratio >= 0.70),
        "bytes read + written per second (12 per element: a and b read, the result written), medians; the batch is moved into the request, so the kernel adds in place in each pair's a",
    );
    Ok(())
}

/// Median of `times`.
fn median_of(times: &mut [std::time::Duration]) -> std::time::Duration {
    times.sort();
    times[times.len() / 2]
}

/// W1 and W2: the wgpu backend through the bridge against the CPU backend through the bridge, on
/// the same inputs, each result checked. A software adapter (llvmpipe) gets a smaller multiply.
fn wgpu_rows(cx: &mut Ctx, bridge: &GpuBridge, cpu_name: String) -> anyhow::Result<()> {
    use gpubridge::kernels::{MatMul, MatMulInput};
    use rand::{Rng, SeedableRng};
    let Some(adapter) = bridge
        .devices()
        .into_iter()
        .find(|d| d.id.backend == BackendKind::Wgpu)
    else {
        let why = bridge
            .reports()
            .iter()
            .find(|r| r.kind == BackendKind::Wgpu)
            .and_then(|r| r.unavailable_reason())
            .unwrap_or_default();
        for id in ["W1", "W2"] {
            if cx.wants(id) {
                cx.row(
                    id,
                    "needs a wgpu adapter",
                    None,
                    "",
                    "",
                    None,
                    None,
                    "",
                    None,
                    &format!("not measured: {why}"),
                );
            }
        }
        return Ok(());
    };
    let software = adapter.device_type == gpubridge::DeviceType::SoftwareGpu;
    let card = std::mem::replace(
        &mut cx.card,
        format!("{} via wgpu; host {cpu_name}", adapter.name),
    );
    let on_wgpu = ExecutionHints::default().on_backend(BackendKind::Wgpu);
    let on_cpu = ExecutionHints::default().on_backend(BackendKind::Cpu);
    let quick = cx.args.quick;

    if cx.wants("W1") {
        let (n, len, reps) = if quick {
            (2, 100_000, 3)
        } else {
            (10, 1_000_000, 5)
        };
        let input = pairs(n, len);
        let grain = bridge.batch::<VectorAdd>()?;
        let run = |hints: &ExecutionHints| -> anyhow::Result<(
            std::time::Duration,
            std::time::Duration,
            std::time::Duration,
            usize,
        )> {
            let r = block_on(grain.execute(input.clone(), hints.clone()))?;
            for (p, o) in input.iter().zip(&r.outputs) {
                anyhow::ensure!(
                    p.a.iter().zip(&p.b).zip(o).all(|((a, b), o)| a + b == *o),
                    "vector add result wrong"
                );
            }
            let mut t = Vec::with_capacity(reps);
            let (mut compute, mut transfer, mut chunks) = (Vec::new(), Vec::new(), 0);
            for _ in 0..reps {
                let batch = input.clone();
                let s = Instant::now();
                let r = block_on(grain.execute(batch, hints.clone()))?;
                t.push(s.elapsed());
                compute.push(r.compute_time());
                transfer.push(r.transfer_time());
                chunks = r.chunks.len();
                drop(r);
            }
            Ok((
                median_of(&mut t),
                median_of(&mut compute),
                median_of(&mut transfer),
                chunks,
            ))
        };
        let (wgpu_t, device_t, pack_t, chunks) = run(&on_wgpu)?;
        let (cpu_t, ..) = run(&on_cpu)?;
        let gbps = |t: std::time::Duration| (12 * n * len) as f64 / t.as_secs_f64() / 1e9;
        cx.row(
            "W1",
            &format!("wgpu vector add through the bridge, {n} x {len} f32 pairs, host Vecs in -> host Vecs out"),
            Some(gbps(wgpu_t)),
            "GB/s",
            "CPU backend through the bridge, same inputs, same run",
            Some(gbps(cpu_t)),
            Some(gbps(wgpu_t) / gbps(cpu_t)),
            "diagnostic (no target)",
            None,
            &format!(
                "wgpu {:.1} ms per call ({chunks} micro-batches): device (submit to done, copies included) {:.1} ms, packing into staging {:.1} ms; CPU {:.1} ms; bytes read + written per second, medians of {reps}",
                wgpu_t.as_secs_f64() * 1e3,
                device_t.as_secs_f64() * 1e3,
                pack_t.as_secs_f64() * 1e3,
                cpu_t.as_secs_f64() * 1e3
            ),
        );
    }

    if cx.wants("W2") {
        let s = match (quick, software) {
            (true, _) => 128,
            (false, true) => 512,
            (false, false) => 2048,
        };
        let reps = 3;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed);
        let input = MatMulInput {
            m: s,
            k: s,
            n: s,
            a: (0..s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
            b: (0..s * s).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        };
        let grain = bridge.batch::<MatMul>()?;
        let run = |hints: &ExecutionHints| -> anyhow::Result<(std::time::Duration, Vec<f32>)> {
            let first = block_on(grain.execute(vec![input.clone()], hints.clone()))?;
            let mut t = Vec::with_capacity(reps);
            for _ in 0..reps {
                let x = input.clone();
                let st = Instant::now();
                block_on(grain.execute(vec![x], hints.clone()))?;
                t.push(st.elapsed());
            }
            let c = first
                .outputs
                .into_iter()
                .next()
                .map(|m| m.data)
                .unwrap_or_default();
            Ok((median_of(&mut t), c))
        };
        let (wgpu_t, c_wgpu) = run(&on_wgpu)?;
        let (cpu_t, c_cpu) = run(&on_cpu)?;
        // Both against a float64 dot product on sampled entries, with the classical GEMM bound.
        for _ in 0..256 {
            let idx = rng.random_range(0..s * s);
            let (i, j) = (idx / s, idx % s);
            let (mut want, mut mag) = (0f64, 0f64);
            for p in 0..s {
                let x = f64::from(input.a[i * s + p]) * f64::from(input.b[p * s + j]);
                want += x;
                mag += x.abs();
            }
            let tol = (s as f64 + 2.0) * f64::from(f32::EPSILON) * mag;
            for (who, c) in [("wgpu", &c_wgpu), ("cpu", &c_cpu)] {
                let got = c.get(idx).copied().map_or(f64::NAN, f64::from);
                anyhow::ensure!(
                    (got - want).abs() <= tol,
                    "{who} matrix multiply wrong at [{i}, {j}]: {got} vs {want}"
                );
            }
        }
        let gflops = |t: std::time::Duration| 2.0 * (s as f64).powi(3) / t.as_secs_f64() / 1e9;
        cx.row(
            "W2",
            &format!("wgpu f32 {s}^3 matrix multiply (16 x 16 tiled WGSL), host Vecs in -> host Vec out"),
            Some(gflops(wgpu_t)),
            "GFLOP/s",
            "CPU backend (blocked SGEMM on all cores) through the bridge, same inputs, same run",
            Some(gflops(cpu_t)),
            Some(gflops(wgpu_t) / gflops(cpu_t)),
            "diagnostic (no target)",
            None,
            &format!(
                "wgpu {:.1} ms, CPU {:.1} ms per multiply; medians of {reps} after one untimed call; 256 sampled entries checked against float64",
                wgpu_t.as_secs_f64() * 1e3,
                cpu_t.as_secs_f64() * 1e3
            ),
        );
    }
    cx.card = card;
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_rows(cx: &mut Ctx, bridge: &GpuBridge) -> anyhow::Result<()> {
    use gpubridge::kernels::{MatMul, MatMulInput, Sum};
    let mut base = Baseline::new()?;
    checkpoint("after the rows' own baseline is made");
    let on_cuda = ExecutionHints::default().on_backend(BackendKind::Cuda);
    let quick = cx.args.quick;

    if cx.wants("P1") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        let reps = if quick { 20 } else { 300 };
        let mut no_graphs = bridge.config().clone();
        no_graphs.cuda.enable_graphs = false;
        let plain = gpubridge::builder(no_graphs)?
            .kernel(chain::Chain)?
            .build()?;
        // The graphs' bridge holds its CUDA backend where the row can ask it where a cached
        // graph's bytes are (`CudaBackend::graph_outputs`): the raw graph it is compared with
        // runs over the same bytes, as the chain's speed depends on their address.
        let cuda = gpubridge::cuda::CudaBackend::new(bridge.config())
            .map_err(|why| anyhow::anyhow!("CUDA: {why}"))?;
        let graphs = GpuBridge::builder(bridge.config().clone())
            .kernel(chain::Chain)?
            .backend(cuda.clone())
            .backend(gpubridge::cpu::CpuBackend::new(bridge.config())?)
            .build()?;
        let mut bytes_at: Vec<(u32, u64)> = Vec::new();
        let chain_id = <chain::Chain as gpubridge::Kernel>::ID;
        checkpoint("after P1's two bridges are built");
        let spin = on_cuda.clone().spin_wait(Duration::from_millis(1));
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        for n in [10u32, 100, 1000] {
            // One call of the chain through a bridge, timed, its parts noted.
            let call = |grain: &gpubridge::BatchGrain<chain::ChainInput, Vec<f32>>,
                        hints: &ExecutionHints,
                        calls: &mut Calls|
             -> gpubridge::Result<()> {
                let s = Instant::now();
                let r = block_on(
                    grain.execute(vec![chain::ChainInput { x: x.clone(), n }], hints.clone()),
                )?;
                calls.total.push(s.elapsed());
                calls.device.push(r.compute_time() + r.transfer_time());
                calls
                    .handoff
                    .push(r.chunks.iter().map(|c| c.handoff).sum::<Duration>());
                calls
                    .queue
                    .push(r.chunks.iter().map(|c| c.queue).sum::<Duration>());
                calls
                    .executor
                    .push(r.chunks.iter().map(|c| c.executor).sum::<Duration>());
                calls
                    .unpack
                    .push(r.chunks.iter().map(|c| c.unpack).sum::<Duration>());
                calls.replayed &= r.graph_replayed();
                calls.wrong |= r.outputs[0][5] != 5.0 + n as f32;
                Ok(())
            };
            let warm = |grain: &gpubridge::BatchGrain<chain::ChainInput, Vec<f32>>,
                        hints: &ExecutionHints|
             -> anyhow::Result<()> {
                for _ in 0..3 {
                    call(grain, hints, &mut Calls::new(0))?;
                }
                Ok(())
            };
            let grain = plain.batch::<chain::Chain>()?;
            call(&grain, &on_cuda, &mut Calls::new(0))?;
            checkpoint(&format!("chain {n}: after the first stream-launch call"));
            warm(&grain, &on_cuda)?;
            checkpoint(&format!("chain {n}: after 3 more"));
            let mut stream = Calls::new(reps);
            for _ in 0..reps {
                call(&grain, &on_cuda, &mut stream)?;
            }
            anyhow::ensure!(!stream.wrong, "chain result wrong (stream launches)");
            checkpoint(&format!("chain {n}: after the bridge's stream launches"));
            let stream = median(&mut stream.total) / n;
            let (raw_stream, raw_graph_alone) = base.chain_per_kernel(n as usize, reps)?;
            let raw_spin = base.last_chain_spin().map_or(0.0, us);
            checkpoint(&format!(
                "chain {n}: after the raw stream launches and graph"
            ));
            // The bridge's graphs of small plans copy with a kernel, not memcpy nodes: the raw
            // graph made the same way, for the note (the row's baseline stays the memcpy graph).
            let raw_kernel_copies = us(base.chain_graph_kernel_copies(n as usize, reps)?);
            let pre_bridge = cx
                .pre_bridge_chain
                .iter()
                .find(|(chain, _)| *chain == n)
                .map_or(String::new(), |(_, t)| {
                    format!(", {t:.2} us/kernel at process start, before any bridge")
                });
            // The raw baseline waits in cuStreamSynchronize, which spins while the host has
            // cores to spare (CUDA's automatic scheduling): the bridge's `spin_wait` hint is
            // that wait; the default parks the caller, which the executor wakes shortly before
            // the replay is expected to end (`cuda.early_wake_us`). The bridge's
            // calls and the raw replays alternate, one by one and then in blocks (the row's
            // figures), so both see the same machine.
            for (mode, hints) in [("spin_wait hint", &spin), ("default wait", &on_cuda)] {
                let grain = graphs.batch::<chain::Chain>()?;
                let before = cuda.graph_outputs(0, chain_id);
                warm(&grain, hints)?;
                // The bytes of this chain's graph: the one graph of the kernel new since the
                // warm-up began (the chain of the first mode), or found then (the second).
                if !bytes_at.iter().any(|(c, _)| *c == n) {
                    let new: Vec<u64> = cuda
                        .graph_outputs(0, chain_id)
                        .into_iter()
                        .filter(|a| !before.contains(a))
                        .collect();
                    if let [at] = new[..] {
                        bytes_at.push((n, at));
                    }
                }
                // Only while the graph is still cached (its block is then still its own).
                let cached = |at: &u64| cuda.graph_outputs(0, chain_id).contains(at);
                let at = bytes_at
                    .iter()
                    .find(|(c, _)| *c == n)
                    .map(|(_, a)| *a)
                    .filter(cached);
                // The raw memcpy graph's replays, over those bytes while the graph holds them,
                // with `between` after each.
                let mut raw_replays =
                    |between: &mut dyn FnMut() -> gpubridge::Result<()>| match at.filter(cached) {
                        // SAFETY: the 128 bytes where the bridge's graph of this chain keeps its
                        // output, in the device's primary context (the baseline's too); between
                        // the raw replays only that graph's calls use them, one at a time, and
                        // each writes them afresh (its first kernel) before it bumps them.
                        Some(at) => unsafe {
                            base.chain_graph_interleaved_at(n as usize, reps, at, between)
                        },
                        None => base.chain_graph_interleaved(n as usize, reps, between),
                    };
                let mut calls = Calls::new(reps);
                let mut raw = raw_replays(&mut || call(&grain, hints, &mut calls))?;
                let alternated = (median(&mut calls.total) / n, median(&mut raw) / n);
                // The row's figures: blocks of BLOCK back-to-back raw replays alternating with
                // blocks of BLOCK back-to-back bridge calls, so that each runs as a caller
                // repeating it would (a raw memcpy graph right after another stream's work can
                // replay slower than after its own: the copy engine), and both see the same
                // machine over the run.
                const BLOCK: usize = 20;
                let mut blocked = Calls::new(reps);
                let mut k = 0usize;
                let mut between_blocks = || -> gpubridge::Result<()> {
                    k += 1;
                    if k.is_multiple_of(BLOCK) {
                        for _ in 0..BLOCK {
                            call(&grain, hints, &mut blocked)?;
                        }
                    }
                    Ok(())
                };
                let mut raw = raw_replays(&mut between_blocks)?;
                anyhow::ensure!(!blocked.wrong, "chain result wrong (blocks)");
                let mut calls = blocked;
                // The raw kernel-copy graph over the same bytes, for the note.
                let raw_kc_same = match at.filter(cached) {
                    // SAFETY: as for `raw_replays`, with no bridge call meanwhile.
                    Some(at) => Some(us(unsafe {
                        base.chain_graph_kernel_copies_at(n as usize, reps, at)?
                    })),
                    None => None,
                };
                anyhow::ensure!(!calls.wrong, "chain result wrong");
                checkpoint(&format!("chain {n}: after the {mode} calls"));
                let raw_graph = median(&mut raw) / n;
                let graph = median(&mut calls.total) / n;
                let same_bytes = match raw_kc_same {
                    Some(kc) => format!(
                        "the raw graphs of the row over the bridge graph's own device bytes, each replay waited for in cuStreamSynchronize (the bridge's by its graph's signal word); raw kernel-copy graph over them {kc:.2} us/kernel (bridge {:.2}x that); ",
                        us(graph) / kc
                    ),
                    None => "the bridge graph's bytes not found: the raw graph over bytes of its own; ".to_owned(),
                };
                let replayed = calls.replayed;
                let ratio = us(graph) / us(raw_graph);
                let below_stream = 1.0 - us(graph) / us(stream);
                cx.row(
                    "P1",
                    &format!("CUDA graph replay through the bridge, chain of {n} small kernels (128 B in and out), per kernel, {mode}"),
                    Some(us(graph)),
                    "us/kernel",
                    if at.is_some() {
                        "raw cudarc graph replay of the same chain and copies over the bridge graph's own device bytes (cuStreamSynchronize), in blocks of 20 replays alternating with blocks of 20 bridge calls"
                    } else {
                        "raw cudarc graph replay of the same chain and copies (cuStreamSynchronize), in blocks of 20 replays alternating with blocks of 20 bridge calls"
                    },
                    Some(us(raw_graph)),
                    Some(ratio),
                    "<= 1.1x raw graph replay and >= 65% below the bridge's stream launches",
                    Some(replayed && ratio <= 1.1 && below_stream >= 0.65),
                    &format!(
                        "{mode}; the chain's launches reused by length (Plan::reuse_steps); every call a graph replay: {replayed}; {same_bytes}each bridge call right after one raw replay instead (alternated): bridge {:.2}, raw {:.2} us/kernel ({:.2}x); bridge stream launches (default wait) {:.2} us/kernel ({:.0}% below); raw stream launches {:.2} us/kernel; raw graph over bytes of its own, alone (not interleaved) {:.2} us/kernel, with a spinning wait {raw_spin:.2}; raw graph over bytes of its own with its copies made by a kernel through mapped memory (the bridge's small graphs copy outputs so, and inputs too unless each has one reader), {raw_kernel_copies:.2} us/kernel (bridge {:.2}x that){pre_bridge}; per call {:.1} us of which request start to submission {:.1} us, executor pack+replay+wait {:.1} us (job taken to outputs ready {:.1} us), hand-offs {:.1} us and unpack {:.1} us; medians of {reps}",
                        us(alternated.0),
                        us(alternated.1),
                        us(alternated.0) / us(alternated.1),
                        us(stream),
                        below_stream * 100.0,
                        us(raw_stream),
                        us(raw_graph_alone),
                        us(graph) / raw_kernel_copies,
                        us(graph) * f64::from(n),
                        us(median(&mut calls.queue)),
                        us(median(&mut calls.device)),
                        us(median(&mut calls.executor)),
                        us(median(&mut calls.handoff)),
                        us(median(&mut calls.unpack)),
                    ),
                );
            }
        }
    }

    if cx.wants("P1") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        graph_update_row(cx, bridge, &on_cuda)?;
    }

    if cx.wants("P2") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        let grain = bridge.batch::<Sum>()?;
        let batch: Vec<Vec<f32>> = (0..10)
            .map(|i| (0..100).map(|j| (i * j) as f32 * 0.01).collect())
            .collect();
        let (warm, iters) = if quick { (20, 200) } else { (500, 5000) };
        let mut raw = base.small_batch_graph(iters)?;
        let (raw50, raw99) = (
            us(percentile(&mut raw, 0.5)),
            us(percentile(&mut raw, 0.99)),
        );
        let mut launch = base.launch_round_trips(iters)?;
        let launch50 = us(median(&mut launch));
        let clock_ns = {
            let t = Instant::now();
            for _ in 0..100_000 {
                std::hint::black_box(Instant::now());
            }
            t.elapsed().as_nanos() as f64 / 100_000.0
        };
        let spin = on_cuda.clone().spin_wait(Duration::from_millis(1));
        for (mode, hints) in [("spin_wait hint", spin), ("default wait", on_cuda.clone())] {
            for _ in 0..warm {
                block_on(grain.execute(batch.clone(), hints.clone()))?;
            }
            let mut lat = Vec::with_capacity(iters);
            let mut device = Vec::with_capacity(iters);
            let mut executor = Vec::with_capacity(iters);
            let mut handoff = Vec::with_capacity(iters);
            let mut queue = Vec::with_capacity(iters);
            let mut replayed = true;
            for _ in 0..iters {
                let b = batch.clone();
                let t = Instant::now();
                let r = block_on(grain.execute(b, hints.clone()))?;
                lat.push(t.elapsed());
                device.push(r.compute_time());
                executor.push(r.chunks.iter().map(|c| c.executor).sum::<Duration>());
                handoff.push(r.chunks.iter().map(|c| c.handoff).sum::<Duration>());
                queue.push(r.chunks.iter().map(|c| c.queue).sum::<Duration>());
                replayed &= r.graph_replayed();
                std::hint::black_box(r);
            }
            let device50 = us(median(&mut device));
            let executor50 = us(median(&mut executor));
            let handoff50 = us(median(&mut handoff));
            let queue50 = us(median(&mut queue));
            let (p50, p99) = (
                us(percentile(&mut lat, 0.5)),
                us(percentile(&mut lat, 0.99)),
            );
            let note = format!(
                "{mode}; every call a graph replay: {replayed}; executor pack+replay+wait P50 {device50:.1} us, job taken to outputs handed on P50 {executor50:.1} us; request start to submission P50 {queue50:.1} us; hand-offs (to the executor and back) P50 {handoff50:.1} us; Instant::now {clock_ns:.0} ns; raw empty-kernel launch + sync P50 {launch50:.1} us; {iters} calls after {warm} warm-up"
            );
            cx.row(
                "P2",
                &format!("small batch (10 x 100 f32 sum), host in -> host out, P50, {mode}"),
                Some(p50),
                "us",
                "raw cudarc: the same copies and kernel as one graph, replayed, spin wait, P50",
                Some(raw50),
                Some(p50 / raw50),
                "P50 <= 20 us",
                Some(p50 <= 20.0),
                &note,
            );
            cx.row(
                "P2",
                &format!("small batch (10 x 100 f32 sum), host in -> host out, P99, {mode}"),
                Some(p99),
                "us",
                "raw cudarc: the same copies and kernel as one graph, replayed, spin wait, P99",
                Some(raw99),
                Some(p99 / raw99),
                "P99 <= 50 us",
                Some(p99 <= 50.0),
                &note,
            );
        }
        let (hop, cpu_path) = handoff_diagnostics(bridge, &batch, iters)?;
        cx.row(
            "P2",
            "diagnostic: thread hand-off round trip (std mpsc to a spinning thread, answer on a oneshot to a spinning caller, as between caller and executor), P50",
            Some(hop),
            "us",
            "none",
            None,
            None,
            "diagnostic (no target)",
            None,
            &format!("the same batch through the bridge on the CPU backend (rayon pool), spin_wait hint, P50 {cpu_path:.1} us; {iters} round trips"),
        );
    }

    if cx.wants("P4") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        let (n, len, reps) = if quick {
            (4, 100_000, 2)
        } else {
            (100, 1_000_000, 5)
        };
        let input = pairs(n, len);
        let h2d = base.h2d_pinned_gbps(256 << 20, 3)?;
        let d2h = base.d2h_pinned_gbps(256 << 20, 3)?;
        let floor = (8 * n * len) as f64 / (h2d * 1e9) + (4 * n * len) as f64 / (d2h * 1e9);
        let mut small_pages = bridge.config().clone();
        small_pages.memory.huge_page_outputs = false;
        let small_pages = gpubridge::bridge(small_pages)?;
        let mut one_lane = bridge.config().clone();
        one_lane.cuda.streams_per_device = 1;
        let one_lane = gpubridge::bridge(one_lane)?;
        for (variant, b) in [
            ("huge-page outputs (default)", bridge),
            ("4 KiB-page outputs", &small_pages),
            ("one lane: no overlap between micro-batches", &one_lane),
        ] {
            let grain = b.batch::<VectorAdd>()?;
            block_on(grain.execute(input.clone(), on_cuda.clone()))?;
            let mut times = Vec::new();
            let mut chunks = 0;
            let (mut dev_transfer, mut dev_compute) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..reps {
                let batch = input.clone();
                let t = Instant::now();
                let r = block_on(grain.execute(batch, on_cuda.clone()))?;
                times.push(t.elapsed());
                chunks = r.chunks.len();
                (dev_transfer, dev_compute) = (r.transfer_time(), r.compute_time());
                drop(r);
            }
            let best = median(&mut times);
            let ratio = best.as_secs_f64() / floor;
            let note = format!(
                "{variant}; pinned H2D {h2d:.1} GB/s, D2H {d2h:.1} GB/s; {chunks} micro-batches; on-device copies (packing overlapped) {:.1} ms, kernels {:.1} ms; median of {reps}",
                dev_transfer.as_secs_f64() * 1e3,
                dev_compute.as_secs_f64() * 1e3
            );
            if variant.starts_with("huge") {
                let reg = base.host_register_seconds(800 << 20)?;
                let (whole, pieces, fresh) =
                    base.host_copy_gbps(if quick { 64 << 20 } else { 800 << 20 })?;
                cx.row("P4", "diagnostic: host copy rates, all cores: pageable Vec -> pinned in one parallel copy", Some(whole), "GB/s", "pinned H2D bandwidth", Some(h2d), Some(whole / h2d), "diagnostic (no target)", None, &format!("in 8 MiB pieces (as the executor packs) {pieces:.1} GB/s; pinned -> fresh Vec (as an unpack, page faults included) {fresh:.1} GB/s"));
                cx.row("P4", "diagnostic: page-lock + unlock 800 MB of a caller's memory (cuMemHostRegister)", Some(reg * 1e3), "ms", "PCIe floor of the vector sample", Some(floor * 1e3), Some(reg * 1e3 / (floor * 1e3)), "diagnostic (no target)", None, "what uploading straight from the caller's Vecs would pay before its first byte moves");
            }
            cx.row("P4", &format!("vector sample {n} x {len} f32 pairs from pageable Vecs, results in Vecs, {variant}"), Some(best.as_secs_f64() * 1e3), "ms", "PCIe floor: bytes moved / pinned bandwidth measured now", Some(floor * 1e3), Some(ratio), "<= 1.5x the PCIe floor", Some(ratio <= 1.5), &note);
        }
    }

    if cx.wants("P5") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        let iters = if quick { 1000 } else { 100_000 };
        let mut pool = base.pool_pairs(1 << 20, iters)?;
        let mut raw = base.alloc_async_pairs(1 << 20, iters)?;
        let (p, r) = (median(&mut pool), median(&mut raw));
        let speedup = r.as_secs_f64() / p.as_secs_f64().max(1e-12);
        cx.row(
            "P5",
            "device pool rent + return, 1 MiB, median",
            Some(us(p)),
            "us",
            "cuMemAllocAsync + cuMemFreeAsync, 1 MiB, median",
            Some(us(r)),
            Some(us(p) / us(r)),
            "median <= 0.3 us and >= 3x faster than the async allocator",
            Some(us(p) <= 0.3 && speedup >= 3.0),
            &format!("{speedup:.1}x faster"),
        );
    }

    if cx.wants("P8") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        let s = if quick { 512 } else { 4096 };
        let a: Vec<f32> = (0..s * s).map(|i| (i % 17) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..s * s).map(|i| (i % 13) as f32 * 0.1).collect();
        let input = MatMulInput {
            m: s,
            k: s,
            n: s,
            a,
            b,
        };
        let mut unstaged = bridge.config().clone();
        unstaged.cuda.staged_plans = false;
        let unstaged = gpubridge::bridge(unstaged)?;
        let time = |b: &GpuBridge| -> anyhow::Result<(Duration, String)> {
            let grain = b.batch::<MatMul>()?;
            block_on(grain.execute(vec![input.clone()], on_cuda.clone()))?;
            let mut best = (Duration::MAX, String::new());
            for _ in 0..P8_REPS {
                let x = input.clone();
                let t = Instant::now();
                let r = block_on(grain.execute(vec![x], on_cuda.clone()))?;
                let took = t.elapsed();
                if took < best.0 {
                    let c = &r.chunks[0];
                    best = (
                        took,
                        format!(
                            "executor {:.2} ms (device: compute {:.2} ms, copies outside it {:.2} ms)",
                            c.executor.as_secs_f64() * 1e3,
                            c.compute.as_secs_f64() * 1e3,
                            c.transfer.as_secs_f64() * 1e3
                        ),
                    );
                }
            }
            Ok(best)
        };
        let (best, staged_note) = time(bridge)?;
        let (plain, plain_note) = time(&unstaged)?;
        let (raw_round, raw_gemm, raw_blocks) = base.cublas_sgemm(s, 3)?;
        let ratio = best.as_secs_f64() / raw_round.as_secs_f64();
        cx.row(
            "P8",
            &format!("f32 {s}^2 matrix multiply, host Vecs in -> host Vec out"),
            Some(best.as_secs_f64() * 1e3),
            "ms",
            "cuBLAS called directly, pinned host in -> out (H2D, SGEMM, D2H)",
            Some(raw_round.as_secs_f64() * 1e3),
            Some(ratio),
            "within 10% of cuBLAS called directly",
            Some(ratio <= 1.10),
            &format!(
                "staged (row blocks overlapping copies): {staged_note}; unstaged (cuda.staged_plans = false) {:.2} ms, {plain_note}; SGEMM as 8 row blocks {:.2} ms; SGEMM alone {:.2} ms ({:.1} TFLOP/s); best of {P8_REPS}",
                plain.as_secs_f64() * 1e3,
                raw_blocks.as_secs_f64() * 1e3,
                raw_gemm.as_secs_f64() * 1e3,
                2.0 * (s as f64).powi(3) / raw_gemm.as_secs_f64() / 1e12
            ),
        );
    }

    if cx.wants("P11") {
        // Earlier rows' data is freed on the janitor thread: not while this row runs.
        gpubridge::janitor::flush();
        let exe = std::env::current_exe()?;
        let run = || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let st = std::process::Command::new(&exe)
                .args([
                    "run",
                    "vector",
                    "--backend",
                    "cuda",
                    "--pairs",
                    "1",
                    "--len",
                    "1000",
                    "--sum-vectors",
                    "1",
                    "--sum-len",
                    "10",
                ])
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(st.success(), "the sample run failed");
            Ok(t.elapsed())
        };
        run()?;
        let mut t = vec![run()?, run()?, run()?];
        let warm = median(&mut t);
        cx.row(
            "P11",
            "process start -> first verified GPU result, PTX cache warm",
            Some(warm.as_secs_f64() * 1e3),
            "ms",
            "",
            None,
            None,
            "<= 1000 ms",
            Some(warm.as_secs_f64() <= 1.0),
            "gpubridge run vector --pairs 1 --len 1000, median of 3",
        );
    }
    Ok(())
}
