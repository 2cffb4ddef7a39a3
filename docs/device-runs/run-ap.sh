#!/usr/bin/env bash
# Session 14, the replay-modes probe's `pair` experiment (P1's loop without the bridge) in six
# processes, with load-pack/replay_modes.xz (the example of that name) carried.
set -u
cd load-pack && xz -dkf replay_modes.xz && chmod +x replay_modes && export XDG_CACHE_HOME=/tmp/gpubridge-cache
for i in 1 2 3 4 5 6; do echo "== process $i"; timeout 60 ./replay_modes 3000 10 pair | grep -v "^chain"; done
