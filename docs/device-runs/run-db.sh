#!/usr/bin/env bash
# Session 19, device run DB: a 4-minute GPU soak with faults on the device pack's CLI of
# `d9ddc9b` (signal words, no graph uploads, packers dropped with Plan::release_packers), the
# settings of BC (xtask::soak::EXACT_ENV): a regression check of the executor's changes under a
# mixed workload with launch, allocation and copy failures, a slow device and a lost one.
set -u
tar -xJf device-pack-xz/pack.tar.xz
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
mkdir -p /tmp/db
timeout 330 device-pack/gpubridge soak --duration ${SOAK:-4m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/db > /tmp/db/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/db/out.txt
cp /tmp/db/summary.json /tmp/db/soak.jsonl $OUT/ 2>/dev/null
