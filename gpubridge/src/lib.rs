//! gpubridge: send typed batches of work to GPU kernels by name from async Rust services and get
//! typed results back, on the fastest backend the machine has, with the same answers everywhere.
//!
//! This facade re-exports [`gpubridge_core`] and wires in the backends its Cargo features select:
//!
//! | feature | adds | status |
//! |---|---|---|
//! | (always) | the CPU backend, every built-in kernel | working |
//! | `cuda` | the CUDA backend (driver, NVRTC and cuBLAS loaded at run time), and CUDA device memory in [`storage`] | working: device pool, pinned staging, pipelined copies on two streams, CUDA graphs, zero-copy tiny plans, cuBLAS, multi-GPU placement and failover (tested on H100 and H200) |
//! | `wgpu` | the wgpu compute backend (Vulkan or GL adapters; Mesa's llvmpipe where there is no GPU) | every built-in kernel runs and is conformance-tested on llvmpipe in CI |
//! | (always) | [`storage`]: files to and from host memory and other backends' buffers (thread pool, `O_DIRECT`, atomic saves) | working |
//! | `gds` | cuFile (GPUDirect Storage) in [`storage`] for CUDA device memory, per file, with the host-staged path as fallback | working; declines on machines where the file handle does not register |
//! | `prometheus` | `telemetry::serve`: `/metrics` (Prometheus), `/healthz`, `/readyz` | working |
//! | `nvml` | `telemetry::start_nvml_sampler`: GPU utilisation, memory, temperature, power, throttling | working (loads NVML at run time) |
//! | `otlp` | `telemetry::otlp`: `tracing` spans exported over OTLP/HTTP | working |
//!
//! # Example
//! ```
//! use gpubridge::kernels::{VectorAdd, VectorPair};
//! use gpubridge::{BridgeConfig, ExecutionHints};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> gpubridge::Result<()> {
//! let bridge = gpubridge::bridge(BridgeConfig::default())?;
//! let add = bridge.batch::<VectorAdd>()?;
//! let pairs = vec![VectorPair { a: vec![1.0, 2.0], b: vec![10.0, 20.0] }];
//! let result = add.execute(pairs, ExecutionHints::default()).await?;
//! assert_eq!(result.outputs, vec![vec![11.0, 22.0]]);
//! println!("ran on {:?}", result.device());
//! # Ok(()) }
//! ```

/// Beyond one machine: GPU workers pulling batches from NATS JetStream (feature `cluster`).
#[cfg(feature = "cluster")]
pub use gpubridge_cluster as cluster;
pub use gpubridge_core::*;
pub use gpubridge_storage as storage;
pub use gpubridge_wgpu_fallback::cpu;

pub mod telemetry;

#[cfg(feature = "cuda")]
pub use gpubridge_cuda as cuda;
#[cfg(feature = "wgpu")]
pub use gpubridge_wgpu_fallback::wgpu;

/// Every backend this build knows, usable or not, each with its devices or the exact reason it is
/// not in use (for wgpu: the adapter, or "disabled by configuration", "the Vulkan loader
/// (libvulkan.so.1) could not be loaded", "no adapter found", ...).
pub fn probe_backends(config: &BridgeConfig) -> Vec<BackendReport> {
    let (cuda, wgpu) = std::thread::scope(|s| {
        // Opening Vulkan takes as long as starting CUDA: do both at once.
        let wgpu = s.spawn(|| gpubridge_wgpu_fallback::wgpu_status(config));
        let cuda = match cuda_backend(config) {
            Ok(b) => BackendReport {
                kind: BackendKind::Cuda,
                status: BackendStatus::Ready(b.devices().to_vec()),
            },
            Err(report) => report,
        };
        (cuda, join_report(wgpu, BackendKind::Wgpu))
    });
    let mut reports = vec![cuda, wgpu];
    let cpu = match gpubridge_wgpu_fallback::CpuBackend::new(config) {
        Ok(b) => BackendStatus::Ready(b.devices().to_vec()),
        Err(e) => BackendStatus::Unavailable(e.to_string()),
    };
    reports.push(BackendReport {
        kind: BackendKind::Cpu,
        status: cpu,
    });
    reports
}

/// The CUDA backend if it can be used here, else the report saying why not.
#[cfg(feature = "cuda")]
fn cuda_backend(
    config: &BridgeConfig,
) -> std::result::Result<std::sync::Arc<dyn Backend>, BackendReport> {
    match gpubridge_cuda::CudaBackend::new(config) {
        Ok(b) => Ok(b),
        Err(why) => Err(BackendReport {
            kind: BackendKind::Cuda,
            status: BackendStatus::Unavailable(why.to_string()),
        }),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(
    _config: &BridgeConfig,
) -> std::result::Result<std::sync::Arc<dyn Backend>, BackendReport> {
    Err(BackendReport {
        kind: BackendKind::Cuda,
        status: BackendStatus::NotCompiled { feature: "cuda" },
    })
}

fn join_report(
    handle: std::thread::ScopedJoinHandle<'_, BackendReport>,
    kind: BackendKind,
) -> BackendReport {
    handle.join().unwrap_or_else(|_| BackendReport {
        kind,
        status: BackendStatus::Unavailable(format!("probing {kind} panicked")),
    })
}

type Opened = std::result::Result<std::sync::Arc<dyn Backend>, BackendReport>;

fn left_out(kind: BackendKind) -> Opened {
    Err(BackendReport {
        kind,
        status: BackendStatus::Unavailable("left out of fallback.chain".to_owned()),
    })
}

/// Whether [`builder`] leaves the wgpu backend closed because CUDA is usable (`cuda_usable`):
/// wgpu is in the chain and enabled, and `wgpu.alongside_cuda` is off. A second (Vulkan) context
/// on the same GPU perturbs CUDA's latency.
pub fn wgpu_closed_beside_cuda(config: &BridgeConfig, cuda_usable: bool) -> bool {
    cuda_usable
        && config.wgpu.enabled
        && !config.wgpu.alongside_cuda
        && config.fallback.chain.contains(&BackendKind::Wgpu)
}

/// A [`BridgeBuilder`] with every built-in kernel and every usable compiled-in backend, in the
/// order of `fallback.chain` (by default CUDA, then wgpu, then the CPU), and the reasons for the
/// others. Register your own kernels on it, then [`BridgeBuilder::build`].
///
/// # Fallback
/// A backend that cannot be opened (no CUDA driver, no wgpu adapter, `wgpu.enabled = false`) is
/// recorded with its reason, which `devices`, [`GpuBridge::reports`] and
/// [`Error::NoBackendAvailable`] repeat; work then lands on the next backend of the chain. Where
/// CUDA is usable wgpu is not opened (and says so) unless `wgpu.alongside_cuda` is on: a second
/// context on the same GPU perturbs CUDA's latency. With it on, both are opened at once.
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad configuration; errors starting the CPU pool.
pub fn builder(config: BridgeConfig) -> Result<BridgeBuilder> {
    config.validate()?;
    let mut b = GpuBridge::builder(config);
    register_builtins(&mut b)?;
    let chain = b.config().fallback.chain.clone();
    let cfg = b.config();
    let open_wgpu = || -> Opened {
        if chain.contains(&BackendKind::Wgpu) {
            gpubridge_wgpu_fallback::wgpu_backend(cfg)
        } else {
            left_out(BackendKind::Wgpu)
        }
    };
    let open_cuda = || -> Opened {
        if chain.contains(&BackendKind::Cuda) {
            cuda_backend(cfg)
        } else {
            left_out(BackendKind::Cuda)
        }
    };
    let wgpu_panicked = || -> Opened {
        Err(BackendReport {
            kind: BackendKind::Wgpu,
            status: BackendStatus::Unavailable("opening wgpu panicked".to_owned()),
        })
    };
    let (cuda, wgpu) = if cfg.wgpu.alongside_cuda {
        std::thread::scope(|s| {
            // Opening Vulkan takes as long as starting CUDA: do both at once.
            let wgpu = s.spawn(open_wgpu);
            let cuda = open_cuda();
            let wgpu = wgpu.join().unwrap_or_else(|_| wgpu_panicked());
            (cuda, wgpu)
        })
    } else {
        // wgpu is for machines without CUDA: beside it, a second context on the same GPU
        // perturbs CUDA's latency (`wgpu.alongside_cuda`).
        let cuda = open_cuda();
        let wgpu = match &cuda {
            Ok(_) if wgpu_closed_beside_cuda(cfg, true) => Err(BackendReport {
                kind: BackendKind::Wgpu,
                status: BackendStatus::Unavailable(
                    "not opened: CUDA is usable here and wgpu.alongside_cuda is off".to_owned(),
                ),
            }),
            // A driver that panics is reported, as on the thread of the other branch.
            _ => std::panic::catch_unwind(std::panic::AssertUnwindSafe(open_wgpu))
                .unwrap_or_else(|_| wgpu_panicked()),
        };
        (cuda, wgpu)
    };
    for opened in [cuda, wgpu] {
        match opened {
            Ok(backend) => b.add_backend(backend),
            Err(report) => {
                if let Some(why) = report.unavailable_reason() {
                    tracing::info!(backend = %report.kind, "not in use: {why}");
                }
                b.add_report(report)
            }
        };
    }
    let cpu = gpubridge_wgpu_fallback::CpuBackend::new(b.config())?;
    b.add_backend(cpu);
    Ok(b)
}

/// A ready bridge: [`builder`] then build.
///
/// # Errors
/// As [`builder`].
pub fn bridge(config: BridgeConfig) -> Result<GpuBridge> {
    builder(config)?.build()
}

/// Registers every built-in kernel (vector add, sum, SAXPY, matrix multiply, connected
/// components) on `b`: for a bridge assembled from backends of your choosing, as [`builder`] does
/// for the usable ones.
///
/// # Errors
/// [`Error::InvalidInput`] if one of their ids is already taken.
pub fn register_builtins(b: &mut BridgeBuilder) -> Result<()> {
    b.register(kernels::VectorAdd)?;
    b.register(kernels::Sum)?;
    b.register(kernels::Saxpy)?;
    b.register(kernels::MatMul)?;
    b.register(kernels::ConnectedComponents::default())?;
    Ok(())
}

/// The README's Rust examples, compiled as doc-tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The deployment guide's Rust example, compiled as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../../docs/DEPLOYMENT.md")]
pub struct DeploymentDoctests;
