#!/usr/bin/env bash
# Session 16, device run BE: run BD again after the cuda_runtime tests' sum batches were drawn and checked by two
# helpers (int_rows, sums_checked) instead of seven copies of the same lines.
set -u
xz -dkf load-pack/cuda_runtime.xz && chmod +x load-pack/cuda_runtime
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
GPUBRIDGE_REQUIRE_GPU=1 timeout 120 load-pack/cuda_runtime --test-threads=1 > /tmp/cuda_runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cuda_runtime.log)"
grep -h "panicked\|FAILED\|^test .*graph" /tmp/cuda_runtime.log | head -12
cp /tmp/cuda_runtime.log $OUT/
