#!/usr/bin/env bash
# Session 16, device run BC: run BB again on the CLI whose soak reserves its samples' memory
# resident before it starts (BB's resident set at rest gained one page every 13.6 s, steadily,
# faults or none: the soak's own record of ~600-byte samples, one every 2 s, written into fresh
# pages of a vector reserved but never touched). Settings as BB (xtask::soak::EXACT_ENV).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
mkdir -p /tmp/bc
timeout 540 load-pack/gpubridge soak --duration ${SOAK:-8m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/bc > /tmp/bc/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/bc/out.txt
cp /tmp/bc/summary.json /tmp/bc/soak.jsonl $OUT/ 2>/dev/null
