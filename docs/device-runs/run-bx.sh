#!/usr/bin/env bash
# Session 18, device run BX: BW put the trigger at about sixteen streams that ever ran work in
# the context (even when destroyed since), yet in the bench one lane per device (instead of two)
# avoided the slowdown although the bench runs work on far fewer streams. `lanes` copies the
# executors' lanes (six lanes: 18 streams and 24 timing events made up front) and runs a
# stream-launch call's work on each lane in turn, with and without the events; and the bench
# with three lanes per device, to see at which lane's first use the slowdown comes.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
{
echo "== lanes, chain 100"; timeout 100 load-pack/replay_modes 300 100 lanes 2>&1 | tail -8
echo "== lanes without events, chain 100"; LANES_NO_EVENTS=1 timeout 100 load-pack/replay_modes 300 100 lanes 2>&1 | tail -8
} | tee $OUT/probe.txt
for v in GPUBRIDGE__CUDA__STREAMS_PER_DEVICE=3; do
  echo "== bench --only P1 $v"
  env $v GPUBRIDGE_BENCH_CHECKPOINTS=1 timeout 120 load-pack/gpubridge bench --only P1 --out /tmp/p1.json 2>&1 >/dev/null | grep checkpoint | sed -n '1,7p'
done | tee $OUT/checkpoints.txt
