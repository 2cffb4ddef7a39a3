#!/usr/bin/env bash
# Session 19, device run CN: what in CL's processes made every graph ~18% faster at one point.
# `replay_modes flag` with PLAIN_ROUNDS=4 (rounds of the memcpy and kernel-copy graphs before
# any signalling graph runs), and without, chains of 1000 and 100; each process twice.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for c in "200 1000" "1000 100"; do
  for plain in 4 0 4 0; do
    echo "== PLAIN_ROUNDS=$plain, $c"
    PLAIN_ROUNDS=$plain timeout 100 load-pack/replay_modes $c flag 2>&1 | head -20
  done
done | tee $OUT/plain.txt
