#!/usr/bin/env bash
# Session 16, device run BD: the cuda_runtime tests with the graph cache no longer keeping an entry
# larger than its whole budget (its device block fitted, its pinned staging did not): the test of
# eviction now asserts the bytes within the budget with no exception, and a new test runs such a
# shape four times (answers right, on CUDA, no graph kept).
set -u
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
GPUBRIDGE_REQUIRE_GPU=1 timeout 120 load-pack/cuda_runtime --test-threads=1 > /tmp/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cuda_runtime.log)"
grep -h "panicked\|FAILED\|^test .*graph" /tmp/cuda_runtime.log | head -12
cp /tmp/cuda_runtime.log $OUT/
