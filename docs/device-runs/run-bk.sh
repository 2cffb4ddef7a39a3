#!/usr/bin/env bash
# Session 17, device run BK: the cuda_runtime tests of commit 81ee178 (BI's new
# a_poison_single... failed: the executor answered a failed plan before it dropped the plan, whose
# packers still shared the items, so the batch could not be split), the wgpu poison-single test on
# the H200's Vulkan device (the device pack's Vulkan loader and ICD manifest, copied to
# load-pack/vk), and P3's A/B of BJ again
# with the order swapped (new first), rounds 6..8.
set -u
for t in cuda_runtime wgpu_single_isolation gpubridge-old gpubridge-new; do xz -dkf load-pack/$t.xz && chmod +x load-pack/$t; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
GPUBRIDGE_REQUIRE_GPU=1 timeout 200 load-pack/cuda_runtime --test-threads=1 > /tmp/cr.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cr.log | sed 's/; finished.*//')"
grep -h "^test a_poison\|FAILED\|assertion\|caller" /tmp/cr.log | head -8
(
  cd load-pack/vk
  export GPUBRIDGE_REQUIRE_WGPU=1 LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
  fi
  timeout 120 ../wgpu_single_isolation > /tmp/wsi.log 2>&1; echo "wgpu_single_isolation rc $?: $(grep -h 'test result' /tmp/wsi.log | sed 's/; finished.*//')"
  grep -h "runs on\|assertion" /tmp/wsi.log | head -3
)
cp /tmp/cr.log $OUT/cuda_runtime.log
for i in 6 7 8; do for b in new old; do
  timeout 90 load-pack/gpubridge-$b load --backends cuda --rates 1M,1.5M --seconds 2 --out $OUT/load-$b-$i.json > /tmp/load-$b-$i.txt 2>&1
  echo "== $b $i (rc $?)"; grep -E "^cuda " /tmp/load-$b-$i.txt
done; done
