#!/usr/bin/env bash
# Session 18, device run BU: BT placed the slowdown of every graph (on the device: 0.91 -> 1.09 us
# per kernel at a chain of 100) between the P1 stream-launch bridge's first call and its next
# three, which run on its other lanes' streams. replay_modes' new `channels` experiment: a raw
# kernel-copy graph timed (host and device) as more other streams run one empty kernel each, on a
# stream of the greatest priority, after a second's rest, after the streams are destroyed.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
for n in 100 10; do
  for i in 1 2; do
    echo "== chain $n, process $i"
    timeout 100 load-pack/replay_modes 500 $n channels 2>&1 | tail -13
  done
done | tee $OUT/channels.txt
