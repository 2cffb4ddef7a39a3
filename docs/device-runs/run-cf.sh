#!/usr/bin/env bash
# Session 18, device run CF: BG again (every packed test with GPUBRIDGE_REQUIRE_GPU=1 and
# GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11, `run all` on cuda, cpu and wgpu) on the device pack
# of the final code (`cargo xtask device-pack`), then `bench --only P1,P2,P4,P8` with the pack's CLI.
set -u
RUN=cf bash "$(dirname "$0")/run-bg.sh"
cd "$(dirname "$0")/../../device-pack"
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 ./gpubridge bench --only P1,P2,P4,P8 --out $OUT/bench.json > /tmp/bench.md 2>&1; echo "bench rc $?"
grep -E "^\| P" /tmp/bench.md | cut -c1-230
