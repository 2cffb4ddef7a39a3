#!/usr/bin/env bash
# Session 17, device run BG: the whole device pack of this session's code (`cargo xtask
# device-pack`), first half of `device-pack/run.sh`: every packed test executable with
# GPUBRIDGE_REQUIRE_GPU=1 and GPUBRIDGE_REQUIRE_WGPU=1, the devices, process start to a verified
# result with a cold and a warm PTX cache (P11), and `run all` on cuda, cpu and wgpu. The logs go
# back as one archive (the device tool returns at most eight files), named after RUN (bg).
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 GPUBRIDGE_REQUIRE_WGPU=1
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
RUN=${RUN:-bg}; L=/tmp/$RUN; mkdir -p $L
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > $L/gpu.txt 2>&1
summary=""
for t in tests/*; do
  name=$(basename "$t")
  s=$(date +%s)
  if timeout 300 "./$t" --test-threads=1 > "$L/test-$name.log" 2>&1; then r=pass; else r=FAIL; fi
  line=$(grep -E "^test result" "$L/test-$name.log" | tail -1 | sed 's/; finished in.*//')
  summary+=$(printf '%-42s %-5s %4ss %s' "$name" "$r" "$(( $(date +%s) - s ))" "$line")$'\n'
done
./gpubridge devices > $L/devices.txt 2>&1
c0=$(date +%s%N); ./gpubridge run vector --backend cuda --pairs 1 --len 1000 > $L/cold.txt 2>&1; c1=$(date +%s%N)
w0=$(date +%s%N); ./gpubridge run vector --backend cuda --pairs 1 --len 1000 > $L/warm.txt 2>&1; w1=$(date +%s%N)
./gpubridge run all --backend cuda > $L/run-all-cuda.txt 2>&1; cuda_rc=$?
./gpubridge run all --backend cpu > $L/run-all-cpu.txt 2>&1; cpu_rc=$?
./gpubridge run all --backend wgpu > $L/run-all-wgpu.txt 2>&1; wgpu_rc=$?
tar -czf $OUT/$RUN-logs.tgz -C /tmp $RUN
echo "== gpu"; cat $L/gpu.txt
echo "== devices"; head -20 $L/devices.txt
echo "== run all --backend cuda (rc $cuda_rc)"; cat $L/run-all-cuda.txt
echo "== run all --backend cpu (rc $cpu_rc)"; tail -12 $L/run-all-cpu.txt
echo "== run all --backend wgpu (rc $wgpu_rc)"; tail -12 $L/run-all-wgpu.txt
echo "== P11: process start to verified result: cold PTX cache $(( (c1-c0)/1000000 )) ms, warm $(( (w1-w0)/1000000 )) ms"
echo "== tests"; printf '%s' "$summary"
