//! The Prometheus recorder: installed once per process, rendered to the text exposition format.
//!
//! [`install`] builds `metrics-exporter-prometheus`'s recorder with the bucket bounds of
//! [`crate::names::DESCRIPTORS`] (so every histogram is a real Prometheus histogram, not a
//! summary), installs it as the process's global recorder, describes every metric and starts a
//! small upkeep thread that drains histogram samples every few seconds even when nobody scrapes.
//! Its own HTTP listener is not used: [`crate::server`] serves [`render`]'s text.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub use metrics_exporter_prometheus::PrometheusHandle;

use crate::names::DESCRIPTORS;
use crate::Error;

/// How often histogram samples are folded into their buckets between scrapes. Samples wait in
/// lock-free blocks until then, so this bounds their memory under load.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as this process's global `metrics` recorder (once; later
/// calls return the same handle) and describes every metric.
///
/// Install it before building a bridge where you can: metrics recorded before a recorder exists
/// are lost (the facade's `serve` republishes the states that matter, such as circuit state).
///
/// # Errors
/// [`Error::Recorder`] when another recorder was installed first.
pub fn install() -> Result<PrometheusHandle, Error> {
    static INSTALLING: Mutex<()> = Mutex::new(());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let _guard = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for d in DESCRIPTORS {
        if let Some(bounds) = d.buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(d.name.to_owned()), bounds)
                .map_err(|e| Error::Recorder(e.to_string()))?;
        }
    }
    let handle = builder
        .install_recorder()
        .map_err(|e| Error::Recorder(e.to_string()))?;
    crate::describe_all();
    let upkeep = handle.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("gpubridge-metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            upkeep.run_upkeep();
        })
    {
        // Scrapes still fold samples in; only memory between scrapes is less bounded.
        tracing::warn!("could not start the metrics upkeep thread: {e}");
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The installed recorder's handle, if [`install`] ran.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}

/// Renders every metric in the Prometheus text format.
///
/// Metrics that are described but have no series yet (GPU-only ones on a machine without a GPU,
/// failures that have not happened) still get their `# HELP` and `# TYPE` lines, which the format
/// allows, so that scrapers, dashboards and tests see every name from the first scrape.
pub fn render(handle: &PrometheusHandle) -> String {
    let mut text = handle.render();
    let present: HashSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .collect();
    for d in DESCRIPTORS {
        if !present.contains(d.name) {
            // Writing to a String cannot fail.
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n\n",
                name = d.name,
                help = d.help,
                kind = d.kind.prometheus_type()
            );
        }
    }
    text
}
