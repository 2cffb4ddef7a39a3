#!/usr/bin/env bash
# Session 18, device run CD: copies do not count either (CC). Whether a bridge's ordinary work
# (vector adds of 128K floats through the executor's lanes, graphs off) brings the slowdown on,
# with one bridge and then a second; two lanes per device (the default) and one.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
{
echo "== bridge work, two lanes, chain 100"; timeout 100 load-pack/replay_modes 300 100 bridge 2>&1 | tail -15
echo "== bridge work, one lane, chain 100"; BRIDGE_LANES=1 timeout 100 load-pack/replay_modes 300 100 bridge 2>&1 | tail -15
} | tee $OUT/bridge.txt
