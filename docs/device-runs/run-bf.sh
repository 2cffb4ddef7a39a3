#!/usr/bin/env bash
# Session 16, device run BF: the cuda_runtime tests after the review: one way to destroy a graph entry
# (destroy_entry) and one to remember a shape that runs as stream launches (remember_failed).
set -u
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
GPUBRIDGE_REQUIRE_GPU=1 timeout 120 load-pack/cuda_runtime --test-threads=1 > /tmp/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cuda_runtime.log)"
grep -h "panicked\|FAILED\|^test .*graph" /tmp/cuda_runtime.log | head -12
cp /tmp/cuda_runtime.log $OUT/
