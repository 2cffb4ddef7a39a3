#!/usr/bin/env bash
# Session 9, device run P: P6 with each timed save writing a new file (the previous one removed,
# untimed), as the raw writer does; the probe of saves, which replace the file, now releasing the
# old file on a thread of their own after the commit. Five interleaved rounds per row, a syncfs
# before each timed transfer.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/p
{ findmnt -T /tmp; cat /sys/block/vda/queue/max_sectors_kb /sys/block/vda/queue/nr_requests /sys/block/vda/queue/discard_max_bytes; } > /tmp/p/disk.txt 2>&1
GPUBRIDGE_BENCH_P6_PROBE=saves GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 450 load-pack/gpubridge bench --only P6 --out /tmp/p/bench-p6.json > /tmp/p/bench-p6.md 2> /tmp/p/bench-p6.err; echo "bench rc $?"
cd /tmp && tar czf "$OUT/p.tgz" p
cat /tmp/p/disk.txt
grep -v "^$" /tmp/p/bench-p6.err | grep -v "raw read\|load  " | tail -12
cut -c1-1500 /tmp/p/bench-p6.md | grep -v "probe of read"
