//! `cargo xtask valgrind`: the CPU path under valgrind's memcheck, failing on any memory error
//! and on any definitely, indirectly or possibly lost block that `xtask/valgrind.supp` does not
//! explain.
//!
//! What runs: the `gpubridge` CLI's every sample on the CPU (`run all --backend cpu`, small
//! sizes, wgpu and CUDA left out of the chain so that no GPU driver is loaded, allocating through
//! the C library's malloc with `GPUBRIDGE_ALLOCATOR=system`), and the
//! `gpubridge-core` test executables `bridge_accounting` and `batcher` (the dynamic batcher,
//! timeouts, dropped requests, shutdown). The executables are the ones `cargo test --workspace
//! --features gpubridge/wgpu` builds ([`crate::test_build`]), so after CI's test step and quick
//! bench nothing is compiled again.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::project_root;

/// Test executables of gpubridge-core run under memcheck.
const TESTS: [&str; 2] = ["bridge_accounting", "batcher"];

/// Finds (after CI's test step; builds otherwise) the CLI and the test executables of [`TESTS`].
fn executables() -> anyhow::Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let build = crate::test_build()?;
    let tests: Vec<(String, PathBuf)> = build
        .tests
        .into_iter()
        .filter(|(name, _)| TESTS.contains(&name.as_str()))
        .collect();
    if tests.len() != TESTS.len() {
        bail!("expected the test executables {TESTS:?}, found {tests:?}");
    }
    Ok((build.cli, tests))
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

/// Shards each test executable's tests are split into, and memcheck processes run at once
/// (memcheck runs a process's threads one at a time).
const PARALLEL: usize = 2;

/// One memcheck run: a label, the executable, its arguments and environment.
type Job = (
    String,
    PathBuf,
    Vec<String>,
    Vec<(&'static str, &'static str)>,
);

/// The test names of a libtest executable, split into `shards` by turns.
fn shards(exe: &PathBuf, shards: usize) -> anyhow::Result<Vec<Vec<String>>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .with_context(|| format!("listing the tests of {}", exe.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "listing the tests of {} failed",
        exe.display()
    );
    let mut split = vec![Vec::new(); shards];
    let names = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test").map(str::to_owned))
        .collect::<Vec<_>>();
    for (i, name) in names.into_iter().enumerate() {
        split[i % shards].push(name);
    }
    split.retain(|s| !s.is_empty());
    Ok(split)
}

/// `cargo xtask valgrind`.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let (cli, tests) = executables()?;
    let mut jobs: Vec<Job> = vec![(
        "gpubridge run all --backend cpu".to_owned(),
        cli,
        [
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
        ]
        .map(str::to_owned)
        .to_vec(),
        // The CPU path only: opening wgpu would load the Vulkan loader and driver, whose own
        // allocations and `ld.so` reads are not this project's to judge here. The CLI allocates
        // through the C library's malloc here, which memcheck follows (mimalloc's pages it
        // would not see into).
        vec![
            ("GPUBRIDGE__WGPU__ENABLED", "false"),
            ("GPUBRIDGE__FALLBACK__CHAIN", "[\"cpu\"]"),
            ("GPUBRIDGE_ALLOCATOR", "system"),
        ],
    )];
    for (name, exe) in &tests {
        let split = shards(exe, PARALLEL)?;
        let n = split.len();
        for (i, names) in split.into_iter().enumerate() {
            let mut args = vec!["--test-threads=1".to_owned(), "--exact".to_owned()];
            args.extend(names);
            // The batcher's race test repeats its round 500 times for the race's sake; memcheck
            // sees every path in a few of them.
            let env = vec![("GPUBRIDGE_TEST_ROUNDS", "20")];
            jobs.push((format!("{name} ({}/{n})", i + 1), exe.clone(), args, env));
        }
    }
    // Taken from the end as workers come free.
    let queue = std::sync::Mutex::new(jobs);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| {
                while let Some((label, exe, args, env)) =
                    queue.lock().ok().and_then(|mut q| q.pop())
                {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    if let Err(e) = memcheck(&label, &exe, &args, &env) {
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("{e:#}"));
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    eprintln!(
        "valgrind: no memory error and no unexplained leak, {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
