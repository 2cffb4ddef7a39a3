#!/usr/bin/env bash
# Session 18, device run CE: one bridge's ordinary work brings the slowdown on (CD: with two
# lanes between its 10th and 100th vector add; with one lane only in a second bridge). Whether
# memory does: `memory` with device memory, pinned host memory, and cuMemGetInfo calls.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export NODEVICE_SELECT=1
for m in device pinned info; do
  echo "== memory $m, chain 100"; MEMORY=$m timeout 100 load-pack/replay_modes 300 100 memory 2>&1 | tail -9
done | tee $OUT/memory.txt
