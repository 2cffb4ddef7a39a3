#!/usr/bin/env bash
# Session 16, device run BA (diagnostic): the cuda_runtime tests (the release_caches refactor
# of 5b668b1 not yet run on a GPU), then a 5-minute GPU soak as run AY (faults, readings at rest
# every 2 s, glibc with two arenas and no tcache) on this session's code (the library's threads
# touch 64 KiB of stack at start; the storage I/O pool starts a thread only for a job that finds
# every thread busy), with each reading at rest taken apart (`parts`: threads, Rust's and C's
# heap, resident set by kind of mapping), smaps copied at each, and Rust's blocks of 64 KiB and
# more that outlive a reading after the warm-up listed with their call stacks (the CLI carried
# with its symbol table). To place the late one-off steps of runs AY and AZ.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/ba
GPUBRIDGE_REQUIRE_GPU=1 timeout 90 load-pack/cuda_runtime --test-threads=1 > /tmp/ba/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/ba/cuda_runtime.log)"
grep -h "panicked\|FAILED" /tmp/ba/cuda_runtime.log | head -5
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 GLIBC_TUNABLES=glibc.malloc.tcache_count=0
export GPUBRIDGE_SOAK_SMAPS=1 GPUBRIDGE_SOAK_TRACE_ALLOC=65536
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
timeout 400 load-pack/gpubridge soak --duration ${SOAK:-300s} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/ba > /tmp/ba/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/ba/out.txt
cp /tmp/ba/summary.json /tmp/ba/soak.jsonl /tmp/ba/cuda_runtime.log $OUT/ 2>/dev/null
cp /tmp/ba/alloc-trace.txt $OUT/ 2>/dev/null
cd /tmp/ba && tar czf $OUT/smaps.tgz smaps
