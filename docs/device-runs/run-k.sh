#!/usr/bin/env bash
# Session 8, device run K: P6 with the save's temporary file preallocated (fallocate) and the
# raw write baseline taking the best of a growing and a preallocated file; the host-memory save
# row beside it; the file system the bench wrote to (issue 6).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
mkdir -p /tmp/k
{ findmnt -T /tmp; df -h /tmp; uname -r; } > /tmp/k/fs.txt 2>&1
GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 170 $G bench --only P6 --out /tmp/k/bench-p6.json > /tmp/k/bench-p6.md 2> /tmp/k/bench.err; echo "bench rc $?"
cd /tmp && tar czf "$OUT/k.tgz" k
cat /tmp/k/fs.txt
tail -3 /tmp/k/bench.err
cat /tmp/k/bench-p6.md
