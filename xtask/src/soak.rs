//! `cargo xtask soak`: builds the release CLI, runs `gpubridge soak` (the mixed workload that
//! checks TARGETS.md R1, and R2 with `--faults`) and draws its samples.
//!
//! Arguments pass through (`--duration 24h --backend cuda --faults launch:0.001`); the report
//! goes to `target/soak-report/` unless `--out` says otherwise: `soak.jsonl` (one sample per
//! interval, written as the run goes), `summary.json` (rewritten every interval, the verdict at
//! the end), and `memory.png` and `latency.png`. The exit status is the soak's verdict.
//! `cargo xtask soak --from DIR` draws a report written elsewhere (the GPU machine's).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::plot::{render_png, Chart, Series, Style};
use crate::project_root;

/// The settings under which the soak's readings at rest are exact: glibc's malloc for Rust as
/// for the C libraries (`malloc_trim` then gives back every free page, from one thread), two
/// arenas, no per-thread cache (chunks held in a thread's tcache count as in use in glibc's
/// statistics and keep their pages resident: with it the live heap at rest crept by about
/// 0.5 MiB in three minutes, without it it stays within a few hundred bytes), and fixed mmap and
/// trim thresholds of 128 KiB (glibc otherwise raises both as large blocks are freed, up to
/// 32 and 64 MiB, after which a free arena's top of several MiB stays resident, which
/// `malloc_trim` does not give back outside the main arena: the GPU soak's arenas at rest moved
/// by 2-5 MiB between readings). And for CUDA, the libraries' kernels loaded when a module is,
/// not at their first launch (`CUDA_MODULE_LOADING=EAGER`): loaded lazily, each cuBLAS kernel
/// that a new matrix shape picks first adds the driver's host memory for it, a one-off step of
/// a few KiB to a quarter of a MiB minutes into a run, which a short soak cannot tell from
/// growth.
pub const EXACT_ENV: [(&str, &str); 4] = [
    ("GPUBRIDGE_ALLOCATOR", "system"),
    ("MALLOC_ARENA_MAX", "2"),
    (
        "GLIBC_TUNABLES",
        "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072",
    ),
    ("CUDA_MODULE_LOADING", "EAGER"),
];

/// Runs the soak (or draws a saved one) and fails when the soak failed. The CLI runs with
/// [`EXACT_ENV`], except for the variables already set in the environment.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let env: Vec<(&str, &str)> = EXACT_ENV
        .into_iter()
        .filter(|(k, _)| std::env::var_os(k).is_none())
        .collect();
    run_with_env(args, &env, None)
}

/// [`run`], with `env` set for the CLI (`cargo xtask ci` picks its allocator so), and `cli` run
/// instead of a release build where given (CI runs the `ci` profile's, [`crate::build_ci_cli`]).
pub fn run_with_env(
    args: &[String],
    env: &[(&str, &str)],
    cli: Option<&Path>,
) -> anyhow::Result<()> {
    let root = project_root();
    let mut from: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut pass = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--from" => from = it.next().map(PathBuf::from),
            "--out" => out = it.next().map(PathBuf::from),
            _ => pass.push(a.clone()),
        }
    }
    let (dir, passed) = match from {
        Some(dir) => (dir, true),
        None => {
            let dir = out.unwrap_or_else(|| root.join("target/soak-report"));
            let cli = match cli {
                Some(cli) => cli.to_owned(),
                None => crate::build_release_cli()?,
            };
            let status = Command::new(cli)
                .envs(env.iter().copied())
                .arg("soak")
                .args(&pass)
                .arg("--out")
                .arg(&dir)
                .current_dir(&root)
                .status()
                .context("running gpubridge soak")?;
            (dir, status.success())
        }
    };
    plot(&dir)?;
    eprintln!(
        "soak report: {} (memory.png, latency.png)",
        dir.join("summary.json").display()
    );
    anyhow::ensure!(
        passed,
        "the soak failed: see {}",
        dir.join("summary.json").display()
    );
    Ok(())
}

fn samples(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let path = dir.join("soak.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("a line of soak.jsonl"))
        .collect()
}

/// Draws memory (RSS, live heap, device pool) and the singles' latency against time.
pub fn plot(dir: &Path) -> anyhow::Result<()> {
    let samples = samples(dir)?;
    let summary: Value = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let title = format!(
        "soak on {} ({}), {}",
        summary["backend"].as_str().unwrap_or("?"),
        summary["device"].as_str().unwrap_or("?"),
        summary["date"].as_str().unwrap_or("")
    );
    let mib = f64::from(1u32 << 20);
    let series_of = |label: &str, f: &dyn Fn(&Value) -> Option<f64>| Series {
        label: label.to_owned(),
        points: samples
            .iter()
            .filter_map(|s| Some((s["t_s"].as_f64()?, f(s)?)))
            .collect(),
        style: Style::Line,
    };
    // Under load, then at rest (`--quiesce`: the readings the verdict fits); a series with no
    // points (no device, or no readings at rest) is left out.
    let memory: Vec<Series> = [
        ("process RSS (MiB)", "/rss_bytes"),
        ("live heap (MiB)", "/heap_live_bytes"),
        ("device pool (MiB)", "/device/pool_bytes"),
        ("RSS at rest (MiB)", "/quiescent/rss_bytes"),
        ("live heap at rest (MiB)", "/quiescent/heap_live_bytes"),
        (
            "device memory used at rest (MiB)",
            "/quiescent/device/used_bytes",
        ),
    ]
    .into_iter()
    .map(|(label, bytes)| series_of(label, &|s| Some(s.pointer(bytes)?.as_f64()? / mib)))
    .filter(|series| !series.points.is_empty())
    .collect();
    let warmup = summary["warmup_s"].as_f64().unwrap_or(f64::NAN);
    render_png(
        &Chart {
            title: format!("{title}: memory"),
            x_label: "seconds".to_owned(),
            y_label: "MiB".to_owned(),
            series: memory,
            v_lines: vec![(warmup, "end of warm-up".to_owned())],
            ..Chart::default()
        },
        &dir.join("memory.png"),
        1200,
        700,
    )?;
    let latency = ["p50_us", "p99_us", "p999_us"]
        .iter()
        .map(|k| {
            series_of(&format!("singles {}", k.trim_end_matches("_us")), &|s| {
                s["singles"][*k].as_f64()
            })
        })
        .collect();
    render_png(
        &Chart {
            title: format!("{title}: single-request latency per interval"),
            x_label: "seconds".to_owned(),
            y_label: "latency (us)".to_owned(),
            y_log: true,
            series: latency,
            v_lines: vec![(warmup, "end of warm-up".to_owned())],
            ..Chart::default()
        },
        &dir.join("latency.png"),
        1200,
        700,
    )?;
    Ok(())
}
