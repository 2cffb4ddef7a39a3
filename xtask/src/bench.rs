//! `cargo xtask bench`: every TARGETS.md P row and the original's five benchmarks, each against a
//! baseline measured in the same run, in `target/bench-report/`:
//!
//! - `report.json` (TARGETS.md's format, one row per P row, W1 and W2) and `report.md`: the
//!   release CLI's `gpubridge bench`, plus P3 from `gpubridge load` (a rate sweep; in `--quick`
//!   mode a short one) whose sweep is drawn in `load.png`;
//! - `seed.json` and a table in `report.md`: the criterion benches of `gpubridge/benches/seed.rs`
//!   (small batch on the CPU fallback and on the GPU, large batch on the GPU, the persistent
//!   stream, pool allocation, and the sum throughput against batch size per backend);
//! - `seed-latency.png` (each seed bench's distribution of per-iteration times over criterion's
//!   samples) and `throughput.png` (sum throughput against batch size, per backend).
//!
//! `--quick`: small sizes and short runs, no pass/fail on timings (CI, no GPU), on builds that
//! cost CI little: the CLI of the `ci` profile ([`crate::build_ci_cli`]: the release profile at
//! `opt-level = 1`) and the criterion benches as CI's test step builds them (unoptimised,
//! [`crate::test_build`]). It shows that every part of the harness works; its timings mean
//! nothing. `--only P2,P4`
//! picks rows (`SEED` names the criterion benches, `P3` the sweep). `--from DIR` redraws a
//! report from a directory holding `report.json`, `load.json` and `criterion/` (the GPU
//! machine's, where there is no cargo: run `gpubridge bench`, `gpubridge load` and the packed
//! `bench-seed --bench` with `CRITERION_HOME=DIR/criterion` there).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::plot::{render_png, Chart, Series, Style};
use crate::project_root;

/// Runs the benches (or redraws a saved report).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let root = project_root();
    let mut quick = false;
    let mut only: Vec<String> = Vec::new();
    let mut from: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = it.next().context("--only needs a list, e.g. P2,P4")?;
                only.extend(list.split(',').map(|s| s.trim().to_ascii_uppercase()));
            }
            "--from" => {
                from = Some(PathBuf::from(
                    it.next().context("--from needs a directory")?,
                ))
            }
            other => bail!("unknown argument `{other}` (--quick, --only P2,P4, --from DIR)"),
        }
    }
    let wants = |id: &str| only.is_empty() || only.iter().any(|o| o == id);
    let dir = match from {
        Some(d) => d,
        None => {
            let dir = root.join("target/bench-report");
            std::fs::create_dir_all(&dir)?;
            // `--quick` checks the harness end to end, not speed: the CLI of the `ci` profile,
            // and the criterion benches as CI's test step built them (no release build, which on
            // CI's two cores took as long as all the rest).
            let (cli, seed_bench) = if quick {
                (
                    crate::build_ci_cli()?,
                    Some(crate::test_build()?.seed_bench),
                )
            } else {
                (crate::build_release_cli()?, None)
            };
            let rows_only: Vec<&String> =
                only.iter().filter(|o| *o != "SEED" && *o != "P3").collect();
            if only.is_empty() || !rows_only.is_empty() {
                let mut cmd = Command::new(&cli);
                cmd.arg("bench").arg("--out").arg(dir.join("report.json"));
                if quick {
                    cmd.arg("--quick");
                }
                if !rows_only.is_empty() {
                    cmd.arg("--only").arg(
                        rows_only
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
                let status = cmd
                    .current_dir(&root)
                    .status()
                    .context("running gpubridge bench")?;
                if !status.success() {
                    bail!("gpubridge bench failed");
                }
            } else {
                std::fs::write(dir.join("report.json"), "[]")?;
            }
            if wants("P3") {
                p3(&cli, &root, &dir, quick)?;
            }
            if wants("SEED") {
                criterion(&root, &dir, seed_bench.as_deref())?;
            }
            dir
        }
    };
    report(&dir)
}

/// P3: the open-loop sweep of `gpubridge load` (a short one with `--quick`).
fn p3(cli: &Path, root: &Path, dir: &Path, quick: bool) -> anyhow::Result<()> {
    let mut cmd = Command::new(cli);
    cmd.arg("load").arg("--out").arg(dir.join("load.json"));
    if quick {
        cmd.args([
            "--rates",
            "5k,20k",
            "--tasks",
            "100",
            "--seconds",
            "0.5",
            "--warmup",
            "0.2",
        ]);
    }
    let status = cmd
        .current_dir(root)
        .status()
        .context("running gpubridge load")?;
    if !status.success() {
        bail!("gpubridge load failed");
    }
    Ok(())
}

/// `cargo bench` arguments that pick the criterion benches of `gpubridge/benches/seed.rs` (the
/// device pack builds the same).
pub const SEED_BENCH: [&str; 6] = [
    "-p",
    "gpubridge",
    "--features",
    "cuda,wgpu",
    "--bench",
    "seed",
];

/// The criterion benches of `gpubridge/benches/seed.rs`, results under `DIR/criterion`: built
/// and run by `cargo bench`, or with `quick`, the test build's executable run briefly.
fn criterion(root: &Path, dir: &Path, quick: Option<&Path>) -> anyhow::Result<()> {
    let crit = dir.join("criterion");
    let _ = std::fs::remove_dir_all(&crit);
    let (program, args): (PathBuf, Vec<&str>) = match quick {
        Some(exe) => (exe.to_owned(), vec!["--bench", "--noplot", "--quick"]),
        None => (
            PathBuf::from(crate::cargo_program()),
            [&["bench"][..], &SEED_BENCH, &["--", "--noplot"]].concat(),
        ),
    };
    eprintln!("$ {} {}", program.display(), args.join(" "));
    let status = Command::new(&program)
        .args(&args)
        .env("CRITERION_HOME", &crit)
        .current_dir(root)
        .status()
        .context("running the criterion benches")?;
    if !status.success() {
        bail!("the criterion benches failed");
    }
    Ok(())
}

/// One criterion benchmark's results.
struct Crit {
    id: String,
    group: String,
    function: String,
    value: Option<String>,
    mean_ns: f64,
    low_ns: f64,
    high_ns: f64,
    /// Per-iteration times of each sample, in nanoseconds.
    per_iter_ns: Vec<f64>,
    throughput: Value,
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Every `*/new/benchmark.json` under `crit`, with its estimates and samples.
fn criterion_results(crit: &Path) -> Vec<Crit> {
    let mut out = Vec::new();
    let mut stack = vec![crit.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some(c) = one_result(&p) {
                        out.push(c);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

fn one_result(new: &Path) -> Option<Crit> {
    let bench = read_json(&new.join("benchmark.json")).ok()?;
    let est = read_json(&new.join("estimates.json")).ok()?;
    let sample = read_json(&new.join("sample.json")).ok()?;
    let iters = sample["iters"].as_array()?;
    let times = sample["times"].as_array()?;
    let per_iter_ns = iters
        .iter()
        .zip(times)
        .filter_map(|(i, t)| Some(t.as_f64()? / i.as_f64()?.max(1.0)))
        .collect();
    Some(Crit {
        id: bench["full_id"].as_str()?.to_owned(),
        group: bench["group_id"].as_str().unwrap_or("").to_owned(),
        function: bench["function_id"].as_str().unwrap_or("").to_owned(),
        value: bench["value_str"].as_str().map(str::to_owned),
        mean_ns: est["mean"]["point_estimate"].as_f64()?,
        low_ns: est["mean"]["confidence_interval"]["lower_bound"].as_f64()?,
        high_ns: est["mean"]["confidence_interval"]["upper_bound"].as_f64()?,
        per_iter_ns,
        throughput: bench["throughput"].clone(),
    })
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Items (or bytes) per second of a result with a throughput.
fn per_second(c: &Crit) -> Option<(f64, &'static str)> {
    if let Some(n) = c.throughput["Elements"].as_f64() {
        return Some((n * 1e9 / c.mean_ns, "items/s"));
    }
    if let Some(n) = c.throughput["Bytes"].as_f64() {
        return Some((n / c.mean_ns, "GB/s"));
    }
    None
}

/// Folds the P rows, the P3 sweep and the criterion results into `report.json`, `report.md`,
/// `seed.json` and the plots.
fn report(dir: &Path) -> anyhow::Result<()> {
    let mut rows: Vec<Value> = match read_json(&dir.join("report.json")) {
        Ok(Value::Array(rows)) => rows,
        _ => Vec::new(),
    };
    let load = dir.join("load.json");
    if let Ok(sweep) = read_json(&load) {
        for r in sweep["rows"].as_array().into_iter().flatten() {
            if !rows.iter().any(|x| x["id"] == r["id"] && x["id"] == "P3") {
                rows.push(r.clone());
            }
        }
        crate::load::plot(&load, &dir.join("load.png"))?;
    }
    rows.sort_by_key(|r| {
        let id = r["id"].as_str().unwrap_or("");
        let (letter, num) = id.split_at(id.len().min(1));
        (letter.to_owned(), num.parse::<u32>().unwrap_or(u32::MAX))
    });
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;

    let mut md = String::from("| id | metric | value | baseline | ratio | target | pass | note |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let s = |k: &str| match &r[k] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            Value::Number(n) => n
                .as_f64()
                .map_or_else(|| n.to_string(), |f| format!("{f:.4}")),
            v => v.to_string(),
        };
        md.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} | {} | {} |\n",
            s("id"),
            s("metric"),
            s("value"),
            s("unit"),
            s("baseline"),
            s("ratio"),
            s("target"),
            s("pass"),
            s("note")
        ));
    }

    let crits = criterion_results(&dir.join("criterion"));
    if !crits.is_empty() {
        md.push_str(
            "\n| criterion bench | mean | 95% CI | throughput | samples |\n|---|---|---|---|---|\n",
        );
        for c in &crits {
            let tp = per_second(c).map_or_else(String::new, |(v, unit)| {
                if unit == "GB/s" {
                    format!("{v:.2} {unit}")
                } else {
                    format!("{v:.0} {unit}")
                }
            });
            md.push_str(&format!(
                "| {} | {} | {} .. {} | {} | {} |\n",
                c.id,
                fmt_ns(c.mean_ns),
                fmt_ns(c.low_ns),
                fmt_ns(c.high_ns),
                tp,
                c.per_iter_ns.len()
            ));
        }
        let seed: Vec<Value> = crits
            .iter()
            .map(|c| {
                json!({
                    "id": c.id, "mean_ns": c.mean_ns, "ci95_low_ns": c.low_ns,
                    "ci95_high_ns": c.high_ns, "per_second": per_second(c).map(|p| p.0),
                    "per_second_unit": per_second(c).map(|p| p.1),
                    "samples_per_iteration_ns": c.per_iter_ns,
                })
            })
            .collect();
        std::fs::write(dir.join("seed.json"), serde_json::to_string_pretty(&seed)?)?;
        plots(&crits, dir)?;
    }
    std::fs::write(dir.join("report.md"), &md)?;
    print!("{md}");
    eprintln!("bench report: {}", dir.join("report.md").display());
    Ok(())
}

/// `seed-latency.png` and `throughput.png`.
fn plots(crits: &[Crit], dir: &Path) -> anyhow::Result<()> {
    // Each seed bench's per-iteration times, sorted: the fraction of samples at or under x.
    let series: Vec<Series> = crits
        .iter()
        .filter(|c| c.group == "seed" && !c.per_iter_ns.is_empty())
        .map(|c| {
            let mut v: Vec<f64> = c.per_iter_ns.iter().map(|ns| ns / 1e3).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            Series {
                label: c.function.clone(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (x, (i + 1) as f64 / n))
                    .collect(),
                style: Style::LineAndPoints,
            }
        })
        .collect();
    if !series.is_empty() {
        render_png(
            &Chart {
                title: "the original's benchmarks: per-iteration time over criterion's samples"
                    .to_owned(),
                x_label: "time per iteration (us)".to_owned(),
                y_label: "fraction of samples".to_owned(),
                x_log: true,
                series,
                ..Chart::default()
            },
            &dir.join("seed-latency.png"),
            1200,
            700,
        )?;
    }
    let mut curves: std::collections::BTreeMap<String, Vec<(f64, f64)>> = Default::default();
    for c in crits.iter().filter(|c| c.group == "sum_throughput") {
        let (Some(n), Some((per_s, _))) = (
            c.value.as_deref().and_then(|v| v.parse::<f64>().ok()),
            per_second(c),
        ) else {
            continue;
        };
        curves
            .entry(c.function.clone())
            .or_default()
            .push((n, per_s));
    }
    if !curves.is_empty() {
        let series = curves
            .into_iter()
            .map(|(backend, mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: format!("{backend}: sums of 100 f32 per second"),
                    points,
                    style: Style::LineAndPoints,
                }
            })
            .collect();
        render_png(
            &Chart {
                title: "sum kernel throughput against batch size".to_owned(),
                x_label: "items per batch".to_owned(),
                y_label: "items per second".to_owned(),
                x_log: true,
                y_log: true,
                series,
                ..Chart::default()
            },
            &dir.join("throughput.png"),
            1200,
            700,
        )?;
    }
    Ok(())
}
