#!/usr/bin/env bash
# Session 10, device run T: the CLI with mimalloc as its allocator (the new default): P3's full
# sweep on CUDA and the CPU, the same with batches capped at 160 (zero-copy, run on the runner's
# thread), and P1/P2 on the same binary.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
mkdir -p /tmp/t
$G load --backends cuda,cpu --rates 250k,500k,750k,1M,1.5M,2M --seconds 2 --calibrate --out /tmp/t/load.json > /tmp/t/load.txt 2>&1
echo "load rc $?"; grep -vE "^ +[0-9]+ items" /tmp/t/load.txt | cut -c1-330
GPUBRIDGE__BATCHING__MAX_MICRO_BATCH=160 $G load --backends cuda --rates 1M,1.5M,2M --seconds 2 --out /tmp/t/load-160.json > /tmp/t/load-160.txt 2>&1
echo "load-160 rc $?"; grep -E "^cuda|runners|knee" /tmp/t/load-160.txt | cut -c1-330
$G bench --only P1,P2 --out /tmp/t/p1p2.json > /tmp/t/p1p2.txt 2>&1; echo "bench rc $?"
grep -E "P1|P2" /tmp/t/p1p2.txt | cut -c1-200 | tail -12
cp /tmp/t/*.json $OUT/ ; cd /tmp && tar czf $OUT/t.tgz t
