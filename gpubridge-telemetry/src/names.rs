//! Metric names (Prometheus style, units in the name) and their one-time descriptions.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Micro-batches executed on a device (one per attempt), labelled `kernel`, `backend`, `device`,
/// `success`.
pub const KERNELS_EXECUTED_TOTAL: &str = "gpubridge_kernels_executed_total";
/// Time one micro-batch spent executing on its device (histogram), labelled `kernel`, `backend`.
pub const KERNEL_DURATION_SECONDS: &str = "gpubridge_kernel_duration_seconds";
/// Time from a request's arrival to its completion (histogram), labelled `kernel`.
pub const REQUEST_DURATION_SECONDS: &str = "gpubridge_request_duration_seconds";
/// Time a micro-batch waited from its request's arrival until its device started it
/// (histogram), labelled `kernel`.
pub const QUEUE_DURATION_SECONDS: &str = "gpubridge_queue_duration_seconds";
/// Items per executed micro-batch (histogram), labelled `kernel`.
pub const BATCH_SIZE: &str = "gpubridge_batch_size";
/// Requests accepted and not yet completed (gauge).
pub const PENDING_REQUESTS: &str = "gpubridge_pending_requests";
/// Single requests the dynamic batcher answered without running them, labelled `kernel`,
/// `reason` (`queue_full`, `timeout`, `cancelled`).
pub const REJECTIONS_TOTAL: &str = "gpubridge_rejections_total";
/// Requests that ended in an error, labelled `reason` (the error's kind).
pub const REQUEST_FAILURES_TOTAL: &str = "gpubridge_request_failures_total";
/// Bytes copied between host and device, labelled `direction` (`h2d`, `d2h`).
pub const BYTES_TRANSFERRED_TOTAL: &str = "gpubridge_bytes_transferred_total";
/// Throughput of the last micro-batch's host-device copies, both directions over the time spent
/// copying (gauge, no labels). Set only where the backend times its copies (CUDA stream lanes).
pub const TRANSFER_THROUGHPUT_BYTES_PER_SECOND: &str =
    "gpubridge_transfer_throughput_bytes_per_second";
/// Device memory in use on the whole device, from the NVML sampler (gauge), labelled `device`.
pub const GPU_MEMORY_USED_BYTES: &str = "gpubridge_gpu_memory_used_bytes";
/// Device utilisation from NVML, 0 to 1 (gauge), labelled `device`.
pub const GPU_UTILIZATION_RATIO: &str = "gpubridge_gpu_utilization_ratio";
/// Failed allocations, labelled `device`, `reason`.
pub const ALLOCATION_FAILURES_TOTAL: &str = "gpubridge_allocation_failures_total";
/// Pool bytes (gauge), labelled `device`, `state` (`in_use`, `idle`).
pub const POOL_BYTES: &str = "gpubridge_pool_bytes";
/// Graph cache events, labelled `result` (`hit`, `miss`, `evict`).
pub const GRAPH_CACHE_TOTAL: &str = "gpubridge_graph_cache_total";
/// Work moved from one backend to the next, labelled `from`, `to`, `reason`.
pub const FALLBACKS_TOTAL: &str = "gpubridge_fallbacks_total";
/// Circuit breaker state per device (gauge): 0 closed, 1 half-open, 2 open; labelled `device`.
pub const CIRCUIT_STATE: &str = "gpubridge_circuit_state";
/// Bytes moved between files and devices, labelled `path` (`gds`, `staged`).
pub const STORAGE_BYTES_TOTAL: &str = "gpubridge_storage_bytes_total";

/// GPU memory in total per device from NVML (gauge), labelled `device`.
pub const GPU_MEMORY_TOTAL_BYTES: &str = "gpubridge_gpu_memory_total_bytes";
/// GPU temperature from NVML in degrees Celsius (gauge), labelled `device`.
pub const GPU_TEMPERATURE_CELSIUS: &str = "gpubridge_gpu_temperature_celsius";
/// GPU board power draw from NVML in watts (gauge), labelled `device`.
pub const GPU_POWER_WATTS: &str = "gpubridge_gpu_power_watts";
/// Whether a clock throttle reason is active per device from NVML, 1 or 0 (gauge), labelled
/// `device`, `reason` (`gpu_idle`, `sw_power_cap`, `hw_slowdown`, `sw_thermal_slowdown`, ...).
pub const GPU_THROTTLE_ACTIVE: &str = "gpubridge_gpu_throttle_active";
/// Transfers of CUDA device memory that did not take cuFile (and went host-staged), labelled
/// `reason` (`disabled`, `not_compiled`, `outside_mount_point`, `library_missing`, `driver_open`,
/// `no_o_direct`, `handle_register`, `read`, `write`).
pub const STORAGE_GDS_DECLINED_TOTAL: &str = "gpubridge_storage_gds_declined_total";

/// Every metric name this crate defines: [`DESIGN`]'s, then the NVML sampler's extras, then the
/// batcher's rejections and storage's.
pub const ALL: &[&str] = &[
    KERNELS_EXECUTED_TOTAL,
    KERNEL_DURATION_SECONDS,
    REQUEST_DURATION_SECONDS,
    QUEUE_DURATION_SECONDS,
    BATCH_SIZE,
    PENDING_REQUESTS,
    REQUEST_FAILURES_TOTAL,
    BYTES_TRANSFERRED_TOTAL,
    TRANSFER_THROUGHPUT_BYTES_PER_SECOND,
    GPU_MEMORY_USED_BYTES,
    GPU_UTILIZATION_RATIO,
    ALLOCATION_FAILURES_TOTAL,
    POOL_BYTES,
    GRAPH_CACHE_TOTAL,
    FALLBACKS_TOTAL,
    CIRCUIT_STATE,
    STORAGE_BYTES_TOTAL,
    GPU_MEMORY_TOTAL_BYTES,
    GPU_TEMPERATURE_CELSIUS,
    GPU_POWER_WATTS,
    GPU_THROTTLE_ACTIVE,
    REJECTIONS_TOTAL,
    STORAGE_GDS_DECLINED_TOTAL,
];

/// The names DESIGN.md lists, in its order: the first 17 of [`ALL`].
pub const DESIGN: &[&str] = ALL.split_at(17).0;

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Bucket upper bounds of every `_seconds` histogram: 1 us to 10 s in 1-2.5-5 steps, so that a
/// 3 us small batch and a 2 s matrix product both land in a bucket that tells them apart.
pub const SECONDS_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2,
    5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket upper bounds of [`BATCH_SIZE`]: powers of two from 1 to 65536 (the default
/// `batching.max_micro_batch`), then 1 Mi.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
    16384.0, 32768.0, 65536.0, 1048576.0,
];

/// One metric: its name, kind, unit, help text and (for histograms) bucket bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Descriptor {
    /// The name, one of [`ALL`].
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit.
    pub unit: Unit,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Bucket upper bounds, for histograms.
    pub buckets: Option<&'static [f64]>,
}

const fn counter(name: &'static str, unit: Unit, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        kind: Kind::Counter,
        unit,
        help,
        buckets: None,
    }
}

const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Descriptor {
    Descriptor {
        name,
        kind: Kind::Gauge,
        unit,
        help,
        buckets: None,
    }
}

const fn histogram(
    name: &'static str,
    unit: Unit,
    help: &'static str,
    buckets: &'static [f64],
) -> Descriptor {
    Descriptor {
        name,
        kind: Kind::Histogram,
        unit,
        help,
        buckets: Some(buckets),
    }
}

/// Every metric of [`ALL`], described, in the same order.
pub const DESCRIPTORS: &[Descriptor] = &[
    counter(
        KERNELS_EXECUTED_TOTAL,
        Unit::Count,
        "micro-batches executed on a device, by kernel, backend, device and success",
    ),
    histogram(
        KERNEL_DURATION_SECONDS,
        Unit::Seconds,
        "device execution time of one micro-batch",
        SECONDS_BUCKETS,
    ),
    histogram(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "time from a request's arrival to its completion",
        SECONDS_BUCKETS,
    ),
    histogram(
        QUEUE_DURATION_SECONDS,
        Unit::Seconds,
        "time a micro-batch waited from its request's arrival until its device started it",
        SECONDS_BUCKETS,
    ),
    histogram(
        BATCH_SIZE,
        Unit::Count,
        "items per executed micro-batch",
        BATCH_SIZE_BUCKETS,
    ),
    gauge(
        PENDING_REQUESTS,
        Unit::Count,
        "requests accepted and not yet completed",
    ),
    counter(
        REQUEST_FAILURES_TOTAL,
        Unit::Count,
        "requests that ended in an error, by reason",
    ),
    counter(
        BYTES_TRANSFERRED_TOTAL,
        Unit::Bytes,
        "bytes copied between host and device, by direction (h2d, d2h)",
    ),
    gauge(
        TRANSFER_THROUGHPUT_BYTES_PER_SECOND,
        Unit::Bytes,
        "throughput of the last micro-batch's host-device copies (both directions over the time spent copying)",
    ),
    gauge(
        GPU_MEMORY_USED_BYTES,
        Unit::Bytes,
        "device memory in use on the whole device, from NVML",
    ),
    gauge(
        GPU_UTILIZATION_RATIO,
        Unit::Count,
        "fraction of the last sample period a kernel ran on the device, 0 to 1, from NVML",
    ),
    counter(
        ALLOCATION_FAILURES_TOTAL,
        Unit::Count,
        "failed device allocations, by device and reason",
    ),
    gauge(
        POOL_BYTES,
        Unit::Bytes,
        "device memory pool bytes, by device and state (in_use, idle)",
    ),
    counter(
        GRAPH_CACHE_TOTAL,
        Unit::Count,
        "CUDA graph cache events, by result (hit, miss, evict)",
    ),
    counter(
        FALLBACKS_TOTAL,
        Unit::Count,
        "micro-batches moved from one backend to the next, by from, to and reason",
    ),
    gauge(
        CIRCUIT_STATE,
        Unit::Count,
        "circuit breaker state per device: 0 closed, 1 half-open, 2 open",
    ),
    counter(
        STORAGE_BYTES_TOTAL,
        Unit::Bytes,
        "bytes moved between files and devices, by path (gds, staged)",
    ),
    gauge(
        GPU_MEMORY_TOTAL_BYTES,
        Unit::Bytes,
        "device memory in total, from NVML",
    ),
    gauge(
        GPU_TEMPERATURE_CELSIUS,
        Unit::Count,
        "GPU core temperature in degrees Celsius, from NVML",
    ),
    gauge(
        GPU_POWER_WATTS,
        Unit::Count,
        "board power draw in watts, from NVML",
    ),
    gauge(
        GPU_THROTTLE_ACTIVE,
        Unit::Count,
        "1 while a clock throttle reason is active, else 0, from NVML",
    ),
    counter(
        REJECTIONS_TOTAL,
        Unit::Count,
        "single requests the batcher answered without running them, by kernel and reason",
    ),
    counter(
        STORAGE_GDS_DECLINED_TOTAL,
        Unit::Count,
        "CUDA transfers that did not take cuFile and went host-staged, by reason",
    ),
];

/// The descriptor of `name`, if it is one of [`ALL`].
pub fn descriptor(name: &str) -> Option<&'static Descriptor> {
    DESCRIPTORS.iter().find(|d| d.name == name)
}

/// Describes every metric (unit and help text) to the installed recorder.
///
/// Call it once after installing a recorder; calling it again is harmless.
pub fn describe_all() {
    for d in DESCRIPTORS {
        match d.kind {
            Kind::Counter => describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => describe_histogram!(d.name, d.unit, d.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{counter, descriptor, gauge, histogram, Kind, ALL, DESCRIPTORS, DESIGN};

    #[test]
    fn names_are_unique_prefixed_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for name in ALL {
            assert!(name.starts_with("gpubridge_"), "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert!(seen.insert(*name), "duplicate metric name {name}");
        }
    }

    #[test]
    fn every_name_is_described_once_in_order_and_design_names_come_first() {
        // DESIGN.md's telemetry section, in its order.
        let design = [
            "gpubridge_kernels_executed_total",
            "gpubridge_kernel_duration_seconds",
            "gpubridge_request_duration_seconds",
            "gpubridge_queue_duration_seconds",
            "gpubridge_batch_size",
            "gpubridge_pending_requests",
            "gpubridge_request_failures_total",
            "gpubridge_bytes_transferred_total",
            "gpubridge_transfer_throughput_bytes_per_second",
            "gpubridge_gpu_memory_used_bytes",
            "gpubridge_gpu_utilization_ratio",
            "gpubridge_allocation_failures_total",
            "gpubridge_pool_bytes",
            "gpubridge_graph_cache_total",
            "gpubridge_fallbacks_total",
            "gpubridge_circuit_state",
            "gpubridge_storage_bytes_total",
        ];
        assert_eq!(DESIGN, design);
        let described: Vec<&str> = DESCRIPTORS.iter().map(|d| d.name).collect();
        assert_eq!(described, ALL);
        for d in DESCRIPTORS {
            assert_eq!(d.kind == Kind::Histogram, d.buckets.is_some(), "{}", d.name);
            assert_eq!(
                d.kind == Kind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
            if let Some(b) = d.buckets {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{} buckets", d.name);
            }
        }
    }

    #[test]
    fn seconds_buckets_span_microseconds_to_seconds() {
        let b = super::SECONDS_BUCKETS;
        assert!(b[0] <= 1e-6 && *b.last().unwrap_or(&0.0) >= 10.0);
    }

    #[test]
    fn every_name_finds_its_descriptor_and_others_find_none() {
        for name in ALL {
            let d = descriptor(name).unwrap_or_else(|| panic!("{name} has no descriptor"));
            assert_eq!(d.name, *name);
            // The table entry is what its kind's constructor makes at run time too.
            let rebuilt = match d.kind {
                Kind::Counter => counter(d.name, d.unit, d.help),
                Kind::Gauge => gauge(d.name, d.unit, d.help),
                Kind::Histogram => histogram(d.name, d.unit, d.help, d.buckets.unwrap()),
            };
            assert_eq!(&rebuilt, d);
            assert!(!d.help.is_empty(), "{name} has no help text");
        }
        assert_eq!(descriptor("gpubridge_no_such_metric"), None);
        assert_eq!(descriptor(""), None);
        assert_eq!(
            descriptor("gpubridge_batch_size").map(|d| (d.kind, d.buckets)),
            Some((Kind::Histogram, Some(super::BATCH_SIZE_BUCKETS)))
        );
        assert_eq!(
            descriptor("gpubridge_pool_bytes").map(|d| d.kind.prometheus_type()),
            Some("gauge")
        );
        assert_eq!(
            descriptor("gpubridge_fallbacks_total").map(|d| d.kind.prometheus_type()),
            Some("counter")
        );
    }
}
