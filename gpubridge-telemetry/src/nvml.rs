//! The NVML sampler: one thread that reads every NVIDIA GPU's utilisation, memory, temperature,
//! power draw and clock throttle reasons every few seconds and publishes them as gauges.
//!
//! NVML (`libnvidia-ml.so.1`) is loaded at run time through `nvml-wrapper`, so this builds and
//! runs on machines without an NVIDIA driver: there [`NvmlSampler::start`] returns `Ok(None)` and
//! says why once, at info level. A field a board does not support is skipped, not reported as an
//! error.
//!
//! Boards are labelled like the bridge's devices (`cuda:0`) when the caller passes their PCI
//! locations (NVML and CUDA may number boards differently, and `CUDA_VISIBLE_DEVICES` hides some);
//! a board the bridge does not use is labelled `nvml:<index>`.
//!
//! | gauge | from |
//! |---|---|
//! | `gpubridge_gpu_utilization_ratio{device}` | `nvmlDeviceGetUtilizationRates` (kernel time share, 0 to 1) |
//! | `gpubridge_gpu_memory_used_bytes{device}`, `gpubridge_gpu_memory_total_bytes{device}` | `nvmlDeviceGetMemoryInfo` |
//! | `gpubridge_gpu_temperature_celsius{device}` | `nvmlDeviceGetTemperature` (GPU die) |
//! | `gpubridge_gpu_power_watts{device}` | `nvmlDeviceGetPowerUsage` |
//! | `gpubridge_gpu_throttle_active{device,reason}` | `nvmlDeviceGetCurrentClocksThrottleReasons`, one 0/1 series per reason |

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use crate::names;
use crate::Error;

/// Where a board sits on the PCI bus: how NVML's boards are matched to the bridge's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PciLocation {
    /// PCI domain.
    pub domain: u32,
    /// Bus number.
    pub bus: u32,
    /// Device number on the bus.
    pub device: u32,
}

/// The throttle reasons published, with their label values.
const THROTTLE_REASONS: [(ThrottleReasons, &str); 9] = [
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (
        ThrottleReasons::APPLICATIONS_CLOCKS_SETTING,
        "applications_clocks_setting",
    ),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (
        ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
        "hw_power_brake_slowdown",
    ),
    (
        ThrottleReasons::DISPLAY_CLOCK_SETTING,
        "display_clock_setting",
    ),
];

/// Library names tried in order: the driver's soname first (always installed with the driver),
/// then the development symlink `nvml-wrapper` uses by default.
const LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// A running sampler. Dropping it stops the thread (without waiting for it).
#[derive(Debug)]
pub struct NvmlSampler {
    devices: Vec<String>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NvmlSampler {
    /// Loads NVML and starts sampling every `interval` (the first sample is taken at once).
    ///
    /// `labels` maps PCI locations to the bridge's device labels; other boards are labelled
    /// `nvml:<index>`. Returns `Ok(None)` when NVML cannot be loaded or initialised (no NVIDIA
    /// driver): that is logged once per process at info level and is not an error.
    ///
    /// # Errors
    /// [`Error::Io`] when the sampler thread cannot be started.
    pub fn start(
        interval: Duration,
        labels: &[(PciLocation, String)],
    ) -> Result<Option<Self>, Error> {
        let labels = labels.to_vec();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Vec<String>, String>>(1);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gpubridge-nvml".to_owned())
            .spawn(move || {
                let nvml = match open() {
                    Ok(n) => n,
                    Err(why) => {
                        let _ = ready_tx.send(Err(why));
                        return;
                    }
                };
                let boards = match boards(&nvml, &labels) {
                    Ok(b) => b,
                    Err(why) => {
                        let _ = ready_tx.send(Err(why));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(boards.iter().map(|b| b.label.clone()).collect()));
                let mut quiet = HashSet::new();
                loop {
                    for b in &boards {
                        sample(b, &mut quiet);
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(devices)) => {
                tracing::info!(?devices, ?interval, "NVML sampler started");
                Ok(Some(Self {
                    devices,
                    stop: Some(stop),
                    thread: Some(thread),
                }))
            }
            Ok(Err(why)) => {
                let _ = thread.join();
                report_absent(&why);
                Ok(None)
            }
            Err(_) => {
                let _ = thread.join();
                report_absent("the NVML thread ended before it reported");
                Ok(None)
            }
        }
    }

    /// The labels of the boards sampled, in NVML's order.
    pub fn devices(&self) -> &[String] {
        &self.devices
    }

    /// Stops the thread and waits for it to end.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("the NVML sampler thread panicked");
            }
        }
    }
}

impl Drop for NvmlSampler {
    fn drop(&mut self) {
        self.stop.take();
    }
}

fn report_absent(why: &str) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if !REPORTED.swap(true, Ordering::Relaxed) {
        tracing::info!(
            "NVML not available, GPU utilisation and temperature are not sampled: {why}"
        );
    } else {
        tracing::debug!("NVML not available: {why}");
    }
}

fn open() -> Result<Nvml, String> {
    let mut why = Vec::new();
    for lib in LIBRARIES {
        match Nvml::builder().lib_path(OsStr::new(lib)).init() {
            Ok(n) => return Ok(n),
            Err(e) => why.push(format!("{lib}: {e}")),
        }
    }
    Err(why.join("; "))
}

struct Board<'n> {
    device: Device<'n>,
    label: String,
}

fn boards<'n>(nvml: &'n Nvml, labels: &[(PciLocation, String)]) -> Result<Vec<Board<'n>>, String> {
    let count = nvml
        .device_count()
        .map_err(|e| format!("nvmlDeviceGetCount failed: {e}"))?;
    let mut boards = Vec::new();
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(|e| format!("nvmlDeviceGetHandleByIndex({index}) failed: {e}"))?;
        let label = device
            .pci_info()
            .ok()
            .and_then(|p| {
                let here = PciLocation {
                    domain: p.domain,
                    bus: p.bus,
                    device: p.device,
                };
                labels.iter().find(|(at, _)| *at == here)
            })
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| crate::device_label("nvml", index as usize));
        boards.push(Board { device, label });
    }
    Ok(boards)
}

/// Reads one board and sets its gauges. A field that fails is skipped; it is logged once per
/// board and field (at debug level when the board does not support it).
fn sample(b: &Board<'_>, quiet: &mut HashSet<(String, &'static str)>) {
    let label = &b.label;
    let mut failed = |what: &'static str, e: NvmlError| {
        if quiet.insert((label.clone(), what)) {
            match e {
                NvmlError::NotSupported => {
                    tracing::debug!(device = %label, "NVML: {what} not supported")
                }
                e => tracing::warn!(device = %label, "NVML: reading {what} failed: {e}"),
            }
        }
    };
    match b.device.utilization_rates() {
        Ok(u) => metrics::gauge!(names::GPU_UTILIZATION_RATIO, "device" => label.clone())
            .set(f64::from(u.gpu) / 100.0),
        Err(e) => failed("utilization", e),
    }
    match b.device.memory_info() {
        Ok(m) => {
            metrics::gauge!(names::GPU_MEMORY_USED_BYTES, "device" => label.clone())
                .set(m.used as f64);
            metrics::gauge!(names::GPU_MEMORY_TOTAL_BYTES, "device" => label.clone())
                .set(m.total as f64);
        }
        Err(e) => failed("memory", e),
    }
    match b.device.temperature(TemperatureSensor::Gpu) {
        Ok(t) => metrics::gauge!(names::GPU_TEMPERATURE_CELSIUS, "device" => label.clone())
            .set(f64::from(t)),
        Err(e) => failed("temperature", e),
    }
    match b.device.power_usage() {
        Ok(mw) => metrics::gauge!(names::GPU_POWER_WATTS, "device" => label.clone())
            .set(f64::from(mw) / 1000.0),
        Err(e) => failed("power", e),
    }
    match b.device.current_throttle_reasons() {
        Ok(active) => {
            for (flag, reason) in THROTTLE_REASONS {
                metrics::gauge!(names::GPU_THROTTLE_ACTIVE, "device" => label.clone(), "reason" => reason)
                    .set(if active.contains(flag) { 1.0 } else { 0.0 });
            }
        }
        Err(e) => failed("throttle reasons", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without NVML (CI, this project's build machines) the sampler is absent, not an error; on
    /// a GPU machine it finds at least one board and a first sample is published.
    #[test]
    fn starts_where_nvml_is_and_is_absent_elsewhere() {
        let require = std::env::var("GPUBRIDGE_REQUIRE_GPU").is_ok_and(|v| v == "1");
        match NvmlSampler::start(Duration::from_millis(200), &[]) {
            Ok(Some(s)) => {
                assert!(!s.devices().is_empty());
                assert!(s.devices().iter().all(|d| d.starts_with("nvml:")));
                s.stop();
            }
            Ok(None) => assert!(!require, "GPUBRIDGE_REQUIRE_GPU=1 but NVML did not load"),
            Err(e) => panic!("starting the sampler failed: {e}"),
        }
    }
}
