#!/usr/bin/env bash
# Session 16, device run BB: the 8-minute GPU soak with faults (R1, R2) on the CLI of run BA
# (stacks prefaulted, storage pool exact, readings at rest taken apart), under the soak's exact
# settings as `cargo xtask soak` now sets them (xtask::soak::EXACT_ENV): glibc for Rust too, two
# arenas, no tcache, mmap and trim thresholds fixed at 128 KiB, CUDA_MODULE_LOADING=EAGER. The
# 50 ms stalls every 2000th submission instead of every 500th: at every 500th they delayed about
# 1% of the singles, so that each window's P99 fell on the stalls' tail or not by chance (run
# BA's last window 27.9 ms against its first's 16.4 ms; AY's went the other way).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
mkdir -p /tmp/bb
timeout 540 load-pack/gpubridge soak --duration ${SOAK:-8m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/bb > /tmp/bb/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/bb/out.txt
cp /tmp/bb/summary.json /tmp/bb/soak.jsonl $OUT/ 2>/dev/null
