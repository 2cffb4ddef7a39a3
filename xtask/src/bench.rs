//! `cargo xtask bench`: runs the criterion benchmarks and writes TARGETS.md's report rows.
//!
//! Today it has P10 (CPU vector add against memcpy). Rows are written to
//! `target/bench-report/report.json` (the TARGETS.md format) and `report.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::project_root;

/// Options of `cargo xtask bench`.
struct Options {
    quick: bool,
    card: String,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        quick: false,
        card: host_cpu(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--card" => o.card = it.next().context("--card needs a value")?.clone(),
            other => bail!("unknown option {other} (known: --quick, --card NAME)"),
        }
    }
    Ok(o)
}

fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .map(|m| {
            format!(
                "{m} ({} threads)",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            )
        })
        .unwrap_or_else(|| "unknown host".to_owned())
}

/// Runs the benches and writes the report.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    let root = project_root();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(&root).args([
        "bench",
        "-p",
        "gpubridge-wgpu-fallback",
        "--bench",
        "cpu_vector_add",
        "--",
    ]);
    if o.quick {
        // Small shape and short timing: checks the harness, not the figures.
        cmd.env("GPUBRIDGE_BENCH_PAIRS", "4")
            .env("GPUBRIDGE_BENCH_LEN", "100000");
        cmd.args(["--warm-up-time", "0.2", "--measurement-time", "0.5"]);
    }
    eprintln!("$ {cmd:?}");
    if !cmd.status().context("running cargo bench")?.success() {
        bail!("cargo bench failed");
    }
    let crit = root.join("target/criterion/p10_cpu_vector_add");
    let mean = |name: &str| -> anyhow::Result<f64> {
        let p = crit.join(name).join("new/estimates.json");
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        v["median"]["point_estimate"]
            .as_f64()
            .context("no median in criterion's estimates")
    };
    let (pairs, len) = if o.quick {
        (4.0, 100_000.0)
    } else {
        (100.0, 1_000_000.0)
    };
    let n = pairs * len;
    let memcpy_gbs = 8.0 * n / mean("memcpy")?;
    let bridge_gbs = 12.0 * n / mean("bridge")?;
    let prefaulted_gbs = 12.0 * n / mean("cpu_form_prefaulted")?;
    let date = Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let command = if o.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let ratio = bridge_gbs / memcpy_gbs;
    let rows = vec![
        json!({
            "id": "P10", "metric": format!("CPU fallback vector add bandwidth through the bridge ({pairs} x {len} pairs, fresh outputs)"),
            "value": bridge_gbs, "unit": "GB/s", "baseline": "parallel memcpy into mapped memory, all cores",
            "baseline_value": memcpy_gbs, "ratio": ratio, "target": ">= 0.70x memcpy bandwidth",
            "pass": if o.quick { Value::Null } else { json!(ratio >= 0.70) },
            "card": o.card, "date": date, "command": command,
        }),
        json!({
            "id": "P10b", "metric": "CPU vector add inner loop into already-mapped outputs",
            "value": prefaulted_gbs, "unit": "GB/s", "baseline": "parallel memcpy into mapped memory, all cores",
            "baseline_value": memcpy_gbs, "ratio": prefaulted_gbs / memcpy_gbs, "target": "diagnostic (no target)",
            "pass": Value::Null, "card": o.card, "date": date, "command": command,
        }),
    ];
    write_report(&root.join("target/bench-report"), &rows)?;
    Ok(())
}

fn write_report(dir: &Path, rows: &[Value]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(rows)?)?;
    let mut md = String::from("| id | metric | value | baseline | ratio | target | pass | card | date |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} {} | {:.2} ({}) | {:.2} | {} | {} | {} | {} |",
            r["id"].as_str().unwrap_or_default(),
            r["metric"].as_str().unwrap_or_default(),
            r["value"].as_f64().unwrap_or_default(),
            r["unit"].as_str().unwrap_or_default(),
            r["baseline_value"].as_f64().unwrap_or_default(),
            r["baseline"].as_str().unwrap_or_default(),
            r["ratio"].as_f64().unwrap_or_default(),
            r["target"].as_str().unwrap_or_default(),
            r["pass"],
            r["card"].as_str().unwrap_or_default(),
            r["date"].as_str().unwrap_or_default(),
        );
    }
    std::fs::write(dir.join("report.md"), &md)?;
    println!("{md}");
    eprintln!("wrote {}", dir.join("report.json").display());
    Ok(())
}
