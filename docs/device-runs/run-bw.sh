#!/usr/bin/env bash
# Session 18, device run BW: BV showed the slowdown is not CUDA_DEVICE_MAX_CONNECTIONS (32 did
# not move it). Here: `channels` with finer counts of other streams; `one-at-a-time` (each other
# stream made, used and destroyed before the next); and the checkpointed bench with one lane per
# device and with the inline lane off, to see which of the bridge's streams brings it on.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
{
echo "== channels, chain 100"; timeout 100 load-pack/replay_modes 300 100 channels 2>&1 | tail -15
echo "== one at a time, chain 100"; timeout 100 load-pack/replay_modes 300 100 one-at-a-time 2>&1 | tail -7
} | tee $OUT/probe.txt
for v in "" GPUBRIDGE__CUDA__STREAMS_PER_DEVICE=1 GPUBRIDGE__CUDA__INLINE_TINY_PLANS=false; do
  echo "== bench --only P1 ${v:-defaults}"
  env $v GPUBRIDGE_BENCH_CHECKPOINTS=1 timeout 120 load-pack/gpubridge bench --only P1 --out /tmp/p1.json 2>&1 >/dev/null | grep checkpoint | sed -n '1,7p'
done | tee $OUT/checkpoints.txt
