#!/usr/bin/env bash
# Session 6, device run D: does glibc's per-thread arenas explain the GPU soak's RSS creep?
# Two 4-minute GPU soaks with faults (as run 5: cache 64 MiB, cuBLAS heuristics cache 256),
# the first with MALLOC_ARENA_MAX=2, the second with a fixed mmap threshold.
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:0.002,lost:every=5000
for v in arena2 mmap; do
  mkdir -p /tmp/soak-$v
  case $v in arena2) E="MALLOC_ARENA_MAX=2";; mmap) E="MALLOC_MMAP_THRESHOLD_=131072";; esac
  env $E ./gpubridge soak --duration ${SOAK:-4m} --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
    --faults $F --out /tmp/soak-$v > /tmp/soak-$v/out.txt 2>&1; echo "$v rc $?"
  tail -6 /tmp/soak-$v/out.txt
done
cd /tmp && tar czf $OUT/soak.tgz soak-arena2 soak-mmap
