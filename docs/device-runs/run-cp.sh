#!/usr/bin/env bash
# Session 19, device run CP: CO found a second graph of the chain, captured and uploaded but not
# launched, slows every graph ~18% until it is launched. `replay_modes pending`: where it is
# captured and uploaded, whether destroying it instead ends the slow mode, the plain graph timed
# on its own stream and another after each step. Chain 1000, then 100.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
run() { echo "== $*"; env "$@" timeout 60 load-pack/replay_modes $REPS $N pending 2>&1 | tail -6; }
{
REPS=100 N=1000
run CAP=s0 UPLOAD=s0 ACTION=launch
run CAP=s0 UPLOAD=none ACTION=launch
run CAP=s1 UPLOAD=s1 ACTION=launch
run CAP=s0 UPLOAD=s1 ACTION=launch
run CAP=s0 UPLOAD=s0 ACTION=destroy
run CAP=s0 UPLOAD=none ACTION=destroy
REPS=500 N=100
run CAP=s0 UPLOAD=s0 ACTION=launch
run CAP=s0 UPLOAD=none ACTION=destroy
} | tee $OUT/pending.txt
