#!/usr/bin/env bash
# Session 10, device run W: P3's sweep with the load generator's pacing thread (the new default:
# sends woken within a 100 us slot of their schedule instead of on tokio's millisecond timer
# ticks), CUDA and the CPU, then the same rates on CUDA with tokio's timers (the old pacing).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
mkdir -p /tmp/w
$G load --backends cuda,cpu --rates 250k,500k,750k,1M,1.5M,2M --seconds 2 --calibrate --out /tmp/w/load.json > /tmp/w/load.txt 2>&1
echo "load rc $?"; grep -vE "^ +[0-9]+ +[0-9.]+ " /tmp/w/load.txt | cut -c1-330
$G load --backends cuda --pacer timer --rates 750k,1M,1.5M --seconds 2 --out /tmp/w/load-timer.json > /tmp/w/load-timer.txt 2>&1
echo "load-timer rc $?"; grep -E "^cuda|runners|knee" /tmp/w/load-timer.txt | cut -c1-330
cp /tmp/w/*.json $OUT/ ; cd /tmp && tar czf $OUT/w.tgz w
