//! `CudaBackend`: every CUDA device as core's [`Backend`], one executor thread per device.

use std::sync::mpsc;
use std::sync::Arc;

use gpubridge_core::device::Work;
use gpubridge_core::{
    Backend, BackendKind, BridgeConfig, DeviceId, DeviceInfo, DeviceType, Error, Health,
    PlanTarget, Result,
};
use parking_lot::Mutex;

use crate::compile::PtxCache;
use crate::discovery::{probe, CudaUnavailable};
use crate::executor::{self, Job, Shared};
use crate::memory::PoolStats;

struct DeviceSlot {
    tx: Mutex<mpsc::Sender<Job>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    shared: Arc<Shared>,
    target: PlanTarget,
    budget: u64,
}

/// The CUDA backend: devices found by [`probe`], each driven by its own executor thread.
pub struct CudaBackend {
    infos: Vec<DeviceInfo>,
    slots: Vec<DeviceSlot>,
    /// `cuda.early_wake_us` is not 0.
    wakes_early: bool,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("devices", &self.infos)
            .finish()
    }
}

impl CudaBackend {
    /// Finds every CUDA device (at most `general.max_devices`) and starts an executor per device.
    ///
    /// # Errors
    /// [`CudaUnavailable`] with the precise reason: no driver, no device, no NVRTC, or a device
    /// whose context cannot be created.
    pub fn new(config: &BridgeConfig) -> std::result::Result<Arc<Self>, CudaUnavailable> {
        let found = probe()?;
        let ptx = PtxCache::new(config.cuda.ptx_cache_dir.as_deref())
            .map_err(|e| CudaUnavailable(e.to_string()))?;
        let mut infos = Vec::new();
        let mut slots = Vec::new();
        for d in found.into_iter().take(config.general.max_devices) {
            let shared = Arc::new(Shared::default());
            let (tx, thread, started) = executor::spawn(
                d.ordinal,
                d.compute_capability,
                config,
                ptx.clone(),
                shared.clone(),
            )
            .map_err(|e| CudaUnavailable(format!("device {}: {e}", d.ordinal)))?;
            let fraction_of_device =
                (d.total_memory as f64 * config.memory.device_memory_fraction) as u64;
            let budget = fraction_of_device
                .min(config.memory.pool_size_mb.saturating_mul(1 << 20))
                .min(config.memory.pinned_pool_mb.saturating_mul(1 << 20));
            infos.push(DeviceInfo {
                id: DeviceId {
                    backend: BackendKind::Cuda,
                    index: infos.len(),
                },
                name: d.name.clone(),
                device_type: DeviceType::DiscreteGpu,
                total_memory: d.total_memory,
                compute_units: d.sm_count,
                compute_capability: Some(d.compute_capability),
                details: format!(
                    "sm_{}{}, NVRTC {}.{}, cuBLAS {}",
                    d.compute_capability.0,
                    d.compute_capability.1,
                    ptx.nvrtc_version().0,
                    ptx.nvrtc_version().1,
                    if started.blas { "loaded" } else { "not found" }
                ),
            });
            slots.push(DeviceSlot {
                tx: Mutex::new(tx),
                thread: Mutex::new(Some(thread)),
                shared,
                target: PlanTarget::Cuda {
                    compute_capability: d.compute_capability,
                    blas: started.blas,
                    max_grid_yz: 65535,
                },
                budget,
            });
        }
        Ok(Arc::new(Self {
            infos,
            slots,
            wakes_early: config.cuda.early_wake_us > 0,
        }))
    }

    /// Plans on `device` that started while an earlier one was still in flight on another lane.
    pub fn overlapped_plans(&self, device: usize) -> u64 {
        self.slots.get(device).map_or(0, |s| {
            s.shared
                .overlapped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Number of devices in use.
    pub fn devices_len(&self) -> usize {
        self.slots.len()
    }

    /// Graph cache statistics of `device`.
    pub fn graph_stats(&self, device: usize) -> Option<crate::executor::GraphStats> {
        self.slots.get(device).map(|s| *s.shared.graphs.lock())
    }

    /// Fault injection for tests: marks `device` lost, as a sticky driver error would, so that
    /// every later submission fails with [`Error::DeviceLost`].
    #[cfg(feature = "fault-injection")]
    pub fn inject_device_lost(&self, device: usize, reason: &str) {
        if let Some(s) = self.slots.get(device) {
            *s.shared.lost.lock() = Some(format!("injected fault: {reason}"));
        }
    }

    /// Plans of `device` that ran on their caller's thread (`cuda.inline_tiny_plans`): tiny plans
    /// run zero-copy and replays of cached graphs.
    pub fn inline_runs(&self, device: usize) -> u64 {
        self.slots.get(device).map_or(0, |s| {
            s.shared
                .inline_runs
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// CUDA streams the device's executor has made: one per lane (`cuda.streams_per_device`) and
    /// one for spinning callers' tiny plans at start, and two more per lane once it runs a staged
    /// plan. Kept few on purpose: on the H200 (driver 580) a context in which a stream made after
    /// its first twenty-odd runs work replays every graph about 20% slower from then on, even
    /// once that stream is gone (docs/PERFORMANCE.md, eighteenth session; a graph uploaded and
    /// not launched does the same, which is why the executor does not upload its graphs ahead:
    /// nineteenth session).
    pub fn streams_made(&self, device: usize) -> u64 {
        self.slots.get(device).map_or(0, |s| {
            s.shared.streams.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Where on `device` the outputs of `kernel`'s cached CUDA graphs start: device addresses,
    /// one per cached graph of that kernel (none when it has none), in the mapped output staging
    /// for a small graph that writes its outputs there (`cuda.mapped_graph_buffers`). A diagnostic for benchmarks:
    /// on the H200 a chain of small kernels over the same 128 bytes runs up to ~17% faster or
    /// slower depending on the bytes' address alone (which L2 slice holds them), so a raw
    /// baseline compared with a graph's replays is made over the graph's own bytes
    /// (`gpubridge bench`'s P1; docs/PERFORMANCE.md, nineteenth session). Writing there while
    /// the bridge may replay the graph races with it.
    pub fn graph_outputs(&self, device: usize, kernel: &str) -> Vec<u64> {
        self.slots.get(device).map_or_else(Vec::new, |s| {
            crate::executor::graph_outputs_of(&s.shared, kernel)
        })
    }

    /// Of [`CudaBackend::inline_runs`], the replays of a cached CUDA graph: a spinning caller
    /// replays its plan's graph on its own thread once the executor has captured it.
    pub fn inline_replays(&self, device: usize) -> u64 {
        self.slots.get(device).map_or(0, |s| {
            s.shared
                .inline_replays
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Gives back what `device` keeps only for speed: every cached CUDA graph except the
    /// resident ones (with the device blocks and pinned staging they own), its streams' pinned
    /// staging, the plan shapes it remembers, and the pool's idle memory. Later requests capture
    /// and allocate again as they did the first time. For a service that goes quiet and wants its
    /// memory back, and for a leak check that reads memory with nothing cached (`gpubridge soak`).
    ///
    /// Blocks until the device's executor has finished the plans queued before the request.
    ///
    /// ```no_run
    /// # fn quiet(cuda: &gpubridge_cuda::CudaBackend) -> gpubridge_core::Result<()> {
    /// let released = cuda.release_caches(0)?;
    /// println!(
    ///     "{} graphs ({} bytes), {} idle pool bytes and {} staging bytes given back",
    ///     released.graphs, released.graph_bytes, released.pool_bytes, released.staging_bytes
    /// );
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::DeviceLost`] when `device` does not exist or its executor has ended.
    pub fn release_caches(&self, device: usize) -> Result<crate::Released> {
        let lost = |reason: &str| Error::DeviceLost {
            device: format!("cuda:{device}"),
            reason: reason.to_owned(),
        };
        let slot = self
            .slots
            .get(device)
            .ok_or_else(|| lost("no such device"))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        slot.tx
            .lock()
            .send(Job::Release(tx))
            .map_err(|_| lost("executor thread exited"))?;
        rx.recv().map_err(|_| lost("executor thread exited"))
    }

    /// Pool statistics of `device` after its last plan.
    pub fn pool_stats(&self, device: usize) -> Option<PoolStats> {
        self.slots.get(device).map(|s| *s.shared.pool.lock())
    }
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.infos
    }

    fn plan_target(&self, device: usize) -> Option<PlanTarget> {
        self.slots.get(device).map(|s| s.target.clone())
    }

    fn wakes_early(&self) -> bool {
        self.wakes_early
    }

    fn memory_budget(&self, device: usize) -> Option<u64> {
        self.slots.get(device).map(|s| s.budget)
    }

    /// The pool's bytes rented out, less the blocks that cached graphs keep (they are the
    /// graph cache's, bounded by `cuda.graph_cache_mb` and `cuda.resident_mb`), as of the
    /// device's last plan.
    fn memory_in_use(&self, device: usize) -> Option<u64> {
        self.slots.get(device).map(|s| {
            let in_use = s.shared.pool.lock().in_use as u64;
            in_use.saturating_sub(s.shared.graphs.lock().device_bytes)
        })
    }

    fn free_memory(&self, device: usize) -> Option<u64> {
        self.slots.get(device).map(|s| {
            s.shared
                .free_memory
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    fn health(&self, device: usize) -> Health {
        match self.slots.get(device).map(|s| s.shared.lost.lock().clone()) {
            Some(None) => Health::Healthy,
            Some(Some(why)) => Health::Lost(why),
            None => Health::Lost("no such device".to_owned()),
        }
    }

    fn submit(&self, device: usize, work: Work) -> Result<()> {
        let slot = self.slots.get(device).ok_or_else(|| Error::DeviceLost {
            device: format!("cuda:{device}"),
            reason: "no such device".to_owned(),
        })?;
        if let Some(why) = slot.shared.lost.lock().clone() {
            return Err(Error::DeviceLost {
                device: format!("cuda:{device}"),
                reason: why,
            });
        }
        match work {
            Work::Plan {
                plan,
                sources,
                complete,
            } => {
                let Some((plan, sources, complete)) =
                    executor::run_inline(&slot.shared, plan, sources, complete)
                else {
                    return Ok(());
                };
                slot.tx.lock().send(Job::Plan {
                    plan,
                    sources,
                    complete,
                })
            }
            .map_err(|_| Error::DeviceLost {
                device: format!("cuda:{device}"),
                reason: "executor thread exited".to_owned(),
            }),
            Work::Cpu(_) => Err(Error::Unsupported {
                backend: BackendKind::Cuda,
                what: "CPU jobs".to_owned(),
            }),
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        for s in &self.slots {
            let _ = s.tx.lock().send(Job::Shutdown);
            if let Some(t) = s.thread.lock().take() {
                if t.join().is_err() {
                    tracing::error!("a CUDA executor thread panicked");
                }
            }
        }
    }
}
