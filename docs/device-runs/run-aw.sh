#!/usr/bin/env bash
# Session 15, device run AW (exploratory): the cuda_runtime tests (the new
# released_caches_are_given_back_and_rebuilt_on_demand among them), then a 4-minute GPU soak with
# faults as run AV, its readings at rest now taken with the device's caches released
# (CudaBackend::release_caches: cached graphs, remembered shapes, idle pool memory) before
# glibc's free pages are trimmed and the resident pages counted; the device read as the driver
# reports it.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/aw
GPUBRIDGE_REQUIRE_GPU=1 timeout 120 load-pack/cuda_runtime --test-threads=1 > /tmp/aw/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/aw/cuda_runtime.log)"
grep -h "panicked\|FAILED" /tmp/aw/cuda_runtime.log | head -5
cat /sys/kernel/mm/transparent_hugepage/enabled
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
timeout 330 load-pack/gpubridge soak --duration ${SOAK:-4m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/aw > /tmp/aw/out.txt 2>&1; echo "soak rc $?"
tail -12 /tmp/aw/out.txt
cp /tmp/aw/summary.json /tmp/aw/soak.jsonl /tmp/aw/cuda_runtime.log $OUT/ 2>/dev/null
