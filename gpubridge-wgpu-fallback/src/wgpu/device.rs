//! The wgpu device-adapter family: [`Wgpu`] names the types, [`WgpuInstance`] finds adapters, and
//! [`WgpuDevice`] is one adapter's device and queue with its buffer pool and compiled modules.
//!
//! Every wgpu call that can fail runs inside error scopes, and the device has an
//! uncaptured-error handler and a device-lost callback, so failures come back as core's typed
//! errors (validation as `Unsupported`, out of memory as `OutOfMemory`, internal errors as
//! `Backend`) and a lost device is marked lost, never a panic.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gpubridge_core::device::{Api, Device, Instance};
use gpubridge_core::plan::{Plan, PlanOutputs, PlanTarget};
use gpubridge_core::{
    BackendKind, BridgeConfig, DeviceId, DeviceInfo, DeviceType, Error, Health, KernelSources,
    MemoryInfo, NoGraph, Result,
};
use parking_lot::Mutex;

use super::discovery::{discover, Discovered, WgpuUnavailable};
use super::error::{one_line, Scopes};
use super::memory::{BufferPool, Kind, PoolStats};
use super::pipeline::{ModuleCache, WgpuModule};
use crate::host::meminfo_kib;

/// The wgpu backend's type family.
#[derive(Debug)]
pub enum Wgpu {}

impl Api for Wgpu {
    const KIND: BackendKind = BackendKind::Wgpu;
    type Instance = WgpuInstance;
    type Device = WgpuDevice;
    type Buffer = WgpuBuffer;
    type Module = WgpuModule;
    type Graph = NoGraph;
}

/// A device allocation: a storage buffer of at least `len` bytes (rounded up to 4, wgpu's copy
/// granularity).
#[derive(Debug)]
pub struct WgpuBuffer {
    buffer: wgpu::Buffer,
    len: usize,
}

impl WgpuBuffer {
    /// Bytes requested.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Opens wgpu and finds adapters (see [`super::discovery`] for the order and the filters).
pub struct WgpuInstance {
    discovered: Discovered,
    config: BridgeConfig,
}

impl std::fmt::Debug for WgpuInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuInstance")
            .field(
                "adapters",
                &self
                    .discovered
                    .adapters
                    .iter()
                    .map(|a| a.get_info().name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl WgpuInstance {
    /// Opens wgpu as [`Instance::open`] does, keeping the precise reason when it cannot.
    ///
    /// # Errors
    /// [`WgpuUnavailable`]: disabled by configuration, the Vulkan loader missing, no adapter, or
    /// none that passes the configured filters.
    pub fn discover(config: &BridgeConfig) -> std::result::Result<Self, WgpuUnavailable> {
        Ok(Self {
            discovered: discover(config)?,
            config: config.clone(),
        })
    }

    /// The chosen adapters' descriptions, in device order.
    pub fn adapter_infos(&self) -> Vec<wgpu::AdapterInfo> {
        self.discovered
            .adapters
            .iter()
            .map(wgpu::Adapter::get_info)
            .collect()
    }

    /// The wgpu instance.
    pub fn raw(&self) -> &wgpu::Instance {
        &self.discovered.instance
    }
}

impl Instance for WgpuInstance {
    type A = Wgpu;

    fn open(config: &BridgeConfig) -> Result<Self> {
        Self::discover(config).map_err(|e| Error::Unsupported {
            backend: BackendKind::Wgpu,
            what: e.0,
        })
    }

    /// Opens a device on every chosen adapter; one that will not open is logged and left out.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming each adapter's reason when none opens.
    fn enumerate(&self) -> Result<Vec<WgpuDevice>> {
        let mut devices = Vec::new();
        let mut failures = Vec::new();
        for adapter in &self.discovered.adapters {
            match WgpuDevice::open(devices.len(), adapter, &self.config) {
                Ok(d) => devices.push(d),
                Err(e) => {
                    tracing::warn!("wgpu adapter {}: {e}", adapter.get_info().name);
                    failures.push(format!("{}: {e}", adapter.get_info().name));
                }
            }
        }
        if devices.is_empty() {
            return Err(Error::Unsupported {
                backend: BackendKind::Wgpu,
                what: format!("no adapter opened a device ({})", failures.join("; ")),
            });
        }
        Ok(devices)
    }
}

/// What callbacks on other threads learn about a device.
#[derive(Debug, Default)]
pub(crate) struct DeviceState {
    /// Set when the device is lost (its callback fired, or a poll failed); never cleared.
    pub lost: Mutex<Option<String>>,
    /// Errors no scope caught (logged, counted, reported as degraded health).
    pub uncaptured: AtomicU64,
    pub last_uncaptured: Mutex<Option<String>>,
}

/// One adapter's device and queue, with its buffer pool and compiled modules.
///
/// Its methods block the calling thread while the device works (mapping waits on
/// `device.poll`); the backend calls them only from the device's executor thread.
pub struct WgpuDevice {
    pub(crate) info: DeviceInfo,
    pub(crate) label: String,
    pub(crate) adapter: wgpu::AdapterInfo,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) limits: wgpu::Limits,
    pub(crate) state: Arc<DeviceState>,
    pub(crate) pool: Mutex<BufferPool>,
    modules: Mutex<ModuleCache>,
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

const MIB: u64 = 1 << 20;

impl WgpuDevice {
    /// Opens `adapter` as device `index`, asking for every limit the adapter has.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when wgpu refuses the device (or panics while making it).
    pub fn open(index: usize, adapter: &wgpu::Adapter, config: &BridgeConfig) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let label = format!("wgpu:{index}");
        let requested = std::panic::catch_unwind(AssertUnwindSafe(|| {
            futures::executor::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("gpubridge"),
                required_limits: limits.clone(),
                ..Default::default()
            }))
        }));
        let (device, queue) = match requested {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(Error::Unsupported {
                    backend: BackendKind::Wgpu,
                    what: format!("{}: request_device failed: {e}", info.name),
                })
            }
            Err(_) => {
                return Err(Error::Unsupported {
                    backend: BackendKind::Wgpu,
                    what: format!("{}: wgpu panicked in request_device", info.name),
                })
            }
        };
        let state = Arc::new(DeviceState::default());
        {
            let state = state.clone();
            let label = label.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let msg = one_line(&e.to_string());
                tracing::error!(device = %label, "uncaptured wgpu error: {msg}");
                state.uncaptured.fetch_add(1, Ordering::Relaxed);
                *state.last_uncaptured.lock() = Some(msg);
            }));
        }
        {
            let state = state.clone();
            let label = label.clone();
            device.set_device_lost_callback(move |reason, message| {
                let why = format!("device lost ({reason:?}): {}", one_line(&message));
                tracing::warn!(device = %label, "{why}");
                state.lost.lock().get_or_insert(why);
            });
        }
        let software = info.device_type == wgpu::DeviceType::Cpu;
        let (device_type, kind) = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => (DeviceType::DiscreteGpu, "discrete GPU"),
            wgpu::DeviceType::IntegratedGpu => (DeviceType::IntegratedGpu, "integrated GPU"),
            wgpu::DeviceType::VirtualGpu => (DeviceType::DiscreteGpu, "virtual GPU"),
            wgpu::DeviceType::Other => (DeviceType::DiscreteGpu, "GPU of unreported kind"),
            wgpu::DeviceType::Cpu => (
                DeviceType::SoftwareGpu,
                "software adapter (runs on the CPU)",
            ),
        };
        // wgpu does not report adapter memory or core counts. A software adapter runs on the host:
        // its memory is the host's and (llvmpipe) it uses a thread per core.
        let (total_memory, compute_units) = if software {
            let threads = std::env::var("LP_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
                .unwrap_or(1);
            (
                meminfo_kib("MemTotal:").map_or(0, |k| k * 1024),
                threads as u32,
            )
        } else {
            (0, 0)
        };
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        let details = format!(
            "{kind}, {} {driver}, max buffer {} MiB, storage binding {} MiB, {} workgroups per dimension",
            info.backend,
            limits.max_buffer_size / MIB,
            limits.max_storage_buffer_binding_size / MIB,
            limits.max_compute_workgroups_per_dimension,
        );
        let pool = BufferPool::new(
            label.clone(),
            config.memory.pool_size_mb.saturating_mul(MIB),
            limits.max_buffer_size,
        );
        Ok(Self {
            info: DeviceInfo {
                id: DeviceId {
                    backend: BackendKind::Wgpu,
                    index,
                },
                name: info.name.clone(),
                device_type,
                total_memory,
                compute_units,
                compute_capability: None,
                details,
            },
            label,
            adapter: info,
            device,
            queue,
            limits,
            state,
            pool: Mutex::new(pool),
            modules: Mutex::new(ModuleCache::default()),
        })
    }

    /// wgpu's description of the adapter (name, API, driver, device type).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter
    }

    /// The device's limits (every limit of its adapter).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether this is a software adapter (Mesa's llvmpipe, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.adapter.device_type == wgpu::DeviceType::Cpu
    }

    /// What kernels plan for on this device: workgroups per dimension and the largest storage
    /// binding, straight from the adapter's limits.
    pub fn plan_target(&self) -> PlanTarget {
        PlanTarget::Wgsl {
            max_workgroups_per_dim: self.limits.max_compute_workgroups_per_dimension,
            max_storage_buffer_bytes: self.max_binding(),
        }
    }

    /// The largest storage binding, in bytes (a binding is also bounded by the largest buffer).
    pub(crate) fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Statistics of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().stats()
    }

    /// The reason the device is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.state.lost.lock().clone()
    }

    /// Fails with [`Error::DeviceLost`] when the device is lost.
    pub(crate) fn check_alive(&self) -> Result<()> {
        match self.lost() {
            Some(reason) => Err(Error::DeviceLost {
                device: self.label.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Destroys the device, as a driver reset would lose it: the device-lost callback fires on
    /// the next poll and every later use fails with [`Error::DeviceLost`]. For tests of the
    /// fallback chain on real devices.
    #[cfg(feature = "fault-injection")]
    pub fn destroy(&self) {
        self.device.destroy();
        self.poll_wait().ok();
    }

    /// Waits for the queue to drain and runs callbacks.
    pub(crate) fn poll_wait(&self) -> Result<()> {
        self.poll(wgpu::PollType::wait_indefinitely())
    }

    pub(crate) fn poll(&self, how: wgpu::PollType) -> Result<()> {
        match self.device.poll(how) {
            Ok(_) => self.check_alive(),
            Err(e) => {
                self.check_alive()?;
                Err(Error::Backend {
                    backend: BackendKind::Wgpu,
                    message: format!("{}: waiting for the device: {e}", self.label),
                    transient: true,
                })
            }
        }
    }

    fn out_of_range(&self, what: &str, len: usize, offset: usize, size: usize) -> Error {
        Error::invalid_batch(
            &format!("{}:{what}", self.label),
            format!("{len} bytes at {offset} overrun a {size}-byte buffer"),
        )
    }

    /// Reads `[start, end)` (4-byte aligned) of `src` through a readback buffer.
    fn read_aligned(&self, src: &wgpu::Buffer, start: u64, end: u64) -> Result<Vec<u8>> {
        let len = end - start;
        let mut pool = self.pool.lock();
        let readback = pool.rent(&self.device, Kind::Readback, len)?;
        let scopes = Scopes::push(&self.device);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(src, start, &readback.buffer, 0, len);
        self.queue.submit([enc.finish()]);
        if let Err(e) = scopes.check(&self.label, "reading a buffer") {
            pool.give_back(readback);
            return Err(e);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        readback
            .buffer
            .slice(0..len)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        // A failed wait or map leaves the mapping in doubt: that buffer is not reused.
        if let Err(e) = self.poll_wait() {
            pool.discard(readback);
            return Err(e);
        }
        if !matches!(rx.try_recv(), Ok(Ok(()))) {
            pool.discard(readback);
            return Err(Error::Backend {
                backend: BackendKind::Wgpu,
                message: format!("{}: a readback buffer did not map", self.label),
                transient: true,
            });
        }
        let out = match readback.buffer.slice(0..len).get_mapped_range() {
            Ok(view) => Ok(view.to_vec()),
            Err(e) => Err(Error::Backend {
                backend: BackendKind::Wgpu,
                message: format!("{}: reading a mapped buffer: {e}", self.label),
                transient: false,
            }),
        };
        readback.buffer.unmap();
        pool.give_back(readback);
        out
    }
}

impl Device for WgpuDevice {
    type A = Wgpu;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// A software adapter reports the host's memory; wgpu does not report a hardware adapter's.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a hardware adapter; [`Error::DeviceLost`] for a lost device.
    fn memory(&self) -> Result<MemoryInfo> {
        self.check_alive()?;
        if self.is_software() {
            return Ok(MemoryInfo {
                total: self.info.total_memory,
                free: meminfo_kib("MemAvailable:").map_or(0, |k| k * 1024),
            });
        }
        Err(Error::Unsupported {
            backend: BackendKind::Wgpu,
            what: "memory queries (wgpu does not report a hardware adapter's memory)".to_owned(),
        })
    }

    fn health(&self) -> Health {
        if let Some(why) = self.lost() {
            return Health::Lost(why);
        }
        match self.state.uncaptured.load(Ordering::Relaxed) {
            0 => Health::Healthy,
            n => Health::Degraded(format!(
                "{n} uncaptured wgpu errors, the last: {}",
                self.state
                    .last_uncaptured
                    .lock()
                    .clone()
                    .unwrap_or_default()
            )),
        }
    }

    /// # Errors
    /// [`Error::Unsupported`] beyond the adapter's largest buffer (no retry helps);
    /// [`Error::OutOfMemory`] when the device refuses.
    fn alloc(&self, bytes: usize) -> Result<WgpuBuffer> {
        self.check_alive()?;
        let size = (bytes as u64).max(4).next_multiple_of(4);
        if size > self.limits.max_buffer_size {
            return Err(Error::Unsupported {
                backend: BackendKind::Wgpu,
                what: format!(
                    "{}: a {bytes}-byte buffer exceeds the adapter's largest buffer ({} bytes)",
                    self.label, self.limits.max_buffer_size
                ),
            });
        }
        let scopes = Scopes::push(&self.device);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("gpubridge buffer"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        scopes
            .check(&self.label, &format!("allocating {bytes} bytes"))
            .map_err(|e| match e {
                Error::OutOfMemory { device, reason, .. } => Error::OutOfMemory {
                    device,
                    requested: bytes,
                    reason,
                },
                other => other,
            })?;
        Ok(WgpuBuffer { buffer, len: bytes })
    }

    /// Writes through the queue (ordered before the next submission). wgpu copies whole 4-byte
    /// words; an unaligned range is widened by reading its edge words first.
    fn write(&self, dst: &mut WgpuBuffer, offset: usize, src: &[u8]) -> Result<()> {
        self.check_alive()?;
        let end = offset
            .checked_add(src.len())
            .filter(|e| *e <= dst.len)
            .ok_or_else(|| self.out_of_range("write", src.len(), offset, dst.len))?;
        if src.is_empty() {
            return Ok(());
        }
        let (start, stop) = ((offset & !3) as u64, (end as u64).next_multiple_of(4));
        let scopes;
        if start == offset as u64 && stop == end as u64 {
            scopes = Scopes::push(&self.device);
            self.queue.write_buffer(&dst.buffer, start, src);
        } else {
            let mut words = self.read_aligned(&dst.buffer, start, stop)?;
            let at = offset - start as usize;
            words[at..at + src.len()].copy_from_slice(src);
            scopes = Scopes::push(&self.device);
            self.queue.write_buffer(&dst.buffer, start, &words);
        }
        scopes.check(&self.label, "writing a buffer")
    }

    /// Reads at once (waits for the device), so the bytes are complete on return.
    fn read(&self, src: &WgpuBuffer, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check_alive()?;
        let end = offset
            .checked_add(dst.len())
            .filter(|e| *e <= src.len)
            .ok_or_else(|| self.out_of_range("read", dst.len(), offset, src.len))?;
        if dst.is_empty() {
            return Ok(());
        }
        let start = (offset & !3) as u64;
        let words = self.read_aligned(&src.buffer, start, (end as u64).next_multiple_of(4))?;
        let at = offset - start as usize;
        dst.copy_from_slice(&words[at..at + dst.len()]);
        Ok(())
    }

    /// Compiles the kernel's WGSL once per device (pipelines follow per entry point on first use).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the kernel has no WGSL form or it does not compile (with
    /// wgpu's message; remembered, so it is not compiled again).
    fn load_module(&self, kernel: &str, sources: &KernelSources) -> Result<WgpuModule> {
        self.check_alive()?;
        let Some(wgsl) = sources.wgsl else {
            return Err(Error::Unsupported {
                backend: BackendKind::Wgpu,
                what: format!("kernel {kernel} has no WGSL form"),
            });
        };
        self.modules
            .lock()
            .load(&self.device, &self.label, kernel, wgsl)
    }

    fn execute(
        &self,
        module: &WgpuModule,
        plan: &mut Plan,
        f: &mut dyn FnMut(PlanOutputs<'_>),
    ) -> Result<()> {
        super::execute::run(self, module, plan, f)
    }

    fn synchronize(&self) -> Result<()> {
        self.poll_wait()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The first device of this machine's first adapter, or `None` (a skip) where there is none
    /// and `GPUBRIDGE_REQUIRE_WGPU` is not set.
    pub(crate) fn test_device() -> Option<WgpuDevice> {
        match WgpuInstance::discover(&BridgeConfig::default()) {
            Ok(i) => Some(i.enumerate().expect("a found adapter opens").remove(0)),
            Err(why) => {
                assert!(
                    !gpubridge_core::conformance::wgpu_required(),
                    "wgpu is required here: {why}"
                );
                None
            }
        }
    }

    #[test]
    fn an_error_outside_every_scope_is_counted_and_degrades_health_without_losing_the_device() {
        let Some(d) = test_device() else { return };
        assert_eq!(d.health(), Health::Healthy);
        // A mappable buffer that is also a storage buffer needs a feature this device does not
        // ask for: a validation error, raised here outside any error scope, which only the
        // device's uncaptured-error handler sees.
        let _invalid = d.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid on purpose"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        d.poll_wait().unwrap();
        assert_eq!(d.state.uncaptured.load(Ordering::Relaxed), 1);
        match d.health() {
            Health::Degraded(why) => {
                assert!(
                    why.starts_with("1 uncaptured wgpu errors, the last: "),
                    "{why}"
                );
                assert!(!why.contains('\n'), "one line: {why}");
            }
            other => panic!("expected Degraded, got {other:?}"),
        }
        assert_eq!(d.lost(), None, "degraded is not lost");
        // The device still works.
        let mut buf = d.alloc(8).unwrap();
        d.write(&mut buf, 0, &[9; 8]).unwrap();
        let mut out = [0u8; 8];
        d.read(&buf, 0, &mut out).unwrap();
        assert_eq!(out, [9; 8]);
        assert!(matches!(d.health(), Health::Degraded(_)));
    }
}
