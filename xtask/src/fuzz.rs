//! `cargo xtask fuzz`: builds the fuzz targets in `fuzz/` with libFuzzer's coverage
//! instrumentation on the stable toolchain (no cargo-fuzz to install), then runs each for a while
//! on its committed seed corpus.
//!
//! The flags are cargo-fuzz's for `--sanitizer none`: sanitizer coverage passes are stable `-C`
//! options, so a fresh CI machine needs nothing but stable Rust and a C++ compiler (for
//! libFuzzer itself, built by `libfuzzer-sys`). `cargo +nightly fuzz run <target>` works on the
//! same layout where cargo-fuzz is installed (and adds AddressSanitizer).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::project_root;

/// The targets, in `fuzz/Cargo.toml`'s order.
pub const TARGETS: [&str; 4] = [
    "config_toml",
    "batch_decode",
    "graph_parquet",
    "storage_load",
];

/// cargo-fuzz's instrumentation for libFuzzer (`--sanitizer none`), plus `--cfg fuzzing`.
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";

/// What one run found.
struct Outcome {
    target: &'static str,
    seconds: f64,
    runs: Option<u64>,
    corpus: usize,
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
        .join("fuzz")
}

/// Builds every target; returns the directory holding the executables.
fn build(triple: &str) -> anyhow::Result<PathBuf> {
    let root = project_root();
    let dir = target_dir();
    let cargo = crate::cargo_program();
    // `--target` keeps the instrumentation off build scripts and proc macros, which are not
    // linked with libFuzzer.
    let args = [
        "build",
        "--release",
        "--locked",
        "--bins",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--target",
        triple,
    ];
    eprintln!("$ RUSTFLAGS='{RUSTFLAGS}' cargo {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(cargo)
        .args(args)
        .arg("--target-dir")
        .arg(&dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .current_dir(&root)
        .status()
        .context("running cargo build for the fuzz targets")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    eprintln!(
        "fuzz targets built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(dir.join(triple).join("release"))
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter(|e| e.is_ok()).count())
}

/// Runs `target` for `seconds` with `extra` libFuzzer options; new inputs go to a scratch corpus
/// under the target directory, the committed seeds are read only.
fn run_one(
    bin_dir: &Path,
    target: &'static str,
    seconds: u64,
    extra: &[String],
) -> anyhow::Result<Outcome> {
    let root = project_root();
    let work = target_dir().join("work");
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = root.join("fuzz/corpus").join(target);
    let bin = bin_dir.join(target);
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=20")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(extra)
        .arg(&corpus)
        .arg(&seeds)
        .current_dir(&root);
    eprintln!(
        "$ {} -max_total_time={seconds} .. {}",
        bin.display(),
        seeds.display()
    );
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&out.stderr);
    // libFuzzer ends with "Done N runs in S second(s)".
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ")?.split(' ').next()?.parse().ok());
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for l in tail.into_iter().rev() {
            eprintln!("{l}");
        }
        bail!(
            "fuzz target {target} failed ({}); the input is in {}",
            out.status,
            artifacts.display()
        );
    }
    Ok(Outcome {
        target,
        seconds,
        runs,
        corpus: files_in(&corpus) + files_in(&seeds),
    })
}

/// `cargo xtask fuzz [--time SECS] [--build-only] [TARGET ..] [-- LIBFUZZER_OPTIONS ..]`: every
/// target (or those named) for `SECS` seconds each (default 20), as many at once as there are
/// cores.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut seconds = 20u64;
    let mut build_only = false;
    let mut chosen: Vec<&'static str> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--time" => {
                seconds = it
                    .next()
                    .context("--time needs seconds")?
                    .parse()
                    .context("--time needs whole seconds")?;
            }
            "--build-only" => build_only = true,
            "--" => extra.extend(it.by_ref().cloned()),
            name => match TARGETS.iter().find(|t| **t == name) {
                Some(t) => chosen.push(t),
                None => bail!(
                    "unknown fuzz target {name:?} (targets: {})",
                    TARGETS.join(", ")
                ),
            },
        }
    }
    if chosen.is_empty() {
        chosen = TARGETS.to_vec();
    }
    let started = Instant::now();
    let bins = build(&host_triple()?)?;
    if build_only {
        return Ok(());
    }
    // libFuzzer runs on one thread: as many targets at once as there are cores, so that each
    // still has a core of its own for its time (two at once on CI's two cores).
    let jobs = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, chosen.len());
    let (bins, extra) = (&bins, &extra);
    let mut outcomes = Vec::new();
    for group in chosen.chunks(jobs) {
        let ran: Vec<anyhow::Result<Outcome>> = std::thread::scope(|s| {
            let running: Vec<_> = group
                .iter()
                .map(|&t| s.spawn(move || run_one(bins, t, seconds, extra)))
                .collect();
            running
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a fuzz run's thread panicked")))
                })
                .collect()
        });
        for outcome in ran {
            outcomes.push(outcome?);
        }
    }
    eprintln!(
        "{:<14} {:>8} {:>12} {:>8}",
        "target", "seconds", "executions", "corpus"
    );
    for o in &outcomes {
        let runs = o.runs.map_or_else(|| "?".to_owned(), |r| r.to_string());
        eprintln!(
            "{:<14} {:>8.0} {:>12} {:>8}",
            o.target, o.seconds, runs, o.corpus
        );
    }
    eprintln!(
        "fuzzing: no crash, {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
