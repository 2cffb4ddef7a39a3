#!/usr/bin/env bash
# Session 18, device run CA: BZ (one lane per device) saw the slowdown later, at the raw
# baseline's stream launches and graph, so something besides streams counts too. Whether
# graphs do (`graphs`: more and more one-kernel graphs made and launched beside the timed one,
# kept or destroyed again).
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export NODEVICE_SELECT=1
{
echo "== graphs kept, chain 100"; timeout 100 load-pack/replay_modes 300 100 graphs 2>&1 | tail -9
echo "== graphs destroyed, chain 100"; GRAPHS_DESTROY=1 timeout 100 load-pack/replay_modes 300 100 graphs 2>&1 | tail -9
} | tee $OUT/graphs.txt
