//! Which part of a CUDA graph replay decides its latency: the graph, the stream it is launched
//! on, its memory copies, or its instantiation. P1's chain of 10 kernels replays in about 20 or
//! about 27.5 us depending on the process (docs/PERFORMANCE.md, thirteenth session); this probe
//! replays several graphs of the same chain, round robin, in one process, and prints each one's
//! median so that the mode can be pinned to what carries it.
//!
//! `cargo run --release -p gpubridge-cuda --example replay_modes [reps] [chain] [experiment]`
//! (needs a GPU; prints one table). Without an experiment it replays the graphs round robin;
//! the experiments, each a function below, are `streams`, `pair`, `presence`, `channels`,
//! `lanes`, `handles`, `graphs`, `threads`, `copies`, `bridge`, `memory`, `one-at-a-time`
//! (eighteenth session: what slows every graph of a context), `flag` (a kernel-written
//! completion word against `cuStreamQuery`), `fence`, `switch`, `pending`, `modes` (an
//! uploaded graph not yet launched), `alternate`, `placement` (the SM each kernel ran on) and
//! `addresses` (the chain over 80 device addresses) of the nineteenth, and `inputs` (the first
//! kernel reading its input from mapped host memory instead of a copy node) of the twentieth. Some take settings from
//! the environment (`KIND`, `TAIL`, `CAP`, `UPLOAD`, `ACTION`, `ORDER`, `FAST`,
//! `PLAIN_ROUNDS`), as their documentation says.

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaGraph, CudaStream};

const SOURCE: &str = r#"
extern "C" __global__ void bump(float* x) { x[threadIdx.x] += 1.0f; }
extern "C" __global__ void copy_words(const unsigned int* src, unsigned int* dst, unsigned int n) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[i] = src[i];
}
extern "C" __global__ void signal(unsigned int* counter, volatile unsigned int* flag) {
    unsigned int c = *counter + 1;
    *counter = c;
    __threadfence_system();
    *flag = c;
}
extern "C" __global__ void idle() {}
extern "C" __global__ void first(const float* x, float* y) { y[threadIdx.x] = x[threadIdx.x] + 1.0f; }
extern "C" __global__ void last(const float* y, float* out) { out[threadIdx.x] = y[threadIdx.x] + 1.0f; }
extern "C" __global__ void bump_log(float* x, unsigned int* log) {
    x[threadIdx.x] += 1.0f;
    if (threadIdx.x == 0) {
        unsigned int smid;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
        unsigned int i = atomicAdd(log, 1u);
        log[1 + (i & 4095u)] = smid;
    }
}
extern "C" __global__ void fence_only() { __threadfence_system(); }
extern "C" __global__ void fence_device() { __threadfence(); }
extern "C" __global__ void host_write(volatile unsigned int* flag) { *flag = 1; }
extern "C" __global__ void copy_words_signal(const unsigned int* src, unsigned int* dst, unsigned int n,
                                             unsigned int* counter, volatile unsigned int* flag) {
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned int c = *counter + 1;
        *counter = c;
        __threadfence_system();
        *flag = c;
    }
}
"#;

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Buffers {
    dev: sys::CUdeviceptr,
    host: *mut u8,
    back: *mut u8,
}

impl Buffers {
    fn new() -> Res<Self> {
        // SAFETY: a context is current on this thread.
        unsafe {
            // Mapped (and, with unified addressing, at the same address on the device).
            let host = result::malloc_host(128, 2)?.cast::<u8>();
            let back = result::malloc_host(128, 2)?.cast::<u8>();
            std::ptr::write_bytes(host, 0, 128);
            Ok(Self {
                dev: result::malloc_sync(1024)?,
                host,
                back,
            })
        }
    }
}

/// What a chain enqueues besides its kernels.
#[derive(Clone, Copy)]
enum Copies {
    Both,
    /// The copies made by a kernel through mapped host memory.
    Kernel,
    None,
    Only,
}

fn enqueue(
    bump: &CudaFunction,
    copy: &CudaFunction,
    b: &Buffers,
    n: usize,
    copies: Copies,
    stream: &CudaStream,
) -> Res<()> {
    let cs = stream.cu_stream();
    // SAFETY: 128 pinned bytes into a 1024-byte device buffer and back; all outlive the stream's
    // work (the probe synchronises before exit and never frees).
    unsafe {
        // One block of 32 threads, as every kernel here.
        let launch = |f: &CudaFunction, params: &mut [*mut c_void]| {
            result::launch_kernel(f.cu_function(), (1, 1, 1), (32, 1, 1), 0, cs, params)
        };
        let copy_kernel = |src: u64, dst: u64| -> Res<()> {
            let (mut s, mut d, mut w) = (src, dst, 32u32);
            let mut params = [
                (&mut s as *mut u64).cast::<c_void>(),
                (&mut d as *mut u64).cast::<c_void>(),
                (&mut w as *mut u32).cast::<c_void>(),
            ];
            launch(copy, &mut params)?;
            Ok(())
        };
        if matches!(copies, Copies::Kernel) {
            copy_kernel(b.host as u64, b.dev)?;
        } else if !matches!(copies, Copies::None) {
            result::memcpy_htod_async(b.dev, std::slice::from_raw_parts(b.host, 128), cs)?;
        }
        if !matches!(copies, Copies::Only) {
            for _ in 0..n {
                let mut p = b.dev;
                launch(bump, &mut [(&mut p as *mut u64).cast::<c_void>()])?;
            }
        }
        if matches!(copies, Copies::Kernel) {
            copy_kernel(b.dev, b.back as u64)?;
        } else if !matches!(copies, Copies::None) {
            result::memcpy_dtoh_async(std::slice::from_raw_parts_mut(b.back, 128), b.dev, cs)?;
        }
    }
    Ok(())
}

fn capture(
    bump: &CudaFunction,
    copy: &CudaFunction,
    b: &Buffers,
    n: usize,
    copies: Copies,
    stream: &Arc<CudaStream>,
) -> Res<CudaGraph> {
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    enqueue(bump, copy, b, n, copies, stream)?;
    let g = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .ok_or("empty graph")?;
    g.upload()?;
    g.launch()?;
    stream.synchronize()?;
    Ok(g)
}

/// How a replay is waited for.
#[derive(Clone, Copy)]
enum Wait {
    Sync,
    Spin,
}

impl Wait {
    fn name(self) -> &'static str {
        match self {
            Wait::Sync => "sync",
            Wait::Spin => "spin",
        }
    }
}

fn wait(stream: sys::CUstream, how: Wait) -> Res<()> {
    // SAFETY: a live stream of the current context.
    unsafe {
        match how {
            Wait::Sync => result::stream::synchronize(stream)?,
            Wait::Spin => {
                while sys::cuStreamQuery(stream) == sys::CUresult::CUDA_ERROR_NOT_READY {
                    std::hint::spin_loop();
                }
            }
        }
    }
    Ok(())
}

/// Replays each (graph exec, stream) pair `reps` times, round robin; returns each pair's median
/// and 10th/90th percentiles in microseconds.
fn round_robin(
    pairs: &[(sys::CUgraphExec, sys::CUstream)],
    reps: usize,
    how: Wait,
) -> Res<Vec<(f64, f64, f64)>> {
    let mut times = vec![Vec::with_capacity(reps); pairs.len()];
    for _ in 0..reps {
        for (i, &(exec, stream)) in pairs.iter().enumerate() {
            let t = Instant::now();
            // SAFETY: a live exec and stream.
            unsafe { result::graph::launch(exec, stream)? };
            wait(stream, how)?;
            times[i].push(t.elapsed());
        }
    }
    Ok(times
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
            (q(0.5), q(0.1), q(0.9))
        })
        .collect())
}

fn stream_round_robin(
    bump: &CudaFunction,
    copy: &CudaFunction,
    bufs: &[Buffers],
    n: usize,
    stream: &CudaStream,
    reps: usize,
) -> Res<Vec<f64>> {
    let mut times = vec![Vec::<Duration>::with_capacity(reps); bufs.len()];
    for _ in 0..reps {
        for (i, b) in bufs.iter().enumerate() {
            let t = Instant::now();
            enqueue(bump, copy, b, n, Copies::Both, stream)?;
            wait(stream.cu_stream(), Wait::Spin)?;
            times[i].push(t.elapsed());
        }
    }
    Ok(times
        .into_iter()
        .map(|mut v| {
            v.sort_unstable();
            v[v.len() / 2].as_secs_f64() * 1e6
        })
        .collect())
}

fn row(label: &str, r: &[(f64, f64, f64)]) {
    let cells: Vec<String> = r
        .iter()
        .map(|(m, lo, hi)| format!("{m:5.1} ({lo:4.1}-{hi:4.1})"))
        .collect();
    println!("{label:<34} {}", cells.join("  "));
}

/// Kernel-copy graphs launched on the stream they were uploaded to, on another stream, on
/// another stream after an upload there, and captured on that other stream: whether a graph
/// replays slower on a stream it was not uploaded to (the bridge captures on the executor's
/// stream and replays inline on another).
fn upload_streams(
    bump: &CudaFunction,
    copy: &CudaFunction,
    bufs: &[Buffers],
    n: usize,
    s0: &Arc<CudaStream>,
    streams: &[Arc<CudaStream>],
    reps: usize,
) -> Res<()> {
    let graphs: Vec<CudaGraph> = bufs
        .iter()
        .map(|b| capture(bump, copy, b, n, Copies::Kernel, s0))
        .collect::<Res<_>>()?;
    let on = |which: &dyn Fn(usize) -> sys::CUstream| -> Pairs {
        graphs
            .iter()
            .enumerate()
            .map(|(i, g)| (g.cu_graph_exec(), which(i)))
            .collect()
    };
    both_waits(
        &[
            ("S1 uploaded to s0, on s0", on(&|_| s0.cu_stream())),
            (
                "S2 uploaded to s0, on stream i",
                on(&|i| streams[i].cu_stream()),
            ),
        ],
        reps,
    )?;
    for (g, s) in graphs.iter().zip(streams) {
        // SAFETY: a live exec and stream; the exec is idle (every replay was waited for).
        unsafe { result::graph::upload(g.cu_graph_exec(), s.cu_stream())? };
        s.synchronize()?;
    }
    both_waits(
        &[
            (
                "S3 uploaded again to i, on i",
                on(&|i| streams[i].cu_stream()),
            ),
            ("S4 back on s0", on(&|_| s0.cu_stream())),
        ],
        reps,
    )?;
    let own: Vec<CudaGraph> = bufs
        .iter()
        .zip(streams)
        .map(|(b, s)| capture(bump, copy, b, n, Copies::Kernel, s))
        .collect::<Res<_>>()?;
    let pairs: Pairs = own
        .iter()
        .zip(streams)
        .map(|(g, s)| (g.cu_graph_exec(), s.cu_stream()))
        .collect();
    both_waits(&[("S5 captured on i, on i", pairs)], reps)
}

/// (graph exec, stream) pairs replayed round robin.
type Pairs = Vec<(sys::CUgraphExec, sys::CUstream)>;

/// One row per case, spinning and then synchronising.
fn both_waits(cases: &[(&str, Pairs)], reps: usize) -> Res<()> {
    for how in [Wait::Spin, Wait::Sync] {
        for (label, pairs) in cases {
            row(
                &format!("[{}] {label}", how.name()),
                &round_robin(pairs, reps, how)?,
            );
        }
    }
    Ok(())
}

/// P1's loop without the bridge: a memcpy graph replayed on one stream and waited for in
/// `cuStreamSynchronize` (the raw baseline), then a kernel-copy graph on another stream waited
/// for by spinning (what the bridge replays), alternately; each alone first; then the pair with
/// a host pause between its halves and in the other order. Prints each half's median.
fn pair(
    bump: &CudaFunction,
    copy: &CudaFunction,
    bufs: &[Buffers],
    n: usize,
    s0: &Arc<CudaStream>,
    s1: &Arc<CudaStream>,
    reps: usize,
) -> Res<()> {
    let a = capture(bump, copy, &bufs[0], n, Copies::Both, s0)?;
    let g = capture(bump, copy, &bufs[1], n, Copies::Kernel, s1)?;
    let (a, g) = (
        (a.cu_graph_exec(), s0.cu_stream()),
        (g.cu_graph_exec(), s1.cu_stream()),
    );
    let time = |(exec, stream): (sys::CUgraphExec, sys::CUstream), how: Wait| -> Res<Duration> {
        let t = Instant::now();
        // SAFETY: a live, idle exec and a live stream.
        unsafe { result::graph::launch(exec, stream)? };
        wait(stream, how)?;
        Ok(t.elapsed())
    };
    let med = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64() * 1e6
    };
    let alone =
        |x, how| -> Res<f64> { Ok(med((0..reps).map(|_| time(x, how)).collect::<Res<_>>()?)) };
    println!(
        "alone: memcpy graph (sync) {:.1} us, kernel-copy graph (spin) {:.1} us",
        alone(a, Wait::Sync)?,
        alone(g, Wait::Spin)?
    );
    for (label, pause_us, memcpy_first) in [
        ("pair", 0u64, true),
        ("pair, 5 us pause", 5, true),
        ("pair, reversed", 0, false),
        ("pair again", 0, true),
    ] {
        let (mut ta, mut tg) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
        for _ in 0..reps {
            let pause = || {
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(pause_us) {
                    std::hint::spin_loop();
                }
            };
            if memcpy_first {
                ta.push(time(a, Wait::Sync)?);
                pause();
                tg.push(time(g, Wait::Spin)?);
            } else {
                tg.push(time(g, Wait::Spin)?);
                pause();
                ta.push(time(a, Wait::Sync)?);
            }
            pause();
        }
        println!(
            "{label}: memcpy graph {:.1} us, kernel-copy graph {:.1} us",
            med(ta),
            med(tg)
        );
    }
    Ok(())
}

/// Whether what a bridge keeps on the device slows other work's graphs: one memcpy graph
/// (waited for in `cuStreamSynchronize`, P1's raw baseline) and one kernel-copy graph (spun for,
/// as the bridge replays) of the chain, captured once, replayed alternately while more is opened
/// beside them: idle streams, a cuBLAS handle, one and then three CUDA backends (executors with
/// their lanes, pools and handles, all idle), and after everything is dropped again.
fn presence(p: &Probe<'_>) -> Res<()> {
    let Probe {
        ctx,
        bump,
        copy,
        bufs,
        n,
        s0,
        reps,
        ..
    } = *p;
    let memcpy = capture(bump, copy, &bufs[0], n, Copies::Both, s0)?;
    let kc = capture(bump, copy, &bufs[1], n, Copies::Kernel, s0)?;
    let (a, g) = (
        (memcpy.cu_graph_exec(), s0.cu_stream()),
        (kc.cu_graph_exec(), s0.cu_stream()),
    );
    let phase = |label: &str| -> Res<()> {
        ctx.bind_to_thread()?;
        let r = |x: (sys::CUgraphExec, sys::CUstream), how| round_robin(&[x], reps, how);
        let (ra, rg) = (r(a, Wait::Sync)?, r(g, Wait::Spin)?);
        let pairs = round_robin(&[a, g], reps, Wait::Spin)?;
        println!(
            "{label:<40} memcpy/sync {:5.1} ({:4.1}-{:4.1})  kernel-copy/spin {:5.1} ({:4.1}-{:4.1})  alternating, spin: {:5.1} {:5.1}",
            ra[0].0, ra[0].1, ra[0].2, rg[0].0, rg[0].1, rg[0].2, pairs[0].0, pairs[1].0
        );
        Ok(())
    };
    phase("bare")?;
    let idle: Vec<Arc<CudaStream>> = (0..24)
        .map(|_| ctx.new_stream())
        .collect::<Result<_, _>>()?;
    phase("+ 24 idle streams")?;
    // SAFETY: only probes whether libcublas can be loaded.
    let blas = if unsafe { cudarc::cublas::sys::is_culib_present() } {
        let h = cudarc::cublas::result::create_handle()?;
        // SAFETY: a fresh handle; the stream outlives it (destroyed below first).
        unsafe { cudarc::cublas::result::set_stream(h, idle[0].cu_stream() as _)? };
        phase("+ a cuBLAS handle")?;
        Some(h)
    } else {
        None
    };
    let config = gpubridge_core::BridgeConfig::default();
    let one = gpubridge_cuda::CudaBackend::new(&config).map_err(|e| e.to_string())?;
    phase("+ one CUDA backend (idle)")?;
    let more: Vec<_> = (0..2)
        .map(|_| gpubridge_cuda::CudaBackend::new(&config).map_err(|e| e.to_string()))
        .collect::<std::result::Result<_, _>>()?;
    phase("+ two more backends (three, idle)")?;
    drop(more);
    drop(one);
    if let Some(h) = blas {
        // SAFETY: the handle is ours and idle.
        unsafe { cudarc::cublas::result::destroy_handle(h)? };
    }
    drop(idle);
    phase("everything dropped again")?;
    phase("bare, again")
}

/// Median host time (launch and `cuStreamSynchronize`) and device time (events around the
/// launch) of `reps` replays of `exec` on `stream`, in microseconds.
fn host_and_device(
    exec: sys::CUgraphExec,
    stream: &Arc<CudaStream>,
    reps: usize,
) -> Res<(f64, f64)> {
    let ctx = stream.context();
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let (a, b) = (ctx.new_event(timing)?, ctx.new_event(timing)?);
    let (mut host, mut device) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        let t = Instant::now();
        a.record(stream)?;
        // SAFETY: a live, idle exec and a live stream of the current context.
        unsafe { result::graph::launch(exec, stream.cu_stream())? };
        b.record(stream)?;
        stream.synchronize()?;
        host.push(t.elapsed().as_secs_f64() * 1e6);
        device.push(f64::from(a.elapsed_ms(&b)?) * 1e3);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((med(host), med(device)))
}

/// What every experiment below works with: the context, the chain's kernels and buffers, the
/// chain's length, the stream the timed graph is captured and replayed on, and replays per
/// timing.
#[derive(Clone, Copy)]
struct Probe<'a> {
    ctx: &'a Arc<CudaContext>,
    bump: &'a CudaFunction,
    copy: &'a CudaFunction,
    bufs: &'a [Buffers],
    n: usize,
    s0: &'a Arc<CudaStream>,
    reps: usize,
}

impl Probe<'_> {
    /// The timed graph ([`Timed`]).
    fn timed(&self) -> Res<Timed> {
        Timed::new(self.bump, self.copy, self.bufs, self.n, self.s0, self.reps)
    }

    /// The timed graph, timed once on s0 before anything else is done ("bare").
    fn start(&self) -> Res<Timed> {
        let timed = self.timed()?;
        timed.at("bare, on s0")?;
        Ok(timed)
    }
}

/// The graph every experiment below times: a kernel-copy graph of the chain on `bufs[1]`,
/// captured on s0.
struct Timed {
    _graph: CudaGraph,
    exec: sys::CUgraphExec,
    ctx: Arc<CudaContext>,
    s0: Arc<CudaStream>,
    reps: usize,
}

impl Timed {
    fn new(
        bump: &CudaFunction,
        copy: &CudaFunction,
        bufs: &[Buffers],
        n: usize,
        s0: &Arc<CudaStream>,
        reps: usize,
    ) -> Res<Self> {
        let graph = capture(bump, copy, &bufs[1], n, Copies::Kernel, s0)?;
        Ok(Self {
            exec: graph.cu_graph_exec(),
            _graph: graph,
            ctx: s0.context().clone(),
            s0: s0.clone(),
            reps,
        })
    }

    /// [`Timed::show`] on s0.
    fn at(&self, label: &str) -> Res<()> {
        self.show(label, &self.s0)
    }

    /// Prints the graph's host and device time per replay on `stream` (the context bound first:
    /// some experiments work on other threads or through a bridge in between).
    fn show(&self, label: &str, stream: &Arc<CudaStream>) -> Res<()> {
        self.ctx.bind_to_thread()?;
        let (h, d) = host_and_device(self.exec, stream, self.reps)?;
        println!("{label:<52} host {h:6.1} us  device {d:6.1} us");
        Ok(())
    }
}

/// An empty kernel, compiled for the context's device.
fn nothing_kernel(ctx: &Arc<CudaContext>) -> Res<CudaFunction> {
    let (a, b) = ctx.compute_capability()?;
    let ptx = gpubridge_cuda::compile(
        "channels",
        "extern \"C\" __global__ void nothing() {}",
        (a as u32, b as u32),
    )?;
    Ok(ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))?
        .load_function("nothing")?)
}

/// Launches the kernel of [`nothing_kernel`] on `stream` and waits for it.
fn run_nothing(nothing: &CudaFunction, stream: &CudaStream) -> Res<()> {
    // SAFETY: a kernel without parameters on a live stream.
    unsafe {
        result::launch_kernel(
            nothing.cu_function(),
            (1, 1, 1),
            (1, 1, 1),
            0,
            stream.cu_stream(),
            &mut [],
        )?;
    }
    stream.synchronize()?;
    Ok(())
}

/// The eighteenth session's trigger of the slow mode: `k` new streams, each running an empty
/// kernel; the streams are returned (kept alive or dropped as the caller likes).
fn streams_ran_a_kernel(
    ctx: &Arc<CudaContext>,
    nothing: &CudaFunction,
    k: usize,
) -> Res<Vec<Arc<CudaStream>>> {
    (0..k)
        .map(|_| {
            let s = ctx.new_stream()?;
            run_nothing(nothing, &s)?;
            Ok(s)
        })
        .collect()
}

/// The median host time in microseconds of `reps` replays of `exec` on `stream`, each launched
/// and waited for (`how`).
fn median_replay(
    exec: sys::CUgraphExec,
    stream: sys::CUstream,
    reps: usize,
    how: Wait,
) -> Res<f64> {
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        // SAFETY: a live exec and stream.
        unsafe { result::graph::launch(exec, stream)? };
        wait(stream, how)?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Whether streams that have carried work slow every later graph: a kernel-copy graph of the
/// chain timed (host and device) while more and more other streams get one empty-kernel launch
/// each, then on a stream of the greatest priority, then after a second's rest.
fn channels(p: &Probe<'_>) -> Res<()> {
    let Probe { ctx, s0, .. } = *p;
    let timed = p.timed()?;
    let show = |label: &str, stream: &Arc<CudaStream>| timed.show(label, stream);
    let (_least, greatest) = result::stream::get_priority_range()?;
    let high = ctx.new_stream_with_priority(greatest)?;
    show("bare, on s0", s0)?;
    show("bare, on a stream of the greatest priority", &high)?;
    let others: Vec<Arc<CudaStream>> = (0..24)
        .map(|_| ctx.new_stream())
        .collect::<Result<_, _>>()?;
    show("+ 24 streams created, none used", s0)?;
    let nothing = nothing_kernel(ctx)?;
    let mut used = 0;
    for k in [1usize, 2, 4, 8, 10, 12, 14, 16, 24] {
        for s in &others[used..k] {
            run_nothing(&nothing, s)?;
        }
        used = k;
        show(&format!("+ {k} other streams have run a kernel"), s0)?;
    }
    show("then on the stream of the greatest priority", &high)?;
    std::thread::sleep(Duration::from_secs(1));
    show("after a second's rest, on s0", s0)?;
    drop(others);
    show("the other streams destroyed, on s0", s0)?;
    Ok(())
}

/// The executor's lanes copied: three "bridges" of two lanes each (a stream, four timing events
/// and two copy streams per lane) made up front, then each lane in turn runs what a stream-launch
/// call runs (events recorded around a few kernels on the lane's stream) or, second, only the
/// kernels; the graph is timed after each lane's first use.
fn lanes(p: &Probe<'_>) -> Res<()> {
    let Probe {
        ctx, bump, bufs, ..
    } = *p;
    let timed = p.start()?;
    let with_events = std::env::var_os("LANES_NO_EVENTS").is_none();
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    type LaneParts = (
        Arc<CudaStream>,
        Vec<cudarc::driver::CudaEvent>,
        Arc<CudaStream>,
        Arc<CudaStream>,
    );
    let made: Vec<LaneParts> = (0..6)
        .map(|_| -> Res<LaneParts> {
            Ok((
                ctx.new_stream()?,
                (0..4)
                    .map(|_| ctx.new_event(timing))
                    .collect::<Result<_, _>>()?,
                ctx.new_stream()?,
                ctx.new_stream()?,
            ))
        })
        .collect::<Res<_>>()?;
    timed.at("+ six lanes made (18 streams, 24 events)")?;
    for (i, (stream, events, _, _)) in made.iter().enumerate() {
        let cs = stream.cu_stream();
        if with_events {
            events[0].record(stream)?;
            events[1].record(stream)?;
        }
        for _ in 0..3 {
            let mut p = bufs[2 + i % 4].dev;
            // SAFETY: `bump` takes one float pointer into a live 1024-byte buffer.
            unsafe {
                result::launch_kernel(
                    bump.cu_function(),
                    (1, 1, 1),
                    (32, 1, 1),
                    0,
                    cs,
                    &mut [(&mut p as *mut u64).cast::<c_void>()],
                )?;
            }
        }
        if with_events {
            events[2].record(stream)?;
            events[3].record(stream)?;
        }
        stream.synchronize()?;
        timed.at(&format!(
            "+ lane {i} ran ({} events)",
            if with_events { "with" } else { "without" }
        ))?;
    }
    Ok(())
}

/// Whether memory brings the slowdown on: `MEMORY=device` (the default) allocates device memory
/// (`cuMemAlloc`) in steps up to 256 MiB in all, `MEMORY=pinned` pinned host memory
/// (`cuMemHostAlloc`), `MEMORY=info` calls `cuMemGetInfo`; the graph is timed after each step.
fn memory(p: &Probe<'_>) -> Res<()> {
    let timed = p.start()?;
    let what = std::env::var("MEMORY").unwrap_or_else(|_| "device".to_owned());
    let mut held = 0usize;
    for mib in [1usize, 2, 4, 8, 16, 32, 64, 256] {
        while held < mib {
            // SAFETY: allocations of this context, kept for the process's life.
            unsafe {
                match what.as_str() {
                    "pinned" => {
                        result::malloc_host(1 << 20, 0)?;
                    }
                    "info" => {
                        result::mem_get_info()?;
                    }
                    _ => {
                        result::malloc_sync(1 << 20)?;
                    }
                }
            }
            held += 1;
        }
        timed.at(&format!("+ {mib} ({what}: MiB, or calls)"))?;
    }
    Ok(())
}

/// Whether a bridge's ordinary work brings the slowdown on: one, then a second, bridge (CUDA
/// backend with its default settings, `BRIDGE_LANES` lanes, graphs off so that every call runs
/// as stream launches on a lane) adds 128K floats pairs, call after call; the graph is timed
/// after calls 1, 2, 3, 4, 10 and 100 of each.
fn bridge_work(p: &Probe<'_>) -> Res<()> {
    use gpubridge_core::kernels::{VectorAdd, VectorPair};
    let timed = p.start()?;
    let mut config = gpubridge_core::BridgeConfig::default();
    config.cuda.enable_graphs = false;
    if let Some(l) = std::env::var("BRIDGE_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.cuda.streams_per_device = l;
    }
    let pair = VectorPair {
        a: (0..128 << 10).map(|i| i as f32).collect(),
        b: vec![1.0; 128 << 10],
    };
    let mut bridges = Vec::new();
    for which in ["first", "second"] {
        let cuda = gpubridge_cuda::CudaBackend::new(&config).map_err(|e| e.to_string())?;
        let bridge = gpubridge_core::GpuBridge::builder(config.clone())
            .kernel(VectorAdd)?
            .backend(cuda)
            .build()?;
        timed.at(&format!("+ {which} bridge built"))?;
        let grain = bridge.batch::<VectorAdd>()?;
        let hints =
            gpubridge_core::ExecutionHints::default().on_backend(gpubridge_core::BackendKind::Cuda);
        for call in 1..=100 {
            let r = futures_lite_block_on(grain.execute(vec![pair.clone()], hints.clone()))?;
            if r.outputs[0][7] != 8.0 {
                return Err("vector add wrong".into());
            }
            if matches!(call, 1 | 2 | 3 | 4 | 10 | 100) {
                timed.at(&format!("  {which} bridge, after call {call}"))?;
            }
        }
        bridges.push(bridge);
    }
    Ok(())
}

/// Polls a future to completion on this thread (the bridge's futures complete from its threads).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Whether streams that copy count differently: stream after stream makes one 128-byte
/// `cuMemcpyHtoDAsync` from pinned memory (`COPIES_D2H`: a `cuMemcpyDtoHAsync` instead; `COPIES_S0`:
/// s0 copies first); the graph is timed after each.
fn copies(p: &Probe<'_>) -> Res<()> {
    let Probe { ctx, bufs, s0, .. } = *p;
    let timed = p.start()?;
    let d2h = std::env::var_os("COPIES_D2H").is_some();
    let b = &bufs[2];
    let one = |s: &CudaStream| -> Res<()> {
        // SAFETY: 128 pinned bytes to or from a live 1024-byte device buffer, waited for below.
        unsafe {
            if d2h {
                result::memcpy_dtoh_async(
                    std::slice::from_raw_parts_mut(b.back, 128),
                    b.dev,
                    s.cu_stream(),
                )?;
            } else {
                result::memcpy_htod_async(
                    b.dev,
                    std::slice::from_raw_parts(b.host, 128),
                    s.cu_stream(),
                )?;
            }
        }
        s.synchronize()?;
        Ok(())
    };
    if std::env::var_os("COPIES_S0").is_some() {
        one(s0)?;
        timed.at("s0 copied")?;
    }
    let mut kept = Vec::new();
    for i in 1..=6 {
        let s = ctx.new_stream()?;
        one(&s)?;
        kept.push(s);
        timed.at(&format!(
            "+ {i} other streams copied ({})",
            if d2h { "D2H" } else { "H2D" }
        ))?;
    }
    Ok(())
}

/// Whether work from other threads counts: thread after thread makes a stream of the context,
/// runs one kernel on it and ends (`THREADS_SAME_STREAM`: runs it on one stream made here
/// instead); the graph is timed on this thread after each.
fn threads(p: &Probe<'_>) -> Res<()> {
    let Probe {
        ctx, bump, bufs, ..
    } = *p;
    let timed = p.start()?;
    let same = std::env::var_os("THREADS_SAME_STREAM").is_some();
    let shared = ctx.new_stream()?;
    let mut kept = Vec::new();
    for i in 1..=8 {
        let (ctx2, f, dev, shared) = (
            ctx.clone(),
            bump.cu_function() as usize,
            bufs[2].dev,
            shared.clone(),
        );
        let s = std::thread::spawn(move || -> std::result::Result<Arc<CudaStream>, String> {
            ctx2.bind_to_thread().map_err(|e| e.to_string())?;
            let s = if same {
                shared
            } else {
                ctx2.new_stream().map_err(|e| e.to_string())?
            };
            let mut p = dev;
            // SAFETY: `bump` takes one float pointer into a live 1024-byte buffer.
            unsafe {
                result::launch_kernel(
                    f as sys::CUfunction,
                    (1, 1, 1),
                    (32, 1, 1),
                    0,
                    s.cu_stream(),
                    &mut [(&mut p as *mut u64).cast::<c_void>()],
                )
                .map_err(|e| e.to_string())?;
            }
            s.synchronize().map_err(|e| e.to_string())?;
            Ok(s)
        })
        .join()
        .map_err(|_| "thread panicked")??;
        kept.push(s);
        timed.at(&format!(
            "+ {i} other threads ran a kernel ({})",
            if same {
                "one shared stream"
            } else {
                "a stream each"
            }
        ))?;
    }
    Ok(())
}

/// Whether graphs count as streams do: more and more other graphs (one kernel each, captured on
/// s0, instantiated, uploaded and launched once; destroyed again with `GRAPHS_DESTROY`) made
/// beside the timed one.
fn graphs(p: &Probe<'_>) -> Res<()> {
    let Probe {
        bump,
        copy,
        bufs,
        s0,
        ..
    } = *p;
    let timed = p.start()?;
    let destroy = std::env::var_os("GRAPHS_DESTROY").is_some();
    let mut kept = Vec::new();
    let mut made = 0;
    for k in [4usize, 8, 12, 16, 20, 24, 32, 48] {
        while made < k {
            let g = capture(bump, copy, &bufs[2], 1, Copies::None, s0)?;
            if !destroy {
                kept.push(g);
            }
            made += 1;
        }
        timed.at(&format!(
            "+ {k} other graphs made and launched{}",
            if destroy { " (destroyed)" } else { "" }
        ))?;
    }
    Ok(())
}

/// Whether cuBLAS handles count as made streams: after each of four `cublasCreate`s, a new
/// stream runs one kernel and the graph is timed.
fn handles(p: &Probe<'_>) -> Res<()> {
    let Probe {
        ctx, bump, bufs, ..
    } = *p;
    let timed = p.start()?;
    let mut kept = Vec::new();
    for i in 1..=4 {
        let h = cudarc::cublas::result::create_handle()?;
        let s = ctx.new_stream()?;
        let mut p = bufs[2].dev;
        // SAFETY: `bump` takes one float pointer into a live 1024-byte buffer.
        unsafe {
            result::launch_kernel(
                bump.cu_function(),
                (1, 1, 1),
                (32, 1, 1),
                0,
                s.cu_stream(),
                &mut [(&mut p as *mut u64).cast::<c_void>()],
            )?;
        }
        s.synchronize()?;
        timed.at(&format!(
            "+ cuBLAS handle {i}, then a new stream ran a kernel"
        ))?;
        kept.push((h, s));
    }
    for (h, _) in kept {
        // SAFETY: our idle handle.
        unsafe { cudarc::cublas::result::destroy_handle(h)? };
    }
    Ok(())
}

/// As [`channels`], but each other stream is created, runs one empty kernel and is destroyed
/// before the next is made: whether what counts is the streams alive at once or every stream
/// that ever ran work in the context.
fn one_at_a_time(p: &Probe<'_>) -> Res<()> {
    let Probe { ctx, s0, .. } = *p;
    let nothing = nothing_kernel(ctx)?;
    let timed = p.start()?;
    let mut done = 0;
    for k in [4usize, 8, 12, 16, 24, 48] {
        while done < k {
            // Made, used and dropped at once.
            streams_ran_a_kernel(ctx, &nothing, 1)?;
            done += 1;
        }
        timed.show(
            &format!("+ {k} streams made, used and destroyed in turn"),
            s0,
        )?;
    }
    Ok(())
}

fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let reps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    const K: usize = 6;

    let ctx = CudaContext::new(0)?;
    // SAFETY: one thread; capture needs event tracking off.
    unsafe { ctx.disable_event_tracking() };
    let (major, minor) = ctx.compute_capability()?;
    let ptx = gpubridge_cuda::compile("replay_modes", SOURCE, (major as u32, minor as u32))?;
    let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
    let bump = module.load_function("bump")?;
    let copy = module.load_function("copy_words")?;
    let s0 = ctx.new_stream()?;
    let streams: Vec<Arc<CudaStream>> =
        (0..K).map(|_| ctx.new_stream()).collect::<Result<_, _>>()?;
    let bufs: Vec<Buffers> = (0..K).map(|_| Buffers::new()).collect::<Res<_>>()?;

    println!(
        "chain of {n}, {reps} replays each, round robin over {K}; median (p10-p90) us per replay"
    );
    let probe = Probe {
        ctx: &ctx,
        bump: &bump,
        copy: &copy,
        bufs: &bufs,
        n,
        s0: &s0,
        reps,
    };
    match args.next().as_deref() {
        Some("streams") => return upload_streams(&bump, &copy, &bufs, n, &s0, &streams, reps),
        Some("pair") => return pair(&bump, &copy, &bufs, n, &s0, &streams[0], reps),
        Some("presence") => return presence(&probe),
        Some("channels") => return channels(&probe),
        Some("lanes") => return lanes(&probe),
        Some("handles") => return handles(&probe),
        Some("graphs") => return graphs(&probe),
        Some("threads") => return threads(&probe),
        Some("copies") => return copies(&probe),
        Some("bridge") => return bridge_work(&probe),
        Some("memory") => return memory(&probe),
        Some("one-at-a-time") => return one_at_a_time(&probe),
        Some("flag") => return flag(&probe, &module),
        Some("fence") => return fence(&probe, &module),
        Some("switch") => return switch(&probe, &module),
        Some("pending") => return pending(&probe, &streams),
        Some("modes") => return modes(&probe),
        Some("alternate") => return alternate(&probe, &streams),
        Some("placement") => return placement(&probe, &module),
        Some("addresses") => return addresses(&probe),
        Some("inputs") => return inputs(&probe, &module),
        _ => {}
    }
    for how in [Wait::Spin, Wait::Sync] {
        let w = how.name();
        // A: K graphs (own buffers), all on s0.
        let capture_all = |copies| -> Res<Vec<CudaGraph>> {
            bufs.iter()
                .map(|b| capture(&bump, &copy, b, n, copies, &s0))
                .collect()
        };
        let on_s0 = |gs: &[CudaGraph]| -> Vec<(sys::CUgraphExec, sys::CUstream)> {
            gs.iter()
                .map(|g| (g.cu_graph_exec(), s0.cu_stream()))
                .collect()
        };
        let measure = |label: &str, pairs: &[(sys::CUgraphExec, sys::CUstream)]| -> Res<()> {
            row(&format!("[{w}] {label}"), &round_robin(pairs, reps, how)?);
            Ok(())
        };
        // A: K graphs (own buffers), all on s0.
        let graphs = capture_all(Copies::Both)?;
        measure("A graphs, one stream", &on_s0(&graphs))?;
        // B: graph 0 on K streams; B2: graph i on stream i.
        let exec0 = graphs[0].cu_graph_exec();
        let pairs: Vec<_> = streams.iter().map(|s| (exec0, s.cu_stream())).collect();
        measure("B one graph, streams", &pairs)?;
        let pairs: Vec<_> = graphs
            .iter()
            .zip(&streams)
            .map(|(g, s)| (g.cu_graph_exec(), s.cu_stream()))
            .collect();
        measure("B2 graph i on stream i", &pairs)?;
        // D: K instantiations of graph 0's CUgraph.
        let execs: Vec<sys::CUgraphExec> = (0..K)
            .map(|_| {
                // SAFETY: graph 0's CUgraph lives as long as `graphs`.
                unsafe {
                    let e = result::graph::instantiate(
                        graphs[0].cu_graph(),
                        sys::CUgraphInstantiate_flags(0),
                    )?;
                    result::graph::upload(e, s0.cu_stream())?;
                    Ok(e)
                }
            })
            .collect::<Res<_>>()?;
        let pairs: Vec<_> = execs.iter().map(|&e| (e, s0.cu_stream())).collect();
        measure("D re-instantiated, one stream", &pairs)?;
        // C: kernels only; E: copies only; G: copies by kernel.
        measure("C kernels only", &on_s0(&capture_all(Copies::None)?))?;
        measure("E copies only", &on_s0(&capture_all(Copies::Only)?))?;
        let kc = capture_all(Copies::Kernel)?;
        measure("G copies by kernel", &on_s0(&kc))?;
        for b in &bufs {
            // SAFETY: 128 mapped bytes the synchronised replays wrote.
            let back = unsafe { std::slice::from_raw_parts(b.back.cast::<f32>(), 32) };
            if back.iter().any(|&x| x != n as f32) {
                return Err(format!("copies by kernel: wrong values {:?}", &back[..4]).into());
            }
        }
        // H: memcpy and kernel-copy graphs alternately.
        let pairs: Vec<_> = on_s0(&graphs)
            .into_iter()
            .zip(on_s0(&kc))
            .take(3)
            .flat_map(|(a, b)| [a, b])
            .collect();
        measure("H A,G alternating", &pairs)?;
        s0.synchronize()?;
        for e in execs {
            // SAFETY: synchronised above; the execs are not used again.
            unsafe { result::graph::exec_destroy(e)? };
        }
    }
    let f = stream_round_robin(&bump, &copy, &bufs, n, &s0, reps)?;
    let cells: Vec<String> = f.iter().map(|m| format!("{m:5.1}")).collect();
    println!("{:<34} {}", "[spin] F stream launches", cells.join("  "));
    Ok(())
}

/// How soon the host can know a small graph is done: a kernel-copy graph whose last kernel
/// (or one more, one-thread kernel) writes a counter into mapped host memory after a system
/// fence, the host spinning on that word, against `cuStreamQuery` spinning and
/// `cuStreamSynchronize`. Per replay: launch to done, host time; with the flag, also how much
/// later the stream itself reads done. Each case in turn, twice.
fn flag(p: &Probe<'_>, module: &Arc<cudarc::driver::CudaModule>) -> Res<()> {
    let signal = module.load_function("signal")?;
    let copy_signal = module.load_function("copy_words_signal")?;
    let b = &p.bufs[1];
    let cs = p.s0.cu_stream();
    let (counter, flag_host) = completion_word()?;
    let launch = |f: &CudaFunction, params: &mut [*mut c_void]| launch32(cs, f, params);
    let copy_in = || -> Res<()> {
        let (mut s, mut d, mut w) = (b.host as u64, b.dev, 32u32);
        launch(
            p.copy,
            &mut [
                (&mut s as *mut u64).cast(),
                (&mut d as *mut u64).cast(),
                (&mut w as *mut u32).cast(),
            ],
        )
    };
    let bumps = || -> Res<()> {
        for _ in 0..p.n {
            let mut d = b.dev;
            launch(p.bump, &mut [(&mut d as *mut u64).cast()])?;
        }
        Ok(())
    };
    let (mut c, mut f) = (counter, flag_host as u64);
    let capture_with = |body: &dyn Fn() -> Res<()>| capture_body(p.s0, body, true);
    let memcpy = capture(p.bump, p.copy, b, p.n, Copies::Both, p.s0)?;
    let kc = capture(p.bump, p.copy, b, p.n, Copies::Kernel, p.s0)?;
    let separate = capture_with(&|| {
        copy_in()?;
        bumps()?;
        let (mut s, mut d, mut w) = (b.dev, b.back as u64, 32u32);
        launch(
            p.copy,
            &mut [
                (&mut s as *mut u64).cast(),
                (&mut d as *mut u64).cast(),
                (&mut w as *mut u32).cast(),
            ],
        )?;
        let (mut c, mut f) = (c, f);
        launch(
            &signal,
            &mut [(&mut c as *mut u64).cast(), (&mut f as *mut u64).cast()],
        )
    })?;
    let fused = capture_with(&|| {
        copy_in()?;
        bumps()?;
        let (mut s, mut d, mut w) = (b.dev, b.back as u64, 32u32);
        let (mut c, mut f) = (c, f);
        launch(
            &copy_signal,
            &mut [
                (&mut s as *mut u64).cast(),
                (&mut d as *mut u64).cast(),
                (&mut w as *mut u32).cast(),
                (&mut c as *mut u64).cast(),
                (&mut f as *mut u64).cast(),
            ],
        )
    })?;
    let _ = (&mut c, &mut f);
    // The counter's value after each replay, as the host expects it.
    let mut expected = 0u32;
    // SAFETY: the first replays (in capture_with's upload, none launched) wrote nothing yet.
    let read_flag = || unsafe { flag_host.read_volatile() };
    enum How {
        Sync,
        Query,
        Flag,
        FlagThenQuery,
    }
    let mut run = |label: &str, g: &CudaGraph, how: How, signals: bool| -> Res<()> {
        let exec = g.cu_graph_exec();
        let (mut done, mut tail) = (Vec::with_capacity(p.reps), Vec::with_capacity(p.reps));
        for _ in 0..p.reps {
            let t = Instant::now();
            // SAFETY: a live exec and stream.
            unsafe { result::graph::launch(exec, cs)? };
            if signals {
                expected = expected.wrapping_add(1);
            }
            match how {
                How::Sync => p.s0.synchronize()?,
                How::Query => wait(cs, Wait::Spin)?,
                How::Flag | How::FlagThenQuery => {
                    while read_flag() != expected {
                        std::hint::spin_loop();
                    }
                }
            }
            done.push(t.elapsed().as_secs_f64() * 1e6);
            if matches!(how, How::FlagThenQuery) {
                wait(cs, Wait::Spin)?;
                tail.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        p.s0.synchronize()?;
        // SAFETY: 128 mapped bytes the synchronised replays wrote.
        let back = unsafe { std::slice::from_raw_parts(b.back.cast::<f32>(), 32) };
        if back.iter().any(|&x| x != p.n as f32) {
            return Err(format!("{label}: wrong values {:?}", &back[..4]).into());
        }
        let q = |v: &mut Vec<f64>, at: f64| {
            v.sort_by(f64::total_cmp);
            v.get(((v.len().max(1) - 1) as f64 * at) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let (m, lo, hi) = (q(&mut done, 0.5), q(&mut done, 0.1), q(&mut done, 0.9));
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("  stream done {:6.1}", q(&mut tail, 0.5))
        };
        println!("{label:<44} {m:6.1} ({lo:5.1}-{hi:5.1}) us{tail}");
        Ok(())
    };
    // PLAIN_ROUNDS=k: k rounds of the graphs without a signal first (whether what CL saw,
    // every graph faster from the first signalling graph's replay on, comes with time).
    let plain: usize = std::env::var("PLAIN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for round in 1..=plain {
        println!("plain round {round}");
        run(
            "memcpy graph, cuStreamSynchronize",
            &memcpy,
            How::Sync,
            false,
        )?;
        run("kernel copies, cuStreamQuery spin", &kc, How::Query, false)?;
    }
    for round in 1..=2 {
        println!(
            "round {round}, chain of {}, {} replays per case",
            p.n, p.reps
        );
        run(
            "memcpy graph, cuStreamSynchronize",
            &memcpy,
            How::Sync,
            false,
        )?;
        run(
            "memcpy graph, cuStreamQuery spin",
            &memcpy,
            How::Query,
            false,
        )?;
        run("kernel copies, cuStreamSynchronize", &kc, How::Sync, false)?;
        run("kernel copies, cuStreamQuery spin", &kc, How::Query, false)?;
        if round == 1 {
            run(
                "fused copy+signal, one replay's worth",
                &fused,
                How::Query,
                true,
            )?;
            run(
                "kernel copies, cuStreamQuery spin, after",
                &kc,
                How::Query,
                false,
            )?;
        }
        run(
            "+ signal kernel, cuStreamQuery spin",
            &separate,
            How::Query,
            true,
        )?;
        run("+ signal kernel, flag spin", &separate, How::Flag, true)?;
        run(
            "+ signal kernel, flag then query",
            &separate,
            How::FlagThenQuery,
            true,
        )?;
        run(
            "fused copy+signal, cuStreamQuery spin",
            &fused,
            How::Query,
            true,
        )?;
        run("fused copy+signal, flag spin", &fused, How::Flag, true)?;
        run(
            "fused copy+signal, flag then query",
            &fused,
            How::FlagThenQuery,
            true,
        )?;
    }
    Ok(())
}

/// Whether one kernel of a kind changes how fast every later graph runs (run CL: the chains'
/// graphs ran ~18% faster in every process from the first replay of a graph with a kernel that
/// fences system-wide). `KIND` picks the kernel: idle, fence_only, fence_device, host_write,
/// signal.
fn fence(p: &Probe<'_>, module: &Arc<cudarc::driver::CudaModule>) -> Res<()> {
    let kind = std::env::var("KIND").unwrap_or_else(|_| "fence_only".to_owned());
    let f = module.load_function(&kind)?;
    let cs = p.s0.cu_stream();
    // SAFETY: a context is current; the words are never freed.
    let (counter, host) = unsafe {
        let counter = result::malloc_sync(4)?;
        result::memset_d8_sync(counter, 0, 4)?;
        (counter, result::malloc_host(4, 2)?.cast::<u32>() as u64)
    };
    let once = || -> Res<()> {
        let (mut c, mut h) = (counter, host);
        let mut params: Vec<*mut c_void> = match kind.as_str() {
            "host_write" => vec![(&mut h as *mut u64).cast()],
            "signal" => vec![(&mut c as *mut u64).cast(), (&mut h as *mut u64).cast()],
            _ => vec![],
        };
        // SAFETY: one thread on a live stream; the parameters match the kernel.
        unsafe {
            result::launch_kernel(f.cu_function(), (1, 1, 1), (1, 1, 1), 0, cs, &mut params)?
        };
        p.s0.synchronize()?;
        Ok(())
    };
    let timed = p.start()?;
    timed.at("bare, again")?;
    once()?;
    timed.at(&format!("after one {kind}"))?;
    for _ in 0..100 {
        once()?;
    }
    timed.at(&format!("after 101 {kind}"))?;
    std::thread::sleep(Duration::from_millis(500));
    timed.at("after 0.5 s rest")
}

/// What switched every graph of CN's processes ~18% faster at the first replays of one graph
/// (the chain's kernel-copy graph with a one-thread `signal` kernel after it): graphs of the
/// chain with another tail (`TAIL`: none, copy, signal, idle, fence_only, fence_device,
/// host_write; `only` makes the graph the tail alone), replayed between two timings of the
/// plain kernel-copy graph (host time, cuStreamQuery spin).
fn switch(p: &Probe<'_>, module: &Arc<cudarc::driver::CudaModule>) -> Res<()> {
    let tail = std::env::var("TAIL").unwrap_or_else(|_| "signal".to_owned());
    let only = std::env::var("ONLY").is_ok_and(|v| v == "1");
    let b = &p.bufs[1];
    let cs = p.s0.cu_stream();
    // SAFETY: a context is current; the words are never freed.
    let (counter, host) = unsafe {
        let counter = result::malloc_sync(4)?;
        result::memset_d8_sync(counter, 0, 4)?;
        (counter, result::malloc_host(4, 2)?.cast::<u32>() as u64)
    };
    let kc = capture(p.bump, p.copy, b, p.n, Copies::Kernel, p.s0)?;
    let tail_fn = match tail.as_str() {
        "none" => None,
        "copy" => Some(p.copy.clone()),
        name => Some(module.load_function(name)?),
    };
    p.s0.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    if !only {
        enqueue(p.bump, p.copy, b, p.n, Copies::Kernel, p.s0)?;
    }
    if let Some(f) = &tail_fn {
        let (mut c, mut h, mut s, mut d, mut w) = (counter, host, b.dev, b.dev + 512, 32u32);
        let mut params: Vec<*mut c_void> = match tail.as_str() {
            "host_write" => vec![(&mut h as *mut u64).cast()],
            "signal" => vec![(&mut c as *mut u64).cast(), (&mut h as *mut u64).cast()],
            "copy" => vec![
                (&mut s as *mut u64).cast(),
                (&mut d as *mut u64).cast(),
                (&mut w as *mut u32).cast(),
            ],
            _ => vec![],
        };
        // SAFETY: one block of 32 threads; the parameters match the kernel.
        unsafe {
            result::launch_kernel(f.cu_function(), (1, 1, 1), (32, 1, 1), 0, cs, &mut params)?
        };
    }
    let variant =
        p.s0.end_capture(sys::CUgraphInstantiate_flags(0))?
            .ok_or("empty graph")?;
    variant.upload()?;
    p.s0.synchronize()?;
    let time = |label: &str, g: &CudaGraph| -> Res<()> {
        let m = median_replay(g.cu_graph_exec(), cs, p.reps, Wait::Spin)?;
        println!("{label:<40} {m:7.1} us");
        Ok(())
    };
    time("kernel copies", &kc)?;
    time("kernel copies, again", &kc)?;
    time(
        &format!(
            "{}tail {tail}",
            if only { "only the " } else { "chain and " }
        ),
        &variant,
    )?;
    time("kernel copies, after", &kc)?;
    time("the variant again", &variant)
}

/// CO's switch pinned down: a second graph of the chain captured (on `CAP`: s0 or s1), uploaded
/// (`UPLOAD`: s0, s1 or none) and not launched, then (`ACTION`) launched once or destroyed; the
/// plain kernel-copy graph timed on s0 and on s2 after each step.
fn pending(p: &Probe<'_>, streams: &[Arc<CudaStream>]) -> Res<()> {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    let (cap, up, action) = (
        var("CAP", "s0"),
        var("UPLOAD", "s0"),
        var("ACTION", "launch"),
    );
    let pick = |name: &str| if name == "s1" { &streams[0] } else { p.s0 };
    let b = &p.bufs[1];
    let kc = capture(p.bump, p.copy, b, p.n, Copies::Kernel, p.s0)?;
    let time = |label: &str| -> Res<()> {
        let mut cells = Vec::new();
        for s in [p.s0, &streams[1]] {
            let m = median_replay(kc.cu_graph_exec(), s.cu_stream(), p.reps, Wait::Spin)?;
            cells.push(format!("{m:7.1}"));
        }
        println!(
            "{label:<44} kc on s0 {} us, on s2 {} us",
            cells[0], cells[1]
        );
        Ok(())
    };
    time("only kc")?;
    let s = pick(&cap);
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    enqueue(p.bump, p.copy, &p.bufs[2], p.n, Copies::Kernel, s)?;
    let variant = s
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .ok_or("empty graph")?;
    time(&format!("second graph captured on {cap}"))?;
    if up != "none" {
        // SAFETY: a live exec and stream.
        unsafe { result::graph::upload(variant.cu_graph_exec(), pick(&up).cu_stream())? };
        pick(&up).synchronize()?;
        time(&format!("uploaded to {up}"))?;
    }
    if action == "launch" {
        variant.launch()?;
        s.synchronize()?;
        time(&format!("launched once on {cap}"))?;
        drop(variant);
        time("destroyed")
    } else {
        drop(variant);
        time("destroyed, never launched")
    }
}

/// Which graphs each slow mode slows: the chain's memcpy graph and kernel-copy graph (host and
/// device time) bare, after 24 other streams each ran an empty kernel (the eighteenth session's
/// trigger), after a third graph was uploaded and not launched (CP's), and after its launch.
/// `ORDER=upload` takes the upload first.
fn modes(p: &Probe<'_>) -> Res<()> {
    let Probe { ctx, s0, .. } = *p;
    let kc = capture(p.bump, p.copy, &p.bufs[1], p.n, Copies::Kernel, s0)?;
    let mc = capture(p.bump, p.copy, &p.bufs[2], p.n, Copies::Both, s0)?;
    let show = |label: &str| -> Res<()> {
        ctx.bind_to_thread()?;
        let (kh, kd) = host_and_device(kc.cu_graph_exec(), s0, p.reps)?;
        let (mh, md) = host_and_device(mc.cu_graph_exec(), s0, p.reps)?;
        println!(
            "{label:<40} kernel copies host {kh:7.1} device {kd:7.1} | memcpy host {mh:7.1} device {md:7.1} us"
        );
        Ok(())
    };
    let nothing = nothing_kernel(ctx)?;
    let streams = || -> Res<()> {
        streams_ran_a_kernel(ctx, &nothing, 24)?;
        show("24 other streams ran a kernel")
    };
    s0.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    enqueue(p.bump, p.copy, &p.bufs[3], p.n, Copies::Kernel, s0)?;
    let pending = s0
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .ok_or("empty graph")?;
    let upload = || -> Res<()> {
        pending.upload()?;
        s0.synchronize()?;
        show("a third graph uploaded, not launched")
    };
    show("bare")?;
    show("bare, again")?;
    if std::env::var("ORDER").is_ok_and(|o| o == "upload") {
        upload()?;
        streams()?;
    } else {
        streams()?;
        upload()?;
    }
    pending.launch()?;
    s0.synchronize()?;
    show("the third graph launched")
}

/// Why P1's raw memcpy graph, replayed alternately with the bridge's calls, ran ~10% faster at
/// chain 1000 than alone (and than the kernel-copy graphs) in a process in the slow mode: after
/// 24 streams ran a kernel (the slow mode), graphs timed alone and in alternation, on one
/// stream or two (host time per replay, median, cuStreamSynchronize).
fn alternate(p: &Probe<'_>, streams: &[Arc<CudaStream>]) -> Res<()> {
    let Probe { ctx, s0, .. } = *p;
    let s1 = &streams[0];
    let kc = capture(p.bump, p.copy, &p.bufs[1], p.n, Copies::Kernel, s0)?;
    let kc2 = capture(p.bump, p.copy, &p.bufs[3], p.n, Copies::Kernel, s0)?;
    let mc = capture(p.bump, p.copy, &p.bufs[2], p.n, Copies::Both, s0)?;
    let nothing = nothing_kernel(ctx)?;
    let fast = std::env::var("FAST").is_ok_and(|v| v == "1");
    if !fast {
        streams_ran_a_kernel(ctx, &nothing, 24)?;
    }
    println!(
        "{}",
        if fast {
            "fast mode (no trigger)"
        } else {
            "slow mode (24 streams ran a kernel)"
        }
    );
    // Each case: a cycle of (graph, stream) replays; each replay timed alone.
    let case = |label: &str, cycle: &[(&CudaGraph, &Arc<CudaStream>)]| -> Res<()> {
        let mut times = vec![Vec::with_capacity(p.reps); cycle.len()];
        for _ in 0..p.reps {
            for (i, (g, s)) in cycle.iter().enumerate() {
                let t = Instant::now();
                // SAFETY: a live exec and stream.
                unsafe { result::graph::launch(g.cu_graph_exec(), s.cu_stream())? };
                s.synchronize()?;
                times[i].push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let cells: Vec<String> = times
            .into_iter()
            .map(|mut v| {
                v.sort_by(f64::total_cmp);
                format!("{:7.1}", v[v.len() / 2])
            })
            .collect();
        println!("{label:<44} {}", cells.join(" "));
        Ok(())
    };
    case("kc on s0 alone", &[(&kc, s0)])?;
    case("memcpy on s0 alone", &[(&mc, s0)])?;
    case("memcpy on s1 alone", &[(&mc, s1)])?;
    case("kc s0, memcpy s1", &[(&kc, s0), (&mc, s1)])?;
    case("kc s0, memcpy s0", &[(&kc, s0), (&mc, s0)])?;
    case("kc s0, kc2 s1", &[(&kc, s0), (&kc2, s1)])?;
    case("kc s0, kc2 s0", &[(&kc, s0), (&kc2, s0)])?;
    case("kc s0, kc s1 (one exec)", &[(&kc, s0), (&kc, s1)])?;
    case("kc on s0 alone, again", &[(&kc, s0)])
}

/// Where the chain's kernels run in each mode: a graph of the chain whose kernels also log the
/// SM they ran on; per mode, its host time per replay, how many SMs one replay used, and how
/// often a kernel ran on the SM of the one before.
fn placement(p: &Probe<'_>, module: &Arc<cudarc::driver::CudaModule>) -> Res<()> {
    let Probe { ctx, s0, .. } = *p;
    let bump_log = module.load_function("bump_log")?;
    let nothing = nothing_kernel(ctx)?;
    let cs = s0.cu_stream();
    let n = p.n.min(4000);
    // SAFETY: a context is current; the buffers are never freed.
    let (x, log) = unsafe {
        let x = result::malloc_sync(1024)?;
        let log = result::malloc_sync(4 * 4097)?;
        result::memset_d8_sync(x, 0, 1024)?;
        (x, log)
    };
    s0.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    for _ in 0..n {
        let (mut a, mut b) = (x, log);
        // SAFETY: one block of 32 threads; the parameters match the kernel.
        unsafe {
            result::launch_kernel(
                bump_log.cu_function(),
                (1, 1, 1),
                (32, 1, 1),
                0,
                cs,
                &mut [(&mut a as *mut u64).cast(), (&mut b as *mut u64).cast()],
            )?
        };
    }
    let g = s0
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .ok_or("empty graph")?;
    let report = |label: &str| -> Res<()> {
        let mut times = Vec::new();
        for _ in 0..p.reps {
            let t = Instant::now();
            g.launch()?;
            s0.synchronize()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        // One replay logged alone.
        let mut words = vec![0u32; 4097];
        // SAFETY: `log` is 4097 words of device memory; the stream is idle.
        unsafe {
            result::memset_d8_sync(log, 0, 4 * 4097)?;
            g.launch()?;
            s0.synchronize()?;
            result::memcpy_dtoh_sync(&mut words, log)?;
        }
        let sms = &words[1..=n];
        let mut distinct = sms.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let same = sms.windows(2).filter(|w| w[0] == w[1]).count();
        let mut counts = std::collections::HashMap::new();
        for &s in sms {
            *counts.entry(s).or_insert(0usize) += 1;
        }
        let top = counts.values().max().copied().unwrap_or(0);
        println!(
            "{label:<36} {:8.1} us | {} SMs used, busiest {top} kernels, {:.0}% on the SM before; first SMs {:?}",
            times[times.len() / 2],
            distinct.len(),
            100.0 * same as f64 / (n - 1).max(1) as f64,
            &sms[..12.min(sms.len())],
        );
        Ok(())
    };
    report("bare")?;
    streams_ran_a_kernel(ctx, &nothing, 24)?;
    report("24 other streams ran a kernel")
}

/// Whether where the chain's 128 bytes sit in device memory decides its speed: the chain
/// (bumps only, no copies) captured over buffers at 64 offsets of one 8 MiB allocation (every
/// 128 KiB) and 16 separate allocations; each graph's median host time per replay.
fn addresses(p: &Probe<'_>) -> Res<()> {
    let Probe { s0, .. } = *p;
    let cs = s0.cu_stream();
    // SAFETY: a context is current; never freed.
    let big = unsafe { result::malloc_sync(8 << 20)? };
    let mut targets: Vec<(String, u64)> = (0..64u64)
        .map(|i| (format!("+{}K", i * 128), big + i * (128 << 10)))
        .collect();
    for i in 0..16 {
        // SAFETY: as above.
        let d = unsafe { result::malloc_sync(1 << 20)? };
        targets.push((format!("alloc {i}"), d));
    }
    let mut results = Vec::new();
    for (label, dev) in &targets {
        s0.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        for _ in 0..p.n {
            let mut d = *dev;
            // SAFETY: one block of 32 threads bumping 32 floats of a live buffer.
            unsafe {
                result::launch_kernel(
                    p.bump.cu_function(),
                    (1, 1, 1),
                    (32, 1, 1),
                    0,
                    cs,
                    &mut [(&mut d as *mut u64).cast()],
                )?
            };
        }
        let g = s0
            .end_capture(sys::CUgraphInstantiate_flags(0))?
            .ok_or("empty graph")?;
        g.launch()?;
        s0.synchronize()?;
        let m = median_replay(g.cu_graph_exec(), cs, p.reps, Wait::Sync)?;
        results.push((label.clone(), *dev, m));
    }
    let mut sorted: Vec<f64> = results.iter().map(|r| r.2).collect();
    sorted.sort_by(f64::total_cmp);
    println!(
        "chain of {}: {} buffers, median per replay min {:.1} p25 {:.1} p50 {:.1} p75 {:.1} max {:.1} us",
        p.n,
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 4],
        sorted[sorted.len() / 2],
        sorted[sorted.len() * 3 / 4],
        sorted[sorted.len() - 1]
    );
    let cells: Vec<String> = results
        .iter()
        .map(|(l, d, t)| format!("{l} {d:#x} {t:.1}"))
        .collect();
    for c in cells.chunks(4) {
        println!("  {}", c.join(" | "));
    }
    Ok(())
}

/// A device word counting replays and a mapped host word a graph's last kernel writes the count
/// to (the `signal` and `copy_words_signal` kernels), both zero. Never freed: they outlive every
/// replay of the probe.
fn completion_word() -> Res<(sys::CUdeviceptr, *mut u32)> {
    // SAFETY: a context is current on this thread (the probe's); 4 bytes each, zeroed here.
    unsafe {
        let counter = result::malloc_sync(4)?;
        result::memset_d8_sync(counter, 0, 4)?;
        let flag = result::malloc_host(4, 2)?.cast::<u32>();
        flag.write_volatile(0);
        Ok((counter, flag))
    }
}

/// Launches `f` as one block of 32 threads on `cs`, as every kernel of these graphs runs.
fn launch32(cs: sys::CUstream, f: &CudaFunction, params: &mut [*mut c_void]) -> Res<()> {
    // SAFETY: a live stream of the probe's context; the callers' parameters match the kernels.
    unsafe { result::launch_kernel(f.cu_function(), (1, 1, 1), (32, 1, 1), 0, cs, params)? };
    Ok(())
}

/// The graph `body` enqueues on `s0`, captured (and uploaded first when `upload`).
fn capture_body(s0: &Arc<CudaStream>, body: &dyn Fn() -> Res<()>, upload: bool) -> Res<CudaGraph> {
    s0.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    body()?;
    let g = s0
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .ok_or("empty graph")?;
    if upload {
        g.upload()?;
        s0.synchronize()?;
    }
    Ok(g)
}

/// Whether a graph's first kernel reading its input straight from mapped host memory replays
/// sooner than the bridge's shape, a copy kernel into device memory first: three graphs of P1's
/// chain (`first` from x to y, then `n - 1` bumps of y), each ending with the output copied by
/// a kernel that then writes a completion word, replayed alternately for three rounds; the raw
/// memcpy graph of the same chain, waited for by `cuStreamSynchronize`, beside them. A fourth
/// graph also has its last kernel write the output straight into mapped host memory (`last`
/// instead of the last bump, then the one-thread `signal`): no output copy either.
fn inputs(p: &Probe<'_>, module: &Arc<cudarc::driver::CudaModule>) -> Res<()> {
    let first = module.load_function("first")?;
    let copy_signal = module.load_function("copy_words_signal")?;
    let b = &p.bufs[1];
    let cs = p.s0.cu_stream();
    let (x_dev, y_dev) = (b.dev, b.dev + 512);
    let (counter, flag_host) = completion_word()?;
    let launch = |f: &CudaFunction, params: &mut [*mut c_void]| launch32(cs, f, params);
    let words = |f: &CudaFunction, src: u64, dst: u64| -> Res<()> {
        let (mut s, mut d, mut w) = (src, dst, 32u32);
        launch(
            f,
            &mut [
                (&mut s as *mut u64).cast(),
                (&mut d as *mut u64).cast(),
                (&mut w as *mut u32).cast(),
            ],
        )
    };
    let chain = |x: u64| -> Res<()> {
        let (mut x, mut y) = (x, y_dev);
        launch(
            &first,
            &mut [(&mut x as *mut u64).cast(), (&mut y as *mut u64).cast()],
        )?;
        for _ in 1..p.n {
            let mut y = y_dev;
            launch(p.bump, &mut [(&mut y as *mut u64).cast()])?;
        }
        Ok(())
    };
    let signal_out = || -> Res<()> {
        let (mut s, mut d, mut w) = (y_dev, b.back as u64, 32u32);
        let (mut c, mut f) = (counter, flag_host as u64);
        launch(
            &copy_signal,
            &mut [
                (&mut s as *mut u64).cast(),
                (&mut d as *mut u64).cast(),
                (&mut w as *mut u32).cast(),
                (&mut c as *mut u64).cast(),
                (&mut f as *mut u64).cast(),
            ],
        )
    };
    let capture_with = |body: &dyn Fn() -> Res<()>| capture_body(p.s0, body, false);
    let memcpy = capture_with(&|| {
        // SAFETY: 128 pinned bytes to and from the device buffer, all alive for good.
        unsafe {
            result::memcpy_htod_async(x_dev, std::slice::from_raw_parts(b.host, 128), cs)?;
            chain(x_dev)?;
            result::memcpy_dtoh_async(std::slice::from_raw_parts_mut(b.back, 128), y_dev, cs)?;
        }
        Ok(())
    })?;
    let copied = capture_with(&|| {
        words(p.copy, b.host as u64, x_dev)?;
        chain(x_dev)?;
        signal_out()
    })?;
    let direct = capture_with(&|| {
        chain(b.host as u64)?;
        signal_out()
    })?;
    let signal = module.load_function("signal")?;
    let last = module.load_function("last")?;
    let both = capture_with(&|| {
        let (mut x, mut y) = (b.host as u64, y_dev);
        launch(
            &first,
            &mut [(&mut x as *mut u64).cast(), (&mut y as *mut u64).cast()],
        )?;
        for _ in 2..p.n {
            let mut y = y_dev;
            launch(p.bump, &mut [(&mut y as *mut u64).cast()])?;
        }
        let (mut y, mut out) = (y_dev, b.back as u64);
        launch(
            &last,
            &mut [(&mut y as *mut u64).cast(), (&mut out as *mut u64).cast()],
        )?;
        let (mut c, mut f) = (counter, flag_host as u64);
        launch(
            &signal,
            &mut [(&mut c as *mut u64).cast(), (&mut f as *mut u64).cast()],
        )
    })?;
    let mut expected = 0u32;
    let mut run = |label: &str, g: &CudaGraph, signals: bool| -> Res<f64> {
        let exec = g.cu_graph_exec();
        let mut done = Vec::with_capacity(p.reps);
        for _ in 0..p.reps {
            // SAFETY: 128 mapped bytes no replay is using (the last one was waited for).
            unsafe { std::ptr::write_bytes(b.back, 0xff, 128) };
            let t = Instant::now();
            // SAFETY: a live exec and stream.
            unsafe { result::graph::launch(exec, cs)? };
            if signals {
                expected = expected.wrapping_add(1);
                // SAFETY: a mapped word only the graph's last kernel writes.
                while unsafe { flag_host.read_volatile() } != expected {
                    std::hint::spin_loop();
                }
            } else {
                p.s0.synchronize()?;
            }
            done.push(t.elapsed().as_secs_f64() * 1e6);
            // SAFETY: 128 mapped bytes the replay wrote before its word.
            let back = unsafe { std::slice::from_raw_parts(b.back.cast::<f32>(), 32) };
            if back.iter().any(|&x| x != p.n as f32) {
                return Err(format!("{label}: wrong values {:?}", &back[..4]).into());
            }
        }
        p.s0.synchronize()?;
        done.sort_by(f64::total_cmp);
        Ok(done[done.len() / 2])
    };
    println!(
        "chain of {}, {} replays per case and round; median us per replay",
        p.n, p.reps
    );
    println!(
        "{:<8} {:>20} {:>22} {:>26} {:>28}",
        "round",
        "memcpy nodes, sync",
        "copy kernel in, word",
        "first reads mapped, word",
        "+ last writes mapped, word"
    );
    for round in 1..=3 {
        let m = run("memcpy", &memcpy, false)?;
        let c = run("copied", &copied, true)?;
        let d = run("direct", &direct, true)?;
        let o = run("both", &both, true)?;
        println!("{round:<8} {m:>20.1} {c:>22.1} {d:>26.1} {o:>28.1}");
    }
    Ok(())
}
