//! `WgpuBackend`: every chosen adapter as core's [`Backend`], one executor thread per device.

use std::sync::mpsc;
use std::sync::Arc;

use gpubridge_core::device::{Device, Instance, Work};
use gpubridge_core::{
    Backend, BackendKind, BridgeConfig, DeviceInfo, Error, Health, PlanTarget, Result,
};
use parking_lot::Mutex;

use super::device::{WgpuDevice, WgpuInstance};
use super::discovery::WgpuUnavailable;
use super::executor::{self, Job};
use super::memory::PoolStats;

struct Slot {
    device: Arc<WgpuDevice>,
    tx: Mutex<mpsc::Sender<Job>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    target: PlanTarget,
    budget: u64,
}

/// The wgpu backend: adapters found by [`WgpuInstance::discover`], each driven by its own executor
/// thread.
pub struct WgpuBackend {
    infos: Vec<DeviceInfo>,
    slots: Vec<Slot>,
    _instance: WgpuInstance,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("devices", &self.infos)
            .finish()
    }
}

impl WgpuBackend {
    /// Finds adapters (at most `general.max_devices`), opens a device on each and starts an
    /// executor per device.
    ///
    /// # Errors
    /// [`WgpuUnavailable`] with the precise reason: disabled by configuration, the Vulkan loader
    /// missing, no adapter, none passing `wgpu.adapter` / `wgpu.allow_software_adapter`, or no
    /// device that opens.
    pub fn new(config: &BridgeConfig) -> std::result::Result<Arc<Self>, WgpuUnavailable> {
        let instance = WgpuInstance::discover(config)?;
        let devices = instance
            .enumerate()
            .map_err(|e| WgpuUnavailable(reason(e)))?;
        let mut infos = Vec::new();
        let mut slots = Vec::new();
        for device in devices {
            let device = Arc::new(device);
            let (tx, thread) = executor::spawn(device.clone()).map_err(|e| {
                WgpuUnavailable(format!(
                    "{}: cannot start its executor thread: {e}",
                    device.label
                ))
            })?;
            tracing::info!(
                device = %device.label,
                "wgpu adapter {} ({})",
                device.info.name,
                device.info.details
            );
            // A micro-batch rents its bytes as storage buffers and as much again as upload and
            // readback staging, each rounded up by at most a quarter by the size classes: at most
            // 2.5 times its bytes, so it gets two fifths of the pool. And each plan buffer must fit
            // one storage binding, which a micro-batch within the binding size always does.
            let pool = config.memory.pool_size_mb.saturating_mul(1 << 20);
            let mut budget = (pool / 5 * 2).min(device.max_binding());
            if device.info.total_memory > 0 {
                budget = budget.min(
                    (device.info.total_memory as f64 * config.memory.device_memory_fraction) as u64,
                );
            }
            infos.push(device.info.clone());
            slots.push(Slot {
                target: device.plan_target(),
                device,
                tx: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
                budget,
            });
        }
        Ok(Arc::new(Self {
            infos,
            slots,
            _instance: instance,
        }))
    }

    /// For tests: the backend, or `None` where no adapter is usable (the reason on stderr: a
    /// skip). Where `GPUBRIDGE_REQUIRE_WGPU=1` no adapter is a failure instead.
    ///
    /// # Panics
    /// Without an adapter when `GPUBRIDGE_REQUIRE_WGPU=1`.
    pub fn or_skip(config: &BridgeConfig) -> Option<Arc<Self>> {
        match Self::new(config) {
            Ok(b) => Some(b),
            Err(why) => {
                assert!(
                    !gpubridge_core::conformance::wgpu_required(),
                    "wgpu is required here: {why}"
                );
                eprintln!("skipped: wgpu not available: {why}");
                None
            }
        }
    }

    /// The device behind index `device`.
    pub fn device(&self, device: usize) -> Option<&WgpuDevice> {
        self.slots.get(device).map(|s| &*s.device)
    }

    /// Buffer pool statistics of `device`.
    pub fn pool_stats(&self, device: usize) -> Option<PoolStats> {
        self.slots.get(device).map(|s| s.device.pool_stats())
    }

    /// Fault injection for tests: destroys `device` on its executor thread, as a driver reset
    /// would lose it. wgpu then calls the device-lost callback, the device reports
    /// [`Health::Lost`] and every later submission fails with [`Error::DeviceLost`].
    #[cfg(feature = "fault-injection")]
    pub fn inject_device_lost(&self, device: usize) {
        if let Some(s) = self.slots.get(device) {
            let _ = s.tx.lock().send(Job::Destroy);
        }
    }
}

/// The words of an error, without the "unsupported on wgpu" prefix.
fn reason(e: Error) -> String {
    match e {
        Error::Unsupported { what, .. } => what,
        other => other.to_string(),
    }
}

impl Backend for WgpuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wgpu
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn plan_target(&self, device: usize) -> Option<PlanTarget> {
        self.slots.get(device).map(|s| s.target.clone())
    }

    fn memory_budget(&self, device: usize) -> Option<u64> {
        self.slots.get(device).map(|s| s.budget)
    }

    fn memory_in_use(&self, device: usize) -> Option<u64> {
        self.pool_stats(device).map(|p| p.in_use)
    }

    fn health(&self, device: usize) -> Health {
        match self.slots.get(device) {
            Some(s) => s.device.health(),
            None => Health::Lost("no such device".to_owned()),
        }
    }

    fn submit(&self, device: usize, work: Work) -> Result<()> {
        let slot = self.slots.get(device).ok_or_else(|| Error::DeviceLost {
            device: format!("wgpu:{device}"),
            reason: "no such device".to_owned(),
        })?;
        slot.device.check_alive()?;
        match work {
            Work::Plan {
                plan,
                sources,
                complete,
            } => slot
                .tx
                .lock()
                .send(Job::Plan {
                    plan,
                    sources,
                    complete,
                })
                .map_err(|_| Error::DeviceLost {
                    device: slot.device.label.clone(),
                    reason: "executor thread exited".to_owned(),
                }),
            Work::Cpu(_) => Err(Error::Unsupported {
                backend: BackendKind::Wgpu,
                what: "CPU jobs".to_owned(),
            }),
        }
    }
}

impl Drop for WgpuBackend {
    fn drop(&mut self) {
        for s in &self.slots {
            let _ = s.tx.lock().send(Job::Shutdown);
            if let Some(t) = s.thread.lock().take() {
                if t.join().is_err() {
                    tracing::error!("a wgpu executor thread panicked");
                }
            }
        }
    }
}
