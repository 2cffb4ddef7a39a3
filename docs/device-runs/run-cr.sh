#!/usr/bin/env bash
# Session 19, device run CR: which graphs each slow mode slows. `replay_modes modes`: the chain's
# memcpy graph and kernel-copy graph timed (host, device) bare, after 24 other streams each ran
# an empty kernel (the eighteenth session's trigger), after a third graph was uploaded and not
# launched (CP's trigger), and after its launch; both orders; chains of 1000, 100 and 10.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for c in "100 1000" "500 100" "2000 10"; do
  for o in streams upload; do
    echo "== chain ${c#* }, $o first"; ORDER=$o timeout 60 load-pack/replay_modes $c modes 2>&1 | tail -6
  done
done | tee $OUT/modes.txt
