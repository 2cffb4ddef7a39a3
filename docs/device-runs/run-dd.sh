#!/usr/bin/env bash
# Session 20, device run DD: `replay_modes inputs` (the chain's first kernel reading its input
# from mapped host memory instead of a copy kernel first) at chains 10 and 100.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export XDG_CACHE_HOME=/tmp/gpubridge-cache
for n in 10 100 10; do
  echo "== chain $n"; timeout 90 load-pack/replay_modes 2000 $n inputs 2>&1 | tail -6
done | tee $OUT/inputs.txt
