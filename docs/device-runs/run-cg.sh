#!/usr/bin/env bash
# Session 18, device run CG: CF's one failure was kernel_panics' 32-singles test, whose batch ran
# short (2 of 32): the batcher took a batch it had counted full before its last callers' pushes
# landed. With the fix (the runner waits, at most 10 ms, for the places counted): P3's load at 1M
# and 1.5M singles a second with the release CLI, to check the gathering costs nothing there.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for i in 1 2; do
  timeout 90 load-pack/gpubridge load --backends cuda --rates 1M,1.5M --seconds 2 --out $OUT/load-$i.json > /tmp/load-$i.txt 2>&1; echo "load ($i) rc $?"
  tail -6 /tmp/load-$i.txt
done
