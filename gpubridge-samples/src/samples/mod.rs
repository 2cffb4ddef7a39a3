//! The samples `gpubridge run` executes, and how their results are printed.

pub mod graph;
pub mod matrix;
pub mod vector;

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Problem sizes, with the original's sample sizes as defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct Sizes {
    /// Vector sample: number of pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Vector sample: elements per vector.
    #[arg(long, default_value_t = 1_000_000)]
    pub len: usize,
    /// Sum sample: number of vectors.
    #[arg(long, default_value_t = 1000)]
    pub sum_vectors: usize,
    /// Sum sample: elements per vector.
    #[arg(long, default_value_t = 100)]
    pub sum_len: usize,
    /// Matrix sample: square sizes, comma separated (the range is 512 to 8192).
    #[arg(long, value_delimiter = ',', default_values_t = vec![512usize, 1024, 2048, 4096, 8192])]
    pub matrix_sizes: Vec<usize>,
    /// Graph sample: a directory holding `nodes.parquet` and `edges.parquet` (as written by
    /// `gpubridge gen-graph`); without it, a graph of `--graph-nodes` and `--graph-edges` is
    /// generated into a temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Graph sample: nodes of the generated graph when no `--data` is given.
    #[arg(long, default_value_t = 1_000_000)]
    pub graph_nodes: usize,
    /// Graph sample: edges of the generated graph when no `--data` is given.
    #[arg(long, default_value_t = 2_000_000)]
    pub graph_edges: usize,
    /// Seed of the random inputs (random when not given).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Untimed runs of each case before the timed one (0 reports the cold first call, which pays
    /// for compiling or loading kernels, pinned staging and library start-up).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
}

impl Sizes {
    /// The seed to use.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(rand::random)
    }
}

/// One line of a sample's report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Sample name.
    pub sample: &'static str,
    /// The case within it.
    pub case: String,
    /// Backend that ran it.
    pub backend: String,
    /// Device that ran it.
    pub device: String,
    /// Wall time of the bridge call, in seconds.
    pub seconds: f64,
    /// Throughput value.
    pub throughput: f64,
    /// Throughput unit.
    pub unit: &'static str,
    /// Second throughput figure (for example items per second).
    pub rate: f64,
    /// Its unit.
    pub rate_unit: &'static str,
    /// Whether every checked output matched the reference within tolerance.
    pub verified: bool,
    /// What was checked, or what differed.
    pub check: String,
    /// Micro-batches the bridge used.
    pub micro_batches: usize,
    /// The input seed.
    pub seed: u64,
}

/// Prints rows as a table, or as one JSON object: `{"verified": <all rows verified>, "rows": [..]}`.
pub fn print(rows: &[Row], json: bool) {
    if json {
        let summary = serde_json::json!({
            "verified": rows.iter().all(|r| r.verified),
            "rows": rows,
        });
        println!("{summary}");
        return;
    }
    println!(
        "{:<8} {:<22} {:<7} {:<7} {:>10} {:>14} {:>16}  {:<8} check",
        "sample", "case", "backend", "device", "time", "throughput", "rate", "verified"
    );
    for r in rows {
        println!(
            "{:<8} {:<22} {:<7} {:<7} {:>10} {:>14} {:>16}  {:<8} {}",
            r.sample,
            r.case,
            r.backend,
            r.device,
            fmt_time(r.seconds),
            format!("{:.2} {}", r.throughput, r.unit),
            format!("{:.1} {}", r.rate, r.rate_unit),
            if r.verified { "yes" } else { "NO" },
            r.check
        );
    }
}

fn fmt_time(s: f64) -> String {
    let d = Duration::from_secs_f64(s);
    if d.as_secs() >= 1 {
        format!("{:.2} s", s)
    } else if d.as_millis() >= 1 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal.
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}
