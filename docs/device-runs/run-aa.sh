#!/usr/bin/env bash
# Session 12, device run AA: P6 with raw single readers shaped like the CUDA path's lane (into
# cuMemHostAlloc memory, into heap pages locked with cuMemHostRegister, and two cuMemHostAlloc
# buffers in turn with every block copied on to the device) beside the baseline's shapes: where
# the load's gap to the best raw reader (0.735 and 0.747 in runs Y and Z) lies.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/aa
GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 560 load-pack/gpubridge bench --only P6 --out /tmp/aa/bench-p6.json > /tmp/aa/bench-p6.md 2> /tmp/aa/bench-p6.err; echo "bench rc $?"
cp /tmp/aa/bench-p6.json $OUT/ ; cd /tmp && tar czf "$OUT/aa.tgz" aa
python3 -c "
import json
for r in json.load(open('/tmp/aa/bench-p6.json')):
    print(r['metric'][:60], round(r['value'],3), round(r['baseline_value'],3), round(r['ratio'],3), r['pass'])
    print('   ', r['note'][:1100])"
