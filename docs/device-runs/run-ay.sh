#!/usr/bin/env bash
# Session 15, device run AY: the cuda_runtime tests (release_caches now also frees the streams'
# pinned staging), then the 8-minute GPU soak with faults (R1, R2) with readings at rest every
# 2 s (caches released: graphs, staging, shapes, idle pool, step cache; glibc trimmed; pages
# counted), on glibc's malloc with two arenas and no per-thread cache (the soak's exact
# allocator settings, as `cargo xtask soak` sets them). Otherwise as run V.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/ay
GPUBRIDGE_REQUIRE_GPU=1 timeout 60 load-pack/cuda_runtime --test-threads=1 > /tmp/ay/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/ay/cuda_runtime.log)"
grep -h "panicked\|FAILED" /tmp/ay/cuda_runtime.log | head -5
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 GLIBC_TUNABLES=glibc.malloc.tcache_count=0
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
timeout 520 load-pack/gpubridge soak --duration ${SOAK:-8m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/ay > /tmp/ay/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/ay/out.txt
cp /tmp/ay/summary.json /tmp/ay/soak.jsonl /tmp/ay/cuda_runtime.log $OUT/ 2>/dev/null
