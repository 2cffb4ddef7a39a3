#!/usr/bin/env bash
# Session 18, device run CC: threads do not count either (CB). In the bench the slowdown came
# when a second stream made async copies (the P1 stream-launch bridge's second lane; with one
# lane, the raw baseline's memcpy chain). `copies`: stream after stream makes one 128-byte copy.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export NODEVICE_SELECT=1
{
echo "== copies H2D, chain 100"; timeout 100 load-pack/replay_modes 300 100 copies 2>&1 | tail -7
echo "== copies D2H, chain 100"; COPIES_D2H=1 timeout 100 load-pack/replay_modes 300 100 copies 2>&1 | tail -7
echo "== copies H2D, s0 first, chain 100"; COPIES_S0=1 timeout 100 load-pack/replay_modes 300 100 copies 2>&1 | tail -8
} | tee $OUT/copies.txt
