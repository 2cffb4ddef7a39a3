#!/usr/bin/env bash
# Session 18, device run BZ: BY still saw the slowdown at the P1 stream-launch bridge's second
# lane, though the process had then made only about eleven streams itself. Whether cuBLAS
# handles (one per executor, made after its lanes) count as made streams (`handles`); and every
# checkpoint of the bench with one lane per device (BW printed only the first seven).
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
echo "== handles, chain 100"; timeout 100 load-pack/replay_modes 300 100 handles 2>&1 | tail -5 | tee $OUT/handles.txt
for v in GPUBRIDGE__CUDA__STREAMS_PER_DEVICE=1; do
  echo "== bench --only P1 $v"
  env $v GPUBRIDGE_BENCH_CHECKPOINTS=1 timeout 120 load-pack/gpubridge bench --only P1 --out /tmp/p1.json 2>&1 >/dev/null | grep checkpoint
done | tee $OUT/checkpoints.txt
