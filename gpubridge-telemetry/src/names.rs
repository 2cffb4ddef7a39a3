//! Metric names (Prometheus style, units in the name) and their one-time descriptions.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Kernels executed, labelled `kernel`, `backend`, `device`, `success`.
pub const KERNELS_EXECUTED_TOTAL: &str = "gpubridge_kernels_executed_total";
/// Time one micro-batch spent executing on its device (histogram), labelled `kernel`, `backend`.
pub const KERNEL_DURATION_SECONDS: &str = "gpubridge_kernel_duration_seconds";
/// Time from a request's arrival to its completion (histogram), labelled `kernel`.
pub const REQUEST_DURATION_SECONDS: &str = "gpubridge_request_duration_seconds";
/// Time a request waited before its work started (histogram), labelled `kernel`.
pub const QUEUE_DURATION_SECONDS: &str = "gpubridge_queue_duration_seconds";
/// Items per executed micro-batch (histogram), labelled `kernel`.
pub const BATCH_SIZE: &str = "gpubridge_batch_size";
/// Requests accepted and not yet completed (gauge).
pub const PENDING_REQUESTS: &str = "gpubridge_pending_requests";
/// Requests that ended in an error, labelled `reason` (the error's kind).
pub const REQUEST_FAILURES_TOTAL: &str = "gpubridge_request_failures_total";
/// Bytes copied between host and device, labelled `direction` (`h2d`, `d2h`).
pub const BYTES_TRANSFERRED_TOTAL: &str = "gpubridge_bytes_transferred_total";
/// Throughput of the last transfer (gauge), labelled `direction`.
pub const TRANSFER_THROUGHPUT_BYTES_PER_SECOND: &str =
    "gpubridge_transfer_throughput_bytes_per_second";
/// Device memory in use (gauge), labelled `device`.
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

/// Every metric name this crate defines, in the order above.
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
];

/// Describes every metric (unit and help text) to the installed recorder.
///
/// Call it once after installing a recorder; calling it again is harmless.
pub fn describe_all() {
    describe_counter!(KERNELS_EXECUTED_TOTAL, Unit::Count, "kernels executed");
    describe_histogram!(
        KERNEL_DURATION_SECONDS,
        Unit::Seconds,
        "device execution time of one micro-batch"
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "time from a request's arrival to its completion"
    );
    describe_histogram!(
        QUEUE_DURATION_SECONDS,
        Unit::Seconds,
        "time a request waited before its work started"
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "items per executed micro-batch");
    describe_gauge!(
        PENDING_REQUESTS,
        Unit::Count,
        "requests accepted and not yet completed"
    );
    describe_counter!(
        REQUEST_FAILURES_TOTAL,
        Unit::Count,
        "requests that ended in an error"
    );
    describe_counter!(
        BYTES_TRANSFERRED_TOTAL,
        Unit::Bytes,
        "bytes copied between host and device"
    );
    describe_gauge!(
        TRANSFER_THROUGHPUT_BYTES_PER_SECOND,
        Unit::Bytes,
        "throughput of the last transfer"
    );
    describe_gauge!(GPU_MEMORY_USED_BYTES, Unit::Bytes, "device memory in use");
    describe_gauge!(
        GPU_UTILIZATION_RATIO,
        Unit::Percent,
        "device utilisation, 0 to 1"
    );
    describe_counter!(
        ALLOCATION_FAILURES_TOTAL,
        Unit::Count,
        "failed device allocations"
    );
    describe_gauge!(POOL_BYTES, Unit::Bytes, "memory pool bytes by state");
    describe_counter!(
        GRAPH_CACHE_TOTAL,
        Unit::Count,
        "CUDA graph cache hits, misses and evictions"
    );
    describe_counter!(
        FALLBACKS_TOTAL,
        Unit::Count,
        "work moved from one backend to the next"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        Unit::Count,
        "circuit state: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        STORAGE_BYTES_TOTAL,
        Unit::Bytes,
        "bytes moved between files and devices"
    );
}

#[cfg(test)]
mod tests {
    use super::ALL;

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
}
