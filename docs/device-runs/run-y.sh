#!/usr/bin/env bash
# Session 12, device run Y: every packed GPU test with GPUBRIDGE_REQUIRE_GPU=1 on the device pack
# of 5b8def4 (no device run since e065520), then P6 once more (storage.adaptive_depth).
set -u
T0=$(date +%s)
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
export GPUBRIDGE_REQUIRE_WGPU=1
L=/tmp/y; mkdir -p $L; : > $L/failed.txt
summary=""
for t in tests/*; do
  n=$(basename "$t")
  s=$(date +%s)
  timeout 150 "./$t" --test-threads=1 > "$L/test-$n.log" 2>&1; rc=$?
  summary+=$(printf '%-36s rc %-3s %4ss %s' "$n" "$rc" "$(( $(date +%s) - s ))" "$(grep -E '^test result' "$L/test-$n.log" | tail -1 | cut -c1-90)")$'\n'
  grep -h "^test .*FAILED\|panicked" "$L/test-$n.log" | head -5 | sed "s/^/    $n: /" >> $L/failed.txt
done
echo "tests done at $(( $(date +%s) - T0 )) s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $L/gpu.txt 2>&1
left=$(( 560 - ($(date +%s) - T0) ))
if [ $left -gt 200 ]; then
  GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout $(( left - 20 )) ./gpubridge bench --only P6 --out $L/bench-p6.json > $L/bench-p6.md 2> $L/bench-p6.err; echo "P6 rc $? at $(( $(date +%s) - T0 )) s"
fi
cd /tmp && tar czf "$OUT/y.tgz" y
echo "== gpu"; cat $L/gpu.txt
echo "== tests"; printf '%s' "$summary"; cat $L/failed.txt
echo "== P6"; [ -f $L/bench-p6.md ] && cut -c1-1500 $L/bench-p6.md
