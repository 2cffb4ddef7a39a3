//! `cargo xtask device-pack`: builds everything the GPU test machine runs (release CLI with the
//! metrics endpoint and NVML sampler, and test executables, stripped) into the ignored folder
//! `device-pack/`, with `device-pack/run.sh` that runs them all there with
//! `GPUBRIDGE_REQUIRE_GPU=1` (tests, samples, `gpubridge serve --demo-load` scraped into
//! `$OUT/scrape.txt`, the bench) and prints a summary table.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::project_root;

const PACKAGES: [&str; 6] = [
    "gpubridge-telemetry",
    "gpubridge",
    "gpubridge-core",
    "gpubridge-cuda",
    "gpubridge-wgpu-fallback",
    "gpubridge-samples",
];

/// Builds and packs; prints the command to run on the device machine.
pub fn run() -> anyhow::Result<()> {
    let root = project_root();
    let out = root.join("device-pack");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("tests"))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());

    let mut args = vec!["test", "--release", "--no-run", "--message-format=json"];
    for p in PACKAGES {
        args.extend(["-p", p]);
    }
    eprintln!("$ cargo {}", args.join(" "));
    let output = Command::new(&cargo)
        .args(&args)
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("building the test executables failed");
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let Some(exe) = v["executable"].as_str() {
                // The CLI tests run the binary at its build path; they belong to the build machine.
                if v["target"]["name"] == "cli_commands" {
                    continue;
                }
                let name = Path::new(exe)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("test")
                    .to_owned();
                let dst = out.join("tests").join(&name);
                std::fs::copy(exe, &dst).with_context(|| format!("copying {exe}"))?;
                strip(&dst);
                tests.push(name);
            }
        }
    }
    std::fs::copy(crate::build_release_cli()?, out.join("gpubridge"))?;
    strip(&out.join("gpubridge"));
    std::fs::write(out.join("run.sh"), RUN_SH)?;
    let size: u64 = walk_size(&out);
    eprintln!(
        "packed {} test executables and the CLI into {} ({:.1} MiB)",
        tests.len(),
        out.display(),
        size as f64 / 1048576.0
    );
    println!("on the device machine, with `device-pack` carried: bash device-pack/run.sh");
    Ok(())
}

fn strip(path: &Path) {
    if let Err(e) = Command::new("strip").arg(path).status() {
        eprintln!(
            "strip {} failed ({e}); shipping it unstripped",
            path.display()
        );
    }
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

const RUN_SH: &str = r#"#!/usr/bin/env bash
# Runs every packed test executable and the CLI checks on the GPU machine.
# Results go to $OUT (when set) and a summary table is printed last.
set -u
cd "$(dirname "$0")"
export GPUBRIDGE_REQUIRE_GPU=1
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/gpubridge-cache}"
OUT="${OUT:-/tmp/gpubridge-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)" >> "$OUT/gpu.txt"
summary=""
for t in tests/*; do
  name=$(basename "$t")
  if "./$t" --test-threads=1 > "$OUT/test-$name.log" 2>&1; then r=pass; else r=FAIL; fi
  line=$(grep -E "^test result" "$OUT/test-$name.log" | tail -1)
  summary+=$(printf '%-40s %-5s %s' "$name" "$r" "$line")$'\n'
done
./gpubridge devices > "$OUT/devices.txt" 2>&1
cold_start=$(date +%s%N); ./gpubridge run vector --backend cuda --pairs 1 --len 1000 > /dev/null 2>&1; cold_end=$(date +%s%N)
warm_start=$(date +%s%N); ./gpubridge run vector --backend cuda --pairs 1 --len 1000 > /dev/null 2>&1; warm_end=$(date +%s%N)
./gpubridge run all --backend cuda > "$OUT/run-all-cuda.txt" 2>&1; run_rc=$?
./gpubridge run all --backend cpu > "$OUT/run-all-cpu.txt" 2>&1
# Telemetry: the endpoint under the demo load, scraped once the NVML sampler (every 5 s) has read
# the GPU a few times; then Ctrl-C (SIGINT), which must stop it cleanly.
fetch() { curl -sf "$1" 2>/dev/null || python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
./gpubridge serve --listen 127.0.0.1:9464 --demo-load > "$OUT/serve.out" 2> "$OUT/serve.err" & serve_pid=$!
sleep 12
fetch http://127.0.0.1:9464/metrics > "$OUT/scrape.txt"; scrape_rc=$?
readyz=$(fetch http://127.0.0.1:9464/readyz 2>&1)
kill -INT "$serve_pid"; wait "$serve_pid"; serve_rc=$?
./gpubridge bench --out "$OUT/bench.json" > "$OUT/bench.md" 2> "$OUT/bench.err"; bench_rc=$?
echo "== gpu"; cat "$OUT/gpu.txt"
echo "== devices"; cat "$OUT/devices.txt"
echo "== run all --backend cuda (rc $run_rc)"; cat "$OUT/run-all-cuda.txt"
echo "== run all --backend cpu"; cat "$OUT/run-all-cpu.txt"
echo "== process start to verified result, tiny vector sample: cold PTX cache $(( (cold_end-cold_start)/1000000 )) ms, warm $(( (warm_end-warm_start)/1000000 )) ms"
echo "== serve --demo-load (rc $serve_rc, scrape rc $scrape_rc, readyz: $readyz); device series in $OUT/scrape.txt:"
tail -2 "$OUT/serve.err"
grep -E '^gpubridge_(gpu_|pool_bytes|graph_cache|bytes_transferred|transfer_|allocation_|kernels_executed)' "$OUT/scrape.txt" | head -60
echo "== tests"; printf '%s' "$summary"
echo "== bench (rc $bench_rc)"; tail -5 "$OUT/bench.err"; cat "$OUT/bench.md"
"#;
