#!/usr/bin/env bash
# Session 5, device run C: the rebuilt cuda_runtime tests, then a 7-minute GPU soak with faults
# with cuBLAS's heuristics cache bounded (CUBLASLT_HEURISTICS_CACHE_CAPACITY=256).
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
mkdir -p /tmp/soak
GPUBRIDGE_REQUIRE_GPU=1 timeout 90 ../load-pack/cuda_runtime --test-threads=1 --nocapture > /tmp/soak/cuda_runtime.log 2>&1; trc=$?
echo "cuda_runtime rc $trc: $(grep -h 'test result' /tmp/soak/cuda_runtime.log)"; grep -h "evictions, heap\|panicked" /tmp/soak/cuda_runtime.log
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
./gpubridge soak --duration ${SOAK:-7m} --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults launch:0.002,oom:0.002,copy:0.002,slow=50ms:0.002,lost:every=5000 --out /tmp/soak > /tmp/soak.out 2>&1; rc=$?
cp /tmp/soak.out /tmp/soak/ 2>/dev/null
cd /tmp && tar czf $OUT/soak.tgz soak
echo "soak rc $rc"; tail -8 /tmp/soak.out
