//! gpubridge: send typed batches of work to GPU kernels by name from async Rust services and get
//! typed results back, on the fastest backend the machine has, with the same answers everywhere.
//!
//! This facade re-exports [`gpubridge_core`] and wires in the backends its Cargo features select:
//!
//! | feature | adds | status |
//! |---|---|---|
//! | (always) | the CPU backend, every built-in kernel | working |
//! | `cuda` | the CUDA backend (driver, NVRTC and cuBLAS loaded at run time) | kernels run; graphs and copy/compute overlap are next |
//! | `wgpu` | the wgpu compute backend | not built yet (reported as such) |
//! | `gds` | cuFile in `gpubridge-storage` | not built yet |
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

pub use gpubridge_core::*;
pub use gpubridge_wgpu_fallback::cpu;

pub mod telemetry;

#[cfg(feature = "cuda")]
pub use gpubridge_cuda as cuda;

/// Every backend this build knows, usable or not, each with its devices or the exact reason it is
/// not in use.
pub fn probe_backends(config: &BridgeConfig) -> Vec<BackendReport> {
    let cuda = match cuda_backend(config) {
        Ok(b) => BackendReport {
            kind: BackendKind::Cuda,
            status: BackendStatus::Ready(b.devices().to_vec()),
        },
        Err(report) => report,
    };
    let mut reports = vec![cuda, gpubridge_wgpu_fallback::wgpu_status()];
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

/// A [`BridgeBuilder`] with every built-in kernel and every usable compiled-in backend, in the
/// order of `fallback.chain`, and the reasons for the others. Register your own kernels on it,
/// then [`BridgeBuilder::build`].
///
/// # Errors
/// [`Error::InvalidConfig`] for a bad configuration; errors starting the CPU pool.
pub fn builder(config: BridgeConfig) -> Result<BridgeBuilder> {
    config.validate()?;
    let mut b = GpuBridge::builder(config);
    register_builtins(&mut b)?;
    if b.config().fallback.chain.contains(&BackendKind::Cuda) {
        match cuda_backend(b.config()) {
            Ok(cuda) => b.add_backend(cuda),
            Err(report) => b.add_report(report),
        };
    } else {
        b.add_report(BackendReport {
            kind: BackendKind::Cuda,
            status: BackendStatus::Unavailable("left out of fallback.chain".to_owned()),
        });
    }
    b.add_report(gpubridge_wgpu_fallback::wgpu_status());
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

fn register_builtins(b: &mut BridgeBuilder) -> Result<()> {
    b.register(kernels::VectorAdd)?;
    b.register(kernels::Sum)?;
    b.register(kernels::Saxpy)?;
    b.register(kernels::MatMul)?;
    Ok(())
}

/// The README's Rust examples, compiled as doc-tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
