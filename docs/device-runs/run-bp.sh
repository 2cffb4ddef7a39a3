#!/usr/bin/env bash
# Session 17, device run BP: after the review (commit 1432467: a failed singles batch split with
# BatchGrain::device_bytes, SmallVecs on the isolation path, kernels::largest_node, one helper for
# the two graph-cache tests): the release cuda_runtime and wgpu_single_isolation test executables
# (as BM), and P9 with the release CLI (validation now through largest_node).
set -u
bash "$(dirname "$0")/run-bm.sh"
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 150 load-pack/gpubridge bench --only P9 --out $OUT/p9.json > /tmp/p9.md 2>&1; echo "P9 rc $?"
grep -E "^\| P9" /tmp/p9.md | cut -c1-300
