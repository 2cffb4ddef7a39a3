#!/usr/bin/env bash
# Session 10, device run X: P6 with storage.adaptive_depth (on by default): a large O_DIRECT read
# measures one reader against storage.threads on its first tasks and reads the rest at the
# faster depth, remembered for the disk for a minute. Five interleaved rounds per row, as run P.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/x
GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 500 load-pack/gpubridge bench --only P6 --out /tmp/x/bench-p6.json > /tmp/x/bench-p6.md 2> /tmp/x/bench-p6.err; echo "bench rc $?"
cp /tmp/x/bench-p6.json $OUT/ ; cd /tmp && tar czf "$OUT/x.tgz" x
grep -v "^$" /tmp/x/bench-p6.err | grep -v "raw read\|load  " | tail -8
cut -c1-1800 /tmp/x/bench-p6.md
