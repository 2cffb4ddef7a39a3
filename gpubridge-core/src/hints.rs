//! Per-request execution hints (the original's `GpuExecutionHints`) and the result of a batch.

use std::time::Duration;

use crate::device::{BackendKind, DeviceId};

/// Which kind of backend a request would rather run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preference {
    /// Follow `general.prefer_gpu` from the configuration.
    #[default]
    Auto,
    /// GPU backends first, CPU last.
    Gpu,
    /// The CPU first (the original's `PreferGpu = false`).
    Cpu,
}

/// How urgent a request is: the batcher's queues and the device slots
/// (`general.max_concurrent_kernels`) serve high before normal before low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Overtakes normal work (the original's `HighPriority`).
    High,
}

impl Priority {
    /// Every level, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// The level's place in [`Priority::ALL`] (low 0, normal 1, high 2): an index for queues
    /// kept per level.
    pub fn index(self) -> usize {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    /// `low`, `normal` or `high` (what [`str::parse`] reads back).
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl std::str::FromStr for Priority {
    type Err = String;

    /// Reads `low`, `normal` or `high`.
    fn from_str(s: &str) -> Result<Self, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown priority {s:?} (low, normal or high)"))
    }
}

/// Hints for one request. Every field is optional; `Default` defers to the configuration.
///
/// ```
/// use gpubridge_core::{BackendKind, ExecutionHints};
/// let hints = ExecutionHints::default().preferred_device(0).max_micro_batch(10_000);
/// let cpu_only = ExecutionHints::default().on_backend(BackendKind::Cpu);
/// # let _ = (hints, cpu_only);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionHints {
    /// Run on this device index of whichever backend is chosen, when it is healthy.
    pub preferred_device: Option<usize>,
    /// GPU first or CPU first.
    pub prefer: Preference,
    /// Run only on this backend: no fallback to another.
    pub backend: Option<BackendKind>,
    /// Priority for the batcher.
    pub priority: Priority,
    /// Most items per micro-batch for this request (lowers the configured maximum).
    pub max_micro_batch: Option<usize>,
    /// Keep the kernel's buffers and graphs resident between batches (the original's
    /// `Persistent`).
    pub persistent: bool,
    /// Fail with [`crate::Error::Timeout`] if the request has not completed in time.
    pub timeout: Option<Duration>,
    /// The tenant this request is accounted to; it appears in the request's span and its audit
    /// log line, never as a metric label.
    pub tenant: Option<String>,
    /// The caller's id for this request (a request id from the service's own logs), carried into
    /// the request's span and its audit log line. Unset, the bridge numbers the request itself.
    pub correlation_id: Option<String>,
    /// Busy-poll for the result on the calling thread for up to this long before yielding.
    ///
    /// A parked thread can take tens of microseconds to wake, which dominates a small batch's
    /// round trip. Spinning trades a core for that latency: use it only on threads dedicated to
    /// latency-critical work, never on a shared async executor's workers for long waits. Without
    /// it the caller parks, and CUDA wakes it shortly before a graph replay is expected to end
    /// (`cuda.early_wake_us`, [`crate::wake`]), which recovers most of that latency.
    pub spin_wait: Option<Duration>,
}

impl ExecutionHints {
    /// Sets [`ExecutionHints::preferred_device`].
    pub fn preferred_device(mut self, index: usize) -> Self {
        self.preferred_device = Some(index);
        self
    }
    /// Sets [`ExecutionHints::prefer`] to GPU (`true`) or CPU (`false`).
    pub fn prefer_gpu(mut self, gpu: bool) -> Self {
        self.prefer = if gpu {
            Preference::Gpu
        } else {
            Preference::Cpu
        };
        self
    }
    /// Sets [`ExecutionHints::backend`].
    pub fn on_backend(mut self, backend: BackendKind) -> Self {
        self.backend = Some(backend);
        self
    }
    /// Sets [`ExecutionHints::priority`].
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// Sets [`ExecutionHints::max_micro_batch`].
    pub fn max_micro_batch(mut self, items: usize) -> Self {
        self.max_micro_batch = Some(items);
        self
    }
    /// Sets [`ExecutionHints::persistent`].
    pub fn persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }
    /// Sets [`ExecutionHints::timeout`].
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }
    /// Sets [`ExecutionHints::spin_wait`].
    pub fn spin_wait(mut self, up_to: Duration) -> Self {
        self.spin_wait = Some(up_to);
        self
    }
    /// Sets [`ExecutionHints::tenant`].
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
    /// Sets [`ExecutionHints::correlation_id`].
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// Where and how one micro-batch ran.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkReport {
    /// The device that ran it.
    pub device: DeviceId,
    /// Items in the micro-batch.
    pub items: usize,
    /// Index of its first item in the request.
    pub first_item: usize,
    /// Time from the request's start to the micro-batch's start on its device.
    pub queue: Duration,
    /// Time on the device (kernels, and on the CPU the whole CPU form).
    pub compute: Duration,
    /// Time in host-device copies (zero on the CPU).
    pub transfer: Duration,
    /// Whether a captured graph was replayed.
    pub graph_replayed: bool,
    /// Time the device's executor spent on it, from taking it to handing its outputs on (zero
    /// where the backend does not measure it).
    pub executor: Duration,
    /// Host time packing its inputs into staging (zero on the CPU).
    pub pack: Duration,
    /// Device time in host-to-device copies (part of `transfer`; zero where the backend does not
    /// time them apart, and inside `compute` for a replayed graph).
    pub upload: Duration,
    /// Device time in device-to-host copies (as `upload`).
    pub download: Duration,
    /// Host time turning the downloaded bytes into typed outputs (zero on the CPU).
    pub unpack: Duration,
    /// Time between threads: from the micro-batch's submission to its backend until the caller
    /// had its outputs back, less the time the backend reports working on it (`executor`, or
    /// `compute` where the backend does not measure `executor`) and `unpack`. It is the cost of
    /// the two hand-offs (to the device's executor thread or the CPU pool, and back), waits
    /// behind other work on that thread included.
    pub handoff: Duration,
    /// Bytes copied host to device (zero on the CPU).
    pub bytes_in: u64,
    /// Bytes copied device to host (zero on the CPU).
    pub bytes_out: u64,
}

/// One move from a backend to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackEvent {
    /// The backend that did not run the work.
    pub from: BackendKind,
    /// The backend tried next.
    pub to: BackendKind,
    /// The error's kind ([`crate::Error::reason_label`]).
    pub reason: &'static str,
    /// The error's message.
    pub message: String,
}

/// The outputs of a batch, in input order, with where and how they ran.
#[derive(Debug, Clone)]
pub struct BatchResult<O> {
    /// One output per input, in input order.
    pub outputs: Vec<O>,
    /// Each micro-batch, in input order.
    pub chunks: Vec<ChunkReport>,
    /// Every fallback taken, in order.
    pub fallbacks: Vec<FallbackEvent>,
    /// Time from the call to its completion.
    pub total: Duration,
}

impl<O> BatchResult<O> {
    /// The backend that ran the most items, or `None` for an empty batch.
    pub fn backend(&self) -> Option<BackendKind> {
        self.device().map(|d| d.backend)
    }

    /// The device that ran the most items, or `None` for an empty batch.
    pub fn device(&self) -> Option<DeviceId> {
        let mut by_device: Vec<(DeviceId, usize)> = Vec::new();
        for c in &self.chunks {
            match by_device.iter_mut().find(|(d, _)| *d == c.device) {
                Some((_, n)) => *n += c.items,
                None => by_device.push((c.device, c.items)),
            }
        }
        by_device
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d)
    }

    /// Sum of device compute time over micro-batches.
    pub fn compute_time(&self) -> Duration {
        self.chunks.iter().map(|c| c.compute).sum()
    }

    /// Sum of transfer time over micro-batches.
    pub fn transfer_time(&self) -> Duration {
        self.chunks.iter().map(|c| c.transfer).sum()
    }

    /// Whether every micro-batch replayed a graph.
    pub fn graph_replayed(&self) -> bool {
        !self.chunks.is_empty() && self.chunks.iter().all(|c| c.graph_replayed)
    }
}
