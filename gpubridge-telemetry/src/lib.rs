//! Telemetry for gpubridge: the one place where every metric is named, described and given its
//! unit, and (behind features) the pieces that export them.
//!
//! Every other crate records through the [`metrics`] facade using the constants in [`names`], so
//! the exporter, the Grafana dashboard and the tests all agree on one spelling. Names carry their
//! unit (`_seconds`, `_bytes`, `_total`, `_ratio`) as Prometheus expects, and labels stay
//! low-cardinality: kernel ids, backend names, device labels such as `cuda:0`, and short reason
//! words. Request ids, tenants and correlation ids never become labels: they go to spans and to
//! the audit log ([`AUDIT_TARGET`]).
//!
//! This crate sits below the bridge, so it knows nothing of devices or kernels; the `gpubridge`
//! facade wires a bridge to what is here. Without a recorder installed every `metrics::counter!`
//! call is a cheap no-op.
//!
//! | feature | adds |
//! |---|---|
//! | (always) | [`names`]: every metric's name, kind, unit, help text and buckets; [`describe_all`] |
//! | `prometheus` | `exporter`: installs the Prometheus recorder and renders its text; `server`: the HTTP endpoint with `/metrics`, `/healthz` and `/readyz` |
//! | `nvml` | `nvml`: a sampler thread publishing utilisation, memory, temperature, power and throttle reasons per GPU |
//! | `otlp` | `otlp`: a `tracing` layer exporting spans over OTLP (HTTP/protobuf) with a sampling ratio |
//!
//! # Example
//! ```
//! use gpubridge_telemetry::{describe_all, names};
//! describe_all();
//! metrics::counter!(names::FALLBACKS_TOTAL, "from" => "cuda", "to" => "cpu", "reason" => "unsupported")
//!     .increment(1);
//! ```

pub mod names;

#[cfg(feature = "prometheus")]
pub mod exporter;
#[cfg(feature = "nvml")]
pub mod nvml;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod server;

pub use names::describe_all;

/// The `tracing` target of the audit log: one event per request with its correlation id, tenant,
/// kernel, device, bytes and outcome. Route it with a filter such as `gpubridge::audit=info`.
pub const AUDIT_TARGET: &str = "gpubridge::audit";

/// What can go wrong setting telemetry up. Recording itself never fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Prometheus recorder could not be installed (another metrics recorder was installed
    /// in this process first).
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The endpoint could not bind or serve.
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// The OTLP exporter could not be built (a bad endpoint, a client that would not start).
    #[error("OTLP exporter: {0}")]
    Otlp(String),
}

/// The label value used for a device: `"<backend>:<index>"`, for example `"cuda:0"` or `"cpu:0"`.
///
/// Kept here so that every crate formats device labels the same way.
pub fn device_label(backend: &str, index: usize) -> String {
    format!("{backend}:{index}")
}

/// Sets a device pool's `gpubridge_pool_bytes{device, state}` gauges (`in_use` and `idle`), as
/// every backend's pool reports them.
pub fn record_pool_bytes(device: &str, in_use: u64, idle: u64) {
    let device = intern_label(device);
    metrics::gauge!(names::POOL_BYTES, "device" => device, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(names::POOL_BYTES, "device" => device, "state" => "idle").set(idle as f64);
}

/// Interns a label value: returns a `&'static str` equal to `value`, allocating each distinct
/// value once for the life of the process. Label values are few (device labels, kernel ids), so
/// this bounds memory while letting hot paths record metrics without allocating.
pub fn intern_label(value: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static LABELS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = match LABELS.get_or_init(|| Mutex::new(HashSet::new())).lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(s) = set.get(value) {
        return s;
    }
    let leaked: &'static str = Box::leak(value.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::{device_label, intern_label};

    #[test]
    fn device_labels_are_backend_colon_index_and_interned_once() {
        assert_eq!(device_label("cuda", 0), "cuda:0");
        assert_eq!(device_label("wgpu", 12), "wgpu:12");
        let a = intern_label(&device_label("cpu", 3));
        let b = intern_label("cpu:3");
        assert_eq!(a, "cpu:3");
        assert!(std::ptr::eq(a, b), "one allocation per distinct value");
        assert!(!std::ptr::eq(a, intern_label("cpu:4")));
    }
}
