//! Telemetry for a bridge: every metric's name and description ([`names`]), and behind features
//! the Prometheus endpoint (`serve`, feature `prometheus`), the NVML sampler
//! (`start_nvml_sampler`, feature `nvml`) and OTLP trace export (`otlp`, feature `otlp`).
//!
//! Everything of `gpubridge-telemetry` is re-exported here; what this module adds knows the
//! bridge: readiness for `/readyz`, circuit states republished on each scrape, and NVML boards
//! labelled like the bridge's CUDA devices.
//!
//! # Example
//! ```no_run
//! # #[cfg(feature = "prometheus")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let bridge = gpubridge::bridge(gpubridge::BridgeConfig::default())?;
//! let server = gpubridge::telemetry::serve(&bridge, "127.0.0.1:9464".parse()?).await?;
//! println!("scrape http://{}/metrics", server.local_addr());
//! // ... run work through the bridge; dropping `server` stops it.
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub use gpubridge_telemetry::*;

#[cfg(feature = "prometheus")]
pub use serving::{serve, BridgeReadiness};

#[cfg(feature = "prometheus")]
mod serving {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use gpubridge_core::GpuBridge;
    use gpubridge_telemetry::server::{MetricsServer, Readiness};
    use gpubridge_telemetry::{exporter, intern_label, names, Error};

    /// `/readyz` over [`GpuBridge::readiness`]: ready while some device (the CPU counts) is
    /// healthy with its circuit admitting work, and the requests pending are below
    /// `batching.queue_capacity`.
    #[derive(Debug, Clone)]
    pub struct BridgeReadiness(pub GpuBridge);

    impl Readiness for BridgeReadiness {
        fn check(&self) -> Result<(), String> {
            self.0.readiness().check()
        }

        /// Republishes every device's circuit state: a circuit times out from open to half-open
        /// with no request to record it, and states set before the recorder was installed are
        /// otherwise lost.
        fn before_scrape(&self) {
            for d in self.0.readiness().devices {
                metrics::gauge!(names::CIRCUIT_STATE, "device" => intern_label(&d.id.to_string()))
                    .set(d.circuit.gauge());
            }
        }
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` for `bridge` on `addr` (port 0 picks one) on
    /// the current tokio runtime. Installs the Prometheus recorder first (once per process)
    /// unless `telemetry.enable_metrics` is off, in which case `/metrics` answers 404.
    ///
    /// Install the recorder (`telemetry::exporter::install`) before building the bridge to
    /// keep everything recorded from the start; `serve` also works on a running bridge.
    ///
    /// # Errors
    /// [`Error::Recorder`] when another metrics recorder is installed; [`Error::Io`] when
    /// the address cannot be bound or there is no tokio runtime.
    pub async fn serve(bridge: &GpuBridge, addr: SocketAddr) -> Result<MetricsServer, Error> {
        let handle = if bridge.config().telemetry.enable_metrics {
            Some(exporter::install()?)
        } else {
            None
        };
        let readiness = BridgeReadiness(bridge.clone());
        readiness.before_scrape();
        MetricsServer::bind(addr, handle, Arc::new(readiness)).await
    }
}

/// Starts the NVML sampler for `bridge` every `telemetry.nvml_interval_ms`, labelling boards
/// like the bridge's CUDA devices (`cuda:0`) by PCI location; boards it does not use are
/// `nvml:<index>`. `Ok(None)` where NVML is absent (said once, at info level).
///
/// # Errors
/// [`Error::Io`] when the sampler thread cannot start.
#[cfg(feature = "nvml")]
pub fn start_nvml_sampler(
    bridge: &gpubridge_core::GpuBridge,
) -> std::result::Result<Option<nvml::NvmlSampler>, Error> {
    let interval = std::time::Duration::from_millis(bridge.config().telemetry.nvml_interval_ms);
    nvml::NvmlSampler::start(interval, &cuda_pci_labels(bridge))
}

#[cfg(all(feature = "nvml", feature = "cuda"))]
fn cuda_pci_labels(bridge: &gpubridge_core::GpuBridge) -> Vec<(nvml::PciLocation, String)> {
    let used: Vec<usize> = bridge
        .devices()
        .iter()
        .filter(|d| d.id.backend == gpubridge_core::BackendKind::Cuda)
        .map(|d| d.id.index)
        .collect();
    if used.is_empty() {
        return Vec::new();
    }
    gpubridge_cuda::pci_locations()
        .into_iter()
        .filter(|(ordinal, ..)| used.contains(ordinal))
        .map(|(ordinal, domain, bus, device)| {
            (
                nvml::PciLocation {
                    domain,
                    bus,
                    device,
                },
                device_label("cuda", ordinal),
            )
        })
        .collect()
}

#[cfg(all(feature = "nvml", not(feature = "cuda")))]
fn cuda_pci_labels(_bridge: &gpubridge_core::GpuBridge) -> Vec<(nvml::PciLocation, String)> {
    Vec::new()
}
