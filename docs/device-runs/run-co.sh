#!/usr/bin/env bash
# Session 19, device run CO: CN's switch (every graph ~18% faster from the first replays of the
# chain's kernel-copy graph with a one-thread `signal` kernel after it) taken apart: the same
# chain with other tails, and tails alone (`replay_modes switch`), one process each, chain 1000
# (and chain 100 for the first few).
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
run() { echo "== $*"; env "$@" timeout 60 load-pack/replay_modes $REPS $N switch 2>&1 | tail -5; }
{
REPS=200 N=1000
for t in signal none copy idle fence_only fence_device host_write signal; do run TAIL=$t; done
for t in signal idle; do run TAIL=$t ONLY=1; done
REPS=1000 N=100
for t in signal none copy idle; do run TAIL=$t; done
} | tee $OUT/switch.txt
