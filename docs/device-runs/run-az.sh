#!/usr/bin/env bash
# Session 15, device run AZ (diagnostic, the session's last 400 s of device time): a 200-second GPU
# soak as run AY (glibc, two arenas, no tcache; readings at rest every 2 s, now with the
# resident set's anonymous part), with GPUBRIDGE_SOAK_SMAPS=1, to place the ~150 KiB that AY's
# resident set at rest gained over its fitted span while its live heap stayed flat.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 GLIBC_TUNABLES=glibc.malloc.tcache_count=0 GPUBRIDGE_SOAK_SMAPS=1
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
mkdir -p /tmp/az
timeout 240 load-pack/gpubridge soak --duration ${SOAK:-200s} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/az > /tmp/az/out.txt 2>&1; echo "soak rc $?"
tail -7 /tmp/az/out.txt
cp /tmp/az/summary.json /tmp/az/soak.jsonl $OUT/ 2>/dev/null
cd /tmp/az && tar czf $OUT/smaps.tgz smaps
