//! Tracing spans exported over OTLP: HTTP/protobuf to a collector (port 4318 by convention),
//! through reqwest's blocking client on the SDK's batch thread: no gRPC, no TLS.
//!
//! [`OtlpTracing::new`] builds the exporter and a tracer provider that keeps a configured share of
//! traces (`telemetry.sampling_rate`, decided once per trace at its root span, children follow
//! their parent); [`OtlpTracing::layer`] is the `tracing-subscriber` layer that turns `tracing`
//! spans (the bridge's `gpubridge.request` and `gpubridge.kernel`) into OpenTelemetry spans.
//! Dropping the value (or [`OtlpTracing::shutdown`]) flushes what is buffered.
//!
//! # Example
//! ```no_run
//! use gpubridge_telemetry::otlp::{OtlpSettings, OtlpTracing};
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let otlp = OtlpTracing::new(&OtlpSettings {
//!     endpoint: "http://127.0.0.1:4318".to_owned(),
//!     sampling_rate: 0.1,
//!     service_name: "gpubridge".to_owned(),
//! })?;
//! let subscriber = tracing_subscriber::registry().with(otlp.layer());
//! tracing::subscriber::set_global_default(subscriber).ok();
//! # Ok::<(), gpubridge_telemetry::Error>(())
//! ```

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

use crate::Error;

/// How long one export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how much to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// The collector's base URL (`http://127.0.0.1:4318`); spans go to `<endpoint>/v1/traces`
    /// unless the URL already names a path.
    pub endpoint: String,
    /// Share of traces kept, 0 to 1 (decided at each trace's root span).
    pub sampling_rate: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

impl OtlpSettings {
    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        let base = self.endpoint.trim();
        let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
        match after_scheme.find('/') {
            Some(i) if !after_scheme[i..].trim_end_matches('/').is_empty() => base.to_owned(),
            _ => format!("{}/v1/traces", base.trim_end_matches('/')),
        }
    }
}

/// The OTLP exporter and its tracer provider.
#[derive(Debug)]
pub struct OtlpTracing {
    provider: SdkTracerProvider,
}

impl OtlpTracing {
    /// Builds the exporter (it connects lazily, on the first export).
    ///
    /// # Errors
    /// [`Error::Otlp`] for an endpoint that is not a URL, a sampling rate outside 0 to 1, or a
    /// client that cannot start.
    pub fn new(settings: &OtlpSettings) -> Result<Self, Error> {
        if !(0.0..=1.0).contains(&settings.sampling_rate) {
            return Err(Error::Otlp(format!(
                "sampling rate {} is outside [0, 1]",
                settings.sampling_rate
            )));
        }
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_url())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| Error::Otlp(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling_rate,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    /// A `tracing-subscriber` layer exporting spans through this provider.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("gpubridge"))
    }

    /// Exports every finished span buffered so far.
    ///
    /// # Errors
    /// [`Error::Otlp`] when the export fails (the collector is down or refused the batch).
    pub fn flush(&self) -> Result<(), Error> {
        self.provider
            .force_flush()
            .map_err(|e| Error::Otlp(e.to_string()))
    }

    /// Flushes and stops the exporter.
    ///
    /// # Errors
    /// As [`OtlpTracing::flush`].
    pub fn shutdown(self) -> Result<(), Error> {
        self.provider
            .shutdown()
            .map_err(|e| Error::Otlp(e.to_string()))
    }
}

impl Drop for OtlpTracing {
    fn drop(&mut self) {
        // `shutdown` is idempotent in the SDK; a second call only reports that it already ran.
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!("OTLP tracer provider shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OtlpSettings;

    fn url(endpoint: &str) -> String {
        OtlpSettings {
            endpoint: endpoint.to_owned(),
            sampling_rate: 1.0,
            service_name: "t".to_owned(),
        }
        .traces_url()
    }

    #[test]
    fn base_urls_get_the_traces_path_and_full_urls_are_kept() {
        assert_eq!(
            url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("http://c:4318/otlp/v1/traces"),
            "http://c:4318/otlp/v1/traces"
        );
    }
}
