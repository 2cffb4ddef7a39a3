#!/usr/bin/env bash
# Session 12, device run AB: the CUDA storage lanes' bounce buffers as registered huge pages
# (anonymous memory on 2 MiB boundaries, MADV_HUGEPAGE, cuMemHostRegister) instead of
# cuMemHostAlloc: the storage_cuda tests with GPUBRIDGE_REQUIRE_GPU=1 (release), then P6 as in
# run AA (the raw lane-shaped readers still show the former lane's shape).
set -u
xz -dkf load-pack/gpubridge.xz load-pack/storage_cuda.xz && chmod +x load-pack/gpubridge load-pack/storage_cuda
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/ab
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag > /tmp/ab/thp.txt 2>&1
GPUBRIDGE_REQUIRE_GPU=1 load-pack/storage_cuda --test-threads=1 --nocapture > /tmp/ab/test-storage_cuda.log 2>&1; echo "storage_cuda rc $?"
grep -E "^test |bounce buffers|test result" /tmp/ab/test-storage_cuda.log
grep -h "AnonHugePages" /proc/meminfo
GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 500 load-pack/gpubridge bench --only P6 --out /tmp/ab/bench-p6.json > /tmp/ab/bench-p6.md 2> /tmp/ab/bench-p6.err; echo "bench rc $?"
cp /tmp/ab/bench-p6.json $OUT/ ; cd /tmp && tar czf "$OUT/ab.tgz" ab
echo "== THP"; cat /tmp/ab/thp.txt
python3 -c "
import json
for r in json.load(open('/tmp/ab/bench-p6.json')):
    print(r['metric'][:60], round(r['value'],3), round(r['baseline_value'],3), round(r['ratio'],3), r['pass'])
    print('   ', r['note'][:1200])"
