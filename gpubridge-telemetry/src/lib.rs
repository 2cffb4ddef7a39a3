//! Telemetry for gpubridge: the one place where every metric is named, described and given its unit.
//!
//! Every other crate records through the [`metrics`] facade using the constants in [`names`], so the
//! exporter, the Grafana dashboard and the tests all agree on one spelling. Names carry their unit
//! (`_seconds`, `_bytes`, `_total`, `_ratio`) as Prometheus expects, and labels stay low-cardinality:
//! kernel ids, backend names, device labels such as `cuda:0`, and short reason words.
//!
//! This crate installs no recorder. An application (or the `gpubridge serve` command of a later
//! release) installs one; until then every `metrics::counter!` call is a cheap no-op.
//!
//! # Example
//! ```
//! use gpubridge_telemetry::{describe_all, names};
//! describe_all();
//! metrics::counter!(names::FALLBACKS_TOTAL, "from" => "cuda", "to" => "cpu", "reason" => "unsupported")
//!     .increment(1);
//! ```

pub mod names;

pub use names::describe_all;

/// The label value used for a device: `"<backend>:<index>"`, for example `"cuda:0"` or `"cpu:0"`.
///
/// Kept here so that every crate formats device labels the same way.
pub fn device_label(backend: &str, index: usize) -> String {
    format!("{backend}:{index}")
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
