#!/usr/bin/env bash
# Session 19, device run CY (2 GPUs): the release cuda_runtime tests of the final code with
# GPUBRIDGE_REQUIRE_GPU=1 (placement over both GPUs and failover among them, every graph test
# with the signal words on each device's executor), twice.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
nvidia-smi --query-gpu=index,name --format=csv,noheader
for i in 1 2; do
  timeout 240 load-pack/cuda_runtime --test-threads=1 > /tmp/cr-$i.log 2>&1; echo "cuda_runtime $i rc $?: $(grep -h 'test result' /tmp/cr-$i.log | sed 's/; finished.*//')"
  grep -h "FAILED\|panicked at" /tmp/cr-$i.log | head -5
done
cp /tmp/cr-1.log $OUT/cuda-runtime-2gpu.log
