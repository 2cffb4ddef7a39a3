#!/usr/bin/env bash
# Session 17, device run BM: the cuda_runtime tests and the wgpu poison-single test after their
# kernels became one shared `testing::PoisonAdd` (commit 61c7696), on the H200 (CUDA) and its
# Vulkan device (the device pack's Vulkan loader and ICD manifest in load-pack/vk).
set -u
for t in cuda_runtime wgpu_single_isolation; do xz -dkf load-pack/$t.xz && chmod +x load-pack/$t; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
GPUBRIDGE_REQUIRE_GPU=1 timeout 200 load-pack/cuda_runtime --test-threads=1 > /tmp/cr.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cr.log | sed 's/; finished.*//')"
grep -h "^test a_p\|FAILED\|assertion" /tmp/cr.log | head -8
cd load-pack/vk
export GPUBRIDGE_REQUIRE_WGPU=1 LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
timeout 120 ../wgpu_single_isolation > /tmp/wsi.log 2>&1; echo "wgpu_single_isolation rc $?: $(grep -h 'test result' /tmp/wsi.log | sed 's/; finished.*//')"
grep -h "assertion" /tmp/wsi.log | head -3
