//! `cargo xtask load`: builds the release CLI, runs `gpubridge load` (the open-loop rate sweep on
//! the dynamic batcher, TARGETS.md P3) and draws latency against throughput.
//!
//! Writes `target/load-report/load.json` (the sweep and the P3 row) and `load.png`.
//! `cargo xtask load --from FILE.json [--png OUT.png]` draws a sweep written elsewhere (the GPU
//! machine's) without running anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::plot::{render_png, Chart, Series, Style};
use crate::project_root;

/// Runs the sweep (arguments pass through to `gpubridge load`) or draws a saved one.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let root = project_root();
    let dir = root.join("target/load-report");
    std::fs::create_dir_all(&dir)?;
    let mut from: Option<PathBuf> = None;
    let mut png: Option<PathBuf> = None;
    let mut pass = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--from" => from = it.next().map(PathBuf::from),
            "--png" => png = it.next().map(PathBuf::from),
            _ => pass.push(a.clone()),
        }
    }
    let json = match from {
        Some(f) => f,
        None => {
            let cli = crate::build_release_cli()?;
            let out = dir.join("load.json");
            let status = Command::new(cli)
                .arg("load")
                .args(&pass)
                .arg("--out")
                .arg(&out)
                .current_dir(&root)
                .status()
                .context("running gpubridge load")?;
            if !status.success() {
                bail!("gpubridge load failed");
            }
            out
        }
    };
    let png = png.unwrap_or_else(|| dir.join("load.png"));
    plot(&json, &png)?;
    eprintln!("latency against throughput: {}", png.display());
    Ok(())
}

/// Draws P50 and P99 latency against completed requests per second, one pair of series per
/// backend, with the P3 target lines.
pub fn plot(json: &Path, png: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let report: Value = serde_json::from_str(&text).context("parsing the load report")?;
    let mut series = Vec::new();
    for sweep in report["sweeps"].as_array().into_iter().flatten() {
        let backend = sweep["backend"].as_str().unwrap_or("?");
        let device = sweep["device"].as_str().unwrap_or("");
        for (key, name) in [("p50_us", "P50"), ("p99_us", "P99")] {
            let points: Vec<(f64, f64)> = sweep["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["achieved_per_s"].as_f64()?, p[key].as_f64()?)))
                .collect();
            series.push(Series {
                label: format!("{backend} {name} ({device})"),
                points,
                style: Style::LineAndPoints,
            });
        }
    }
    anyhow::ensure!(!series.is_empty(), "{} holds no sweep", json.display());
    let chart = Chart {
        title: format!(
            "P3: single requests (sum of {} f32) from {} tasks, open loop",
            report["len"].as_u64().unwrap_or(0),
            report["tasks"].as_u64().unwrap_or(0)
        ),
        x_label: "completed requests per second".to_owned(),
        y_label: "latency (us)".to_owned(),
        x_log: false,
        y_log: true,
        series,
        h_lines: vec![(1000.0, "P3: P50 <= 1 ms".to_owned())],
        v_lines: vec![(1e6, "1M req/s".to_owned())],
    };
    render_png(&chart, png, 1200, 800)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_saved_sweep_is_drawn() {
        let dir = std::env::temp_dir().join(format!("xtask-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("load.json");
        let png = dir.join("load.png");
        let report = serde_json::json!({
            "tasks": 1000, "len": 100,
            "sweeps": [{"backend": "cuda", "device": "test", "points": [
                {"achieved_per_s": 250000.0, "p50_us": 400.0, "p99_us": 900.0},
                {"achieved_per_s": 1000000.0, "p50_us": 1300.0, "p99_us": 2500.0}
            ]}]
        });
        std::fs::write(&json, report.to_string()).unwrap();
        super::plot(&json, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::write(&json, "{}").unwrap();
        assert!(super::plot(&json, &png).is_err(), "no sweep to draw");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
