//! `cargo xtask valgrind`: the CPU path under valgrind's memcheck, failing on any memory error
//! and on any definitely, indirectly or possibly lost block that `xtask/valgrind.supp` does not
//! explain.
//!
//! What runs: the `gpubridge` CLI's every sample on the CPU (`run all --backend cpu`, small
//! sizes, wgpu and CUDA left out of the chain so that no GPU driver is loaded, allocating through
//! the C library's malloc with `GPUBRIDGE_ALLOCATOR=system`), and the
//! `gpubridge-core` test executables `bridge_accounting` and `batcher` (the dynamic batcher,
//! timeouts, dropped requests, shutdown). The executables are the ones `cargo test --workspace
//! --features gpubridge/wgpu` builds, so after CI's test step nothing is compiled again.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::project_root;

/// Test executables of gpubridge-core run under memcheck.
const TESTS: [&str; 2] = ["bridge_accounting", "batcher"];

/// Builds (or finds) the CLI and the test executables; returns the CLI and the tests.
fn executables() -> anyhow::Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let args = [
        "test",
        "--workspace",
        "--features",
        "gpubridge/wgpu",
        "--no-run",
        "--message-format=json",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let out = Command::new(cargo)
        .args(args)
        .current_dir(project_root())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("building the test executables failed ({})", out.status);
    }
    let mut cli = None;
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
        let is_bin = msg["target"]["kind"][0].as_str() == Some("bin");
        if name == "gpubridge" && is_bin && !is_test {
            cli = Some(PathBuf::from(exe));
        } else if is_test && TESTS.contains(&name) {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    let cli = cli.context("cargo built no gpubridge CLI")?;
    if tests.len() != TESTS.len() {
        bail!("expected the test executables {TESTS:?}, found {tests:?}");
    }
    Ok((cli, tests))
}

/// Runs `exe args` under memcheck; fails on any error it reports.
fn memcheck(label: &str, exe: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let supp = project_root().join("xtask/valgrind.supp");
    let mut cmd = Command::new("valgrind");
    cmd.arg("--leak-check=full")
        .arg("--show-leak-kinds=definite,indirect,possible")
        .arg("--errors-for-leak-kinds=definite,indirect,possible")
        .arg("--error-exitcode=99")
        .arg("--num-callers=40")
        .arg(format!("--suppressions={}", supp.display()))
        .arg(exe)
        .args(args)
        .current_dir(project_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    eprintln!("$ valgrind .. {} {}", exe.display(), args.join(" "));
    let started = Instant::now();
    let out = cmd
        .output()
        .context("running valgrind (is it installed?)")?;
    let log = String::from_utf8_lossy(&out.stderr);
    let summary: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("definitely lost:")
                || l.contains("indirectly lost:")
                || l.contains("possibly lost:")
                || l.contains("suppressed:")
                || l.contains("ERROR SUMMARY")
        })
        .collect();
    eprintln!(
        "{label}: {:.0} s\n  {}",
        started.elapsed().as_secs_f64(),
        summary.join("\n  ")
    );
    if !out.status.success() {
        eprintln!("{log}");
        bail!("{label} under valgrind failed ({})", out.status);
    }
    Ok(())
}

/// `cargo xtask valgrind`.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let (cli, tests) = executables()?;
    memcheck(
        "gpubridge run all --backend cpu",
        &cli,
        &[
            "run",
            "all",
            "--backend",
            "cpu",
            "--pairs",
            "4",
            "--len",
            "1000",
            "--sum-vectors",
            "20",
            "--sum-len",
            "100",
            "--matrix-sizes",
            "16,33",
            "--graph-nodes",
            "500",
            "--graph-edges",
            "1000",
            "--seed",
            "7",
        ],
        // The CPU path only: opening wgpu would load the Vulkan loader and driver, whose own
        // allocations and `ld.so` reads are not this project's to judge here. The CLI allocates
        // through the C library's malloc here, which memcheck follows (mimalloc's pages it
        // would not see into).
        &[
            ("GPUBRIDGE__WGPU__ENABLED", "false"),
            ("GPUBRIDGE__FALLBACK__CHAIN", "[\"cpu\"]"),
            ("GPUBRIDGE_ALLOCATOR", "system"),
        ],
    )?;
    for (name, exe) in &tests {
        memcheck(name, exe, &["--test-threads=1"], &[])?;
    }
    eprintln!(
        "valgrind: no memory error and no unexplained leak, {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
