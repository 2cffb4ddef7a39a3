#!/usr/bin/env bash
# Session 12, device run AC: commit 4f870f5 (bounce buffers as registered huge pages; the depth
# probe keeps 16 readers only when they beat one by more than 15%): the storage_cuda tests with
# GPUBRIDGE_REQUIRE_GPU=1 (release), then P6 twice, a fresh process each.
set -u
xz -dkf load-pack/gpubridge.xz load-pack/storage_cuda.xz && chmod +x load-pack/gpubridge load-pack/storage_cuda
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/ac
GPUBRIDGE_REQUIRE_GPU=1 load-pack/storage_cuda --test-threads=1 --nocapture > /tmp/ac/test-storage_cuda.log 2>&1; echo "storage_cuda rc $?"
grep -E "bounce buffers|test result" /tmp/ac/test-storage_cuda.log
for i in 1 2; do
  GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 280 load-pack/gpubridge bench --only P6 --out /tmp/ac/bench-p6-$i.json > /tmp/ac/bench-p6-$i.md 2> /tmp/ac/bench-p6-$i.err; echo "bench $i rc $?"
done
cp /tmp/ac/bench-p6-*.json $OUT/ ; cd /tmp && tar czf "$OUT/ac.tgz" ac
for i in 1 2; do python3 -c "
import json
for r in json.load(open('/tmp/ac/bench-p6-$i.json')):
    print(r['metric'][:60], round(r['value'],3), round(r['baseline_value'],3), round(r['ratio'],3), r['pass'])
    if 'cold page cache' in r['metric'] and 'CUDA' in r['metric'] or 'by storage' in r['metric']: print('   ', r['note'][:1300])"; done
