#!/usr/bin/env bash
# Session 18, device run BS: where in the bench's process every raw graph slows down (BR: a raw
# kernel-copy chain of 100 at 0.94 us per kernel at process start, 1.13-1.14 at P1's turn):
# `GPUBRIDGE_BENCH_CHECKPOINTS=1` times that graph at each step of `bench --only P1`, twice.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1 GPUBRIDGE_BENCH_CHECKPOINTS=1
for i in 1 2; do
  echo "== process $i"
  timeout 120 load-pack/gpubridge bench --only P1 --out $OUT/p1-$i.json 2>&1 >/dev/null | grep checkpoint
done | tee $OUT/checkpoints.txt
