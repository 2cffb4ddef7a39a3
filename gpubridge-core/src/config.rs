//! `BridgeConfig`: every option of the bridge, read from a TOML file with `GPUBRIDGE__SECTION__KEY`
//! environment overrides, validated so that a bad value is an error naming its key.
//!
//! # Example
//! ```
//! use gpubridge_core::BridgeConfig;
//! let cfg = BridgeConfig::from_sources(
//!     Some("[general]\nprefer_gpu = false\n"),
//!     [("GPUBRIDGE__BATCHING__MAX_MICRO_BATCH".to_owned(), "512".to_owned())],
//! )
//! .unwrap();
//! assert!(!cfg.general.prefer_gpu);
//! assert_eq!(cfg.batching.max_micro_batch, 512);
//! ```
//!
//! The sections mirror the original's `appsettings.json` and service registration: `general`
//! (`PreferGpu`, `MaxDevices`, `MaxConcurrentKernels`), `memory` (`MemoryPoolSizeMB`), `storage`
//! (`EnableGpuDirectStorage`, `MountPoint`, `MaxPinnedMemoryMB`), `telemetry` (`EnableMetrics`,
//! `EnableTracing`, `SamplingRate`), plus `fallback`, `batching`, `cpu`, `cuda` and `wgpu`.
//! Each field's doc says which component reads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::device::BackendKind;
use crate::error::{Error, Result};

/// Prefix of environment overrides: `GPUBRIDGE__SECTION__KEY=value`.
pub const ENV_PREFIX: &str = "GPUBRIDGE__";

/// Every option of a bridge. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// Device choice and concurrency.
    pub general: GeneralConfig,
    /// Device and pinned memory pools.
    pub memory: MemoryConfig,
    /// File to device I/O.
    pub storage: StorageConfig,
    /// Metrics and tracing.
    pub telemetry: TelemetryConfig,
    /// The backend chain and circuit breakers.
    pub fallback: FallbackConfig,
    /// Micro-batching and queues.
    pub batching: BatchingConfig,
    /// The CPU backend.
    pub cpu: CpuConfig,
    /// The CUDA backend.
    pub cuda: CudaConfig,
    /// The wgpu backend.
    pub wgpu: WgpuConfig,
    /// Per-tenant limits (requests carrying `hints.tenant`).
    pub tenants: TenantsConfig,
}

/// Limits on one tenant's requests; 0 means unlimited. A request's items count against the rate,
/// the request itself against the concurrency cap, and its items' device bytes (as the kernel
/// reports them) against the memory quota, from its admission until it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Items per second, as a token bucket refilled continuously (default 0: unlimited).
    pub items_per_second: f64,
    /// The bucket's size: items a tenant may send at once after a quiet spell (default 0: one
    /// second's worth of `items_per_second`).
    pub burst: f64,
    /// Requests of the tenant in flight at once (default 0: unlimited).
    pub max_concurrent: usize,
    /// Device bytes of the tenant's requests in flight, in MiB (default 0: unlimited).
    pub memory_quota_mb: u64,
}

/// `[tenants]`: limits for every tenant (`[tenants.default]`), and `[tenants.overrides.<name>]` for
/// particular ones. A
/// request over a limit fails at once with `QuotaExceeded` and takes nothing from anyone else;
/// requests without a tenant are not limited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsConfig {
    /// Limits of every tenant without an override (`[tenants.default]`).
    pub default: TenantLimits,
    /// Limits by tenant name (replacing the defaults for that tenant).
    pub overrides: std::collections::BTreeMap<String, TenantLimits>,
    /// Tenants without an override that the bridge keeps state for at once (default 65536).
    /// Idle ones whose bucket has refilled are forgotten to make room (they would start again
    /// exactly as they are); when none can be, a request naming yet another new tenant is
    /// refused with `QuotaExceeded`, so a flood of made-up names cannot grow memory without
    /// bound.
    pub max_tracked: usize,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        Self {
            default: TenantLimits::default(),
            overrides: std::collections::BTreeMap::new(),
            max_tracked: 65536,
        }
    }
}

impl TenantsConfig {
    /// The limits that apply to `tenant`.
    pub fn limits(&self, tenant: &str) -> TenantLimits {
        self.overrides.get(tenant).copied().unwrap_or(self.default)
    }
}

/// `[general]`: the original's `PreferGpu`, `MaxDevices`, `MaxConcurrentKernels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneralConfig {
    /// Try GPU backends before the CPU (default `true`). Per-request hints override it.
    pub prefer_gpu: bool,
    /// Use at most this many devices per backend (default 4).
    pub max_devices: usize,
    /// Micro-batches executing at once across all devices (default 100).
    pub max_concurrent_kernels: usize,
}

impl Default for GeneralConfig {
    fn default() -> Self {
        Self {
            prefer_gpu: true,
            max_devices: 4,
            max_concurrent_kernels: 100,
        }
    }
}

/// `[memory]`: the original's `MemoryPoolSizeMB`, read by the CUDA backend's pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Hard limit of each device's memory pool in MiB (default 1024). Read by the CUDA backend.
    pub pool_size_mb: u64,
    /// Pinned host staging pool per device in MiB (default 256). Read by the CUDA backend.
    pub pinned_pool_mb: u64,
    /// Fraction of a device's free memory one micro-batch may use before the batch is split
    /// (default 0.5, range (0, 1]).
    pub device_memory_fraction: f64,
    /// Ask the OS for transparent huge pages for large output vectors unpacked from a device
    /// (default `true`): fresh pages then fault 512 times less often. Read by the CUDA backend.
    pub huge_page_outputs: bool,
    /// How often a device pool frees the idle buffers of size classes that nothing rented since
    /// the last time, in seconds (default 30: idle memory of an unused class lives 30 to 60 s).
    /// Lower it to give memory back sooner when shapes drift (the original's "pool eviction
    /// rate"); a class in use keeps its buffers whatever this is. Read by the CUDA backend.
    pub idle_release_s: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            pool_size_mb: 1024,
            pinned_pool_mb: 256,
            device_memory_fraction: 0.5,
            huge_page_outputs: true,
            idle_release_s: 30,
        }
    }
}

/// `[storage]`: the original's GPUDirect Storage options, read by `gpubridge-storage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Try cuFile before the host-staged path (default `false`).
    pub enable_gpu_direct_storage: bool,
    /// Where GDS-capable files live (the original's `MountPoint`); unset means anywhere.
    pub mount_point: Option<PathBuf>,
    /// Cap on pinned bounce buffers in MiB (the original's `MaxPinnedMemoryMB`, default 256).
    pub max_pinned_memory_mb: u64,
    /// Reader threads of the host-staged path (default 8).
    pub threads: usize,
    /// Bytes per read task in KiB (default 4096).
    pub task_size_kb: u64,
    /// Bytes per pinned bounce buffer in KiB (default 4096), a multiple of 4 (`O_DIRECT` alignment).
    /// Each reader thread holds two, so one is filled while the other is copied to the device.
    pub bounce_buffer_kb: u64,
    /// Read and write the 4 KiB-aligned body of a file with `O_DIRECT`, bypassing the page cache
    /// (default `true`). A file system that refuses it (tmpfs before Linux 6.6) is read buffered
    /// instead, and why is recorded. Files that are usually in the page cache already (just
    /// written, read again and again) load faster with `false`.
    pub direct_io: bool,
    /// A large `O_DIRECT` read (at least 128 tasks, and twice the 16 + 4 x `storage.threads` it
    /// measures) measures its first tasks with one reader and
    /// with `storage.threads`, reads the rest with one reader unless `storage.threads` moved bytes
    /// more than 15% faster, and the next minute's reads
    /// of files on the same block device use that depth without measuring (default `true`).
    /// Some disks read fastest with one reader (the device machine's virtio disk), NVMe drives
    /// with many; with `false` every read uses `storage.threads`.
    pub adaptive_depth: bool,
    /// A save creates the target's missing parent directories (each synced into its parent, so
    /// that they survive a crash with the file), as the original's `SaveDirect` does (default
    /// `true`). With `false`, saving into a directory that does not exist fails with `NotFound`.
    pub create_dirs: bool,
    /// cuFile: poll for completion of I/O up to this many KiB instead of waiting on an interrupt
    /// (`cuFileDriverSetPollMode`); unset leaves the driver's setting (`/etc/cufile.json`).
    pub gds_poll_threshold_kb: Option<u64>,
    /// cuFile: largest single direct I/O in KiB (`cuFileDriverSetMaxDirectIOSize`); unset leaves
    /// the driver's setting.
    pub gds_max_direct_io_kb: Option<u64>,
    /// cuFile: device memory the driver may use for its bounce buffers, in KiB
    /// (`cuFileDriverSetMaxCacheSize`); unset leaves the driver's setting.
    pub gds_max_cache_kb: Option<u64>,
    /// cuFile: device memory the driver may pin, in KiB (`cuFileDriverSetMaxPinnedMemSize`);
    /// unset leaves the driver's setting.
    pub gds_max_pinned_kb: Option<u64>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            enable_gpu_direct_storage: false,
            mount_point: None,
            max_pinned_memory_mb: 256,
            threads: 8,
            task_size_kb: 4096,
            bounce_buffer_kb: 4096,
            direct_io: true,
            adaptive_depth: true,
            create_dirs: true,
            gds_poll_threshold_kb: None,
            gds_max_direct_io_kb: None,
            gds_max_cache_kb: None,
            gds_max_pinned_kb: None,
        }
    }
}

/// `[telemetry]`: the original's `EnableMetrics`, `EnableTracing`, `SamplingRate`, plus where the
/// endpoint listens, where traces go and how often GPUs are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Install the Prometheus recorder and serve `/metrics` in `gpubridge serve` and
    /// `gpubridge::telemetry::serve` (default `true`; off, the endpoint still answers `/healthz`
    /// and `/readyz`, and `/metrics` is empty).
    pub enable_metrics: bool,
    /// Open a `gpubridge.request` span per request and a `gpubridge.kernel` span per micro-batch
    /// attempt (default `true`). Read by the bridge.
    pub enable_tracing: bool,
    /// Fraction of traces exported over OTLP, 0 to 1 (default 0.1), decided at each trace's root.
    pub sampling_rate: f64,
    /// Address of the metrics endpoint served by `gpubridge serve` (default `127.0.0.1:9464`).
    pub metrics_listen: String,
    /// OTLP/HTTP collector for traces, such as `http://127.0.0.1:4318` (spans go to
    /// `/v1/traces`); unset means no export. Needs the `otlp` feature.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported traces (default `gpubridge`).
    pub service_name: String,
    /// How often the NVML sampler reads every GPU, in ms (default 5000, at least 100). Needs the
    /// `nvml` feature.
    pub nvml_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            enable_metrics: true,
            enable_tracing: true,
            sampling_rate: 0.1,
            metrics_listen: "127.0.0.1:9464".to_owned(),
            otlp_endpoint: None,
            service_name: "gpubridge".to_owned(),
            nvml_interval_ms: 5000,
        }
    }
}

/// `[fallback]`: the backend chain and the per-device circuit breakers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// Backends in the order they are tried (default `["cuda", "wgpu", "cpu"]`). Leaving one out
    /// disables it. In the environment a comma list works too: `GPUBRIDGE__FALLBACK__CHAIN=wgpu,cpu`.
    #[serde(deserialize_with = "de_chain")]
    pub chain: Vec<BackendKind>,
    /// Device failures in a row that open its circuit (default 5).
    pub circuit_failure_threshold: u32,
    /// How long an open circuit stays open before one probe is let through, in ms (default 1000).
    pub circuit_open_ms: u64,
    /// In automatic placement, a backend whose every device is a software adapter (Mesa's
    /// llvmpipe) is tried after the CPU backend, which is faster for every built-in kernel
    /// (default `true`). Asking for the backend by name still uses it.
    pub software_adapters_last: bool,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            chain: BackendKind::ALL.to_vec(),
            circuit_failure_threshold: 5,
            circuit_open_ms: 1000,
            software_adapters_last: true,
        }
    }
}

fn de_chain<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<BackendKind>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Chain {
        List(Vec<String>),
        Comma(String),
    }
    let names = match Chain::deserialize(d)? {
        Chain::List(v) => v,
        Chain::Comma(s) => s
            .split(',')
            .map(str::to_owned)
            .filter(|s| !s.trim().is_empty())
            .collect(),
    };
    names
        .iter()
        .map(|n| n.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// `[batching]`: how batches are split into micro-batches and how singles are batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most items in one micro-batch (default 65536). A per-request hint may lower it.
    pub max_micro_batch: usize,
    /// Most bytes (inputs and outputs) in one micro-batch in MiB (default 256).
    pub max_micro_batch_mb: u64,
    /// Micro-batches of one request in flight at once (default 4), so that a device packs the
    /// next while it computes one.
    pub max_in_flight: usize,
    /// Longest a single request waits for a batch to fill, in microseconds (default 100).
    pub max_queue_delay_us: u64,
    /// Single requests waiting per kernel in the dynamic batcher before `QueueFull` (default
    /// 65536). Readiness (`/readyz`) also counts the bridge saturated when this many requests
    /// (batches and singles) are pending in all.
    pub queue_capacity: usize,
    /// Micro-batches of `execute` requests waiting for a device slot
    /// (`general.max_concurrent_kernels`) at which a new batch request is rejected with
    /// `QueueFull` instead of queueing (default 4096), so that a flood sheds load rather than
    /// holding ever more inputs in memory. The waiting micro-batches get slots by priority. The
    /// bound is checked as a request starts: requests starting at the same moment can together
    /// pass it by their number times `max_in_flight`.
    pub batch_queue_capacity: usize,
    /// Most single requests the dynamic batcher puts in one batch (default 65536); the batcher
    /// uses the smaller of this and `max_micro_batch`.
    pub max_batch: usize,
    /// Batch sizes the dynamic batcher prefers (default none): it dispatches as soon as the
    /// largest is queued, and when the delay runs out it takes the largest one it can fill.
    pub preferred_batch_sizes: Vec<usize>,
    /// Batches of one kernel's dynamic batcher running at once (default 2): the next batch
    /// gathers, packs and uploads while the previous one computes and answers its callers.
    pub batches_in_flight: usize,
    /// How long a batcher runner busy-polls for its batch's result before it sleeps, in
    /// microseconds (default 200; 0 never spins). A runner is a thread of its own, and a parked
    /// thread woken by the device costs tens of microseconds per batch.
    pub runner_spin_us: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_micro_batch: 65536,
            max_micro_batch_mb: 256,
            max_in_flight: 4,
            max_queue_delay_us: 100,
            queue_capacity: 65536,
            batch_queue_capacity: 4096,
            max_batch: 65536,
            preferred_batch_sizes: Vec::new(),
            batches_in_flight: 2,
            runner_spin_us: 200,
        }
    }
}

/// `[cpu]`: the CPU backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Worker threads; 0 (the default) means one per logical core.
    pub threads: usize,
}

/// `[cuda]`: the CUDA backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaConfig {
    /// Where compiled PTX is cached; unset means `$XDG_CACHE_HOME/gpubridge/ptx` (or
    /// `~/.cache/gpubridge/ptx`).
    pub ptx_cache_dir: Option<PathBuf>,
    /// Capture and replay CUDA graphs for repeated plan shapes (default `true`).
    pub enable_graphs: bool,
    /// Memory budget of the graph cache per device in MiB (default 512).
    pub graph_cache_mb: u64,
    /// Device and pinned memory per device in MiB that resident plans (requests with
    /// `persistent` set) may keep between batches: their graphs and the buffers those own are
    /// captured on first sight and not evicted by other plans (default 256; 0 turns resident
    /// mode off). Past it, the least recently used resident graph goes first.
    pub resident_mb: u64,
    /// Streams per device, so that transfers overlap compute (default 2, at least 2 to overlap).
    pub streams_per_device: usize,
    /// Run plans whose kernel gave stages (large matrix products) staged: each step starts once
    /// its inputs are uploaded and its results download while later steps run (default `true`).
    pub staged_plans: bool,
    /// Run a tiny plan (one that goes zero-copy: at most 64 KiB of buffers and two launches) on
    /// the caller's own thread when the caller waits by spinning
    /// ([`crate::ExecutionHints::spin_wait`], and the batcher's runners): its context made
    /// current there, on a stream and mapped buffer of its own, skipping the two thread
    /// hand-offs to the device's executor and back (default `true`). One such caller at a time
    /// per device; others go through the executor as usual. Such a caller also replays its
    /// plan's cached graph itself (plans up to 1 MiB). A caller that parks never runs a plan on
    /// its own thread: that thread may be an async runtime's worker, which a slow device would
    /// then hold.
    pub inline_tiny_plans: bool,
    /// Let a small CUDA graph's kernels (inputs and outputs each at most 64 KiB) read their
    /// inputs from, and write their outputs to, the mapped pinned staging directly, with no copy
    /// in or out, for each side where no buffer of it is an argument of more than one launch
    /// (default `true`). Each copy left out saves about 1 us of a short graph's replay on the
    /// H200; turn it off for kernels that read one input (or read back one output) many times
    /// over, which would then cross the bus each time.
    pub mapped_graph_buffers: bool,
    /// How long before a CUDA graph's replay is expected to end the executor wakes a caller that
    /// parks (one without the [`crate::ExecutionHints::spin_wait`] hint), in microseconds
    /// (default 20; 0 never wakes early). The caller then busy-polls for its result for at most
    /// three times this, and only while fewer than half the host's cores are doing so
    /// ([`crate::wake`]): its wake-up (7-8 us on the H200 test machine's virtual host) overlaps
    /// the replay instead of following it. A replay expected within the lead wakes the caller as
    /// the executor takes it, before the caller has parked (it polls 5 us for that first). The
    /// expected end comes from the graph's earlier replays (about their shortest); a graph's
    /// first replay, and replays longer than 5 ms, do not wake early.
    pub early_wake_us: u64,
}

impl Default for CudaConfig {
    fn default() -> Self {
        Self {
            ptx_cache_dir: None,
            enable_graphs: true,
            graph_cache_mb: 512,
            resident_mb: 256,
            streams_per_device: 2,
            staged_plans: true,
            inline_tiny_plans: true,
            mapped_graph_buffers: true,
            early_wake_us: 20,
        }
    }
}

/// `[wgpu]`: the wgpu backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WgpuConfig {
    /// Use the wgpu backend at all (default `true`). `false` reports it as disabled by
    /// configuration and moves its work on along `fallback.chain`.
    pub enabled: bool,
    /// Accept software adapters such as Mesa's llvmpipe (default `true`). They are used only when
    /// no hardware adapter is found.
    pub allow_software_adapter: bool,
    /// Graphics APIs wgpu may use, tried in this order: Vulkan first, then GL (EGL) only when
    /// Vulkan found no adapter (default `["vulkan", "gl"]`). In the environment a comma list works
    /// too: `GPUBRIDGE__WGPU__APIS=gl`.
    #[serde(deserialize_with = "de_apis")]
    pub apis: Vec<WgpuApi>,
    /// Use only adapters whose name contains this text, ignoring case (for example `"NVIDIA"`
    /// or `"llvmpipe"`); unset means any.
    pub adapter: Option<String>,
    /// Open the wgpu backend even where CUDA is usable (default `false`). wgpu is the backend
    /// for machines without CUDA; beside CUDA it would open a second (Vulkan) context on the
    /// same GPU, which on the H200 made CUDA's small-kernel latency bimodal (P1's chain of 10:
    /// 22.2-24.4 us per call without it, 22.6-26.8 with it; docs/PERFORMANCE.md). With `false`,
    /// the facade's `gpubridge::builder` opens CUDA first and wgpu only when CUDA is not usable;
    /// work that leaves CUDA then falls back to the CPU. The CLI turns it on where wgpu is asked
    /// for by name (`--backend wgpu`, `load --backends wgpu`, the bench's W rows).
    pub alongside_cuda: bool,
}

impl Default for WgpuConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_software_adapter: true,
            apis: vec![WgpuApi::Vulkan, WgpuApi::Gl],
            adapter: None,
            alongside_cuda: false,
        }
    }
}

/// A graphics API the wgpu backend may drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WgpuApi {
    /// Vulkan (NVIDIA, AMD, Intel, Mesa's lavapipe/llvmpipe).
    Vulkan,
    /// OpenGL ES / desktop GL through EGL.
    Gl,
}

fn de_apis<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<WgpuApi>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Apis {
        List(Vec<String>),
        Comma(String),
    }
    let names = match Apis::deserialize(d)? {
        Apis::List(v) => v,
        Apis::Comma(s) => s
            .split(',')
            .map(str::to_owned)
            .filter(|s| !s.trim().is_empty())
            .collect(),
    };
    names
        .iter()
        .map(|n| match n.trim().to_ascii_lowercase().as_str() {
            "vulkan" => Ok(WgpuApi::Vulkan),
            "gl" => Ok(WgpuApi::Gl),
            other => Err(serde::de::Error::custom(format!(
                "unknown graphics API {other:?} (expected vulkan or gl)"
            ))),
        })
        .collect()
}

impl BridgeConfig {
    /// Parses TOML text (no environment overrides) and validates it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the key at fault.
    pub fn from_toml_str(toml_text: &str) -> Result<Self> {
        Self::from_sources(Some(toml_text), std::iter::empty())
    }

    /// Reads `path` (if given) and the process environment's `GPUBRIDGE__*` variables.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] with key `file` when the file cannot be read, or naming the key at
    /// fault (and the variable, when it came from the environment).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let text =
            match path {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                    Error::config("file", format!("cannot read {}: {e}", p.display()))
                })?),
                None => None,
            };
        Self::from_sources(text.as_deref(), std::env::vars())
    }

    /// Builds a configuration from optional TOML text and `(name, value)` environment pairs;
    /// variables not starting with `GPUBRIDGE__` are ignored.
    ///
    /// An override's value is read as a TOML value when it parses as one (`512`, `true`,
    /// `["cpu"]`) and as a string otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the key (as `section.key`) and where the value came from.
    pub fn from_sources(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut root: toml::Table = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| {
                let key = e
                    .span()
                    .map(|s| format!("line {}", t[..s.start.min(t.len())].lines().count().max(1)))
                    .unwrap_or_else(|| "file".to_owned());
                Error::config(key, format!("not valid TOML: {}", e.message()))
            })?,
            None => toml::Table::new(),
        };
        let mut origins: HashMap<String, String> = HashMap::new();
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        vars.sort();
        for (name, raw) in vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            if path.len() != 2 || path.iter().any(String::is_empty) {
                return Err(Error::config(
                    path.join("."),
                    format!("environment variable {name} must look like GPUBRIDGE__SECTION__KEY"),
                ));
            }
            let value = parse_env_value(&raw);
            let section = root
                .entry(path[0].clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section) = section.as_table_mut() else {
                return Err(Error::config(
                    &path[0],
                    format!("{name} overrides a key of a non-table"),
                ));
            };
            section.insert(path[1].clone(), value);
            origins.insert(path.join("."), name);
        }
        let describe = |key: &str| match origins.get(key) {
            Some(var) => format!(" (from environment variable {var})"),
            None => String::new(),
        };
        let cfg: BridgeConfig = serde_path_to_error::deserialize(toml::Value::Table(root))
            .map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner().to_string();
                // At the root the path is "."; an unknown section is named in the message.
                let key = match inner.strip_prefix("unknown field `") {
                    Some(rest) if key == "." => {
                        rest.split('`').next().unwrap_or_default().to_owned()
                    }
                    _ => key,
                };
                let origin = describe(&key);
                Error::config(key, format!("{inner}{origin}"))
            })?;
        cfg.validate().map_err(|e| match e {
            Error::InvalidConfig { key, reason } => {
                let origin = describe(&key);
                Error::InvalidConfig {
                    reason: format!("{reason}{origin}"),
                    key,
                }
            }
            other => other,
        })?;
        Ok(cfg)
    }

    /// Checks every value's range.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first key at fault.
    pub fn validate(&self) -> Result<()> {
        fn at_least<T: PartialOrd + std::fmt::Display>(key: &str, v: T, min: T) -> Result<()> {
            if v < min {
                return Err(Error::config(
                    key,
                    format!("{v} is below the minimum {min}"),
                ));
            }
            Ok(())
        }
        at_least("general.max_devices", self.general.max_devices, 1)?;
        at_least(
            "general.max_concurrent_kernels",
            self.general.max_concurrent_kernels,
            1,
        )?;
        if !(self.memory.device_memory_fraction > 0.0 && self.memory.device_memory_fraction <= 1.0)
        {
            return Err(Error::config(
                "memory.device_memory_fraction",
                format!("{} is outside (0, 1]", self.memory.device_memory_fraction),
            ));
        }
        at_least("memory.idle_release_s", self.memory.idle_release_s, 1)?;
        at_least("tenants.max_tracked", self.tenants.max_tracked, 1)?;
        at_least("storage.threads", self.storage.threads, 1)?;
        at_least("storage.task_size_kb", self.storage.task_size_kb, 4)?;
        at_least("storage.bounce_buffer_kb", self.storage.bounce_buffer_kb, 4)?;
        for (key, kb) in [
            ("storage.task_size_kb", self.storage.task_size_kb),
            ("storage.bounce_buffer_kb", self.storage.bounce_buffer_kb),
        ] {
            if kb % 4 != 0 {
                return Err(Error::config(
                    key,
                    format!("{kb} is not a multiple of 4 (O_DIRECT needs 4 KiB-aligned pieces)"),
                ));
            }
        }
        // Every reader thread needs its two bounce buffers under the cap.
        let lane_kb = self.storage.bounce_buffer_kb.saturating_mul(2);
        if self.storage.max_pinned_memory_mb.saturating_mul(1024) < lane_kb {
            return Err(Error::config(
                "storage.max_pinned_memory_mb",
                format!(
                    "{} MiB cannot hold one reader's two bounce buffers of storage.bounce_buffer_kb = {} KiB",
                    self.storage.max_pinned_memory_mb, self.storage.bounce_buffer_kb
                ),
            ));
        }
        for (key, v) in [
            (
                "storage.gds_poll_threshold_kb",
                self.storage.gds_poll_threshold_kb,
            ),
            (
                "storage.gds_max_direct_io_kb",
                self.storage.gds_max_direct_io_kb,
            ),
            ("storage.gds_max_cache_kb", self.storage.gds_max_cache_kb),
            ("storage.gds_max_pinned_kb", self.storage.gds_max_pinned_kb),
        ] {
            if let Some(v) = v {
                at_least(key, v, 1)?;
            }
        }
        if !(0.0..=1.0).contains(&self.telemetry.sampling_rate) {
            return Err(Error::config(
                "telemetry.sampling_rate",
                format!("{} is outside [0, 1]", self.telemetry.sampling_rate),
            ));
        }
        if self
            .telemetry
            .metrics_listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            return Err(Error::config(
                "telemetry.metrics_listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9464",
                    self.telemetry.metrics_listen
                ),
            ));
        }
        if let Some(url) = &self.telemetry.otlp_endpoint {
            if !url.starts_with("http://") || url.len() <= "http://".len() {
                return Err(Error::config(
                    "telemetry.otlp_endpoint",
                    format!("{url:?} is not an http:// URL such as http://127.0.0.1:4318 (OTLP over HTTP, no TLS)"),
                ));
            }
        }
        at_least(
            "telemetry.nvml_interval_ms",
            self.telemetry.nvml_interval_ms,
            100,
        )?;
        if self.fallback.chain.is_empty() {
            return Err(Error::config(
                "fallback.chain",
                "the chain names no backend",
            ));
        }
        for (i, k) in self.fallback.chain.iter().enumerate() {
            if self.fallback.chain[..i].contains(k) {
                return Err(Error::config(
                    "fallback.chain",
                    format!("{k} appears twice"),
                ));
            }
        }
        at_least(
            "fallback.circuit_failure_threshold",
            self.fallback.circuit_failure_threshold,
            1,
        )?;
        at_least("batching.max_micro_batch", self.batching.max_micro_batch, 1)?;
        at_least(
            "batching.max_micro_batch_mb",
            self.batching.max_micro_batch_mb,
            1,
        )?;
        at_least("batching.max_in_flight", self.batching.max_in_flight, 1)?;
        at_least("batching.queue_capacity", self.batching.queue_capacity, 1)?;
        at_least(
            "batching.batch_queue_capacity",
            self.batching.batch_queue_capacity,
            1,
        )?;
        at_least("batching.max_batch", self.batching.max_batch, 1)?;
        at_least(
            "batching.batches_in_flight",
            self.batching.batches_in_flight,
            1,
        )?;
        at_least("cuda.streams_per_device", self.cuda.streams_per_device, 1)?;
        let tenant_limits = std::iter::once(("tenants.default".to_owned(), &self.tenants.default))
            .chain(
                self.tenants
                    .overrides
                    .iter()
                    .map(|(name, l)| (format!("tenants.overrides.{name}"), l)),
            );
        for (section, l) in tenant_limits {
            for (key, v) in [("items_per_second", l.items_per_second), ("burst", l.burst)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(Error::config(
                        format!("{section}.{key}"),
                        "must be a finite number >= 0",
                    ));
                }
            }
        }
        if self.wgpu.apis.is_empty() {
            return Err(Error::config("wgpu.apis", "the list names no graphics API"));
        }
        Ok(())
    }

    /// The configuration as TOML text (every key, defaults included).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}
