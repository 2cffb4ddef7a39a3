#!/usr/bin/env bash
# Session 18, device run BT: BS again with the checkpoints timing the raw graph on the device too
# (events around the launch) and two more checkpoints (after the first stream-launch call of each
# chain, after three more), to tell a slower GPU from a slower launch or wait:
# `GPUBRIDGE_BENCH_CHECKPOINTS=1` times that graph (host and, by events, device) at each step of
# `bench --only P1`, twice.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1 GPUBRIDGE_BENCH_CHECKPOINTS=1
for i in 1 2; do
  echo "== process $i"
  timeout 120 load-pack/gpubridge bench --only P1 --out $OUT/p1-$i.json 2>&1 >/dev/null | grep checkpoint
done | tee $OUT/checkpoints.txt
