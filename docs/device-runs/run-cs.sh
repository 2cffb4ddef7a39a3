#!/usr/bin/env bash
# Session 19, device run CS: why P1's raw memcpy graph, alternated with the bridge's calls, ran
# ~10% faster at chain 1000 than alone in the slow mode. `replay_modes alternate`: graphs alone
# and in alternation, on one stream or two, in the slow mode and (FAST=1) without it.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for c in "100 1000" "2000 10"; do
  for f in 0 1; do
    echo "== chain ${c#* }, FAST=$f"; FAST=$f timeout 80 load-pack/replay_modes $c alternate 2>&1 | tail -10
  done
done | tee $OUT/alternate.txt
