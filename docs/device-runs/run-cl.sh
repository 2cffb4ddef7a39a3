#!/usr/bin/env bash
# Session 19, device run CL: how soon the host can know a small graph is done. `replay_modes
# flag`: a kernel-copy graph whose last kernel (or one more one-thread kernel) writes a counter
# into mapped host memory after a system fence; the host spins on it, against cuStreamQuery and
# cuStreamSynchronize (the raw baseline's wait). Chains of 10, 100 and 1000.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for c in "3000 10" "1000 100" "200 1000"; do
  timeout 150 load-pack/replay_modes $c flag 2>&1
done | tee $OUT/flag.txt
