#!/usr/bin/env bash
# Session 14, device run AR: the CLI of the final device pack with wgpu left closed beside CUDA by
# default: `devices`, `run all` on the best backend, on CUDA and on wgpu (asked for by name), and
# `profile vector --backend cuda`.
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
./gpubridge devices; echo "devices rc $?"
for b in auto cuda wgpu; do
  timeout 200 ./gpubridge run all --backend $b 2>&1 | tail -8; echo "run all --backend $b rc $?"
done
timeout 100 ./gpubridge profile vector --backend cuda 2>&1 | tail -14; echo "profile rc $?"
