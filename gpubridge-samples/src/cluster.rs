//! `gpubridge worker`: serve batch requests from a NATS JetStream work queue, for the kernels and
//! capabilities this machine has.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gpubridge::BridgeConfig;
use gpubridge_cluster::{ClusterSettings, Worker, WorkerConfig};

/// Arguments of `gpubridge worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "GPUBRIDGE_NATS_URL")]
    nats: String,
    /// Batches running at once at most; the worker fetches only as many requests.
    #[arg(long, default_value_t = 4)]
    max_in_flight: usize,
    /// This worker's name in announcements (default: a random one).
    #[arg(long)]
    name: Option<String>,
    /// Milliseconds a delivered request may stay unacknowledged before it is delivered to
    /// another worker (the consumer's ack_wait; applies when the consumer is created).
    #[arg(long, default_value_t = 30_000)]
    ack_wait_ms: u64,
    /// Deliveries of one request at most (applies when the consumer is created).
    #[arg(long, default_value_t = 5)]
    max_deliver: i64,
    /// Serve only these kernels (comma-separated ids, e.g. `kernels/sum`); default: every kernel
    /// the worker has (`kernels/sum`, `kernels/vector/add`).
    #[arg(long, value_delimiter = ',')]
    kernels: Option<Vec<String>>,
    /// Which backend; `auto` follows the fallback chain. The worker serves the capabilities its
    /// backends satisfy: cuda (cuda, gpu, any), wgpu (wgpu, gpu, any), cpu (cpu, any).
    #[arg(long, default_value = "auto")]
    backend: crate::BackendChoice,
    /// Milliseconds to pause before each batch (tests and demonstrations of redelivery).
    #[arg(long, default_value_t = 0, hide = true)]
    hold_ms: u64,
}

/// Runs the worker until Ctrl-C or SIGTERM, then lets the batches in flight finish.
pub fn run(args: WorkerArgs, mut config: BridgeConfig) -> anyhow::Result<ExitCode> {
    if let Some(kind) = args.backend.kind() {
        config.fallback.chain = vec![kind];
    }
    let bridge = gpubridge::bridge(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let settings = ClusterSettings {
        ack_wait: Duration::from_millis(args.ack_wait_ms),
        max_deliver: args.max_deliver,
        ..ClusterSettings::default()
    };
    let mut wc = WorkerConfig::new(args.nats.clone(), settings);
    wc.max_in_flight = args.max_in_flight.max(1);
    wc.hold = Duration::from_millis(args.hold_ms);
    if let Some(name) = args.name {
        wc.name = name;
    }
    wc.kernels = args.kernels;
    let worker = Worker::new(bridge, wc);
    let a = worker.announcement()?;
    let capabilities: Vec<String> = a.capabilities.iter().map(|c| c.to_string()).collect();
    eprintln!(
        "worker {} serving {} for {} on {} (max {} in flight), NATS {}",
        a.name,
        a.kernels.join(", "),
        capabilities.join(", "),
        a.backends.join(", "),
        a.max_in_flight,
        args.nats
    );
    rt.block_on(worker.run(async {
        if let Err(e) = crate::stop_signal().await {
            eprintln!("warning: {e:#}");
        }
    }))
    .context("serving")?;
    Ok(ExitCode::SUCCESS)
}
