#!/usr/bin/env bash
# Session 20, device run DK (two GPUs): the release `cuda_runtime` tests of DJ's pack (the
# session's last code) twice with GPUBRIDGE_REQUIRE_GPU=1: placement over both GPUs, a
# preferred device, and the failover of a lost device with nothing lost.
set -u
cd "$(dirname "$0")/../.."
tar -xJf device-pack-xz/pack.tar.xz --wildcards 'device-pack/tests/cuda_runtime-*'
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
nvidia-smi --query-gpu=index,name --format=csv,noheader
for i in 1 2; do
  timeout 200 device-pack/tests/cuda_runtime-* --test-threads=1 > /tmp/cr-$i.log 2>&1; echo "run $i rc $?: $(grep -h 'test result' /tmp/cr-$i.log | sed 's/; finished.*//')"
  grep -h "FAILED\|panicked at" /tmp/cr-$i.log | head -5
done
cp /tmp/cr-1.log $OUT/cuda-runtime-2gpu.log
grep -h "spread_over_every_gpu\|lost_device" /tmp/cr-1.log
