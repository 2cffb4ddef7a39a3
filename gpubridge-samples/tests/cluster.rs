//! The cluster end to end: a real `nats-server` with JetStream on loopback, `gpubridge worker`
//! processes on the CPU backend (and one on wgpu), and a `ClusterClient` in the test.
//!
//! Skipped when `nats-server` is not on the PATH, unless `GPUBRIDGE_REQUIRE_NATS=1` (CI), which
//! turns the skip into a failure. The wgpu worker's test also skips without a wgpu adapter,
//! unless `GPUBRIDGE_REQUIRE_WGPU=1` (CI, on llvmpipe).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use gpubridge::kernels::{
    union_find_labels, ConnectedComponents, Graph, MatMul, MatMulInput, Saxpy, SaxpyInput, Sum,
    VectorAdd, VectorPair,
};
use gpubridge::Priority;
use gpubridge_cluster::{Capability, ClusterClient, ClusterError, ClusterSettings};

/// A child process, stopped and reaped when dropped: SIGTERM first (a worker then stops cleanly,
/// as under systemd or Kubernetes, and an instrumented build writes its coverage profile), SIGKILL
/// if it is still running 10 s later. [`Proc::kill`] kills at once, as a crash would.
struct Proc(Option<Child>);

impl Proc {
    fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// SIGKILL now, and reap.
    fn kill(mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: `pid` is this process's own child, not yet reaped (so not reused).
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let asked = Instant::now();
            while asked.elapsed() < Duration::from_secs(10) {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A NATS server with JetStream in its own store directory.
struct Nats {
    _server: Proc,
    url: String,
    dir: PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_server() -> Option<Nats> {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("GPUBRIDGE_REQUIRE_NATS").as_deref() == Ok("1") {
            panic!("nats-server is not on the PATH and GPUBRIDGE_REQUIRE_NATS=1");
        }
        eprintln!("skipped: nats-server is not on the PATH (apt-get install nats-server)");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("gpubridge-nats-{}-{port}", std::process::id()));
    let server = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server");
    let server = Proc::new(server);
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Nats {
        _server: server,
        url: format!("nats://127.0.0.1:{port}"),
        dir,
    })
}

/// A `gpubridge worker` on the CPU backend with a 2 s ack_wait.
fn worker(url: &str, name: &str, hold_ms: u64) -> Proc {
    worker_with(url, name, hold_ms, &[])
}

/// A `gpubridge worker` on the CPU backend (unless `extra` names another) with a 2 s ack_wait,
/// and `extra` arguments (`--kernels`, `--backend`).
fn worker_with(url: &str, name: &str, hold_ms: u64, extra: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args([
            "worker",
            "--nats",
            url,
            "--name",
            name,
            "--max-in-flight",
            "4",
        ])
        .args(["--ack-wait-ms", "2000", "--max-deliver", "10"])
        .args(["--hold-ms", &hold_ms.to_string()])
        .args(extra)
        .env("GPUBRIDGE__FALLBACK__CHAIN", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting gpubridge worker");
    Proc::new(child)
}

/// Waits until the workers named `names` have announced themselves; returns every announcement.
async fn announced(client: &ClusterClient, names: &[&str]) -> Vec<gpubridge_cluster::Announcement> {
    let started = Instant::now();
    loop {
        let workers = client.workers().await.expect("workers");
        if names.iter().all(|n| workers.iter().any(|w| w.name == *n)) {
            return workers;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "workers {names:?} did not announce themselves: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stats once every request is acknowledged (a worker stores the answer, then
/// acknowledges: the caller may see its answer a moment before the stream drops the request).
async fn settled(client: &ClusterClient) -> gpubridge_cluster::ClusterStats {
    let started = Instant::now();
    loop {
        let stats = client.stats().await.expect("stats");
        if stats.queued == 0 || started.elapsed() > Duration::from_secs(10) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(url: &str) -> ClusterClient {
    let started = Instant::now();
    loop {
        match ClusterClient::connect(url, ClusterSettings::default()).await {
            Ok(c) => return c.with_timeout(Duration::from_secs(30)),
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("connecting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connecting to {url}: {e}"),
        }
    }
}

/// Deterministic inputs: request `r`'s batch of `items` vectors of varying lengths.
fn sum_batch(r: usize, items: usize) -> Vec<Vec<f32>> {
    let mut x = (r as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..items)
        .map(|i| {
            (0..(1 + (r * 7 + i * 13) % 300))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x % 2000) as f32 / 1000.0 - 1.0
                })
                .collect()
        })
        .collect()
}

fn assert_sums(r: usize, got: &[f32], batch: &[Vec<f32>]) {
    assert_eq!(got.len(), batch.len(), "request {r}: one output per item");
    for (i, (g, v)) in got.iter().zip(batch).enumerate() {
        let want: f64 = v.iter().map(|&x| f64::from(x)).sum();
        assert!(
            (f64::from(*g) - want).abs() <= 1e-3 * (1.0 + want.abs()),
            "request {r} item {i}: {g} against {want}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_answers_every_batch() {
    let Some(nats) = nats_server() else { return };
    let _w = worker(&nats.url, "solo", 0);
    let client = client(&nats.url).await;

    let batches: Vec<Vec<Vec<f32>>> = (0..200).map(|r| sum_batch(r, 16)).collect();
    let answers = join_all(batches.iter().map(|b| client.submit::<Sum>(b))).await;
    for (r, (answer, batch)) in answers.into_iter().zip(&batches).enumerate() {
        let got = answer.unwrap_or_else(|e| panic!("request {r}: {e}"));
        assert_sums(r, &got, batch);
    }

    // Vector add, and a batch large enough to travel by reference both ways (1.2 MB request,
    // 600 kB answer, above the 512 kB inline limit).
    let pairs = vec![
        VectorPair {
            a: vec![1.0, 2.0, 3.0],
            b: vec![10.0, 20.0, 30.0],
        },
        VectorPair {
            a: (0..150_000).map(|i| i as f32).collect(),
            b: (0..150_000).map(|i| (2 * i) as f32).collect(),
        },
    ];
    let got = client
        .submit::<VectorAdd>(&pairs)
        .await
        .expect("vector add");
    assert_eq!(got[0], vec![11.0, 22.0, 33.0]);
    assert_eq!(got[1].len(), 150_000);
    assert!(got[1].iter().enumerate().all(|(i, &x)| x == (3 * i) as f32));

    // The same request id again: the first answer, not a second computation.
    let id = client.new_request_id();
    let first = client
        .submit_with_id::<Sum>(&id, &[vec![1.0, 2.0]])
        .await
        .expect("first");
    let again = client
        .submit_with_id::<Sum>(&id, &[vec![1.0, 2.0]])
        .await
        .expect("again");
    assert_eq!(first, vec![3.0]);
    assert_eq!(again, first);

    // Invalid input comes back as the worker's error.
    let bad = client
        .submit::<VectorAdd>(&[VectorPair {
            a: vec![1.0],
            b: vec![1.0, 2.0],
        }])
        .await;
    assert!(bad.is_err(), "mismatched lengths must fail: {bad:?}");

    // Every other built-in kernel travels too, its answers checked against the CPU reference.
    let saxpy = vec![SaxpyInput {
        alpha: 2.0,
        x: vec![1.0, -2.0, 0.5],
        y: vec![10.0, 10.0, 10.0],
    }];
    let got = client.submit::<Saxpy>(&saxpy).await.expect("saxpy");
    assert_eq!(got, vec![vec![12.0, 6.0, 11.0]]);
    let (m, k, n) = (3, 4, 2);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5).collect();
    let got = client
        .submit::<MatMul>(&[MatMulInput {
            m,
            k,
            n,
            a: a.clone(),
            b: b.clone(),
        }])
        .await
        .expect("matmul");
    assert_eq!((got[0].rows, got[0].cols), (m, n));
    for i in 0..m {
        for j in 0..n {
            let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            assert!((got[0].data[i * n + j] - want).abs() <= 1e-4, "c[{i}][{j}]");
        }
    }
    let graph = Graph {
        nodes: 1000,
        edges: (0..1500u32)
            .map(|i| [(i * 7) % 1000, (i * 13 + 5) % 1000])
            .collect(),
    };
    let got = client
        .submit::<ConnectedComponents>(std::slice::from_ref(&graph))
        .await
        .expect("connected components");
    assert_eq!(got, vec![union_find_labels(graph.nodes, &graph.edges)]);

    let stats = settled(&client).await;
    // 200 sums, 1 vector add, 1 id answered once, 1 error, 1 saxpy, 1 matmul, 1 graph.
    assert_eq!(stats.answers_written, 206, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert_eq!(stats.workers, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_priority_and_tenant_travel_to_the_worker() {
    let Some(nats) = nats_server() else { return };
    // The worker's bridge limits tenant "tiny" to one item at a time (a bucket of one item,
    // refilled once in 1000 s): a batch of two is over its quota there.
    let config = nats.dir.join("worker.toml");
    std::fs::write(
        &config,
        "[tenants.overrides.tiny]\nitems_per_second = 0.001\nburst = 1\n",
    )
    .unwrap();
    let _w = worker_with(
        &nats.url,
        "tenants",
        0,
        &["--config", config.to_str().unwrap()],
    );
    let client = client(&nats.url).await;
    let batch = sum_batch(1, 2);
    let over = client
        .request::<Sum>(&batch)
        .tenant("tiny")
        .send()
        .await
        .unwrap_err();
    match &over {
        ClusterError::Remote { message, .. } => {
            assert!(
                message.contains("quota exceeded for tenant \"tiny\""),
                "{message}"
            );
        }
        other => panic!("expected the worker's quota error, got {other:?}"),
    }
    // A name that would end its header and start another is refused before it is sent.
    let injected = client
        .request::<Sum>(&batch)
        .tenant("tiny\r\nGpubridge-Object: someone-elses")
        .send()
        .await
        .unwrap_err();
    assert!(
        matches!(&injected, ClusterError::InvalidTenant(t) if t.starts_with("tiny")),
        "{injected:?}"
    );
    // Another tenant, and no tenant, are not limited; a priority travels and is honoured.
    for request in [
        client.request::<Sum>(&batch).tenant("roomy"),
        client.request::<Sum>(&batch).priority(Priority::High),
        client.request::<Sum>(&batch).priority(Priority::Low),
    ] {
        let got = request.send().await.expect("served");
        assert_sums(1, &got, &batch);
    }
    let stats = settled(&client).await;
    assert_eq!(stats.answers_written, 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_no_request() {
    let Some(nats) = nats_server() else { return };
    // Each batch holds its slot 40 ms, so every worker always has requests in flight; the
    // victim's hold theirs 1.5 s (under the 2 s ack_wait), so that it surely holds the four it
    // took first when it is killed.
    let mut workers: Vec<Option<Proc>> = (0..3)
        .map(|i| {
            let hold = if i == 0 { 1500 } else { 40 };
            Some(worker(&nats.url, &format!("w{i}"), hold))
        })
        .collect();
    let client = client(&nats.url).await;
    // Wait until the three have announced themselves.
    let started = Instant::now();
    while client.stats().await.map(|s| s.workers).unwrap_or(0) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const REQUESTS: usize = 300;
    let batches: Vec<Vec<Vec<f32>>> = (0..REQUESTS).map(|r| sum_batch(r, 8)).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let killer = {
        let answered = Arc::clone(&answered);
        let victim = workers[0].take();
        tokio::spawn(async move {
            let waiting = Instant::now();
            while answered.load(Ordering::Relaxed) < REQUESTS / 4
                && waiting.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Some(victim) = victim {
                victim.kill(); // SIGKILL, mid-load
            }
            answered.load(Ordering::Relaxed)
        })
    };
    let t = Instant::now();
    let answers = join_all(batches.iter().map(|b| {
        let answered = Arc::clone(&answered);
        let client = &client;
        async move {
            let r = client.submit::<Sum>(b).await;
            answered.fetch_add(1, Ordering::Relaxed);
            r
        }
    }))
    .await;
    let killed_at = killer.await.expect("killer");
    for (r, (answer, batch)) in answers.into_iter().zip(&batches).enumerate() {
        let got = answer.unwrap_or_else(|e| panic!("request {r}: {e}"));
        assert_sums(r, &got, batch);
    }
    let stats = settled(&client).await;
    eprintln!(
        "{REQUESTS} requests in {:.2} s, worker w0 killed after {killed_at} answers: {stats:?}",
        t.elapsed().as_secs_f64()
    );
    // Exactly one answer per request: create-only writes, one stored per id.
    assert_eq!(stats.answers_written, REQUESTS as u64, "{stats:?}");
    assert_eq!(stats.queued, 0, "{stats:?}");
    // The killed worker held requests; they were delivered again to the others.
    assert!(stats.deliveries > REQUESTS as u64, "{stats:?}");
    drop(workers);
}

/// Latency percentile (`q` in 0..=1) of sorted durations, in milliseconds.
fn pct(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

struct Row {
    mode: String,
    requests: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `requests` sum batches, `concurrency` at once, through `run`; latency per request.
async fn measure<F, Fut>(mode: &str, requests: usize, concurrency: usize, run: F) -> Row
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Vec<f32>>,
{
    use futures::StreamExt;
    let t = Instant::now();
    let mut lat: Vec<Duration> = futures::stream::iter(0..requests)
        .map(|r| {
            let fut = run(r);
            async move {
                let s = Instant::now();
                let out = fut.await;
                assert_eq!(out.len(), BENCH_ITEMS);
                s.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let seconds = t.elapsed().as_secs_f64();
    lat.sort();
    Row {
        mode: mode.to_owned(),
        requests,
        seconds,
        p50_ms: pct(&lat, 0.5),
        p99_ms: pct(&lat, 0.99),
    }
}

const BENCH_ITEMS: usize = 64;
const BENCH_LEN: usize = 256;

/// Throughput and latency of 1 and 3 worker processes on loopback against in-process
/// `bridge.batch` calls, all on the CPU backend. Prints a table and writes
/// `cluster-bench.json` (to `GPUBRIDGE_BENCH_OUT` or the test's temporary directory). Run with
/// `cargo test -p gpubridge-samples --release --test cluster -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored --release"]
async fn cluster_bench() {
    let requests: usize = std::env::var("GPUBRIDGE_BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let concurrency = 32;
    let batch: Vec<Vec<f32>> = (0..BENCH_ITEMS)
        .map(|i| (0..BENCH_LEN).map(|j| ((i + j) % 7) as f32).collect())
        .collect();
    let batch = Arc::new(batch);
    let mut rows = Vec::new();

    let mut config = gpubridge::BridgeConfig::default();
    config.fallback.chain = vec![gpubridge::BackendKind::Cpu];
    let bridge = gpubridge::bridge(config).expect("bridge");
    let grain = bridge.batch::<Sum>().expect("sum");
    rows.push(
        measure("in-process bridge.batch", requests, concurrency, |_| {
            let grain = grain.clone();
            let batch = Vec::clone(&batch);
            async move {
                grain
                    .execute(batch, gpubridge::ExecutionHints::default())
                    .await
                    .expect("in-process sum")
                    .outputs
            }
        })
        .await,
    );

    for workers in [1usize, 3] {
        let Some(nats) = nats_server() else { return };
        let _procs: Vec<Proc> = (0..workers)
            .map(|i| {
                let child = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
                    .args(["worker", "--nats", &nats.url, "--name", &format!("b{i}")])
                    .args(["--max-in-flight", "8"])
                    .env("GPUBRIDGE__FALLBACK__CHAIN", "cpu")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("starting gpubridge worker");
                Proc::new(child)
            })
            .collect();
        let client = client(&nats.url).await;
        let started = Instant::now();
        while client.stats().await.map(|s| s.workers).unwrap_or(0) < workers as u64 {
            assert!(started.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Warm up the connections and the workers' bridges.
        for _ in 0..20 {
            client.submit::<Sum>(&batch).await.expect("warm-up");
        }
        let client = &client;
        rows.push(
            measure(
                &format!("cluster, {workers} worker process(es)"),
                requests,
                concurrency,
                |_| {
                    let batch = Arc::clone(&batch);
                    async move { client.submit::<Sum>(&batch).await.expect("cluster sum") }
                },
            )
            .await,
        );
    }

    println!(
        "\n{requests} sum batches of {BENCH_ITEMS} x {BENCH_LEN} f32 ({} kB each), {concurrency} in flight",
        BENCH_ITEMS * (BENCH_LEN * 4 + 4) / 1000
    );
    println!(
        "| {:<34} | {:>8} | {:>9} | {:>8} | {:>8} |",
        "mode", "requests", "batches/s", "P50 ms", "P99 ms"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for r in &rows {
        let rate = r.requests as f64 / r.seconds;
        println!(
            "| {:<34} | {:>8} | {:>9.0} | {:>8.2} | {:>8.2} |",
            r.mode, r.requests, rate, r.p50_ms, r.p99_ms
        );
        json.push(serde_json::json!({
            "mode": r.mode, "requests": r.requests, "seconds": r.seconds,
            "batches_per_s": rate, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "items": BENCH_ITEMS, "item_len": BENCH_LEN, "concurrency": concurrency,
        }));
    }
    let dir = std::env::var_os("GPUBRIDGE_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("cluster-bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json).expect("json")).expect("writing JSON");
    println!("wrote {}", path.display());
}

/// A batch that outlives `ack_wait` (3 s against 2 s) is not delivered again: the worker sends
/// progress acknowledgements while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_keeps_a_long_batch_with_its_worker() {
    let Some(nats) = nats_server() else { return };
    let _w = worker(&nats.url, "slow", 3000);
    let client = client(&nats.url).await;
    let got = client
        .submit::<Sum>(&[vec![1.0, 2.0, 3.0]])
        .await
        .expect("slow sum");
    assert_eq!(got, vec![6.0]);
    let stats = settled(&client).await;
    assert_eq!(stats.deliveries, 1, "{stats:?}");
    assert_eq!(stats.answers_written, 1, "{stats:?}");
}

fn assert_adds(r: usize, got: &[Vec<f32>], pairs: &[VectorPair]) {
    assert_eq!(got.len(), pairs.len(), "request {r}: one output per item");
    for (i, (g, p)) in got.iter().zip(pairs).enumerate() {
        let want: Vec<f32> = p.a.iter().zip(&p.b).map(|(a, b)| a + b).collect();
        assert_eq!(g, &want, "request {r} item {i}");
    }
}

fn add_batch(r: usize, items: usize) -> Vec<VectorPair> {
    sum_batch(r, 2 * items)
        .chunks(2)
        .map(|c| {
            let n = c[0].len().min(c[1].len());
            VectorPair {
                a: c[0][..n].to_vec(),
                b: c[1][..n].to_vec(),
            }
        })
        .collect()
}

/// Two workers with different kernels (`--kernels`): each pulls only its own kernel's requests.
/// A vector add sent while only the sums' worker runs is not taken by it: it waits in the stream
/// (the client's timeout says so, by variant) and is answered once a worker serving vector add
/// starts; then a mixed load is answered in full, each request by a worker with its kernel (a
/// worker handed another kernel's request answers with an error, which would fail the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_pull_only_the_kernels_they_serve() {
    let Some(nats) = nats_server() else { return };
    let _sums = worker_with(&nats.url, "sums", 0, &["--kernels", "kernels/sum"]);
    let client = client(&nats.url).await;
    let workers = announced(&client, &["sums"]).await;
    assert_eq!(workers.len(), 1, "{workers:?}");
    let a = &workers[0];
    assert_eq!(a.kernels, ["kernels/sum"], "{a:?}");
    assert_eq!(a.capabilities, [Capability::Any, Capability::Cpu], "{a:?}");
    assert_eq!(a.backend, "cpu", "{a:?}");
    assert_eq!(
        a.subjects,
        [
            "gpubridge.work.any.kernels.sum",
            "gpubridge.work.cpu.kernels.sum"
        ],
        "{a:?}"
    );

    // A vector add: no running worker serves it.
    let waiting = add_batch(0, 4);
    let id = client.new_request_id();
    let short = ClusterClient::connect(&nats.url, ClusterSettings::default())
        .await
        .expect("second client")
        .with_timeout(Duration::from_secs(2));
    match short
        .request::<VectorAdd>(&waiting)
        .id(id.as_str())
        .send()
        .await
    {
        Err(ClusterError::Timeout {
            id: got,
            kernel,
            capability,
            ..
        }) => {
            assert_eq!(got, id);
            assert_eq!(kernel, "kernels/vector/add");
            assert_eq!(capability, Capability::Any);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Sums are answered meanwhile; the vector add still waits, undelivered.
    let got = client.submit::<Sum>(&[vec![1.0, 2.0]]).await.expect("sum");
    assert_eq!(got, vec![3.0]);
    let stats = settled_but(&client, 1).await;
    assert_eq!((stats.queued, stats.pending), (1, 1), "{stats:?}");
    let queues = client.queues().await.expect("queues");
    assert!(
        queues.iter().all(|q| q.kernel == "kernels/sum"),
        "only the sums' consumers exist: {queues:?}"
    );

    // A worker serving vector add starts: the waiting request is answered (the same id again
    // awaits the one answer).
    let _adds = worker_with(&nats.url, "adds", 0, &["--kernels", "kernels/vector/add"]);
    let got = client
        .submit_with_id::<VectorAdd>(&id, &waiting)
        .await
        .expect("the waiting vector add");
    assert_adds(0, &got, &waiting);
    let workers = announced(&client, &["sums", "adds"]).await;
    let adds = workers.iter().find(|w| w.name == "adds").expect("adds");
    assert_eq!(adds.kernels, ["kernels/vector/add"], "{adds:?}");

    // A mixed load, half of it requiring the CPU backend.
    let sums: Vec<Vec<Vec<f32>>> = (0..60).map(|r| sum_batch(r, 8)).collect();
    let pairs: Vec<Vec<VectorPair>> = (0..60).map(|r| add_batch(r, 3)).collect();
    let cap = |r: usize| {
        if r.is_multiple_of(2) {
            Capability::Any
        } else {
            Capability::Cpu
        }
    };
    let (sum_answers, add_answers) = futures::join!(
        join_all(
            sums.iter()
                .enumerate()
                .map(|(r, b)| client.request::<Sum>(b).requires(cap(r)).send())
        ),
        join_all(
            pairs
                .iter()
                .enumerate()
                .map(|(r, b)| client.request::<VectorAdd>(b).requires(cap(r)).send())
        ),
    );
    for (r, (answer, batch)) in sum_answers.into_iter().zip(&sums).enumerate() {
        assert_sums(r, &answer.unwrap_or_else(|e| panic!("sum {r}: {e}")), batch);
    }
    for (r, (answer, batch)) in add_answers.into_iter().zip(&pairs).enumerate() {
        assert_adds(r, &answer.unwrap_or_else(|e| panic!("add {r}: {e}")), batch);
    }
    let stats = settled(&client).await;
    assert_eq!(stats.queued, 0, "{stats:?}");
    // 1 + 60 sums, 1 + 60 adds, each delivered once to a consumer of its own kernel.
    assert_eq!(stats.answers_written, 122, "{stats:?}");
    let queues = client.queues().await.expect("queues");
    let deliveries = |cap: Capability, kernel: &str| {
        queues
            .iter()
            .find(|q| q.capability == cap && q.kernel == kernel)
            .unwrap_or_else(|| panic!("no consumer for {cap} {kernel}: {queues:?}"))
            .deliveries
    };
    assert_eq!(deliveries(Capability::Any, "kernels/sum"), 31, "{queues:?}");
    assert_eq!(deliveries(Capability::Cpu, "kernels/sum"), 30, "{queues:?}");
    assert_eq!(
        deliveries(Capability::Any, "kernels/vector/add"),
        31,
        "{queues:?}"
    );
    assert_eq!(
        deliveries(Capability::Cpu, "kernels/vector/add"),
        30,
        "{queues:?}"
    );
    assert_eq!(queues.len(), 4, "{queues:?}");
}

/// The stats once all but `left` requests are acknowledged.
async fn settled_but(client: &ClusterClient, left: u64) -> gpubridge_cluster::ClusterStats {
    let started = Instant::now();
    loop {
        let stats = client.stats().await.expect("stats");
        if stats.queued <= left || started.elapsed() > Duration::from_secs(10) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `gpubridge devices` finds a usable wgpu adapter; fails the test when none is found
/// and `GPUBRIDGE_REQUIRE_WGPU=1`.
fn wgpu_usable() -> bool {
    let o = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["devices", "--json"])
        .stderr(Stdio::null())
        .output()
        .expect("running gpubridge devices");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let wgpu = v
        .as_array()
        .and_then(|a| a.iter().find(|b| b["backend"] == "wgpu"))
        .cloned()
        .unwrap_or_default();
    if wgpu["usable"] == true {
        return true;
    }
    assert!(
        std::env::var("GPUBRIDGE_REQUIRE_WGPU").as_deref() != Ok("1"),
        "wgpu is required here (GPUBRIDGE_REQUIRE_WGPU=1) but not usable: {}",
        wgpu["reason"]
    );
    eprintln!("skipped: wgpu not usable: {}", wgpu["reason"]);
    false
}

/// Requests requiring wgpu (and any GPU) are not taken by a `--backend cpu` worker: they wait
/// (the client's timeout reports it, by variant) and are answered, on wgpu, as soon as a
/// `--backend wgpu` worker starts; the CPU worker keeps answering what it serves meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_worker_with_its_capability() {
    let Some(nats) = nats_server() else { return };
    if !wgpu_usable() {
        return;
    }
    let _cpu = worker_with(&nats.url, "cpu-only", 0, &["--backend", "cpu"]);
    let client = client(&nats.url).await;
    let workers = announced(&client, &["cpu-only"]).await;
    assert_eq!(
        workers[0].capabilities,
        [Capability::Any, Capability::Cpu],
        "{workers:?}"
    );

    // Requiring wgpu: nobody serves it yet.
    let batch = sum_batch(1, 16);
    let id = client.new_request_id();
    let short = ClusterClient::connect(&nats.url, ClusterSettings::default())
        .await
        .expect("second client")
        .with_timeout(Duration::from_secs(2));
    match short
        .request::<Sum>(&batch)
        .requires(Capability::Wgpu)
        .id(id.as_str())
        .send()
        .await
    {
        Err(ClusterError::Timeout {
            kernel, capability, ..
        }) => {
            assert_eq!(kernel, "kernels/sum");
            assert_eq!(capability, Capability::Wgpu);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // Requiring any GPU, awaited while the CPU worker answers CPU and `any` requests.
    let gpu_batch = sum_batch(2, 16);
    let gpu = client
        .request::<Sum>(&gpu_batch)
        .requires(Capability::Gpu)
        .send();
    tokio::pin!(gpu);
    let cpu_batch = sum_batch(3, 16);
    tokio::select! {
        r = &mut gpu => panic!("answered with no GPU worker running: {r:?}"),
        r = async {
            let cpu = client.request::<Sum>(&cpu_batch).requires(Capability::Cpu).send().await;
            let any = client.submit::<Sum>(&cpu_batch).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            (cpu, any)
        } => {
            let (cpu, any) = r;
            assert_sums(3, &cpu.expect("cpu"), &cpu_batch);
            assert_sums(3, &any.expect("any"), &cpu_batch);
        }
    }
    let stats = settled_but(&client, 2).await;
    assert_eq!((stats.queued, stats.pending), (2, 2), "{stats:?}");
    let queues = client.queues().await.expect("queues");
    assert!(
        queues
            .iter()
            .all(|q| matches!(q.capability, Capability::Any | Capability::Cpu)),
        "the CPU worker binds no GPU consumer: {queues:?}"
    );

    // A wgpu worker starts: both are answered, on wgpu.
    let _wgpu = worker_with(&nats.url, "wgpu", 0, &["--backend", "wgpu"]);
    let got = client
        .request::<Sum>(&batch)
        .requires(Capability::Wgpu)
        .id(id.as_str())
        .send()
        .await
        .expect("the waiting wgpu request");
    assert_sums(1, &got, &batch);
    assert_sums(2, &gpu.await.expect("the waiting gpu request"), &gpu_batch);
    let workers = announced(&client, &["cpu-only", "wgpu"]).await;
    let w = workers.iter().find(|w| w.name == "wgpu").expect("wgpu");
    assert_eq!(w.backend, "wgpu", "{w:?}");
    assert_eq!(
        w.capabilities,
        [Capability::Any, Capability::Gpu, Capability::Wgpu],
        "{w:?}"
    );
    let stats = settled(&client).await;
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert_eq!(stats.answers_written, 4, "{stats:?}");
    let queues = client.queues().await.expect("queues");
    for cap in [Capability::Wgpu, Capability::Gpu] {
        let q = queues
            .iter()
            .find(|q| q.capability == cap && q.kernel == "kernels/sum")
            .unwrap_or_else(|| panic!("no {cap} consumer of kernels/sum: {queues:?}"));
        assert_eq!(q.deliveries, 1, "{q:?}");
    }
}

/// A busy kernel does not starve another: with a backlog of sums holding every slot of the one
/// worker, a vector add sent afterwards is answered long before the backlog is (the worker
/// takes its consumers in turn).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_kernel_does_not_starve_another() {
    let Some(nats) = nats_server() else { return };
    // Each batch holds its slot 25 ms: 200 sums on 4 slots take over a second.
    let _w = worker(&nats.url, "busy", 25);
    let client = client(&nats.url).await;
    announced(&client, &["busy"]).await;
    const SUMS: usize = 200;
    let batches: Vec<Vec<Vec<f32>>> = (0..SUMS).map(|r| sum_batch(r, 2)).collect();
    let answered = Arc::new(AtomicUsize::new(0));
    let sums = join_all(batches.iter().map(|b| {
        let answered = Arc::clone(&answered);
        let client = &client;
        async move {
            let r = client.submit::<Sum>(b).await;
            answered.fetch_add(1, Ordering::Relaxed);
            r
        }
    }));
    let add = async {
        // Once the backlog is being served.
        while answered.load(Ordering::Relaxed) < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pairs = add_batch(7, 2);
        let got = client
            .submit::<VectorAdd>(&pairs)
            .await
            .expect("vector add");
        assert_adds(7, &got, &pairs);
        answered.load(Ordering::Relaxed)
    };
    let (sums, sums_before_add) = futures::join!(sums, add);
    for (r, (answer, batch)) in sums.into_iter().zip(&batches).enumerate() {
        assert_sums(r, &answer.unwrap_or_else(|e| panic!("sum {r}: {e}")), batch);
    }
    eprintln!("the vector add was answered after {sums_before_add} of {SUMS} sums");
    assert!(
        sums_before_add < SUMS / 2,
        "the vector add waited for {sums_before_add} of {SUMS} sums"
    );
}

/// A consumer filtering the whole prefix (the single consumer of earlier releases) would take
/// requests from under the workers' consumers: a worker refuses to start beside it, saying which
/// to delete, and starts once it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_an_overlapping_consumer() {
    use async_nats::jetstream::consumer::pull;
    let Some(nats) = nats_server() else { return };
    let client = client(&nats.url).await; // creates the work stream
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.expect("connect"));
    let stream = js.get_stream("GPUBRIDGE_WORK").await.expect("work stream");
    stream
        .create_consumer(pull::Config {
            durable_name: Some("gpubridge-workers".to_owned()),
            filter_subject: "gpubridge.work.>".to_owned(),
            ..Default::default()
        })
        .await
        .expect("the old consumer");
    let out = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["worker", "--nats", &nats.url, "--name", "refused"])
        .env("GPUBRIDGE__FALLBACK__CHAIN", "cpu")
        .output()
        .expect("running gpubridge worker");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            r#"consumer "gpubridge-workers" on the work stream filters "gpubridge.work.>""#
        ),
        "{stderr}"
    );
    assert!(client.queues().await.expect("queues").is_empty());

    stream
        .delete_consumer("gpubridge-workers")
        .await
        .expect("deleting the old consumer");
    let _w = worker(&nats.url, "after", 0);
    let got = client.submit::<Sum>(&[vec![2.0, 3.0]]).await.expect("sum");
    assert_eq!(got, vec![5.0]);
}
