//! `GpuBridge`: the runtime that takes typed batches, splits them into micro-batches, places each on
//! the best available backend and device, falls back along the chain on failure, and returns typed
//! outputs in input order.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gpubridge_telemetry::{names, AUDIT_TARGET};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::catalog::KernelCatalog;
use crate::circuit::{Admission, CircuitBreaker, CircuitState};
use crate::config::BridgeConfig;
use crate::device::{
    Backend, BackendKind, BackendReport, BackendStatus, CpuJob, DeviceId, DeviceInfo, Health,
    PlanCompletion, Work,
};
use crate::error::{Error, ErrorClass, Result};
use crate::hints::{BatchResult, ChunkReport, ExecutionHints, FallbackEvent, Preference};
use crate::kernel::{DynKernel, Kernel};
use crate::plan::BufferRole;
use crate::readiness::{DeviceReadiness, Readiness};

const MIB: u64 = 1024 * 1024;

struct Slot {
    backend: Arc<dyn Backend>,
    breakers: Vec<CircuitBreaker>,
    in_flight: Vec<AtomicUsize>,
    /// Metric label of each device (`cuda:0`), interned once.
    labels: Vec<&'static str>,
}

pub(crate) struct Inner {
    config: BridgeConfig,
    catalog: KernelCatalog,
    slots: Vec<Slot>,
    reports: Vec<BackendReport>,
    /// Device slots for micro-batches (`general.max_concurrent_kernels`), by priority.
    kernel_slots: crate::slots::Slots,
    /// Requests accepted and not yet completed (what `gpubridge_pending_requests` shows).
    pending: AtomicUsize,
    /// The dynamic batcher's queues, one per kernel, created by the first single request.
    batchers: crate::batcher::Batchers,
    /// Per-tenant limits and what each tenant holds.
    pub(crate) tenants: crate::tenants::Tenants,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: dispatchers answer what is queued `Cancelled` and exit.
        drop(self.batchers.stop_all(false));
    }
}

/// The bridge: kernels, backends and configuration, shared by cheap clones.
///
/// Built with [`GpuBridge::builder`]; the `gpubridge` facade crate has a builder that adds every
/// compiled-in backend and built-in kernel for you.
///
/// ```no_run
/// use gpubridge_core::{kernels, ExecutionHints, GpuBridge};
/// # async fn demo(bridge: GpuBridge) -> gpubridge_core::Result<()> {
/// let add = bridge.batch::<kernels::VectorAdd>()?;
/// let pair = kernels::VectorPair { a: vec![1.0, 2.0], b: vec![3.0, 4.0] };
/// let result = add.execute(vec![pair], ExecutionHints::default()).await?;
/// assert_eq!(result.outputs[0], vec![4.0, 6.0]);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GpuBridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GpuBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBridge")
            .field("kernels", &self.inner.catalog)
            .field(
                "backends",
                &self
                    .inner
                    .slots
                    .iter()
                    .map(|s| s.backend.kind())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Assembles a [`GpuBridge`].
pub struct BridgeBuilder {
    config: BridgeConfig,
    catalog: KernelCatalog,
    backends: Vec<Arc<dyn Backend>>,
    reports: Vec<BackendReport>,
}

impl BridgeBuilder {
    /// A builder with no kernels and no backends.
    pub fn new(config: BridgeConfig) -> Self {
        Self {
            config,
            catalog: KernelCatalog::new(),
            backends: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// The configuration the bridge will use.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// Registers a kernel.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if its id is taken.
    pub fn kernel<K: Kernel>(mut self, kernel: K) -> Result<Self> {
        self.catalog.register(kernel)?;
        Ok(self)
    }

    /// Registers a kernel in place.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if its id is taken.
    pub fn register<K: Kernel>(&mut self, kernel: K) -> Result<&mut Self> {
        self.catalog.register(kernel)?;
        Ok(self)
    }

    /// Adds a usable backend. Its place in the fallback order comes from `fallback.chain`.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.add_backend(backend);
        self
    }

    /// Adds a usable backend in place.
    pub fn add_backend(&mut self, backend: Arc<dyn Backend>) -> &mut Self {
        self.reports.retain(|r| r.kind != backend.kind());
        self.reports.push(BackendReport {
            kind: backend.kind(),
            status: BackendStatus::Ready(backend.devices().to_vec()),
        });
        self.backends.retain(|b| b.kind() != backend.kind());
        self.backends.push(backend);
        self
    }

    /// Records a backend that is not usable here, and why, so that errors and `devices` can say so.
    pub fn unavailable(mut self, report: BackendReport) -> Self {
        self.add_report(report);
        self
    }

    /// Records a backend report in place (see [`BridgeBuilder::unavailable`]).
    pub fn add_report(&mut self, report: BackendReport) -> &mut Self {
        if !self.backends.iter().any(|b| b.kind() == report.kind) {
            self.reports.retain(|r| r.kind != report.kind);
            self.reports.push(report);
        }
        self
    }

    /// Builds the bridge.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if the configuration does not validate.
    pub fn build(self) -> Result<GpuBridge> {
        self.config.validate()?;
        gpubridge_telemetry::describe_all();
        let cfg = &self.config;
        let mut slots = Vec::new();
        let mut reports = self.reports;
        for kind in &cfg.fallback.chain {
            if let Some(b) = self.backends.iter().find(|b| b.kind() == *kind) {
                let n = b.devices().len().min(cfg.general.max_devices);
                if n == 0 {
                    continue;
                }
                let open_for = Duration::from_millis(cfg.fallback.circuit_open_ms);
                slots.push(Slot {
                    backend: b.clone(),
                    breakers: (0..n)
                        .map(|_| {
                            CircuitBreaker::new(cfg.fallback.circuit_failure_threshold, open_for)
                        })
                        .collect(),
                    in_flight: (0..n).map(|_| AtomicUsize::new(0)).collect(),
                    labels: b.devices()[..n]
                        .iter()
                        .map(|d| gpubridge_telemetry::intern_label(&d.id.to_string()))
                        .collect(),
                });
                for d in &b.devices()[..n] {
                    metrics::gauge!(names::CIRCUIT_STATE, "device" => d.id.to_string()).set(0.0);
                }
            }
        }
        for r in &mut reports {
            if !cfg.fallback.chain.contains(&r.kind) && matches!(r.status, BackendStatus::Ready(_))
            {
                r.status = BackendStatus::Unavailable("left out of fallback.chain".to_owned());
            }
        }
        reports.sort_by_key(|r| r.kind);
        if slots.is_empty() {
            tracing::warn!("gpubridge built with no usable backend; every request will fail");
        }
        let kernel_slots = crate::slots::Slots::new(cfg.general.max_concurrent_kernels);
        let catalog_ids: Vec<&'static str> = self.catalog.ids().collect();
        let tenants = crate::tenants::Tenants::new(self.config.tenants.clone());
        Ok(GpuBridge {
            inner: Arc::new(Inner {
                config: self.config,
                catalog: self.catalog,
                slots,
                reports,
                kernel_slots,
                pending: AtomicUsize::new(0),
                batchers: crate::batcher::Batchers::new(catalog_ids),
                tenants,
            }),
        })
    }
}

impl GpuBridge {
    /// Starts a [`BridgeBuilder`].
    pub fn builder(config: BridgeConfig) -> BridgeBuilder {
        BridgeBuilder::new(config)
    }

    /// The batch handle of kernel `K` (the original's batch grain).
    ///
    /// # Errors
    /// [`Error::UnknownKernel`] if `K` is not registered.
    pub fn batch<K: Kernel>(&self) -> Result<BatchGrain<K::Input, K::Output>> {
        self.batch_by_id(K::ID)
    }

    /// The batch handle of the kernel registered as `id`, for a caller sending `I` and expecting
    /// `O`.
    ///
    /// # Errors
    /// [`Error::UnknownKernel`] or [`Error::KernelTypeMismatch`].
    pub fn batch_by_id<I, O>(&self, id: &str) -> Result<BatchGrain<I, O>>
    where
        I: Send + Sync + 'static,
        O: Send + 'static,
    {
        let kernel = self.inner.catalog.resolve::<I, O>(id)?;
        Ok(BatchGrain {
            bridge: self.clone(),
            kernel,
        })
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn batchers(&self) -> &crate::batcher::Batchers {
        &self.inner.batchers
    }

    pub(crate) fn grain<I, O>(self, kernel: Arc<dyn DynKernel<I, O>>) -> BatchGrain<I, O> {
        BatchGrain {
            bridge: self,
            kernel,
        }
    }

    pub(crate) fn inner_tenants(&self) -> &crate::tenants::Tenants {
        &self.inner.tenants
    }

    /// What `tenant` holds now (requests and device bytes in flight) and how many of its
    /// requests were refused; `None` for a tenant that has sent nothing.
    pub fn tenant_usage(&self, tenant: &str) -> Option<crate::tenants::TenantUsage> {
        self.inner.tenants.usage(tenant)
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.inner.config
    }

    /// The kernel catalog.
    pub fn catalog(&self) -> &KernelCatalog {
        &self.inner.catalog
    }

    /// Every backend known to the bridge, usable or not, with the reason when not.
    pub fn reports(&self) -> &[BackendReport] {
        &self.inner.reports
    }

    /// The usable backends in fallback order.
    pub fn backends(&self) -> Vec<BackendKind> {
        self.inner.slots.iter().map(|s| s.backend.kind()).collect()
    }

    /// Every device in use, in fallback order.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.inner
            .slots
            .iter()
            .flat_map(|s| s.backend.devices()[..s.breakers.len()].iter().cloned())
            .collect()
    }

    /// The circuit state of `device`, if the bridge uses it.
    pub fn circuit_state(&self, device: DeviceId) -> Option<CircuitState> {
        self.inner
            .slots
            .iter()
            .find(|s| s.backend.kind() == device.backend)
            .and_then(|s| s.breakers.get(device.index))
            .map(CircuitBreaker::state)
    }

    /// What the bridge holds now: batches pending, each batcher's queue, micro-batches running
    /// and in flight per device, tenants' allowances and pooled device memory. All of it is zero
    /// once every request is answered; see [`crate::testing::assert_quiescent`].
    pub fn accounting(&self) -> crate::accounting::Accounting {
        let inner = &self.inner;
        let mut device_in_flight = Vec::new();
        let mut device_memory_in_use = Vec::new();
        for s in &inner.slots {
            for (d, n) in s.in_flight.iter().enumerate() {
                let id = s.backend.devices()[d].id;
                device_in_flight.push((id, n.load(Ordering::SeqCst)));
                if let Some(bytes) = s.backend.memory_in_use(d) {
                    device_memory_in_use.push((id, bytes));
                }
            }
        }
        crate::accounting::Accounting {
            pending_batches: inner.pending.load(Ordering::SeqCst),
            batchers: inner.batchers.occupancy(),
            running_micro_batches: inner.kernel_slots.taken(),
            waiting_micro_batches: inner.kernel_slots.waiting(),
            device_in_flight,
            tenants: inner.tenants.all_usage(),
            device_memory_in_use,
        }
    }

    /// Whether the bridge can take work now: every device's health, circuit and load, and the
    /// requests pending against `batching.queue_capacity` (see [`Readiness::check`]).
    pub fn readiness(&self) -> Readiness {
        let inner = &self.inner;
        let now = Instant::now();
        let devices = inner
            .slots
            .iter()
            .flat_map(|s| {
                s.breakers
                    .iter()
                    .enumerate()
                    .map(move |(d, breaker)| DeviceReadiness {
                        id: s.backend.devices()[d].id,
                        health: s.backend.health(d),
                        circuit: breaker.state(),
                        admits_work: breaker.admits(now),
                        in_flight: s.in_flight[d].load(Ordering::Relaxed),
                    })
            })
            .collect();
        let max = inner.config.general.max_concurrent_kernels;
        Readiness {
            devices,
            pending_requests: inner.pending.load(Ordering::Relaxed) + inner.batchers.pending(),
            queue_capacity: inner.config.batching.queue_capacity,
            running_micro_batches: inner.kernel_slots.taken(),
            max_concurrent_kernels: max,
        }
    }

    fn candidates(&self, hints: &ExecutionHints) -> Candidates<'_> {
        let slots = &self.inner.slots;
        if let Some(kind) = hints.backend {
            return slots.iter().filter(|s| s.backend.kind() == kind).collect();
        }
        let mut order: Candidates<'_> = slots.iter().collect();
        let cpu_first = match hints.prefer {
            Preference::Cpu => true,
            Preference::Gpu => false,
            Preference::Auto => !self.inner.config.general.prefer_gpu,
        };
        if cpu_first {
            order.sort_by_key(|s| s.backend.kind().is_gpu());
        }
        if self.inner.config.fallback.software_adapters_last {
            // Stable: software-only backends move behind the rest, in their chain order.
            order.sort_by_key(|s| software_only(s));
        }
        order
    }

    fn unavailable_attempts(&self, hints: &ExecutionHints) -> Vec<(BackendKind, String)> {
        self.inner
            .reports
            .iter()
            .filter(|r| hints.backend.is_none_or(|k| k == r.kind))
            .filter_map(|r| r.unavailable_reason().map(|why| (r.kind, why)))
            .collect()
    }
}

/// The backends a request may run on, in the order they are tried (a handful at most: kept off
/// the heap, as this is built for every request).
type Candidates<'a> = smallvec::SmallVec<[&'a Slot; 4]>;

/// The handle that runs batches of one kernel (the original's `IGpuBatchGrain<TIn, TOut>`).
/// Cheap to clone.
pub struct BatchGrain<I, O> {
    bridge: GpuBridge,
    kernel: Arc<dyn DynKernel<I, O>>,
}

impl<I, O> Clone for BatchGrain<I, O> {
    fn clone(&self) -> Self {
        Self {
            bridge: self.bridge.clone(),
            kernel: self.kernel.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for BatchGrain<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchGrain")
            .field("kernel", &self.kernel.id())
            .finish()
    }
}

/// One micro-batch of a request. Its items are lent to one attempt at a time (see [`Lent`]).
struct Chunk<I> {
    items: Home<I>,
    /// How many items.
    len: usize,
    /// Device bytes the items need ([`Kernel::device_bytes`]).
    bytes: u64,
    /// Index of the first item in the request.
    first_item: usize,
    /// Whether a kernel may reuse the items' memory ([`Kernel::run_cpu_donated`],
    /// [`Kernel::unpack_donated`]). Off for the batcher's batches of singles, whose items must
    /// come back unchanged from a run that failed on one of them, to be run again in pieces.
    donate: bool,
}

/// Where a micro-batch's items wait between attempts.
type Home<I> = Arc<parking_lot::Mutex<Option<Arc<[I]>>>>;

impl<I: Send + Sync + 'static> Chunk<I> {
    fn new(items: Arc<[I]>, bytes: u64, first_item: usize, donate: bool) -> Self {
        Self {
            len: items.len(),
            items: Arc::new(parking_lot::Mutex::new(Some(items))),
            bytes,
            first_item,
            donate,
        }
    }

    /// Drops the items if they are home (a run that failed leaves them there); the batch's data
    /// may be large, so off the request's path.
    fn release(&self) {
        if let Some(items) = self.items.lock().take() {
            crate::janitor::drop_later_if_large(items, self.bytes as usize);
        }
    }

    /// The micro-batch as two, its first half and its second (neither donating), or itself
    /// back when its items are not home or not its alone.
    /// `bytes` gives the device bytes of some items ([`BatchGrain::device_bytes`]).
    fn halves(self, bytes: impl Fn(&[I]) -> u64) -> std::result::Result<(Self, Self), Self> {
        let Some(mut items) = self.items.lock().take() else {
            return Err(self);
        };
        // The backend may still hold the failed plan, whose packers share the items, for a
        // moment after it answered (the CUDA executor lets go of them first; others may not):
        // wait for it, briefly.
        let deadline = Instant::now() + SHARED_ITEMS_WAIT;
        let mut left = loop {
            match into_vec(items) {
                Ok(v) => break v,
                Err(shared) if Instant::now() < deadline => {
                    items = shared;
                    std::thread::yield_now();
                }
                Err(shared) => {
                    *self.items.lock() = Some(shared);
                    return Err(self);
                }
            }
        };
        let right = left.split_off(self.len / 2);
        let (lb, rb) = (bytes(&left), bytes(&right));
        let at = self.first_item + left.len();
        let left = Self::new(Arc::from(left), lb, self.first_item, false);
        let right = Self::new(Arc::from(right), rb, at, false);
        Ok((left, right))
    }
}

/// The items of a slice held by no one else, moved out into a `Vec`, or the slice back when it
/// is shared.
fn into_vec<I>(mut items: Arc<[I]>) -> std::result::Result<Vec<I>, Arc<[I]>> {
    if Arc::get_mut(&mut items).is_none() {
        return Err(items);
    }
    // SAFETY: `ManuallyDrop<I>` is `repr(transparent)` over `I`, so `[ManuallyDrop<I>]` has the
    // layout of `[I]` and the pointer from `into_raw` may be taken back as one (`Arc::from_raw`
    // allows a type of the same size and alignment).
    let mut slots: Arc<[std::mem::ManuallyDrop<I>]> =
        unsafe { Arc::from_raw(Arc::into_raw(items) as *const [std::mem::ManuallyDrop<I>]) };
    let Some(slots_mut) = Arc::get_mut(&mut slots) else {
        // Unreachable: the count was one above and no clone was made since. The slots are
        // leaked rather than dropped twice.
        std::mem::forget(slots);
        return Ok(Vec::new());
    };
    // SAFETY: each slot is read exactly once, and the slice is then freed without dropping its
    // elements (they are `ManuallyDrop`), so every item has exactly one owner: the `Vec`.
    let out = slots_mut
        .iter_mut()
        .map(|slot| unsafe { std::mem::ManuallyDrop::take(slot) })
        .collect();
    drop(slots);
    Ok(out)
}

/// Whether a micro-batch's failure may have come from some of its items rather than from the
/// device or the whole request: the kernel panicked, or it refused an input that validation let
/// through.
fn isolable(e: &Error) -> bool {
    matches!(e, Error::KernelPanicked { .. } | Error::InvalidInput { .. })
}

/// How long a failed micro-batch of singles waits for its backend to let go of its items before
/// it is split (else its items fail together).
const SHARED_ITEMS_WAIT: Duration = Duration::from_millis(50);

/// Extra runs allowed to find the items that fail alone in one micro-batch of singles (halving,
/// so a handful of bad items in a batch of thousands, and a bounded cost when every item fails).
const ISOLATION_RUNS: usize = 64;

/// Items of a batch of singles that failed alone: their index in the batch (ascending) and their
/// error.
pub(crate) type Failed = Vec<(usize, Error)>;

/// What running one micro-batch gave: the attempts that succeeded (one, or the pieces of a
/// micro-batch of singles that was run again in halves), in item order, the fallbacks taken,
/// and the items that failed alone.
struct Ran<O> {
    attempts: smallvec::SmallVec<[Attempt<O>; 1]>,
    fallbacks: Vec<FallbackEvent>,
    failed: Failed,
}

/// A micro-batch's items lent to one attempt. The attempt's plan (its packers) and this value
/// are their only owners while the device works, so once the device is done the kernel may reuse
/// their allocations for its outputs ([`Kernel::unpack_donated`], [`Kernel::run_cpu_donated`]):
/// the caller moved them into the request and nothing reads them again. Dropped unconsumed (the
/// attempt failed, or its work was dropped), the items go back to their chunk for the next
/// attempt.
struct Lent<I> {
    items: Option<Arc<[I]>>,
    home: Home<I>,
}

impl<I: Send + Sync + 'static> Lent<I> {
    /// Takes the chunk's items out for an attempt; `None` when an earlier attempt consumed them.
    fn take(home: &Home<I>) -> Option<Self> {
        let items = home.lock().take()?;
        Some(Self {
            items: Some(items),
            home: home.clone(),
        })
    }

    /// The items (present until [`Lent::finish`] consumes the loan).
    fn items(&self, kernel: &str) -> Result<&Arc<[I]>> {
        self.items.as_ref().ok_or_else(|| consumed(kernel))
    }

    /// The items, mutably, when `allowed` and no one else holds them (the plan dropped, no
    /// other attempt).
    fn donate_if(&mut self, allowed: bool) -> Option<&mut [I]> {
        if !allowed {
            return None;
        }
        self.items.as_mut().and_then(Arc::get_mut)
    }

    /// Ends the loan: on success, or when a donated run may have changed the items, they are
    /// dropped (off this thread when large); otherwise they go back to their chunk.
    fn finish(mut self, keep: bool, bytes: usize) {
        if let Some(items) = self.items.take() {
            if keep {
                *self.home.lock() = Some(items);
            } else {
                crate::janitor::drop_later_if_large(items, bytes);
            }
        }
    }
}

impl<I> Drop for Lent<I> {
    fn drop(&mut self) {
        if let Some(items) = self.items.take() {
            *self.home.lock() = Some(items);
        }
    }
}

struct Attempt<O> {
    outputs: Vec<O>,
    report: ChunkReport,
}

impl<I, O> BatchGrain<I, O>
where
    I: Send + Sync + 'static,
    O: Send + 'static,
{
    /// The kernel's id.
    pub fn id(&self) -> &'static str {
        self.kernel.id()
    }

    /// Device bytes `items` need ([`Kernel::device_bytes`]), saturating: sizes are declared by
    /// the items and may be absurd before validation.
    fn device_bytes(&self, items: &[I]) -> u64 {
        items.iter().fold(0u64, |sum, i| {
            sum.saturating_add(self.kernel.device_bytes(i) as u64)
        })
    }

    /// Runs `inputs` and returns one output per input, in input order.
    ///
    /// Every input is validated first; a batch larger than the micro-batch limits (items or
    /// bytes, from the configuration, the hints and the device's memory) is split, the pieces run
    /// (up to `batching.max_in_flight` at once) and their outputs are re-assembled in order. An
    /// empty batch returns an empty result without touching a device.
    ///
    /// # Fallback
    /// Each micro-batch is tried on the backends of `fallback.chain` in order (CPU first when the
    /// hints or `general.prefer_gpu` say so), on each backend's healthiest device first. A device
    /// failure counts against the device's circuit breaker and moves the work to the next device,
    /// then the next backend; an unsupported kernel or out-of-memory moves it on without counting.
    /// Every move is logged, counted as `gpubridge_fallbacks_total{from,to,reason}` and listed in
    /// [`BatchResult::fallbacks`]. A hint naming one backend disables fallback.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad item (nothing runs), [`Error::NoBackendAvailable`] when no
    /// backend could run a micro-batch (each one's reason listed), [`Error::Timeout`] when the
    /// hints' deadline passes, [`Error::QueueFull`] (at once, nothing runs) when
    /// `batching.batch_queue_capacity` micro-batches already wait for a device slot. NaN and
    /// infinities are data, not errors: they propagate as IEEE-754 arithmetic says.
    ///
    /// # Priority
    /// Micro-batches run in up to `general.max_concurrent_kernels` device slots at once. When all
    /// are taken, a freed slot goes to the waiting micro-batch of the highest
    /// [`ExecutionHints::priority`] (high, normal, low), the longest-waiting first within a
    /// level.
    ///
    /// A deadline (`hints.timeout`) uses tokio's timer, so it needs a tokio runtime with time
    /// enabled (the default of `#[tokio::main]`).
    ///
    /// # Telemetry
    /// Each request is a `gpubridge.request` span (kernel, items, tenant, correlation id,
    /// outcome) and each attempt of a micro-batch a `gpubridge.kernel` span inside it (kernel,
    /// backend, device, batch size, outcome), unless `telemetry.enable_tracing` is off. Every
    /// request ends with one event on the audit target `gpubridge::audit` (correlation id,
    /// tenant, kernel, device that ran most items, items, bytes the items need on a device,
    /// outcome, duration in microseconds) when that target is enabled.
    pub async fn execute(&self, inputs: Vec<I>, hints: ExecutionHints) -> Result<BatchResult<O>> {
        // Overload sheds at the door: a request that would join a full queue of micro-batches
        // waiting for device slots is rejected before it holds anything.
        let capacity = self.bridge.inner.config.batching.batch_queue_capacity;
        if self.bridge.inner.kernel_slots.waiting() >= capacity {
            crate::batcher::reject(self.kernel.id(), "queue_full");
            return Err(Error::QueueFull {
                kernel: self.kernel.id().to_owned(),
                capacity,
            });
        }
        self.execute_admitted(inputs, hints).await
    }

    /// [`BatchGrain::execute`] without the queue bound.
    async fn execute_admitted(
        &self,
        inputs: Vec<I>,
        hints: ExecutionHints,
    ) -> Result<BatchResult<O>> {
        // Not isolating, no item fails alone: an error fails the whole request.
        self.execute_inner(inputs, hints, false)
            .await
            .map(|(result, _)| result)
    }

    /// The dynamic batcher's batch of single requests, which its bounded queue admitted already.
    ///
    /// The items are many callers' requests, so one caller's item must not fail the others'. A
    /// micro-batch whose run failed because of its items ([`isolable`]) is run again in halves,
    /// and so on down to the items that fail alone (at most [`ISOLATION_RUNS`] extra runs per
    /// batch); the outputs are those of the items that succeeded, in order, and the items that
    /// failed are listed by index with their errors. Any other failure of a micro-batch fails its
    /// items only. The items are not donated to the kernel ([`Kernel::run_cpu_donated`]), so
    /// that they come back unchanged from a failed run.
    pub(crate) async fn execute_singles(
        &self,
        inputs: Vec<I>,
        hints: ExecutionHints,
    ) -> Result<(BatchResult<O>, Failed)> {
        self.execute_inner(inputs, hints, true).await
    }

    async fn execute_inner(
        &self,
        inputs: Vec<I>,
        hints: ExecutionHints,
        isolate: bool,
    ) -> Result<(BatchResult<O>, Failed)> {
        let started = Instant::now();
        let kernel = self.kernel.id();
        let _pending = Pending::start(&self.bridge.inner.pending);
        let audit = tracing::enabled!(target: AUDIT_TARGET, tracing::Level::INFO);
        let traced = self.bridge.inner.config.telemetry.enable_tracing
            && tracing::span_enabled!(tracing::Level::INFO);
        let correlation = (audit || traced).then(|| CorrelationId::of(&hints));
        let bytes: u64 = if audit { self.device_bytes(&inputs) } else { 0 };
        let items = inputs.len();
        let _range = crate::nvtx::batch(kernel, items);
        let span = match &correlation {
            Some(id) if traced => tracing::info_span!(
                "gpubridge.request",
                kernel,
                items,
                tenant = hints.tenant.as_deref(),
                correlation_id = %id,
                outcome = tracing::field::Empty,
            ),
            _ => tracing::Span::none(),
        };
        let run = async {
            match hints.timeout {
                Some(after) => {
                    let run = self.run(inputs, &hints, started, isolate);
                    match tokio::time::timeout(after, run).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout { after }),
                    }
                }
                None => self.run(inputs, &hints, started, isolate).await,
            }
        };
        let result = run.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        crate::metric_handles::with_kernel(kernel, |m| {
            m.request_duration.record(elapsed.as_secs_f64());
        });
        let outcome = match &result {
            Ok((_, failed)) if failed.is_empty() => "ok",
            Ok((_, failed)) => {
                for (_, e) in failed {
                    metrics::counter!(names::REQUEST_FAILURES_TOTAL, "reason" => e.reason_label())
                        .increment(1);
                }
                "partial"
            }
            Err(e) => {
                metrics::counter!(names::REQUEST_FAILURES_TOTAL, "reason" => e.reason_label())
                    .increment(1);
                e.reason_label()
            }
        };
        span.record("outcome", outcome);
        if let (true, Some(correlation)) = (audit, correlation) {
            let device = result
                .as_ref()
                .ok()
                .and_then(|(r, _)| r.device())
                .map_or_else(|| "-".to_owned(), |d| d.to_string());
            tracing::info!(
                target: AUDIT_TARGET,
                correlation_id = %correlation,
                tenant = hints.tenant.as_deref().unwrap_or("-"),
                kernel,
                device = %device,
                items,
                bytes,
                outcome,
                duration_us = elapsed.as_micros() as u64,
                "request",
            );
        }
        result
    }

    async fn run(
        &self,
        inputs: Vec<I>,
        hints: &ExecutionHints,
        started: Instant,
        isolate: bool,
    ) -> Result<(BatchResult<O>, Failed)> {
        for (i, item) in inputs.iter().enumerate() {
            self.kernel.validate(i, item)?;
        }
        if inputs.is_empty() {
            let empty = BatchResult {
                outputs: Vec::new(),
                chunks: Vec::new(),
                fallbacks: Vec::new(),
                total: started.elapsed(),
            };
            return Ok((empty, Vec::new()));
        }
        // The tenant's allowances, held until the batch is answered.
        let _tenant = match hints.tenant.as_deref() {
            Some(tenant) => {
                let bytes = self.device_bytes(&inputs);
                Some(
                    self.bridge
                        .inner
                        .tenants
                        .admit(tenant, inputs.len(), bytes)?,
                )
            }
            None => None,
        };
        let bridge = &self.bridge;
        let candidates = bridge.candidates(hints);
        let chunks = self.split(inputs, hints, &candidates);
        let single = chunks.len() == 1;
        let in_flight = bridge.inner.config.batching.max_in_flight;
        let mut first_item = 0;
        let candidates = &candidates;
        let jobs = chunks.into_iter().map(|items| {
            let bytes = self.device_bytes(&items);
            let chunk = Chunk::new(items, bytes, first_item, !isolate);
            first_item += chunk.len;
            async move {
                if isolate {
                    return Ok(self.run_isolating(chunk, hints, candidates, started).await);
                }
                let r = self.run_chunk(&chunk, hints, candidates, started).await;
                chunk.release();
                r.map(|(attempt, fallbacks)| Ran {
                    attempts: smallvec::smallvec![attempt],
                    fallbacks,
                    failed: Vec::new(),
                })
            }
        });
        let mut outputs = Vec::new();
        let mut reports = Vec::new();
        let mut fallbacks = Vec::new();
        let mut failed = Vec::new();
        let mut take = |done: Result<Ran<O>>| -> Result<()> {
            let ran = done?;
            for attempt in ran.attempts {
                if outputs.is_empty() {
                    outputs = attempt.outputs;
                } else {
                    outputs.extend(attempt.outputs);
                }
                reports.push(attempt.report);
            }
            fallbacks.extend(ran.fallbacks);
            if failed.is_empty() {
                failed = ran.failed;
            } else {
                failed.extend(ran.failed);
            }
            Ok(())
        };
        if single {
            // One micro-batch (the usual request): awaited as it is, without the ordered
            // stream's task queue and its allocations.
            for job in jobs {
                take(job.await)?;
            }
        } else {
            let mut stream = futures::stream::iter(jobs).buffered(in_flight);
            while let Some(done) = stream.next().await {
                take(done)?;
            }
        }
        let result = BatchResult {
            outputs,
            chunks: reports,
            fallbacks,
            total: started.elapsed(),
        };
        Ok((result, failed))
    }

    /// Runs a micro-batch of single requests (see [`BatchGrain::execute_singles`]): when its run
    /// fails because of its items, its halves are run (each the same way, left first, so that
    /// outputs stay in item order) until the items that fail alone are found or the extra runs
    /// allowed are spent. Never fails as a whole: an item's failure is listed with its index.
    async fn run_isolating(
        &self,
        chunk: Chunk<I>,
        hints: &ExecutionHints,
        candidates: &[&Slot],
        started: Instant,
    ) -> Ran<O> {
        let mut ran = Ran {
            attempts: smallvec::SmallVec::new(),
            fallbacks: Vec::new(),
            failed: Vec::new(),
        };
        let mut runs_left = ISOLATION_RUNS;
        // Pieces still to run, the next one last (on the stack: a search holds one per level
        // of halving, and most batches run once).
        let mut todo: smallvec::SmallVec<[Chunk<I>; 4]> = smallvec::smallvec![chunk];
        while let Some(piece) = todo.pop() {
            match self.run_chunk(&piece, hints, candidates, started).await {
                Ok((attempt, fallbacks)) => {
                    piece.release();
                    ran.fallbacks.extend(fallbacks);
                    ran.attempts.push(attempt);
                }
                Err(e) => {
                    let halves = if isolable(&e) && piece.len > 1 && runs_left >= 2 {
                        piece.halves(|items| self.device_bytes(items))
                    } else {
                        Err(piece)
                    };
                    match halves {
                        Ok((left, right)) => {
                            runs_left -= 2;
                            todo.push(right);
                            todo.push(left);
                        }
                        Err(piece) => {
                            piece.release();
                            let items = piece.first_item..piece.first_item + piece.len;
                            ran.failed.extend(items.map(|i| (i, e.clone())));
                        }
                    }
                }
            }
        }
        ran
    }

    /// Splits `inputs` into micro-batches by item count and bytes.
    fn split(&self, inputs: Vec<I>, hints: &ExecutionHints, candidates: &[&Slot]) -> Vec<Arc<[I]>> {
        let cfg = &self.bridge.inner.config.batching;
        let max_items = hints
            .max_micro_batch
            .unwrap_or(usize::MAX)
            .min(cfg.max_micro_batch)
            .max(1);
        let mut max_bytes = cfg.max_micro_batch_mb.saturating_mul(MIB);
        if let Some(slot) = candidates.first() {
            let budgets = (0..slot.breakers.len()).filter_map(|d| slot.backend.memory_budget(d));
            if let Some(b) = budgets.max() {
                max_bytes = max_bytes.min(b);
            }
        }
        let mut lens: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
        let (mut n, mut bytes) = (0usize, 0u64);
        for item in &inputs {
            let b = self.kernel.device_bytes(item) as u64;
            if n > 0 && (n == max_items || bytes.saturating_add(b) > max_bytes) {
                lens.push(n);
                n = 0;
                bytes = 0;
            }
            n += 1;
            bytes = bytes.saturating_add(b);
        }
        lens.push(n);
        if lens.len() == 1 {
            return vec![Arc::from(inputs)];
        }
        let mut it = inputs.into_iter();
        lens.into_iter()
            .map(|len| Arc::from(it.by_ref().take(len).collect::<Vec<I>>()))
            .collect()
    }

    async fn run_chunk(
        &self,
        chunk: &Chunk<I>,
        hints: &ExecutionHints,
        candidates: &[&Slot],
        started: Instant,
    ) -> Result<(Attempt<O>, Vec<FallbackEvent>)> {
        let id = self.kernel.id();
        let sources = self.kernel.sources();
        let mut attempts: Vec<(BackendKind, String)> = Vec::new();
        let mut fallbacks: Vec<FallbackEvent> = Vec::new();
        let mut last_failed: Option<(BackendKind, &'static str, String)> = None;
        // Ends when the micro-batch is first handed to a device.
        let mut queued = Some(crate::nvtx::range(
            crate::nvtx::Phase::Queue,
            chunk.len as u64,
        ));
        // A device slot, high priority first when they are all taken.
        let _slot = self.bridge.inner.kernel_slots.acquire(hints.priority).await;
        for slot in candidates {
            let kind = slot.backend.kind();
            if let Some((from, reason, message)) = last_failed.take() {
                tracing::info!(kernel = id, %from, to = %kind, reason, "falling back: {message}");
                metrics::counter!(names::FALLBACKS_TOTAL, "from" => from.name(), "to" => kind.name(), "reason" => reason)
                    .increment(1);
                fallbacks.push(FallbackEvent {
                    from,
                    to: kind,
                    reason,
                    message,
                });
            }
            if !slot.backend.can_run(&sources) {
                let why = format!("kernel {id} has no {kind} form");
                attempts.push((kind, why.clone()));
                last_failed = Some((kind, "unsupported", why));
                continue;
            }
            let mut tried: smallvec::SmallVec<[bool; 8]> =
                smallvec::smallvec![false; slot.breakers.len()];
            loop {
                let Some((device, admission)) = pick_device(slot, hints, &tried, chunk.bytes)
                else {
                    // Devices that were tried have their failures recorded already.
                    if !tried.iter().any(|t| *t) {
                        let (reason, why) = untried_reason(slot);
                        attempts.push((kind, why.clone()));
                        last_failed = Some((kind, reason, why));
                    }
                    break;
                };
                tried[device] = true;
                let breaker = &slot.breakers[device];
                let label = slot.labels[device];
                if admission == Admission::Probe {
                    tracing::info!(device = %label, "circuit half-open: probing");
                    metrics::gauge!(names::CIRCUIT_STATE, "device" => label)
                        .set(CircuitState::HalfOpen.gauge());
                }
                if chunk.items.lock().is_none() {
                    // A donated run failed after it may have changed the inputs: no retry.
                    let why = attempts.last().map_or(String::new(), |(_, w)| w.clone());
                    return Err(Error::Backend {
                        backend: kind,
                        message: format!("{why}; {}", consumed(id)),
                        transient: false,
                    });
                }
                let span = if self.bridge.inner.config.telemetry.enable_tracing {
                    tracing::info_span!(
                        "gpubridge.kernel",
                        kernel = id,
                        backend = kind.name(),
                        device = label,
                        device_index = device,
                        batch_size = chunk.len,
                        outcome = tracing::field::Empty,
                    )
                } else {
                    tracing::Span::none()
                };
                let in_flight = InFlight::start(&slot.in_flight[device]);
                drop(queued.take());
                let result = self
                    .attempt(
                        slot,
                        device,
                        chunk,
                        started,
                        hints.spin_wait,
                        hints.persistent,
                    )
                    .instrument(span.clone())
                    .await;
                drop(in_flight);
                span.record(
                    "outcome",
                    result.as_ref().map_or_else(Error::reason_label, |_| "ok"),
                );
                let device_metrics = |f: &dyn Fn(&crate::metric_handles::DeviceMetrics)| {
                    crate::metric_handles::with_device(id, kind.name(), label, f);
                };
                match result {
                    Ok(attempt) => {
                        if breaker.state() != CircuitState::Closed {
                            tracing::info!(device = %label, "circuit closed again");
                        }
                        breaker.on_success();
                        let r = &attempt.report;
                        device_metrics(&|m| {
                            m.executed_ok.increment(1);
                            m.circuit_state.set(CircuitState::Closed.gauge());
                            m.kernel_duration.record(r.compute.as_secs_f64());
                            m.queue_duration.record(r.queue.as_secs_f64());
                            m.batch_size.record(r.items as f64);
                        });
                        return Ok((attempt, fallbacks));
                    }
                    Err(e) => {
                        device_metrics(&|m| m.executed_failed.increment(1));
                        match e.class() {
                            ErrorClass::Caller | ErrorClass::Overload => {
                                breaker.on_neutral();
                                return Err(e);
                            }
                            ErrorClass::Unsupported | ErrorClass::Resource => {
                                breaker.on_neutral();
                                attempts.push((kind, e.to_string()));
                                last_failed = Some((kind, e.reason_label(), e.to_string()));
                                // Another device of the same backend would say the same about an
                                // unsupported kernel; one with more memory might take it.
                                if e.class() == ErrorClass::Unsupported {
                                    break;
                                }
                            }
                            ErrorClass::DeviceFault => {
                                breaker.on_failure(Instant::now());
                                let state = breaker.state();
                                if state == CircuitState::Open {
                                    tracing::warn!(device = %label, "circuit opened: {e}");
                                }
                                device_metrics(&|m| m.circuit_state.set(state.gauge()));
                                attempts.push((kind, e.to_string()));
                                last_failed = Some((kind, e.reason_label(), e.to_string()));
                            }
                        }
                    }
                }
            }
        }
        for (kind, why) in self.bridge.unavailable_attempts(hints) {
            if !attempts.iter().any(|(k, _)| *k == kind) {
                attempts.push((kind, why));
            }
        }
        Err(Error::NoBackendAvailable {
            kernel: id.to_owned(),
            attempts,
        })
    }

    /// One try of one micro-batch on one device.
    async fn attempt(
        &self,
        slot: &Slot,
        device: usize,
        chunk: &Chunk<I>,
        started: Instant,
        spin: Option<Duration>,
        resident: bool,
    ) -> Result<Attempt<O>> {
        let backend = &slot.backend;
        let device_id = backend.devices()[device].id;
        // The outputs, when the device took the work, how it ran, and the time unpacking.
        let (tx, rx) =
            oneshot::channel::<Result<(Vec<O>, Instant, crate::plan::ExecStats, Duration)>>();
        let kernel = self.kernel.clone();
        let bytes = chunk.bytes as usize;
        let donate = chunk.donate;
        let Some(mut lent) = Lent::take(&chunk.items) else {
            return Err(consumed(self.kernel.id()));
        };
        // Host-device bytes of the plan (none on the CPU): uploads, downloads.
        let mut copied = (0u64, 0u64);
        // When the micro-batch went to the backend: the start of the hand-offs' span.
        let submitted;
        // How the backend may wake this caller ahead of the result, when it parks.
        let mut early_wake = None;
        match backend.plan_target(device) {
            None => {
                let job: CpuJob = Box::new(move |ctx| {
                    let t = Instant::now();
                    let range = crate::nvtx::range(crate::nvtx::Phase::Launch, 1);
                    let donated = lent.donate_if(donate).is_some();
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        match lent.donate_if(donate) {
                            Some(items) => kernel.run_cpu_donated(items, ctx),
                            None => lent
                                .items(kernel.id())
                                .and_then(|items| kernel.run_cpu(items, ctx)),
                        }
                    }))
                    .unwrap_or_else(|p| {
                        Err(Error::kernel_panicked(kernel.id(), BackendKind::Cpu, &*p))
                    });
                    drop(range);
                    let stats = crate::plan::ExecStats {
                        compute: t.elapsed(),
                        ..Default::default()
                    };
                    // Settle the items before answering, so a retry finds them home.
                    lent.finish(r.is_err() && !donated, bytes);
                    let _ = tx.send(r.map(|o| (o, t, stats, Duration::ZERO)));
                });
                submitted = Instant::now();
                backend.submit(device, Work::Cpu(job))?;
            }
            Some(target) => {
                // Only the device code registered with the kernel is compiled or launched.
                let sources = self.kernel.sources();
                self.bridge
                    .inner
                    .catalog
                    .verify_sources(self.kernel.id(), &sources)?;
                let items = lent.items(self.kernel.id())?;
                // The kernel's own planning code: a panic there fails this request alone.
                let mut plan =
                    std::panic::catch_unwind(AssertUnwindSafe(|| self.kernel.plan(items, &target)))
                        .unwrap_or_else(|p| {
                            Err(Error::kernel_panicked(
                                self.kernel.id(),
                                target.backend(),
                                &*p,
                            ))
                        })?;
                plan.check()?;
                plan.resident = resident;
                plan.caller_spins = spin.is_some();
                if spin.is_none() && backend.wakes_early() {
                    let wake = crate::wake::EarlyWake::new();
                    plan.early_wake = Some(wake.clone());
                    early_wake = Some(wake);
                }
                for b in &plan.buffers {
                    match b.role {
                        BufferRole::Input(_) => copied.0 += b.len as u64,
                        BufferRole::Output => copied.1 += b.len as u64,
                        BufferRole::Scratch => {}
                    }
                }
                let items = chunk.len;
                let t = Instant::now();
                let complete: PlanCompletion = Box::new(move |res| {
                    let mut keep = true;
                    let r = res.and_then(|outs| {
                        let stats = outs.stats;
                        let unpacking = Instant::now();
                        let range = crate::nvtx::range(crate::nvtx::Phase::Unpack, items as u64);
                        let donated = lent.donate_if(donate).is_some();
                        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            match lent.donate_if(donate) {
                                Some(items) => kernel.unpack_donated(items, &outs),
                                None => lent
                                    .items(kernel.id())
                                    .and_then(|items| kernel.unpack(items, &outs)),
                            }
                        }))
                        .unwrap_or_else(|p| {
                            Err(Error::kernel_panicked(kernel.id(), target.backend(), &*p))
                        });
                        keep = r.is_err() && !donated;
                        drop(range);
                        let unpacked = unpacking.elapsed();
                        r.map(|o| (o, t, stats, unpacked))
                    });
                    // Settle the items before answering, so a retry finds them home.
                    lent.finish(keep, bytes);
                    let _ = tx.send(r);
                });
                submitted = Instant::now();
                backend.submit(
                    device,
                    Work::Plan {
                        plan,
                        sources,
                        complete,
                    },
                )?;
            }
        }
        let mut rx = rx;
        let mut early = None;
        if let Some(limit) = spin {
            let t = Instant::now();
            let mut spins = 0u32;
            loop {
                match rx.try_recv() {
                    Ok(v) => early = Some(Ok(v)),
                    Err(oneshot::error::TryRecvError::Closed) => early = Some(Err(())),
                    Err(oneshot::error::TryRecvError::Empty) => {
                        spins += 1;
                        // The clock can cost a system call on some virtual machines: read it
                        // once every 64 spins.
                        if !spins.is_multiple_of(64) || t.elapsed() < limit {
                            std::hint::spin_loop();
                            continue;
                        }
                    }
                }
                break;
            }
        }
        let received = match (early, early_wake) {
            (Some(r), _) => r,
            (None, Some(wake)) => crate::wake::answer(&mut rx, &wake).await,
            (None, None) => rx.await.map_err(|_| ()),
        };
        let (outputs, begun, stats, unpack) = received.map_err(|_| Error::Backend {
            backend: backend.kind(),
            message: "the executor dropped the work without completing it".to_owned(),
            transient: true,
        })??;
        let round_trip = submitted.elapsed();
        let worked = if stats.executor.is_zero() {
            stats.compute
        } else {
            stats.executor
        };
        let handoff = round_trip.saturating_sub(worked + unpack);
        if copied != (0, 0) {
            record_copies(copied, stats.transfer);
        }
        if outputs.len() != chunk.len {
            return Err(Error::Backend {
                backend: backend.kind(),
                message: format!(
                    "kernel {} returned {} outputs for {} inputs",
                    self.kernel.id(),
                    outputs.len(),
                    chunk.len
                ),
                transient: false,
            });
        }
        Ok(Attempt {
            outputs,
            report: ChunkReport {
                device: device_id,
                items: chunk.len,
                first_item: chunk.first_item,
                queue: begun.saturating_duration_since(started),
                compute: stats.compute,
                transfer: stats.transfer,
                graph_replayed: stats.graph_replayed,
                executor: stats.executor,
                pack: stats.pack,
                upload: stats.upload,
                download: stats.download,
                unpack,
                handoff,
                bytes_in: copied.0,
                bytes_out: copied.1,
            },
        })
    }
}

/// Counts a finished plan's host-device bytes and, where the backend timed its copies, their
/// throughput.
fn record_copies((up, down): (u64, u64), copying: Duration) {
    crate::metric_handles::with_global(|m| {
        m.bytes_h2d.increment(up);
        m.bytes_d2h.increment(down);
        if !copying.is_zero() {
            m.throughput.set((up + down) as f64 / copying.as_secs_f64());
        }
    });
}

/// Counts a request as pending from its start until it completes or its future is dropped.
pub(crate) struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        crate::metric_handles::with_global(|m| m.pending.increment(1.0));
        Self(count)
    }
}

/// Counts a micro-batch as in flight on its device from its submission until its attempt ends,
/// or until its future is dropped (a caller that timed out or left): counted by hand, a dropped
/// future never gave its count back, and placement saw the device busier for ever.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        crate::metric_handles::with_global(|m| m.pending.decrement(1.0));
    }
}

/// A request's correlation id: the caller's, or a number unique in this process.
enum CorrelationId<'a> {
    Given(&'a str),
    Numbered(u64),
}

impl<'a> CorrelationId<'a> {
    fn of(hints: &'a ExecutionHints) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        match hints.correlation_id.as_deref() {
            Some(id) => CorrelationId::Given(id),
            None => CorrelationId::Numbered(NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

impl std::fmt::Display for CorrelationId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorrelationId::Given(id) => f.write_str(id),
            CorrelationId::Numbered(n) => write!(f, "gpubridge-{}-{n}", std::process::id()),
        }
    }
}

/// The error of an attempt whose micro-batch's inputs a failed donated run consumed.
fn consumed(kernel: &str) -> Error {
    Error::Backend {
        backend: BackendKind::Cpu,
        message: format!(
            "kernel {kernel} failed after reusing its inputs' memory; the micro-batch cannot be retried"
        ),
        transient: false,
    }
}

/// Whether every device of `slot` is a software adapter (see `fallback.software_adapters_last`).
fn software_only(slot: &Slot) -> bool {
    let devices = slot.backend.devices();
    !devices.is_empty()
        && devices
            .iter()
            .all(|d| d.device_type == crate::device::DeviceType::SoftwareGpu)
}

/// Why no device of `slot` was tried: all of them lost (a driver reset, a destroyed device), or
/// their circuits open.
fn untried_reason(slot: &Slot) -> (&'static str, String) {
    let lost: Vec<String> = (0..slot.breakers.len())
        .filter_map(|d| match slot.backend.health(d) {
            Health::Lost(why) => Some(format!("{}: {why}", slot.labels[d])),
            _ => None,
        })
        .collect();
    if !lost.is_empty() && lost.len() == slot.breakers.len() {
        (
            "device_lost",
            format!("every device is lost ({})", lost.join("; ")),
        )
    } else {
        ("circuit_open", "every device's circuit is open".to_owned())
    }
}

/// Chooses a device of `slot` for a micro-batch needing `bytes`: the preferred device if it admits
/// work, else, among healthy devices whose circuit admits work, those with room for the batch
/// first, then the least loaded (micro-batches in flight), then the one with the most free memory.
fn pick_device(
    slot: &Slot,
    hints: &ExecutionHints,
    tried: &[bool],
    bytes: u64,
) -> Option<(usize, Admission)> {
    let now = Instant::now();
    let n = slot.breakers.len();
    let mut order: smallvec::SmallVec<[usize; 8]> = (0..n)
        .filter(|d| !tried[*d] && !matches!(slot.backend.health(*d), Health::Lost(_)))
        .collect();
    order.sort_by_key(|d| {
        let free = slot.backend.free_memory(*d);
        let no_room = free.is_some_and(|f| f < bytes);
        (
            no_room,
            slot.in_flight[*d].load(Ordering::Relaxed),
            std::cmp::Reverse(free.unwrap_or(u64::MAX)),
        )
    });
    if let Some(p) = hints.preferred_device.filter(|p| *p < n && !tried[*p]) {
        order.retain(|d| *d != p);
        order.insert(0, p);
    }
    order
        .into_iter()
        .find_map(|d| match slot.breakers[d].admit(now) {
            Admission::Rejected => None,
            a => Some((d, a)),
        })
}

#[cfg(test)]
mod tests {
    use super::into_vec;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>, String);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_slice_held_alone_moves_into_a_vec_with_each_item_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let items: Arc<[Counted]> = (0..5)
            .map(|i| Counted(drops.clone(), format!("item {i}")))
            .collect();
        let v = into_vec(items).unwrap_or_else(|_| panic!("held alone"));
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        let names: Vec<&str> = v.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(names, ["item 0", "item 1", "item 2", "item 3", "item 4"]);
        drop(v);
        assert_eq!(drops.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn a_shared_slice_comes_back_untouched() {
        let drops = Arc::new(AtomicUsize::new(0));
        let items: Arc<[Counted]> = (0..3).map(|_| Counted(drops.clone(), "x".into())).collect();
        let other = items.clone();
        let back = into_vec(items).err().expect("shared");
        assert!(Arc::ptr_eq(&back, &other));
        drop((back, other));
        assert_eq!(drops.load(Ordering::SeqCst), 3);
        let empty: Arc<[Counted]> = Arc::from(Vec::new());
        assert!(into_vec(empty).is_ok_and(|v| v.is_empty()));
    }
}
