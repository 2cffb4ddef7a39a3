//! The metrics endpoint as Prometheus sees it: a workload through a real bridge (the CPU backend,
//! plus a fault-injecting "cuda" test double so that fallbacks happen), then `/metrics` scraped
//! over real HTTP and every metric checked against what the workload did; and every PromQL
//! expression of `monitoring/grafana-dashboard.json` parsed and checked against the names the
//! exporter serves.
//!
//! This file holds one test on purpose: the metrics recorder is global to the process, so the
//! exact counts below hold only when nothing else in this binary records.

mod support;

use std::collections::{BTreeMap, HashSet};

use gpubridge::kernels::{MatMul, MatMulInput, Saxpy, SaxpyInput, Sum, VectorAdd, VectorPair};
use gpubridge::telemetry::names::{self, Kind};
use gpubridge::testing::{Fault, FaultInjectingBackend, FaultKind};
use gpubridge::{BackendKind, BridgeConfig, Error, ExecutionHints, Kernel};
use promql_parser::parser::{self, Expr};
use support::{get, Scrape};

/// What the workload did, per kernel id.
#[derive(Default, Debug)]
struct Expect {
    requests: BTreeMap<&'static str, f64>,
    chunks: BTreeMap<&'static str, f64>,
    items: BTreeMap<&'static str, f64>,
}

impl Expect {
    fn record<O>(&mut self, id: &'static str, r: &gpubridge::Result<gpubridge::BatchResult<O>>) {
        *self.requests.entry(id).or_default() += 1.0;
        if let Ok(r) = r {
            *self.chunks.entry(id).or_default() += r.chunks.len() as f64;
            *self.items.entry(id).or_default() +=
                r.chunks.iter().map(|c| c.items).sum::<usize>() as f64;
        }
    }
}

fn vec_of(len: usize, seed: f32) -> Vec<f32> {
    (0..len).map(|i| seed + i as f32 * 0.5).collect()
}

/// Metrics that exist on a machine without a GPU once this workload ran; the others of
/// DESIGN.md (bytes transferred, copy throughput, GPU memory and utilisation, allocation
/// failures, pool bytes, graph cache, storage) need a device backend or NVML and are only
/// described (HELP and TYPE lines) here.
const WITHOUT_GPU: [&str; 9] = [
    names::KERNELS_EXECUTED_TOTAL,
    names::KERNEL_DURATION_SECONDS,
    names::REQUEST_DURATION_SECONDS,
    names::QUEUE_DURATION_SECONDS,
    names::BATCH_SIZE,
    names::PENDING_REQUESTS,
    names::REQUEST_FAILURES_TOTAL,
    names::FALLBACKS_TOTAL,
    names::CIRCUIT_STATE,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_shows_every_metric_with_the_workloads_counts_and_the_dashboard_uses_only_served_names(
) {
    gpubridge::telemetry::exporter::install().expect("install the recorder");
    let mut config = BridgeConfig::default();
    config.fallback.chain = vec![BackendKind::Cuda, BackendKind::Cpu];
    let mut builder = gpubridge::builder(config).expect("builder");
    let flaky = FaultInjectingBackend::new(BackendKind::Cuda, 1).expect("test backend");
    flaky.inject(Fault::FirstN(3), FaultKind::LaunchFailure);
    builder.add_backend(flaky.clone());
    let bridge = builder.build().expect("bridge");
    let server = gpubridge::telemetry::serve(&bridge, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("serve");

    let cpu = ExecutionHints::default().prefer_gpu(false);
    let mut expect = Expect::default();
    let add = bridge.batch::<VectorAdd>().unwrap();
    // GPU first: each of these fails once on the test double's cuda:0 and falls back.
    for i in 0..3 {
        let pairs = (0..4)
            .map(|p| VectorPair {
                a: vec_of(100 + i, p as f32),
                b: vec_of(100 + i, 1.0),
            })
            .collect();
        let r = add.execute(pairs, ExecutionHints::default()).await;
        assert_eq!(r.as_ref().map(|r| r.fallbacks.len()).ok(), Some(1));
        expect.record(VectorAdd::ID, &r);
    }
    for (i, split) in [(1usize, None), (7, Some(2)), (33, Some(5)), (1000, None)] {
        let pairs = (0..i.min(9))
            .map(|p| VectorPair {
                a: vec_of(i, p as f32),
                b: vec_of(i, 2.0),
            })
            .collect();
        let hints = match split {
            Some(n) => cpu.clone().max_micro_batch(n),
            None => cpu.clone(),
        };
        let r = add
            .execute(pairs, hints.tenant("t1").correlation_id(format!("c{i}")))
            .await;
        assert!(r.is_ok(), "{r:?}");
        expect.record(VectorAdd::ID, &r);
    }
    for _ in 0..2 {
        let bad = VectorPair {
            a: vec![1.0; 3],
            b: vec![1.0; 2],
        };
        let r = add.execute(vec![bad], cpu.clone()).await;
        assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
        expect.record(VectorAdd::ID, &r);
    }
    let sum = bridge.batch::<Sum>().unwrap();
    for n in [1usize, 10, 250, 4000] {
        let r = sum
            .execute(
                (0..n).map(|i| vec_of(i % 50 + 1, 0.25)).collect(),
                cpu.clone(),
            )
            .await;
        assert!(r.is_ok());
        expect.record(Sum::ID, &r);
    }
    // Only a backend that is not compiled in: refused with no_backend.
    let r = sum
        .execute(
            vec![vec![1.0]],
            ExecutionHints::default().on_backend(BackendKind::Wgpu),
        )
        .await;
    assert!(matches!(r, Err(Error::NoBackendAvailable { .. })), "{r:?}");
    expect.record(Sum::ID, &r);
    let saxpy = bridge.batch::<Saxpy>().unwrap();
    for len in [16usize, 4096, 100_000] {
        let input = SaxpyInput {
            alpha: 2.0,
            x: vec_of(len, 0.0),
            y: vec_of(len, 1.0),
        };
        let r = saxpy.execute(vec![input], cpu.clone()).await;
        assert!(r.is_ok());
        expect.record(Saxpy::ID, &r);
    }
    let matmul = bridge.batch::<MatMul>().unwrap();
    for n in [8usize, 64] {
        let input = MatMulInput {
            m: n,
            k: n,
            n,
            a: vec_of(n * n, 0.0),
            b: vec_of(n * n, 1.0),
        };
        let r = matmul.execute(vec![input], cpu.clone()).await;
        assert!(r.is_ok());
        expect.record(MatMul::ID, &r);
    }

    let (status, text) = get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    let scrape = Scrape::parse(&text);

    // Every metric of the crate is described (HELP and TYPE with its kind), recorded or not.
    for d in names::DESCRIPTORS {
        assert_eq!(
            scrape.types.get(d.name).map(String::as_str),
            Some(d.kind.prometheus_type()),
            "{} missing or mistyped in\n{text}",
            d.name
        );
        assert!(scrape.help.contains_key(d.name), "no HELP for {}", d.name);
    }
    for name in WITHOUT_GPU {
        assert!(scrape.has_samples(name), "{name} has no samples in\n{text}");
    }

    // Counts match the workload.
    for (kernel, requests) in &expect.requests {
        let k = [("kernel", *kernel)];
        assert_eq!(
            scrape.sum("gpubridge_request_duration_seconds_count", &k),
            *requests,
            "{kernel}"
        );
        assert!(scrape.sum("gpubridge_request_duration_seconds_sum", &k) > 0.0);
        let chunks = expect.chunks[kernel];
        assert_eq!(
            scrape.sum("gpubridge_kernel_duration_seconds_count", &k),
            chunks,
            "{kernel}"
        );
        assert_eq!(
            scrape.sum("gpubridge_queue_duration_seconds_count", &k),
            chunks,
            "{kernel}"
        );
        assert_eq!(
            scrape.sum("gpubridge_batch_size_count", &k),
            chunks,
            "{kernel}"
        );
        assert_eq!(
            scrape.sum("gpubridge_batch_size_sum", &k),
            expect.items[kernel],
            "{kernel}"
        );
        assert_eq!(
            scrape.sum(
                names::KERNELS_EXECUTED_TOTAL,
                &[("kernel", kernel), ("success", "true")]
            ),
            chunks,
            "{kernel}"
        );
    }
    assert_eq!(
        scrape.sum(
            names::KERNELS_EXECUTED_TOTAL,
            &[
                ("backend", "cuda"),
                ("device", "cuda:0"),
                ("success", "false")
            ]
        ),
        3.0
    );
    assert_eq!(
        scrape.sum(
            names::FALLBACKS_TOTAL,
            &[("from", "cuda"), ("to", "cpu"), ("reason", "backend_error")]
        ),
        3.0
    );
    assert_eq!(
        scrape.sum(
            names::REQUEST_FAILURES_TOTAL,
            &[("reason", "invalid_input")]
        ),
        2.0
    );
    assert_eq!(
        scrape.sum(names::REQUEST_FAILURES_TOTAL, &[("reason", "no_backend")]),
        1.0
    );
    assert_eq!(scrape.sum(names::PENDING_REQUESTS, &[]), 0.0);
    for device in ["cuda:0", "cpu:0"] {
        let with = [("device", device)];
        let s: Vec<_> = scrape.find(names::CIRCUIT_STATE, &with).collect();
        assert_eq!(s.len(), 1, "{device}");
        assert_eq!(s[0].value, 0.0, "{device} closed");
    }

    // Histograms: the configured buckets, cumulative, ending in +Inf == count.
    for d in names::DESCRIPTORS
        .iter()
        .filter(|d| d.kind == Kind::Histogram)
    {
        let bounds = d.buckets.expect("histograms have buckets");
        let bucket = format!("{}_bucket", d.name);
        let mut series: BTreeMap<Vec<(String, String)>, Vec<f64>> = BTreeMap::new();
        for s in scrape.samples.iter().filter(|s| s.name == bucket) {
            let key = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push(s.value);
        }
        assert!(!series.is_empty(), "{} has no buckets", d.name);
        for (labels, counts) in series {
            assert_eq!(counts.len(), bounds.len() + 1, "{} {labels:?}", d.name);
            assert!(
                counts.windows(2).all(|w| w[0] <= w[1]),
                "{} {labels:?} not cumulative",
                d.name
            );
            let with: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let count = scrape.sum(&format!("{}_count", d.name), &with);
            assert_eq!(counts.last().copied(), Some(count), "{} {labels:?}", d.name);
        }
    }

    check_dashboard(&scrape);
    check_prometheus_config();
    server.shutdown().await;
    gpubridge::testing::assert_quiescent(&bridge);
}

/// Every PromQL expression of the dashboard (panel targets and variable queries) parses, and
/// every metric it selects is one the exporter serves (a `# TYPE` line, histograms through their
/// `_bucket`, `_sum` and `_count` series).
fn check_dashboard(scrape: &Scrape) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../monitoring/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let mut exprs = Vec::new();
    let mut titles = Vec::new();
    collect_panels(&dash["panels"], &mut exprs, &mut titles);
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(metric, label) is Grafana's, not PromQL: check its metric selector.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(m, _)| m.to_owned())
                .unwrap_or_else(|| q.to_owned());
            exprs.push(inner);
        }
    }
    assert!(exprs.len() >= 20, "only {} expressions", exprs.len());
    let served: HashSet<&str> = scrape.types.keys().map(String::as_str).collect();
    let mut used = HashSet::new();
    for e in &exprs {
        let promql = e
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        let ast = parser::parse(&promql).unwrap_or_else(|err| panic!("{e}: {err}"));
        let mut metrics = Vec::new();
        selected_metrics(&ast, &mut metrics);
        assert!(!metrics.is_empty(), "{e} selects no metric");
        for m in metrics {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    m.strip_suffix(suffix)
                        .filter(|b| scrape.types.get(*b).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(&m);
            assert!(
                served.contains(base),
                "{e} uses {m}, which the exporter does not serve"
            );
            used.insert(base.to_owned());
        }
    }
    // Every DESIGN.md metric has a panel.
    for name in names::DESIGN {
        assert!(used.contains(*name), "no panel shows {name}");
    }
    let all = titles.join(" | ").to_lowercase();
    for topic in [
        "throughput",
        "latency",
        "pending",
        "failures",
        "fallbacks",
        "circuit",
        "pool",
        "hit ratio",
        "utilisation",
        "memory",
    ] {
        assert!(all.contains(topic), "no panel about {topic}: {all}");
    }
}

fn collect_panels(panels: &serde_json::Value, exprs: &mut Vec<String>, titles: &mut Vec<String>) {
    for p in panels.as_array().into_iter().flatten() {
        if let Some(t) = p["title"].as_str() {
            titles.push(t.to_owned());
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(
                t["expr"]
                    .as_str()
                    .expect("a target with an expr")
                    .to_owned(),
            );
        }
        collect_panels(&p["panels"], exprs, titles);
    }
}

fn selected_metrics(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::VectorSelector(vs) => out.push(vs.name.clone().expect("selectors name their metric")),
        Expr::MatrixSelector(ms) => {
            out.push(ms.vs.name.clone().expect("selectors name their metric"))
        }
        Expr::Aggregate(a) => {
            selected_metrics(&a.expr, out);
            if let Some(p) = &a.param {
                selected_metrics(p, out);
            }
        }
        Expr::Unary(u) => selected_metrics(&u.expr, out),
        Expr::Binary(b) => {
            selected_metrics(&b.lhs, out);
            selected_metrics(&b.rhs, out);
        }
        Expr::Paren(p) => selected_metrics(&p.expr, out),
        Expr::Subquery(s) => selected_metrics(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selected_metrics(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// `monitoring/prometheus.yml` scrapes `/metrics` at the default `telemetry.metrics_listen`.
fn check_prometheus_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../monitoring/prometheus.yml");
    let text = std::fs::read_to_string(path).expect("prometheus.yml");
    let listen = BridgeConfig::default().telemetry.metrics_listen;
    assert!(text.contains("metrics_path: /metrics"), "{text}");
    assert!(
        text.contains(&format!("\"{listen}\"")),
        "no target {listen} in {text}"
    );
}
