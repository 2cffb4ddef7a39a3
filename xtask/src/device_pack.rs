//! `cargo xtask device-pack`: builds everything the GPU test machine runs (release CLI with wgpu,
//! the metrics endpoint and the NVML sampler, and test executables, stripped) into the ignored
//! folder `device-pack/`, with `device-pack/run.sh` that runs them all there with
//! `GPUBRIDGE_REQUIRE_GPU=1` (tests, samples, `gpubridge serve --demo-load` scraped into
//! `$OUT/scrape.txt`, the bench) and prints a summary table.
//!
//! For wgpu on the GPU machine, the pack also carries a Vulkan loader (`lib/libvulkan.so.1`) and
//! GLVND's libraries (`libGLdispatch.so.0` and friends, which the driver's ICD needs and the
//! container lacks), extracted from Debian's packages with `apt-get download` and `dpkg-deb -x`,
//! and an
//! NVIDIA ICD manifest (`icd/nvidia_icd.json`, pointing at the driver's `libGLX_nvidia.so.0`);
//! `run.sh` puts `lib/` on `LD_LIBRARY_PATH` and, where the driver installed no ICD manifest of its
//! own, points `VK_ICD_FILENAMES` and `VK_DRIVER_FILES` at the packed one.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::project_root;

const PACKAGES: [&str; 7] = [
    "gpubridge-telemetry",
    "gpubridge-storage",
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
    let cargo = crate::cargo_program();

    let mut args = vec![
        "test",
        "--release",
        "--no-run",
        "--message-format=json",
        "--features",
        "gpubridge/wgpu,gpubridge/gds",
    ];
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
                // The CLI and guide tests run the binary at its build path and read the repository; they
                // belong to the build machine.
                // Configuration parsing and WGSL validation never touch a device: CI runs them,
                // and leaving them out keeps the pack under the device tool's 64 MiB.
                // storage_wgpu needs wgpu, which the H100's container refuses; CI runs it.
                if [
                    "cli_commands",
                    "docs_commands",
                    "config_parsing",
                    "kernel_sources",
                    "storage_wgpu",
                ]
                .iter()
                .any(|t| v["target"]["name"] == *t)
                {
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
    // The original's five benchmarks (criterion), run there as `bench-seed --bench` with
    // `CRITERION_HOME` set; `cargo xtask bench --from DIR` folds the results into a report here.
    let mut args = vec!["bench", "--no-run", "--message-format=json"];
    args.extend(crate::bench::SEED_BENCH);
    eprintln!("$ cargo {}", args.join(" "));
    let output = Command::new(&cargo)
        .args(&args)
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        bail!("building the criterion benches failed");
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "seed" {
            if let Some(exe) = v["executable"].as_str() {
                std::fs::copy(exe, out.join("bench-seed"))
                    .with_context(|| format!("copying {exe}"))?;
                strip(&out.join("bench-seed"));
            }
        }
    }
    std::fs::copy(crate::build_release_cli()?, out.join("gpubridge"))?;
    strip(&out.join("gpubridge"));
    if let Err(e) = pack_vulkan_loader(&root.join("target/device-pack-vulkan"), &out) {
        eprintln!(
            "warning: no Vulkan loader packed ({e:#}); wgpu on the GPU machine will need its own libvulkan.so.1"
        );
    }
    std::fs::create_dir_all(out.join("icd"))?;
    std::fs::write(out.join("icd/nvidia_icd.json"), NVIDIA_ICD)?;
    std::fs::write(out.join("run.sh"), RUN_SH)?;
    let size: u64 = walk_size(&out);
    eprintln!(
        "packed {} test executables and the CLI into {} ({:.1} MiB)",
        tests.len(),
        out.display(),
        size as f64 / 1048576.0
    );
    // The device tool carries at most 64 MiB: ship the pack as one xz archive beside it.
    let archive = xz_archive(&root, "device-pack")?;
    let packed = std::fs::metadata(&archive)?.len();
    println!(
        "compressed into {} ({:.1} MiB)",
        archive.display(),
        packed as f64 / 1048576.0
    );
    println!(
        "on the device machine, with `device-pack-xz` carried: tar -xJf device-pack-xz/pack.tar.xz && bash device-pack/run.sh"
    );
    Ok(())
}

/// Packs the folder `name` of `root` into `root/<name>-xz/pack.tar.xz` (the folder made anew),
/// the one file the device tool carries; returns the archive's path.
pub(crate) fn xz_archive(root: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let xz = root.join(format!("{name}-xz"));
    let _ = std::fs::remove_dir_all(&xz);
    std::fs::create_dir_all(&xz)?;
    let archive = xz.join("pack.tar.xz");
    let status = Command::new("tar")
        .env("XZ_OPT", "-6 -T0")
        .arg("-cJf")
        .arg(&archive)
        .arg(name)
        .current_dir(root)
        .status()
        .context("running tar")?;
    if !status.success() {
        bail!("packing {name} into {} failed", archive.display());
    }
    Ok(archive)
}

/// The NVIDIA Vulkan driver's ICD manifest, as the driver's own installer writes it: the loader
/// finds the driver in `libGLX_nvidia.so.0` (through the `ldconfig` cache).
const NVIDIA_ICD: &str = r#"{"file_format_version":"1.0.1","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.3"}}"#;

/// Extracts `libvulkan.so.1` from Debian's `libvulkan1` package into `out/lib/`.
/// Debian packages whose libraries go into the pack's `lib/`: the Vulkan loader, and GLVND's
/// dispatch libraries, without which the driver's ICD (`libGLX_nvidia.so.0`) cannot be loaded in
/// a container that has the driver but no GL stack (`vkCreateInstance` then fails).
const GL_PACKAGES: &[&str] = &[
    "libvulkan1",
    "libglvnd0",
    "libglx0",
    "libegl1",
    "libgl1",
    "libopengl0",
    "libgles2",
];

fn pack_vulkan_loader(work: &Path, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    eprintln!("$ apt-get download {}", GL_PACKAGES.join(" "));
    let status = Command::new("apt-get")
        .args(["-oAPT::Architecture=amd64", "download"])
        .args(GL_PACKAGES)
        .current_dir(work)
        .status()
        .context("running apt-get download")?;
    if !status.success() {
        bail!("apt-get download failed ({status})");
    }
    let tree = work.join("root");
    let debs: Vec<_> = std::fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    anyhow::ensure!(!debs.is_empty(), "apt-get download left no .deb");
    for deb in &debs {
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(&tree)
            .status()
            .context("running dpkg-deb -x")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed ({status})", deb.display());
        }
    }
    std::fs::create_dir_all(out.join("lib"))?;
    let mut copied = Vec::new();
    for lib in shared_libraries(&tree) {
        let Some(name) = lib.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        // Links in the packages are copied as what they point at, under the link's name.
        std::fs::copy(&lib, out.join("lib").join(&name))
            .with_context(|| format!("copying {}", lib.display()))?;
        copied.push(name);
    }
    anyhow::ensure!(
        copied.iter().any(|n| n == "libvulkan.so.1"),
        "no libvulkan.so.1 in the packages"
    );
    eprintln!("packed {} libraries: {}", copied.len(), copied.join(" "));
    Ok(())
}

/// Every `lib*.so.<N>` (the names programs load) under `dir`.
fn shared_libraries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(shared_libraries(&p));
        } else if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
            let versioned = n
                .rsplit_once(".so.")
                .is_some_and(|(_, v)| v.parse::<u32>().is_ok());
            if n.starts_with("lib") && versioned {
                found.push(p);
            }
        }
    }
    found
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
# wgpu on the NVIDIA GPU through Vulkan must work there (the pack's lib/ carries what the
# container lacks), so a missing adapter fails the wgpu tests.
export GPUBRIDGE_REQUIRE_WGPU=1
# wgpu: the packed Vulkan loader and GLVND libraries, and the packed NVIDIA ICD manifest where the
# driver has none.
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json"
  export VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
export NODEVICE_SELECT=1
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
./gpubridge run all --backend wgpu > "$OUT/run-all-wgpu.txt" 2>&1; wgpu_rc=$?
# The graph sample at P9's size: parquet written, loaded, components on the GPU, verified.
./gpubridge gen-graph --nodes 10000000 --edges 20000000 --out /tmp/gpubridge-graph --seed 9 > "$OUT/run-graph-cuda.txt" 2>&1
./gpubridge run graph --backend cuda --data /tmp/gpubridge-graph >> "$OUT/run-graph-cuda.txt" 2>&1; graph_rc=$?
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
echo "== run all --backend wgpu (rc $wgpu_rc; VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-driver default})"; cat "$OUT/run-all-wgpu.txt"
echo "== gen-graph 10M/20M, run graph --backend cuda (rc $graph_rc)"; cat "$OUT/run-graph-cuda.txt"
echo "== process start to verified result, tiny vector sample: cold PTX cache $(( (cold_end-cold_start)/1000000 )) ms, warm $(( (warm_end-warm_start)/1000000 )) ms"
echo "== serve --demo-load (rc $serve_rc, scrape rc $scrape_rc, readyz: $readyz); device series in $OUT/scrape.txt:"
tail -2 "$OUT/serve.err"
grep -E '^gpubridge_(gpu_|pool_bytes|graph_cache|bytes_transferred|transfer_|allocation_|kernels_executed)' "$OUT/scrape.txt" | head -60
echo "== tests"; printf '%s' "$summary"
echo "== bench (rc $bench_rc)"; tail -5 "$OUT/bench.err"; cat "$OUT/bench.md"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_packs_into_one_xz_archive_beside_it() {
        let root = std::env::temp_dir().join(format!("xtask-xz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("some-pack/tests")).unwrap();
        std::fs::write(root.join("some-pack/tests/a"), b"abc").unwrap();
        let archive = xz_archive(&root, "some-pack").unwrap();
        assert_eq!(archive, root.join("some-pack-xz/pack.tar.xz"));
        let listed = Command::new("tar")
            .arg("-tJf")
            .arg(&archive)
            .output()
            .unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(listed.contains("some-pack/tests/a"), "{listed}");
        assert!(xz_archive(&root, "no-such-folder").is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
