//! `cargo xtask`: project automation in Rust (the rust-analyzer pattern).
//!
//! - `cargo xtask ci`: what CI runs: format check, clippy with `-D warnings`, docs, every test,
//!   all with the wgpu backend built (its tests run where there is an adapter, and must under
//!   `GPUBRIDGE_REQUIRE_WGPU=1`).
//! - `cargo xtask bench [--quick] [--only P2,P4]`: TARGETS.md's rows measured by `gpubridge bench`
//!   against baselines from the same run, in `target/bench-report/`.
//! - `cargo xtask load [--rates 250k,1M ..] [--from FILE.json]`: the open-loop rate sweep on the
//!   dynamic batcher (P3) with latency against throughput drawn in `target/load-report/load.png`.
//! - `cargo xtask soak [--duration 24h] [--backend ..] [--faults ..] [--from DIR]`: the mixed
//!   workload of `gpubridge soak` with its R1/R2 verdict as the exit status, and its samples drawn
//!   in `target/soak-report/memory.png` and `latency.png`.
//! - `cargo xtask licenses`: every dependency's licence checked against the policy (offline).
//! - `cargo xtask fuzz [--time SECS] [TARGET ..]`: builds the fuzz targets in `fuzz/` with
//!   libFuzzer's instrumentation on the stable toolchain and runs each on its seed corpus.
//! - `cargo xtask valgrind`: the CPU path (the CLI's samples and the batcher's tests) under
//!   valgrind's memcheck, with `xtask/valgrind.supp`.
//! - `cargo xtask device-pack`: the release CLI and test executables, stripped, in `device-pack/`,
//!   with a Vulkan loader and an NVIDIA ICD manifest for wgpu, and `device-pack/run.sh` to run
//!   them on the GPU machine.
//! - `cargo xtask coverage [--pack | --device-profiles FILE.tgz]`: line coverage of the library
//!   crates with cargo-llvm-cov, the CUDA paths from instrumented tests run on the GPU machine.

mod bench;
mod ci;
mod coverage;
mod device_pack;
mod fuzz;
mod licenses;
mod load;
mod plot;
mod soak;
mod valgrind;

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("device-pack") => device_pack::run(),
        Some("coverage") => coverage::run(&args[1..]),
        Some("load") => load::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("licenses") => licenses::run(),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("valgrind") => valgrind::run(),
        _ => {
            eprintln!("usage: cargo xtask <ci | bench [--quick] [--only P2,P4] | load [..] | soak [..] | licenses | fuzz [--time SECS] [TARGET ..] | valgrind | device-pack | coverage [--pack | --device-profiles FILE.tgz]>");
            std::process::exit(2);
        }
    }
}

/// What CI's test step (`cargo test --workspace --features gpubridge/wgpu`) builds, with the
/// criterion benches besides.
pub struct TestBuild {
    /// The `gpubridge` CLI.
    pub cli: PathBuf,
    /// The test executables, by target name.
    pub tests: Vec<(String, PathBuf)>,
    /// The criterion benches (`gpubridge/benches/seed.rs`), run with `--bench`.
    pub seed_bench: PathBuf,
}

/// Builds (after CI's test step: finds) the executables of [`TestBuild`]. Only the criterion
/// benches are compiled anew after `cargo test --workspace --features gpubridge/wgpu`: the same
/// packages and features resolve to the same artifacts.
pub fn test_build() -> anyhow::Result<TestBuild> {
    use anyhow::Context;
    let args = [
        "test",
        "--workspace",
        "--features",
        "gpubridge/wgpu",
        "--all-targets",
        "--no-run",
        "--message-format=json",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let out = cargo()
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    anyhow::ensure!(
        out.status.success(),
        "building the test executables failed ({})",
        out.status
    );
    let (mut cli, mut seed_bench, mut tests) = (None, None, Vec::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        let kind = msg["target"]["kind"][0].as_str();
        if name == "seed" && kind == Some("bench") {
            seed_bench = Some(PathBuf::from(exe));
        } else if msg["profile"]["test"].as_bool().unwrap_or(false) {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        } else if name == "gpubridge" && kind == Some("bin") {
            cli = Some(PathBuf::from(exe));
        }
    }
    Ok(TestBuild {
        cli: cli.context("cargo test built no gpubridge CLI")?,
        tests,
        seed_bench: seed_bench.context("cargo test built no criterion benches")?,
    })
}

/// Builds the `gpubridge` CLI in the `ci` profile (the release profile at `opt-level = 1`,
/// without the default features that neither the quick bench nor the CPU soak use: `cluster`,
/// `gds`, `mimalloc`) and returns its path: what `cargo xtask bench --quick` and CI's one-minute
/// soak run. On CI's two cores it builds in about two thirds of the release build's time.
pub fn build_ci_cli() -> anyhow::Result<PathBuf> {
    build_cli(&["--profile", "ci", "--no-default-features"], "ci")
}

/// Builds the release `gpubridge` CLI and returns its path.
pub fn build_release_cli() -> anyhow::Result<PathBuf> {
    build_cli(&["--release"], "release")
}

/// `cargo build -p gpubridge-samples` with `profile_args` and the features every build of the CLI
/// names; the binary lands in `target/<dir>`.
fn build_cli(profile_args: &[&str], dir: &str) -> anyhow::Result<PathBuf> {
    let mut args = vec!["build"];
    args.extend_from_slice(profile_args);
    // Named, not left to the defaults, so that trimming the defaults (or `--no-default-features`)
    // cannot drop what the device pack's `serve` step and the quick bench need.
    args.extend([
        "-p",
        "gpubridge-samples",
        "--features",
        "cuda,wgpu,prometheus,nvml",
    ]);
    eprintln!("$ cargo {}", args.join(" "));
    let status = cargo().args(&args).status()?;
    anyhow::ensure!(status.success(), "building the CLI failed");
    Ok(project_root().join("target").join(dir).join("gpubridge"))
}

/// The cargo that runs xtask (`$CARGO`), else the one on the path.
pub fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// A `cargo` command in the repository root.
pub fn cargo() -> std::process::Command {
    let mut c = std::process::Command::new(cargo_program());
    c.current_dir(project_root());
    c
}

/// The repository root.
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}
