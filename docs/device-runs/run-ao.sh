#!/usr/bin/env bash
# Session 14, device run AO: is P1's per-process slow mode the wgpu backend's Vulkan device on the
# same GPU? `bench --only P1` (the device pack of 14ea5bb) alternately with the wgpu backend
# enabled (the default: each of the bench's three bridges opens a Vulkan device on the H200) and
# disabled (GPUBRIDGE__WGPU__ENABLED=false), four processes each.
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
L=/tmp/ao; mkdir -p $L
for i in 1 2 3 4; do
  timeout 100 ./gpubridge bench --only P1 --out $L/p1-wgpu-$i.json > $L/p1-wgpu-$i.md 2>&1; echo "wgpu $i rc $?"
  GPUBRIDGE__WGPU__ENABLED=false timeout 100 ./gpubridge bench --only P1 --out $L/p1-nowgpu-$i.json > $L/p1-nowgpu-$i.md 2>&1; echo "no wgpu $i rc $?"
done
nvidia-smi --query-compute-apps=pid,name --format=csv > $L/apps.txt 2>&1
cd /tmp && tar czf "$OUT/ao.tgz" ao
for f in $L/p1-*.json; do F=$f python3 - <<'PY'
import json, os, re
f = os.environ['F']
for r in json.load(open(f)):
    if r['id'] == 'P1' and 'chain of' in r['metric'] and 'spin' in r['metric']:
        n = re.search(r'chain of (\d+)', r['metric']).group(1)
        kc = re.search(r'copy, ([\d.]+) us/kernel', r['note'])
        alone = re.search(r'alone \(not interleaved\) ([\d.]+)', r['note'])
        call = re.search(r'per call ([\d.]+) us of which request start to submission ([\d.]+) us, executor pack\+replay\+wait ([\d.]+)', r['note'])
        below = re.search(r'\((\d+)% below\)', r['note'])
        print(os.path.basename(f)[3:-5], n, 'bridge', round(r['value'], 3), 'raw', round(r['baseline_value'], 3), 'ratio', round(r['ratio'], 3), r['pass'], below.group(1) + '%', 'kc', kc.group(1), 'alone', alone.group(1), 'call', call.group(1), 'replay', call.group(3))
PY
done
