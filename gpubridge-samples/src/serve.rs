//! `gpubridge serve`: a bridge with its metrics endpoint (`/metrics`, `/healthz`, `/readyz`), the
//! NVML sampler where NVML is, OTLP traces where configured, and optionally a light mixed demo
//! workload, until Ctrl-C (SIGINT) or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use gpubridge::kernels::{MatMul, MatMulInput, SaxpyInput, Sum, VectorAdd, VectorPair};
use gpubridge::{BridgeConfig, ExecutionHints, GpuBridge};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

/// Arguments of `gpubridge serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the endpoint (default `telemetry.metrics_listen`, 127.0.0.1:9464); port 0
    /// picks a free one, printed on stdout.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Keep a light mixed workload running: every built-in kernel at varied sizes, and now and
    /// then an invalid request, so that every metric this machine can produce moves.
    #[arg(long)]
    pub demo_load: bool,
}

/// What the demo load did.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    /// Invalid requests, refused as they should be.
    refused: AtomicU64,
    /// Valid requests that failed (logged as warnings).
    failed: AtomicU64,
}

/// Runs the command until a stop signal.
pub fn run(args: ServeArgs, config: BridgeConfig) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(args, config))
}

async fn serve(args: ServeArgs, config: BridgeConfig) -> anyhow::Result<ExitCode> {
    let addr = match args.listen {
        Some(a) => a,
        None => config
            .telemetry
            .metrics_listen
            .parse()
            .context("telemetry.metrics_listen")?,
    };
    // The recorder goes in before the bridge is built, so nothing the bridge records is lost.
    if config.telemetry.enable_metrics {
        gpubridge::telemetry::exporter::install()?;
    }
    let bridge = gpubridge::bridge(config)?;
    let sampler = nvml_sampler(&bridge)?;
    let server = gpubridge::telemetry::serve(&bridge, addr).await?;
    let backends: Vec<String> = bridge.devices().iter().map(|d| d.id.to_string()).collect();
    println!("listening on http://{}", server.local_addr());
    eprintln!(
        "gpubridge serve: /metrics, /healthz and /readyz on http://{}; devices {}; {}; Ctrl-C stops",
        server.local_addr(),
        backends.join(", "),
        if args.demo_load {
            "demo load running"
        } else {
            "no load (add --demo-load)"
        }
    );
    let (stop, stopped) = watch::channel(false);
    let tally = Arc::new(Tally::default());
    let load = args
        .demo_load
        .then(|| tokio::spawn(demo_load(bridge.clone(), stopped, tally.clone())));
    crate::stop_signal().await?;
    eprintln!("gpubridge serve: stopping");
    let _ = stop.send(true);
    if let Some(load) = load {
        if let Err(e) = load.await {
            eprintln!("the demo load ended abnormally: {e}");
        }
    }
    server.shutdown().await;
    drop(sampler);
    let failed = tally.failed.load(Ordering::Relaxed);
    if args.demo_load {
        eprintln!(
            "gpubridge serve: stopped; demo load: {} requests ran, {} invalid ones refused as intended, {failed} failed",
            tally.ok.load(Ordering::Relaxed),
            tally.refused.load(Ordering::Relaxed),
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(feature = "nvml")]
fn nvml_sampler(
    bridge: &GpuBridge,
) -> anyhow::Result<Option<gpubridge::telemetry::nvml::NvmlSampler>> {
    Ok(gpubridge::telemetry::start_nvml_sampler(bridge)?)
}

#[cfg(not(feature = "nvml"))]
fn nvml_sampler(_bridge: &GpuBridge) -> anyhow::Result<Option<()>> {
    Ok(None)
}

/// Pause between demo requests: light enough to leave a machine usable, frequent enough that
/// rates move between 15 s scrapes.
const DEMO_EVERY: Duration = Duration::from_millis(20);

/// Every built-in kernel in turn at a random size, one request at a time (and a burst of single
/// requests through the dynamic batcher every fifth turn), with every eleventh
/// request invalid (vectors of different lengths). Requests carry tenant `demo` and correlation
/// ids `demo-<n>`, so the audit log shows them.
async fn demo_load(bridge: GpuBridge, mut stopped: watch::Receiver<bool>, tally: Arc<Tally>) {
    let mut rng = SmallRng::seed_from_u64(rand::random());
    let mut tick = tokio::time::interval(DEMO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        let hints = ExecutionHints::default()
            .tenant("demo")
            .correlation_id(format!("demo-{n}"));
        if n % 11 == 10 {
            let bad = VectorPair {
                a: vec![1.0; 8],
                b: vec![1.0; 7],
            };
            let refused = match bridge.batch::<VectorAdd>() {
                Ok(g) => matches!(
                    g.execute(vec![bad], hints).await,
                    Err(gpubridge::Error::InvalidInput { .. })
                ),
                Err(_) => false,
            };
            let counter = if refused {
                &tally.refused
            } else {
                &tally.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let ok = match n % 5 {
            0 => {
                let (pairs, len) = (rng.random_range(1..=16), rng.random_range(16..=65536));
                let inputs = (0..pairs)
                    .map(|_| VectorPair {
                        a: random_vec(&mut rng, len),
                        b: random_vec(&mut rng, len),
                    })
                    .collect();
                run_kernel::<VectorAdd>(&bridge, inputs, hints).await
            }
            1 => {
                let (vectors, len) = (rng.random_range(1..=1000), rng.random_range(10..=1000));
                let inputs = (0..vectors).map(|_| random_vec(&mut rng, len)).collect();
                run_kernel::<Sum>(&bridge, inputs, hints).await
            }
            2 => {
                let len = rng.random_range(16..=262144);
                let inputs = vec![SaxpyInput {
                    alpha: rng.random_range(-2.0..2.0),
                    x: random_vec(&mut rng, len),
                    y: random_vec(&mut rng, len),
                }];
                run_kernel::<gpubridge::kernels::Saxpy>(&bridge, inputs, hints).await
            }
            4 => {
                // A burst of single requests through the dynamic batcher, so that its queue
                // time, batch sizes and rejections move on the dashboard.
                let burst = rng.random_range(8..=256);
                let singles = (0..burst).map(|_| {
                    let v = random_vec(&mut rng, 100);
                    bridge.single::<Sum>(v, hints.clone())
                });
                let answers = futures::future::join_all(singles).await;
                answers.iter().all(Result::is_ok)
            }
            _ => {
                let (m, k, n) = (
                    rng.random_range(8..=192),
                    rng.random_range(8..=192),
                    rng.random_range(8..=192),
                );
                let inputs = vec![MatMulInput {
                    m,
                    k,
                    n,
                    a: random_vec(&mut rng, m * k),
                    b: random_vec(&mut rng, k * n),
                }];
                run_kernel::<MatMul>(&bridge, inputs, hints).await
            }
        };
        let counter = if ok { &tally.ok } else { &tally.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn run_kernel<K: gpubridge::Kernel>(
    bridge: &GpuBridge,
    inputs: Vec<K::Input>,
    hints: ExecutionHints,
) -> bool {
    match bridge.batch::<K>() {
        Ok(grain) => match grain.execute(inputs, hints).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(kernel = K::ID, "demo request failed: {e}");
                false
            }
        },
        Err(e) => {
            tracing::warn!(kernel = K::ID, "demo kernel not registered: {e}");
            false
        }
    }
}

fn random_vec(rng: &mut SmallRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}
