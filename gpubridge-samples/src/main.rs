//! `gpubridge`: list devices and backends, and run the original's production samples on any
//! backend, each verified against its reference.

#[cfg(feature = "mimalloc")]
mod alloc;
mod bench;
#[cfg(feature = "cluster")]
mod cluster;
mod load;
mod profile;
mod samples;
#[cfg(feature = "prometheus")]
mod serve;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gpubridge::{BackendKind, BackendStatus, BridgeConfig, DeviceType, ExecutionHints};

#[derive(Parser)]
#[command(
    name = "gpubridge",
    version,
    about = "Typed batches of work on GPU kernels, with CPU fallback"
)]
struct Cli {
    /// Configuration file (TOML); `GPUBRIDGE__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "GPUBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every backend compiled in, every device found, and why any backend is not in use.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the registered kernels.
    Kernels,
    /// Print the effective configuration (file, then environment, then defaults) as TOML.
    Config,
    /// Measure TARGETS.md's rows against baselines measured in the same run.
    Bench(bench::BenchArgs),
    /// Open-loop load on the dynamic batcher (single-item requests from many tasks), a rate
    /// sweep with latency percentiles and the knee (TARGETS.md P3).
    Load(load::LoadArgs),
    /// A long mixed workload (singles, batches of every kernel, a stream, storage round trips)
    /// sampling memory, descriptors and latency every interval; fails on lost or hung requests,
    /// errors, or growth beyond TARGETS.md R1.
    Soak(soak::SoakArgs),
    /// Run a sample's workload and print where the time went, phase by phase (queue, pack, h2d,
    /// launch or graph replay, d2h, unpack), against the pinned-copy bandwidth measured now.
    Profile(profile::ProfileArgs),
    /// Run a bridge with its metrics endpoint (/metrics, /healthz, /readyz) until Ctrl-C.
    #[cfg(feature = "prometheus")]
    Serve(serve::ServeArgs),
    /// Serve batch requests (`kernels/sum`, `kernels/vector/add`) from a NATS JetStream work
    /// queue on this machine's bridge until Ctrl-C or SIGTERM (gpubridge-cluster): one consumer
    /// per kernel and capability it serves.
    #[cfg(feature = "cluster")]
    Worker(cluster::WorkerArgs),
    /// Write a synthetic journal-entry graph with planted component patterns: `OUT/nodes.parquet`,
    /// `OUT/edges.parquet` and `OUT/manifest.json` (the planted counts).
    GenGraph {
        /// Nodes.
        #[arg(long, default_value_t = 10_000_000)]
        nodes: usize,
        /// Edges.
        #[arg(long, default_value_t = 20_000_000)]
        edges: usize,
        /// Output directory (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Seed (random when not given).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run a sample and verify it against the reference.
    Run {
        /// Which sample.
        sample: Sample,
        /// Which backend; `auto` follows the fallback chain.
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
        /// Print the summary as one JSON object instead of a table (and no graph report).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sizes: samples::Sizes,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sample {
    Vector,
    Matrix,
    Graph,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Auto,
    Cuda,
    Wgpu,
    Cpu,
}

impl BackendChoice {
    /// The one backend chosen; `None` for `auto`.
    fn kind(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Cuda => Some(BackendKind::Cuda),
            BackendChoice::Wgpu => Some(BackendKind::Wgpu),
            BackendChoice::Cpu => Some(BackendKind::Cpu),
        }
    }

    /// A backend asked for by name is opened even where the default would leave it closed:
    /// wgpu beside CUDA (`wgpu.alongside_cuda`).
    fn configure(self, config: &mut BridgeConfig) {
        if self == BackendChoice::Wgpu {
            config.wgpu.alongside_cuda = true;
        }
    }

    fn hints(self) -> ExecutionHints {
        match self.kind() {
            Some(kind) => ExecutionHints::default().on_backend(kind),
            None => ExecutionHints::default(),
        }
    }
}

/// The glibc malloc arenas this process was left with: `MALLOC_ARENA_MAX` when the user set it,
/// else [`DEFAULT_MALLOC_ARENAS`] where [`bound_malloc_arenas`] set it, else glibc's default;
/// `None` off glibc.
pub(crate) fn malloc_arenas() -> Option<String> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    Some(std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| {
        if rust_on_mimalloc() {
            format!("{DEFAULT_MALLOC_ARENAS} (the CLI's default for the C libraries; Rust allocates through mimalloc)")
        } else {
            "glibc's default".to_owned()
        }
    }))
}

/// Whether Rust's allocations go to mimalloc (the `mimalloc` feature, without
/// `GPUBRIDGE_ALLOCATOR=system`), leaving glibc's malloc to the C libraries.
fn rust_on_mimalloc() -> bool {
    #[cfg(feature = "mimalloc")]
    return !alloc::GLOBAL.system();
    #[cfg(not(feature = "mimalloc"))]
    false
}

/// Rust's live heap as the CLI's allocator counts it, where Rust allocates through mimalloc
/// (`None` otherwise: glibc's own statistics then hold Rust's allocations).
pub(crate) fn rust_live_bytes() -> Option<u64> {
    rust_counted_bytes().filter(|_| rust_on_mimalloc())
}

/// Rust's live heap as the CLI's allocator counts it, whichever allocator serves it (`None`
/// without the counting allocator): the soak's readings at rest split the live heap by it.
pub(crate) fn rust_counted_bytes() -> Option<u64> {
    #[cfg(feature = "mimalloc")]
    return Some(alloc::GLOBAL.live_bytes());
    #[cfg(not(feature = "mimalloc"))]
    None
}

/// Arms the allocation tracer ([`alloc::trace`]) for blocks of `min_bytes` and more; `false`
/// without the counting allocator.
pub(crate) fn trace_allocations(min_bytes: usize) -> bool {
    #[cfg(feature = "mimalloc")]
    {
        alloc::trace::arm(min_bytes);
        true
    }
    #[cfg(not(feature = "mimalloc"))]
    {
        let _ = min_bytes;
        false
    }
}

/// The traced blocks that outlived the previous call ([`alloc::trace::survivors`]).
pub(crate) fn traced_survivors() -> String {
    #[cfg(feature = "mimalloc")]
    return alloc::trace::survivors();
    #[cfg(not(feature = "mimalloc"))]
    String::new()
}

/// The allocator Rust's allocations go to, for reports.
pub(crate) fn allocator_name() -> &'static str {
    #[cfg(feature = "mimalloc")]
    return alloc::GLOBAL.name();
    #[cfg(not(feature = "mimalloc"))]
    "the C library's malloc"
}

/// Arenas for glibc's malloc unless `MALLOC_ARENA_MAX` says otherwise.
const DEFAULT_MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas (one per thread up to eight per core by default) when Rust's own
/// allocations go to mimalloc ([`alloc`], unless `GPUBRIDGE_ALLOCATOR=system`), so that glibc
/// serves only the C libraries (the CUDA driver's, cuBLAS's): freed memory stays in the arena of
/// the thread that allocated it, so under many threads the resident set creeps while the live
/// heap stays flat (docs/PERFORMANCE.md, sixth session). Without mimalloc the cap is not set:
/// two arenas shared by a million requests' allocations a second serialised them (the tenth
/// session's P3 completed under a third of 1M offered). Runs before any other thread;
/// `MALLOC_ARENA_MAX` in the environment wins.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() && rust_on_mimalloc() {
        // SAFETY: mallopt only adjusts the allocator's parameters; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, DEFAULT_MALLOC_ARENAS);
        }
    }
}

fn main() -> ExitCode {
    // Mesa's Vulkan device-select layer (an implicit layer that reorders GPUs for displays) tries to
    // reach a Wayland compositor and prints "XDG_RUNTIME_DIR is invalid" on headless machines; it
    // has no say in compute, so it is switched off unless the user set it. This runs before any
    // other thread exists.
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    bound_malloc_arenas();
    let cli = Cli::parse();
    // The documentation test's hook: stop once the arguments parsed (`docs_commands.rs` checks
    // every command the guides show this way without running the long ones).
    if std::env::var_os("GPUBRIDGE_CHECK_ARGS").is_some() {
        return ExitCode::SUCCESS;
    }
    let config = BridgeConfig::load(cli.config.as_deref()).context("loading the configuration");
    let _tracing = match &config {
        Ok(config) => init_tracing(config),
        Err(_) => init_tracing(&BridgeConfig::default()),
    };
    match config.and_then(|config| run(cli, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}

/// What must live until the end of `main`: the OTLP exporter, flushed when dropped.
struct Tracing {
    #[cfg(feature = "otlp")]
    _otlp: Option<gpubridge::telemetry::otlp::OtlpTracing>,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`; `gpubridge::audit=info` adds the
/// audit log).
#[cfg(not(feature = "otlp"))]
fn init_tracing(_config: &BridgeConfig) -> Tracing {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
    Tracing {}
}

/// Logs to stderr as above and, when `telemetry.otlp_endpoint` is set, exports the bridge's
/// spans over OTLP (sampled by `telemetry.sampling_rate`). The returned value flushes the
/// exporter when dropped at the end of `main`.
#[cfg(feature = "otlp")]
fn init_tracing(config: &BridgeConfig) -> Tracing {
    use gpubridge::telemetry::otlp::{OtlpSettings, OtlpTracing};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let t = &config.telemetry;
    let otlp = t.otlp_endpoint.as_ref().and_then(|endpoint| {
        let settings = OtlpSettings {
            endpoint: endpoint.clone(),
            sampling_rate: t.sampling_rate,
            service_name: t.service_name.clone(),
        };
        match OtlpTracing::new(&settings) {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("warning: traces are not exported: {e}");
                None
            }
        }
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter());
    let export = otlp.as_ref().map(|o| {
        o.layer()
            .with_filter(tracing_subscriber::EnvFilter::new("gpubridge_core=info"))
    });
    tracing_subscriber::registry().with(fmt).with(export).init();
    Tracing { _otlp: otlp }
}

fn run(cli: Cli, mut config: BridgeConfig) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Devices { json } => devices(&config, json),
        Command::Kernels => {
            let bridge = gpubridge::bridge(config)?;
            for k in bridge.catalog().list() {
                let forms: Vec<&str> = [
                    ("cuda", k.sources.cuda.is_some()),
                    ("wgsl", k.sources.wgsl.is_some()),
                    ("cpu", true),
                ]
                .iter()
                .filter(|(_, has)| *has)
                .map(|(n, _)| *n)
                .collect();
                println!(
                    "{:<26} {} -> {}  [{}]",
                    k.id,
                    k.input_type,
                    k.output_type,
                    forms.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::GenGraph {
            nodes,
            edges,
            out,
            seed,
        } => {
            let seed = seed.unwrap_or_else(rand::random);
            let t = std::time::Instant::now();
            let m = samples::graph::generate::write(&out, nodes, edges, seed)?;
            println!(
                "wrote {} nodes and {} edges to {} in {:.1} s (seed {seed}); planted: {}",
                m.nodes,
                m.edges,
                out.display(),
                t.elapsed().as_secs_f64(),
                m.planted
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config => {
            print!("{}", config.to_toml_string());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            bench::run(args, config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Load(args) => {
            load::run(args, config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak(args) => soak::run(args, config),
        Command::Profile(args) => profile::run(args, config),
        #[cfg(feature = "prometheus")]
        Command::Serve(args) => serve::run(args, config),
        #[cfg(feature = "cluster")]
        Command::Worker(args) => cluster::run(args, config),
        Command::Run {
            sample,
            backend,
            json,
            sizes,
        } => {
            backend.configure(&mut config);
            let bridge = gpubridge::bridge(config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let hints = backend.hints();
            let mut ok = true;
            let mut rows = Vec::new();
            let want = |s: Sample| sample == s || sample == Sample::All;
            if want(Sample::Vector) {
                rows.extend(rt.block_on(samples::vector::run(&bridge, &hints, &sizes))?);
            }
            if want(Sample::Matrix) {
                rows.extend(rt.block_on(samples::matrix::run(&bridge, &hints, &sizes))?);
            }
            if want(Sample::Graph) {
                rows.extend(rt.block_on(samples::graph::run(&bridge, &hints, &sizes, !json))?);
            }
            for r in &rows {
                ok &= r.verified;
            }
            samples::print(&rows, json);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

fn device_type(t: DeviceType) -> &'static str {
    match t {
        DeviceType::DiscreteGpu => "discrete GPU",
        DeviceType::IntegratedGpu => "integrated GPU",
        DeviceType::SoftwareGpu => "software adapter",
        DeviceType::Cpu => "CPU",
    }
}

fn devices(config: &BridgeConfig, json: bool) -> anyhow::Result<ExitCode> {
    let reports = gpubridge::probe_backends(config);
    // The bridge leaves wgpu closed where CUDA is usable, unless told otherwise.
    let cuda_usable = config.fallback.chain.contains(&BackendKind::Cuda)
        && reports
            .iter()
            .any(|r| r.kind == BackendKind::Cuda && matches!(r.status, BackendStatus::Ready(_)));
    let beside_cuda = |kind: BackendKind| {
        kind == BackendKind::Wgpu && gpubridge::wgpu_closed_beside_cuda(config, cuda_usable)
    };
    if json {
        let v: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                let devices: Vec<serde_json::Value> = match &r.status {
                    BackendStatus::Ready(ds) => ds
                        .iter()
                        .map(|d| serde_json::json!({"id": d.id.to_string(), "name": d.name, "type": device_type(d.device_type), "memory_bytes": d.total_memory, "compute_units": d.compute_units, "details": d.details}))
                        .collect(),
                    _ => Vec::new(),
                };
                serde_json::json!({
                    "backend": r.kind.name(),
                    "in_chain": config.fallback.chain.contains(&r.kind),
                    "usable": matches!(r.status, BackendStatus::Ready(_)),
                    "opened": matches!(r.status, BackendStatus::Ready(_)) && !beside_cuda(r.kind),
                    "reason": r.unavailable_reason(),
                    "devices": devices,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        let chain = if config.fallback.chain.contains(&r.kind) {
            ""
        } else {
            " (left out of fallback.chain)"
        };
        match &r.status {
            BackendStatus::Ready(ds) => {
                if beside_cuda(r.kind) {
                    println!(
                        "{}: usable, not opened beside CUDA (wgpu.alongside_cuda is off){chain}",
                        r.kind
                    );
                } else {
                    println!("{}: in use{chain}", r.kind);
                }
                for d in ds {
                    println!(
                        "  {}  {}  [{}]  {}  {}  {}",
                        d.id,
                        d.name,
                        device_type(d.device_type),
                        if d.total_memory > 0 {
                            format!("{:.1} GiB", d.total_memory as f64 / (1u64 << 30) as f64)
                        } else {
                            "memory not reported".to_owned()
                        },
                        if d.compute_units > 0 {
                            format!("{} compute units", d.compute_units)
                        } else {
                            "compute units not reported".to_owned()
                        },
                        d.details
                    );
                }
            }
            _ => println!(
                "{}: not in use: {}{chain}",
                r.kind,
                r.unavailable_reason().unwrap_or_default()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM.
#[cfg(any(feature = "prometheus", feature = "cluster"))]
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
