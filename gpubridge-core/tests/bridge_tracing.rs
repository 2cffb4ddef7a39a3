//! The bridge's spans and audit log, seen by a capturing `tracing` layer: one `gpubridge.request`
//! span per request with its kernel, items, tenant, correlation id and outcome; one
//! `gpubridge.kernel` span per micro-batch attempt inside it; one event on `gpubridge::audit` per
//! request, failed ones included.

use std::collections::BTreeMap;
use std::sync::Arc;

use gpubridge_core::kernels::{VectorAdd, VectorPair};
use gpubridge_core::testing::FaultInjectingBackend;
use gpubridge_core::{BackendKind, BridgeConfig, ExecutionHints, GpuBridge};
use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Fields = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct SpanRec {
    id: u64,
    name: &'static str,
    parent: Option<u64>,
    fields: Fields,
}

#[derive(Default, Clone)]
struct Capture {
    spans: Arc<Mutex<Vec<SpanRec>>>,
    audit: Arc<Mutex<Vec<Fields>>>,
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|s| s.parent())
            .map(|p| p.id().into_u64());
        self.spans.lock().push(SpanRec {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            parent,
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.spans.lock();
        if let Some(s) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Visitor(&mut s.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == gpubridge_telemetry::AUDIT_TARGET {
            let mut fields = Fields::new();
            event.record(&mut Visitor(&mut fields));
            self.audit.lock().push(fields);
        }
    }
}

fn bridge(config: BridgeConfig) -> GpuBridge {
    let cpu = FaultInjectingBackend::new(BackendKind::Cpu, 1).unwrap();
    let mut config = config;
    config.fallback.chain = vec![BackendKind::Cpu];
    GpuBridge::builder(config)
        .kernel(VectorAdd)
        .unwrap()
        .backend(cpu)
        .build()
        .unwrap()
}

fn pairs(n: usize) -> Vec<VectorPair> {
    (0..n)
        .map(|i| VectorPair {
            a: vec![i as f32; 4],
            b: vec![1.0; 4],
        })
        .collect()
}

/// Runs `work` on a current-thread runtime with `capture` as the only subscriber.
fn traced(capture: &Capture, work: impl std::future::Future<Output = ()>) {
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    });
}

#[test]
fn a_request_span_holds_one_kernel_span_per_micro_batch_and_the_audit_log_has_every_request() {
    let bridge = bridge(BridgeConfig::default());
    let add = bridge.batch::<VectorAdd>().unwrap();
    let capture = Capture::default();
    traced(&capture, async {
        let hints = ExecutionHints::default()
            .tenant("acme")
            .correlation_id("req-42")
            .max_micro_batch(2);
        let r = add.execute(pairs(5), hints).await.unwrap();
        assert_eq!(r.chunks.len(), 3);
        let bad = VectorPair {
            a: vec![1.0],
            b: vec![],
        };
        assert!(add
            .execute(vec![bad], ExecutionHints::default())
            .await
            .is_err());
    });

    let spans = capture.spans.lock().clone();
    let requests: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.name == "gpubridge.request")
        .collect();
    assert_eq!(requests.len(), 2, "{spans:#?}");
    let first = &requests[0].fields;
    assert_eq!(first["kernel"], "kernels/vector/add");
    assert_eq!(first["items"], "5");
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["correlation_id"], "req-42");
    assert_eq!(first["outcome"], "ok");
    assert_eq!(requests[1].fields["outcome"], "invalid_input");

    let kernels: Vec<&SpanRec> = spans
        .iter()
        .filter(|s| s.name == "gpubridge.kernel")
        .collect();
    assert_eq!(kernels.len(), 3, "an invalid request runs nothing");
    let mut sizes: Vec<&str> = kernels
        .iter()
        .map(|k| k.fields["batch_size"].as_str())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, ["1", "2", "2"]);
    for k in kernels {
        assert_eq!(
            k.parent,
            Some(requests[0].id),
            "kernel span outside its request"
        );
        assert_eq!(k.fields["kernel"], "kernels/vector/add");
        assert_eq!(k.fields["backend"], "cpu");
        assert_eq!(k.fields["device"], "cpu:0");
        assert_eq!(k.fields["device_index"], "0");
        assert_eq!(k.fields["outcome"], "ok");
    }

    let audit = capture.audit.lock().clone();
    assert_eq!(audit.len(), 2, "{audit:#?}");
    let ok = &audit[0];
    assert_eq!(ok["correlation_id"], "req-42");
    assert_eq!(ok["tenant"], "acme");
    assert_eq!(ok["kernel"], "kernels/vector/add");
    assert_eq!(ok["device"], "cpu:0");
    assert_eq!(ok["items"], "5");
    assert!(ok["bytes"].parse::<u64>().unwrap() >= 5 * 3 * 4 * 4);
    assert_eq!(ok["outcome"], "ok");
    assert!(ok.contains_key("duration_us"));
    let failed = &audit[1];
    assert_eq!(failed["outcome"], "invalid_input");
    assert_eq!(failed["tenant"], "-");
    assert_eq!(failed["device"], "-");
    assert!(
        failed["correlation_id"].starts_with("gpubridge-"),
        "the bridge numbers requests without one: {failed:?}"
    );
    gpubridge_core::testing::assert_quiescent(&bridge);
}

#[test]
fn tracing_turned_off_opens_no_spans_but_keeps_the_audit_log() {
    let mut config = BridgeConfig::default();
    config.telemetry.enable_tracing = false;
    let bridge = bridge(config);
    let add = bridge.batch::<VectorAdd>().unwrap();
    let capture = Capture::default();
    traced(&capture, async {
        add.execute(pairs(3), ExecutionHints::default())
            .await
            .unwrap();
    });
    assert!(capture.spans.lock().is_empty());
    assert_eq!(capture.audit.lock().len(), 1);
    gpubridge_core::testing::assert_quiescent(&bridge);
}
