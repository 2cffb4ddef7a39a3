#!/usr/bin/env bash
# Session 9, device run Q: a 6-minute GPU soak with faults (R2) on the code of this session (the
# eighth session's priority slots and batch-queue admission had no GPU soak), as run E otherwise.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:0.002,lost:every=5000
mkdir -p /tmp/q
timeout 420 load-pack/gpubridge soak --duration ${SOAK:-6m} --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/q > /tmp/q/out.txt 2>&1; echo "soak rc $?"
tail -12 /tmp/q/out.txt
cd /tmp && tar czf $OUT/q.tgz q
