//! `cargo xtask coverage`: line coverage of the library crates with `cargo llvm-cov`, the CUDA
//! paths included from a run on the GPU machine.
//!
//! The build is cargo-llvm-cov's "external tests" mode (`cargo llvm-cov show-env`): the workspace's
//! crates are instrumented (`-C instrument-coverage`, dependencies are not) into `target/cov/`,
//! and every run of a test executable leaves a `.profraw` file there. So the same executables can
//! run here and on the GPU machine, and `cargo llvm-cov report` merges both:
//!
//! 1. `cargo xtask coverage --pack`: builds the instrumented test executables and packs those that
//!    reach a GPU (debug information dropped; the coverage maps stay) into `coverage-pack/`, with
//!    `run.sh`, as one archive `coverage-pack-xz/pack.tar.xz` for the device tool.
//! 2. On the GPU machine: `tar -xJf coverage-pack-xz/pack.tar.xz && bash coverage-pack/run.sh`
//!    runs them with `GPUBRIDGE_REQUIRE_GPU=1` and leaves `$OUT/profraw.tgz`.
//! 3. `cargo xtask coverage --device-profiles DIR/profraw.tgz`: runs the whole test suite here
//!    (the same executables: nothing is rebuilt at the same commit), adds the device's profiles
//!    and writes the report to `target/coverage-report/` (`coverage.json`, and `files.md`: the
//!    tables of `docs/COVERAGE.md`). Profiles of earlier runs are removed first.
//!
//! Without `--device-profiles` the report covers this machine's run only (no GPU paths). Steps 1
//! and 3 must be at the same commit: profiles of other executables are reported as mismatched and
//! left out.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::project_root;

/// What `cargo test` builds and runs, in both steps (the same arguments, so the same
/// executables).
const TEST_ARGS: &[&str] = &[
    "test",
    "--workspace",
    "--exclude",
    "xtask",
    "--features",
    "gpubridge/wgpu,gpubridge/gds",
];

/// Files that are not library code: the samples and CLI, the automation, the fuzz targets, and
/// tests themselves.
pub const IGNORE_FILENAME_REGEX: &str = r"(gpubridge-samples|xtask|fuzz)/|/tests/|/benches/";

/// Test targets the GPU machine runs: those that reach CUDA, cuFile or NVML. The rest (parsing,
/// WGSL validation, wgpu on llvmpipe, the CLI's and guides' checks, the cluster on loopback) run
/// here.
const DEVICE_TESTS: &[&str] = &[
    "gpubridge_cuda",
    "baselines",
    "nvrtc_sources",
    "conformance_cuda",
    "cuda_runtime",
    "nvtx",
    "fallback_chain",
    "faults_r2",
    "bad_input_r3",
    "telemetry_readiness",
    "telemetry_scrape",
    "gpubridge_telemetry",
    "storage_cuda",
    "storage_staged",
    "gpubridge_storage",
    "gpubridge",
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut pack = false;
    let mut device: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pack" => pack = true,
            "--device-profiles" => {
                device = Some(PathBuf::from(
                    it.next().context("--device-profiles needs a .tgz")?,
                ));
            }
            other => bail!("unknown argument {other}: --pack | --device-profiles FILE.tgz"),
        }
    }
    let root = project_root();
    let target = root.join("target/cov");
    let env = llvm_cov_env(&root, &target)?;
    if pack {
        return build_pack(&root, &target, &env);
    }
    // Profiles of earlier runs would be merged too: only this run's and the device's count.
    let status = cargo(&root, &env)
        .args(["llvm-cov", "clean", "--profraw-only"])
        .status()
        .context("running cargo llvm-cov clean")?;
    anyhow::ensure!(
        status.success(),
        "cargo llvm-cov clean --profraw-only failed"
    );
    // Every test here, each executable's profile beside the device's.
    let status = cargo(&root, &env)
        .args(TEST_ARGS)
        .arg("--no-fail-fast")
        .status()
        .context("running cargo test")?;
    if !status.success() {
        eprintln!("warning: some tests failed; their coverage is still counted");
    }
    if let Some(tgz) = device {
        let dir = target.join("device-profiles");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(&dir)
            .status()
            .context("running tar")?;
        anyhow::ensure!(status.success(), "unpacking {} failed", tgz.display());
        // cargo llvm-cov merges the `.profraw` files at the top of its target directory;
        // `run.sh` archived them flat.
        let mut n = 0;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "profraw") {
                let name = format!("device-{n}.profraw");
                std::fs::rename(&path, target.join(name))?;
                n += 1;
            }
        }
        eprintln!("added {n} profiles from the GPU machine");
        anyhow::ensure!(n > 0, "no .profraw in {}", tgz.display());
    }
    let out = root.join("target/coverage-report");
    std::fs::create_dir_all(&out)?;
    // One merge of the profiles: the tables are drawn from the JSON.
    let json = cargo(&root, &env)
        .args([
            "llvm-cov",
            "report",
            "--json",
            "--summary-only",
            "--ignore-filename-regex",
            IGNORE_FILENAME_REGEX,
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo llvm-cov report")?;
    anyhow::ensure!(json.status.success(), "cargo llvm-cov report failed");
    std::fs::write(out.join("coverage.json"), &json.stdout)?;
    let v: Value = serde_json::from_slice(&json.stdout).context("the JSON report")?;
    let tables = files_table(&v, &root);
    std::fs::write(out.join("files.md"), &tables)?;
    print!("{tables}");
    let lines = &v["data"][0]["totals"]["lines"];
    println!(
        "library lines covered: {} / {} ({:.1}%); report in {}",
        lines["covered"],
        lines["count"],
        lines["percent"].as_f64().unwrap_or(f64::NAN),
        out.display()
    );
    Ok(())
}

/// Files that run only with a CUDA device (or libcufile, NVML).
const GPU_ONLY: &[&str] = &[
    "gpubridge-cuda/",
    "gpubridge-storage/src/cuda.rs",
    "gpubridge-storage/src/gds.rs",
    "gpubridge-telemetry/src/nvml.rs",
];

/// A Markdown table of the report's files, least covered first, by crate and in all, with the
/// GPU-only files marked and summed apart (for `docs/COVERAGE.md`).
fn files_table(v: &Value, root: &Path) -> String {
    let prefix = format!("{}/", root.display());
    let mut files: Vec<(String, u64, u64)> = v["data"][0]["files"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| {
                    let name = f["filename"].as_str()?;
                    let lines = &f["summary"]["lines"];
                    Some((
                        name.strip_prefix(&prefix).unwrap_or(name).to_owned(),
                        lines["covered"].as_u64()?,
                        lines["count"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by(|a, b| {
        let pa = a.1 as f64 / a.2.max(1) as f64;
        let pb = b.1 as f64 / b.2.max(1) as f64;
        pa.total_cmp(&pb).then_with(|| a.0.cmp(&b.0))
    });
    let gpu_only = |f: &str| GPU_ONLY.iter().any(|g| f.starts_with(g));
    let mut sums: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for (f, c, n) in &files {
        let scopes = [
            "all library code".to_owned(),
            if gpu_only(f) {
                "GPU-only files".to_owned()
            } else {
                "library code that runs without a GPU".to_owned()
            },
            format!("`{}`", f.split('/').next().unwrap_or(f)),
        ];
        for scope in scopes {
            let e = sums.entry(scope).or_default();
            e.0 += c;
            e.1 += n;
        }
    }
    let pct = |c: u64, n: u64| 100.0 * c as f64 / n.max(1) as f64;
    let mut out = String::from("| scope | lines covered | coverage |\n|---|---|---|\n");
    let mut scopes: Vec<_> = sums.into_iter().collect();
    scopes.sort_by(|a, b| pct(b.1 .0, b.1 .1).total_cmp(&pct(a.1 .0, a.1 .1)));
    for (scope, (c, n)) in scopes {
        out += &format!("| {scope} | {c} / {n} | {:.1}% |\n", pct(c, n));
    }
    out += "\n| file | lines | coverage | |\n|---|---|---|---|\n";
    for (f, c, n) in &files {
        let note = if gpu_only(f) { "GPU only" } else { "" };
        out += &format!("| `{f}` | {c} / {n} | {:.1}% | {note} |\n", pct(*c, *n));
    }
    out
}

/// cargo-llvm-cov's environment for building and running instrumented executables into
/// `target`.
fn llvm_cov_env(root: &Path, target: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let output = Command::new(crate::cargo_program())
        .args(["llvm-cov", "show-env"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo llvm-cov show-env (cargo install cargo-llvm-cov)")?;
    anyhow::ensure!(
        output.status.success(),
        "cargo llvm-cov show-env failed: is cargo-llvm-cov installed?"
    );
    let mut env: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('\'').to_owned()))
        })
        .collect();
    env.push(("CARGO_TARGET_DIR".to_owned(), target.display().to_string()));
    // Coverage maps do not need debug information; without it the pack is a fraction the size.
    env.push(("CARGO_PROFILE_DEV_DEBUG".to_owned(), "0".to_owned()));
    env.push(("CARGO_PROFILE_TEST_DEBUG".to_owned(), "0".to_owned()));
    Ok(env)
}

fn cargo(root: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new(crate::cargo_program());
    c.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(root);
    c
}

fn build_pack(root: &Path, target: &Path, env: &[(String, String)]) -> anyhow::Result<()> {
    let status = cargo(root, env)
        .args(["llvm-cov", "clean", "--workspace"])
        .status()
        .context("running cargo llvm-cov clean")?;
    anyhow::ensure!(status.success(), "cargo llvm-cov clean failed");
    let output = cargo(root, env)
        .args(TEST_ARGS)
        .args(["--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the instrumented tests")?;
    anyhow::ensure!(
        output.status.success(),
        "building the instrumented tests failed"
    );
    let out = root.join("coverage-pack");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("tests"))?;
    let mut packed = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or("");
        // The facade's unit tests and the CLI crate's share the name `gpubridge`; only the
        // library's are wanted.
        let from_samples = v["package_id"]
            .as_str()
            .is_some_and(|p| p.contains("gpubridge-samples"));
        if !DEVICE_TESTS.contains(&name) || from_samples {
            continue;
        }
        let file = Path::new(exe)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("test")
            .to_owned();
        let dst = out.join("tests").join(&file);
        std::fs::copy(exe, &dst).with_context(|| format!("copying {exe}"))?;
        // Symbols and debug sections go; the coverage maps (`__llvm_covfun`, `__llvm_covmap`)
        // and the profile counters' sections stay, so the profiles match the executables here.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&dst)
            .status();
        packed.push(file);
    }
    anyhow::ensure!(!packed.is_empty(), "no test executables were packed");
    std::fs::write(out.join("run.sh"), RUN_SH)?;
    let archive = crate::device_pack::xz_archive(root, "coverage-pack")?;
    println!(
        "packed {} instrumented test executables ({}) into {} ({:.1} MiB)",
        packed.len(),
        packed.join(" "),
        archive.display(),
        std::fs::metadata(&archive)?.len() as f64 / 1048576.0
    );
    println!(
        "build directory: {} (keep it for the report)",
        target.display()
    );
    println!(
        "on the device machine, with `coverage-pack-xz` carried: tar -xJf coverage-pack-xz/pack.tar.xz && bash coverage-pack/run.sh"
    );
    println!("then here: cargo xtask coverage --device-profiles <files_at>/profraw.tgz");
    Ok(())
}

/// Runs every packed executable on the GPU machine with its profile under `$OUT`.
const RUN_SH: &str = r#"#!/usr/bin/env bash
# Runs the instrumented test executables on the GPU machine; their coverage profiles end up in
# $OUT/profraw.tgz for `cargo xtask coverage --device-profiles`.
set -u
cd "$(dirname "$0")"
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/gpubridge-cache}"
OUT="${OUT:-/tmp/gpubridge-out}"
PROF=/tmp/gpubridge-profraw LOGS=/tmp/gpubridge-cov-logs
rm -rf "$PROF" "$LOGS"; mkdir -p "$PROF" "$LOGS" "$OUT"
summary=""
for t in tests/*; do
  name=$(basename "$t")
  if LLVM_PROFILE_FILE="$PROF/$name-%p-%m.profraw" timeout 300 "./$t" --test-threads=1 > "$LOGS/$name.log" 2>&1; then r=pass; else r=FAIL; fi
  summary+=$(printf '%-44s %-5s %s' "$name" "$r" "$(grep -E '^test result' "$LOGS/$name.log" | tail -1)")$'\n'
done
tar -czf "$OUT/profraw.tgz" -C "$PROF" .
tar -czf "$OUT/cov-logs.tgz" -C "$LOGS" .
echo "== profiles: $(ls "$PROF" | wc -l) files, $(du -sh "$OUT/profraw.tgz" | cut -f1)"
printf '%s' "$summary"
"#;
