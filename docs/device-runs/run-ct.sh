#!/usr/bin/env bash
# Session 19, device run CT: where the chain's kernels run in each mode (`replay_modes
# placement`: kernels that log their SM), chains of 1000 and 100, two processes each.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for c in "100 1000" "100 1000" "300 100" "1000 10"; do
  echo "== chain ${c#* }"; timeout 60 load-pack/replay_modes $c placement 2>&1 | tail -2
done | tee $OUT/placement.txt
