#!/usr/bin/env bash
# Session 14, device run AT: the release `cuda_runtime` tests (load-pack/cuda_runtime.xz) after
# the kernel-copy test's lengths were kept in one bucket (AS: 1121 floats fell in the next one),
# three times with GPUBRIDGE_REQUIRE_GPU=1.
set -u
cd load-pack && xz -dkf cuda_runtime.xz && chmod +x cuda_runtime
export GPUBRIDGE_REQUIRE_GPU=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
for i in 1 2 3; do ./cuda_runtime --test-threads=1 2>&1 | grep -E "small_graphs|test result|FAILED|panicked"; done
