#!/usr/bin/env bash
# Session 9, device run O: P6 and P7 after the save's commit stopped freeing the replaced file
# inside the journal commit it waits for (the old file held open across rename and directory
# fsync), every P6 row in five interleaved rounds with a syncfs before each timed transfer; the
# probe of saves again (commit times, dirty page cache).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/o
{ findmnt -T /tmp; cat /sys/block/vda/queue/max_sectors_kb /sys/block/vda/queue/nr_requests /sys/block/vda/queue/discard_max_bytes; } > /tmp/o/disk.txt 2>&1
GPUBRIDGE_BENCH_P6_PROBE=saves GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 520 load-pack/gpubridge bench --only P6,P7 --out /tmp/o/bench-p6p7.json > /tmp/o/bench-p6p7.md 2> /tmp/o/bench-p6p7.err; echo "bench rc $?"
cd /tmp && tar czf "$OUT/o.tgz" o
cat /tmp/o/disk.txt
grep -v "^$" /tmp/o/bench-p6p7.err | grep -v "raw read\|load  " | tail -12
cut -c1-1500 /tmp/o/bench-p6p7.md | grep -v "probe of read"
