#!/usr/bin/env bash
# Session 10, device run V: an 8-minute GPU soak with faults on the CLI with mimalloc (the new
# default allocator), as run Q otherwise, except that the 50 ms stalls come on every 500th
# submission instead of at random (about as many: run Q had ~830 submissions/s and a rate of
# 0.002), so that each latency window holds as many stalls as the next (decided before the run).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
mkdir -p /tmp/v
timeout 570 load-pack/gpubridge soak --duration ${SOAK:-8m} --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/v > /tmp/v/out.txt 2>&1; echo "soak rc $?"
tail -14 /tmp/v/out.txt
cp /tmp/v/*.json $OUT/ 2>/dev/null; cd /tmp && tar czf $OUT/v.tgz v
