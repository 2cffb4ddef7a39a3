#!/usr/bin/env bash
# Session 18, device run CK: the final code's release test executables that the batcher fix
# touches, with GPUBRIDGE_REQUIRE_GPU=1: cuda_runtime (its poison-single test goes through the
# batcher on the GPU), and gpubridge-core's batcher and kernel_panics (CF's one failure), five
# times each.
set -u
cd "$(dirname "$0")/../.."
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for b in cuda_runtime batcher kernel_panics; do
  xz -dkf load-pack/$b.xz && chmod +x load-pack/$b
  for i in 1 2 3 4 5; do
    timeout 120 load-pack/$b > /tmp/$b.log 2>&1; echo "$b ($i) rc $?: $(grep -h 'test result' /tmp/$b.log | sed 's/; finished.*//')"
    grep -h "^test .*FAILED" /tmp/$b.log | head -3
  done
done
