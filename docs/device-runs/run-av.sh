#!/usr/bin/env bash
# Session 15, device run AV (exploratory): a 5-minute GPU soak with faults (as run V) and the new
# quiescent memory readings (--quiesce 100ms: workloads held, requests in flight ended, glibc's
# free pages trimmed, resident pages counted from smaps_rollup) every 2 s, on glibc's malloc with
# two arenas, to see which memory series are steady enough at rest to bound R1's 1 MiB/h.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=500,lost:every=5000
mkdir -p /tmp/av
timeout 400 load-pack/gpubridge soak --duration ${SOAK:-5m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/av > /tmp/av/out.txt 2>&1; echo "soak rc $?"
tail -14 /tmp/av/out.txt
cp /tmp/av/summary.json /tmp/av/soak.jsonl $OUT/ 2>/dev/null
