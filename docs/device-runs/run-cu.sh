#!/usr/bin/env bash
# Session 19, device run CU: in P1's rows the raw memcpy graph, alternated with the bridge's
# calls, ran chain 1000 at 0.915 us per kernel where the bridge's graph and the raw kernel-copy
# graph ran 1.02, with no slow mode between them (CS found alternation itself changes nothing).
# `replay_modes addresses`: the chain over buffers at 80 device addresses, each graph timed.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for c in "30 1000" "30 1000" "300 100"; do
  echo "== chain ${c#* }"; timeout 100 load-pack/replay_modes $c addresses 2>&1 | tail -21
done | tee $OUT/addresses.txt
