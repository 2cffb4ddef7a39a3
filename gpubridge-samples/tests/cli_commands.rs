//! The `gpubridge` binary as a user runs it.

use std::process::{Command, Output};

fn gpubridge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpubridge"));
    cmd.args(args).env_remove("GPUBRIDGE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("gpubridge runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn devices_lists_every_backend_with_a_reason_or_its_devices() {
    let o = gpubridge(&["devices"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("cpu: in use"), "{out}");
    assert!(out.contains("cpu:0"), "{out}");
    for b in ["cuda:", "wgpu:"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(b))
            .unwrap_or_else(|| panic!("no {b} line in {out}"));
        // Either in use with devices, or not in use with a reason after the colon.
        assert!(line.contains("in use"), "{line}");
        if line.contains("not in use") {
            assert!(
                line.split("not in use:")
                    .nth(1)
                    .is_some_and(|r| r.trim().len() > 5),
                "{line}"
            );
        }
    }
    let o = gpubridge(&["devices", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let cpu = v
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "cpu")
        .unwrap();
    assert_eq!(cpu["usable"], true);
    assert_eq!(cpu["opened"], true);
    // wgpu is opened where it is usable, except beside a usable CUDA (`wgpu.alongside_cuda`).
    let backend = |name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == name)
            .cloned()
            .unwrap()
    };
    let (cuda, wgpu) = (backend("cuda"), backend("wgpu"));
    let beside_cuda = cuda["usable"] == true;
    assert_eq!(
        wgpu["opened"],
        wgpu["usable"] == true && !beside_cuda,
        "{wgpu}"
    );
}

#[test]
fn run_vector_on_cpu_is_verified() {
    let o = gpubridge(
        &[
            "run",
            "vector",
            "--backend",
            "cpu",
            "--pairs",
            "7",
            "--len",
            "10001",
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = summary_rows(&o);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["backend"], "cpu");
        assert!(r["seconds"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn run_matrix_table_shows_backend_time_and_throughput() {
    let o = gpubridge(&["run", "matrix", "--matrix-sizes", "1,33,100"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("matrix") && l.contains("GFLOP/s") && l.contains("yes"))
            .count(),
        3,
        "{out}"
    );
}

#[test]
fn unavailable_backend_fails_with_its_reason() {
    let o = gpubridge(
        &[
            "run",
            "vector",
            "--backend",
            "wgpu",
            "--pairs",
            "1",
            "--len",
            "10",
        ],
        &[("GPUBRIDGE__WGPU__ENABLED", "false")],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("wgpu") && err.contains("disabled by configuration (wgpu.enabled = false)"),
        "{err}"
    );
    let o = gpubridge(&["devices"], &[("GPUBRIDGE__WGPU__ENABLED", "false")]);
    assert!(
        stdout(&o).contains("wgpu: not in use: disabled by configuration"),
        "{}",
        stdout(&o)
    );
}

/// Whether `gpubridge devices` finds a wgpu adapter; fails the test when none is found and
/// `GPUBRIDGE_REQUIRE_WGPU=1`.
fn wgpu_usable() -> bool {
    let o = gpubridge(&["devices", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let wgpu = v
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "wgpu")
        .cloned()
        .expect("wgpu is listed");
    if wgpu["usable"] == true {
        eprintln!("wgpu adapter: {}", wgpu["devices"][0]);
        return true;
    }
    assert!(
        !gpubridge::conformance::wgpu_required(),
        "wgpu is required here but not usable: {}",
        wgpu["reason"]
    );
    eprintln!("skipped: wgpu not usable: {}", wgpu["reason"]);
    false
}

#[test]
fn run_all_on_wgpu_is_verified_and_devices_names_the_adapter() {
    if !wgpu_usable() {
        return;
    }
    let o = gpubridge(&["devices"], &[]);
    let out = stdout(&o);
    let line = out
        .lines()
        .skip_while(|l| !l.starts_with("wgpu: in use"))
        .nth(1)
        .unwrap_or_default();
    assert!(line.trim_start().starts_with("wgpu:0"), "{out}");
    if line.contains("llvmpipe") {
        assert!(line.contains("[software adapter]"), "{line}");
    }
    let o = gpubridge(
        &[
            "run",
            "all",
            "--backend",
            "wgpu",
            "--pairs",
            "3",
            "--len",
            "100003",
            "--sum-vectors",
            "50",
            "--sum-len",
            "1001",
            "--matrix-sizes",
            "1,31,64",
            "--graph-nodes",
            "20000",
            "--graph-edges",
            "40000",
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = summary_rows(&o);
    assert_eq!(rows.len(), 6, "{rows:?}");
    for r in &rows {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["backend"], "wgpu", "{r}");
        assert_eq!(r["device"], "wgpu:0", "{r}");
    }
}

/// The rows of `run --json`'s one summary object, checked to agree with its `verified`.
fn summary_rows(o: &Output) -> Vec<serde_json::Value> {
    let out = stdout(o);
    assert_eq!(out.trim().lines().count(), 1, "one JSON object: {out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("valid JSON");
    let rows = v["rows"].as_array().expect("rows").clone();
    let all = rows.iter().all(|r| r["verified"] == true);
    assert_eq!(v["verified"], all, "{v}");
    rows
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "gpubridge-cli-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn gen_graph_then_run_graph_reports_and_verifies_the_planted_patterns() {
    let dir = TempDir::new("graph");
    let o = gpubridge(
        &[
            "gen-graph",
            "--nodes",
            "6000",
            "--edges",
            "9000",
            "--out",
            dir.path(),
            "--seed",
            "11",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["nodes"], 6000);
    assert_eq!(manifest["seed"], 11);
    let pairs = manifest["planted"]["pair"].as_u64().unwrap();
    assert!(pairs > 10, "{manifest}");

    let o = gpubridge(
        &["run", "graph", "--backend", "cpu", "--data", dir.path()],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "=== JE Decomposition Sample ===",
        "Loaded 6000 nodes and 9000 edges",
        "Total JE components found: ",
        "Average component size: ",
        "Largest component: ",
        "Detected patterns:",
        "planted components as in manifest.json",
    ] {
        assert!(out.contains(want), "no {want:?} in {out}");
    }
    // At least the planted pairs, and perhaps a few background ones.
    let reported: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("- pair: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a pair count");
    assert!(reported >= pairs, "{reported} < {pairs}");

    let o = gpubridge(
        &[
            "run",
            "graph",
            "--backend",
            "cpu",
            "--data",
            dir.path(),
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = summary_rows(&o);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["sample"], "graph");
    assert_eq!(rows[0]["verified"], true);
    assert_eq!(rows[0]["seed"], 11);
}

#[test]
fn run_graph_on_bad_data_fails_with_a_clear_error() {
    let dir = TempDir::new("bad-graph");
    let o = gpubridge(
        &["run", "graph", "--backend", "cpu", "--data", dir.path()],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nodes.parquet: no such file"),
        "{}",
        stderr(&o)
    );
    std::fs::write(dir.0.join("nodes.parquet"), b"PAR1 but not really").unwrap();
    let o = gpubridge(
        &["run", "graph", "--backend", "cpu", "--data", dir.path()],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a readable parquet file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_configuration_names_its_key() {
    let o = gpubridge(
        &["devices"],
        &[("GPUBRIDGE__TELEMETRY__SAMPLING_RATE", "7")],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("telemetry.sampling_rate"),
        "{}",
        stderr(&o)
    );
    let dir = std::env::temp_dir().join(format!("gpubridge-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[batching]\nmax_micro_batch = 0\n").unwrap();
    let o = gpubridge(&["--config", file.to_str().unwrap(), "config"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("batching.max_micro_batch"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&file, "[general]\nprefer_gpu = false\n").unwrap();
    let o = gpubridge(&["--config", file.to_str().unwrap(), "config"], &[]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("prefer_gpu = false"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Plain HTTP/1.1 GET over TCP: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to gpubridge serve");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, body.to_owned())
}

#[cfg(unix)]
#[test]
fn serve_with_demo_load_moves_metrics_and_stops_cleanly_on_sigint() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["serve", "--listen", "127.0.0.1:0", "--demo-load"])
        .env_remove("GPUBRIDGE_CONFIG")
        .env("GPUBRIDGE__FALLBACK__CHAIN", "cpu")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gpubridge serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    // Wait (bounded) until every built-in kernel ran and an invalid request was refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    let kernels = [
        "kernels/vector/add",
        "kernels/sum",
        "kernels/blas/saxpy",
        "kernels/matrix/multiply",
    ];
    loop {
        let (status, text) = http_get(&addr, "/metrics");
        assert_eq!(status, 200);
        let ran = kernels.iter().all(|k| {
            text.contains(&format!(
                "gpubridge_request_duration_seconds_count{{kernel=\"{k}\"}}"
            ))
        });
        if ran && text.contains("gpubridge_request_failures_total{reason=\"invalid_input\"}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo load did not move:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(&addr, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(http_get(&addr, "/healthz").0, 200);

    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gpubridge serve did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(err.contains("stopped; demo load:"), "{err}");
    assert!(err.contains(", 0 failed"), "{err}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening"
    );
}

#[test]
fn load_sweeps_the_cpu_and_writes_its_report() {
    let dir = std::env::temp_dir().join(format!("gpubridge-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("load.json");
    let o = gpubridge(
        &[
            "load",
            "--backends",
            "cpu",
            "--tasks",
            "50",
            "--rates",
            "2k,4k",
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    // Wrong answers or hung requests would fail the command.
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let points = v["sweeps"][0]["points"].as_array().unwrap();
    assert_eq!(v["sweeps"][0]["backend"], "cpu");
    assert_eq!(points.len(), 2, "{v}");
    for p in points {
        assert_eq!(p["wrong_answers"], 0);
        assert_eq!(p["hung"], 0);
        assert!(p["completed"].as_u64().unwrap() > 0, "{p}");
        assert!(p["p50_us"].as_f64().unwrap() > 0.0, "{p}");
    }
    assert_eq!(v["rows"][0]["id"], "P3");
    // A bad rate is a clear error.
    let o = gpubridge(&["load", "--rates", "fast"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad rate"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_writes_the_p9_row_measured_or_with_the_reason_it_is_not() {
    let dir = TempDir::new("bench");
    let out = dir.0.join("rows.json");
    let o = gpubridge(
        &[
            "bench",
            "--only",
            "P9",
            "--quick",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("a JSON array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["id"], "P9");
    let note = r["note"].as_str().unwrap();
    if r["value"].is_null() {
        assert!(note.starts_with("not measured: "), "{r}");
    } else {
        assert!(note.contains("labels equal the baseline's"), "{r}");
        assert!(r["baseline_value"].as_f64().unwrap() > 0.0, "{r}");
    }
}
