#!/usr/bin/env bash
# Session 12, device run AD: P7 (a file in tmpfs -> CUDA device buffer) with the bounce buffers
# as registered huge pages (commit 4f870f5's CLI, as run AC).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/ad
GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 200 load-pack/gpubridge bench --only P7 --out /tmp/ad/bench-p7.json > /tmp/ad/bench-p7.md 2> /tmp/ad/bench-p7.err; echo "bench rc $?"
cp /tmp/ad/bench-p7.json $OUT/
tail -3 /tmp/ad/bench-p7.err
python3 -c "
import json
for r in json.load(open('/tmp/ad/bench-p7.json')):
    print(r['id'], r['metric'][:70], round(r['value'],3), r.get('baseline_value'), r.get('ratio'), r['pass'])
    print('   ', r['note'][:700])"
