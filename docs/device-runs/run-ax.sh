#!/usr/bin/env bash
# Session 15, device run AX (diagnostic): the cuda_runtime tests again (the release test's shapes
# fixed: run AW's 4 x 1000 pairs ran zero-copy, not as a graph), then a 3.5-minute GPU soak as run
# AW with GPUBRIDGE_SOAK_SMAPS=1: /proc/self/smaps copied at every reading at rest, to name the
# mappings whose resident pages move by megabytes between them.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/ax
GPUBRIDGE_REQUIRE_GPU=1 timeout 120 load-pack/cuda_runtime --test-threads=1 > /tmp/ax/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/ax/cuda_runtime.log)"
grep -h "panicked\|FAILED" /tmp/ax/cuda_runtime.log | head -5
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 GPUBRIDGE_SOAK_SMAPS=1
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
timeout 300 load-pack/gpubridge soak --duration ${SOAK:-210s} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/ax > /tmp/ax/out.txt 2>&1; echo "soak rc $?"
tail -6 /tmp/ax/out.txt
cp /tmp/ax/summary.json /tmp/ax/soak.jsonl /tmp/ax/cuda_runtime.log $OUT/ 2>/dev/null
cd /tmp/ax && tar czf $OUT/smaps.tgz smaps && ls -la $OUT
