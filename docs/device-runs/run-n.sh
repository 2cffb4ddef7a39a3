#!/usr/bin/env bash
# Session 9, device run N: P6 with every row's samples taken in interleaved rounds (the value our
# median, the baseline the best raw shape's median), and the P6 probe of saves: raw writers from
# heap and from cuMemHostAlloc memory, the CUDA save with and without cuFile's attempt, the host
# save; fsync or commit time and the dirty page cache seen while each ran.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/n
GPUBRIDGE_BENCH_P6_PROBE=saves GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 500 load-pack/gpubridge bench --only P6 --out /tmp/n/bench-p6.json > /tmp/n/bench-p6.md 2> /tmp/n/bench-p6.err; echo "bench rc $?"
cd /tmp && tar czf "$OUT/n.tgz" n
grep -v "^$" /tmp/n/bench-p6.err | tail -25
cut -c1-1500 /tmp/n/bench-p6.md
