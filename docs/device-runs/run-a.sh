#!/usr/bin/env bash
# Session 5, device run A: every packed test with GPUBRIDGE_REQUIRE_GPU=1, gpubridge profile on
# CUDA (vector, sum, matrix), and an Nsight Systems capture of the NVTX ranges where nsys exists.
set -u
root=$PWD
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 GPUBRIDGE_REQUIRE_WGPU=1 NODEVICE_SELECT=1
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
export XDG_CACHE_HOME=/tmp/gpubridge-cache
L=/tmp/logs; mkdir -p $L
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; nproc;
  echo "nsys: $(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)";
  ls /usr/local/cuda/bin 2>/dev/null | tr '\n' ' '; echo; ls /opt/nvidia 2>/dev/null; } > $L/gpu.txt 2>&1
summary=""
for t in tests/*; do
  name=$(basename "$t")
  if timeout 300 "./$t" --test-threads=1 > "$L/test-$name.log" 2>&1; then r=pass; else r=FAIL; fi
  line=$(grep -E "^test result" "$L/test-$name.log" | tail -1)
  summary+=$(printf '%-34s %-5s %s' "$name" "$r" "$line")$'\n'
done
for t in tests/cuda_runtime*; do timeout 200 ./$t graph_churn --nocapture --test-threads=1 > $L/churn.log 2>&1; done
./gpubridge profile vector --backend cuda --iterations 5 > $L/profile-vector.txt 2>&1; pv=$?
./gpubridge profile vector --backend cuda --iterations 5 --json > $L/profile-vector.json 2>&1
./gpubridge profile sum --backend cuda --iterations 20 > $L/profile-sum.txt 2>&1; ps=$?
./gpubridge profile matrix --backend cuda --iterations 5 > $L/profile-matrix.txt 2>&1; pm=$?
./gpubridge profile vector --backend cpu --iterations 3 > $L/profile-vector-cpu.txt 2>&1
./gpubridge profile sum --backend cuda --sum-vectors 10 --sum-len 100 --iterations 500 --warmup 20 > $L/profile-p2.txt 2>&1
nsys=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$nsys" ]; then
  timeout 240 "$nsys" profile --trace=cuda,nvtx --force-overwrite=true -o /tmp/gb ./gpubridge profile vector --backend cuda --iterations 2 --pairs 20 > $L/nsys.txt 2>&1
  timeout 120 "$nsys" stats --report nvtx_sum /tmp/gb.nsys-rep >> $L/nsys.txt 2>&1 || timeout 120 "$nsys" stats --report nvtxsum /tmp/gb.nsys-rep >> $L/nsys.txt 2>&1
fi
cd /tmp && tar czf $OUT/logs-a.tgz logs
echo "== gpu"; cat $L/gpu.txt
echo "== profile vector (rc $pv)"; cat $L/profile-vector.txt
echo "== profile sum (rc $ps)"; cat $L/profile-sum.txt
echo "== profile matrix (rc $pm)"; cat $L/profile-matrix.txt
echo "== profile sum 10 x 100 (P2 shape)"; cat $L/profile-p2.txt
echo "== nsys"; grep -v "^\s*$" $L/nsys.txt 2>/dev/null | tail -30
echo "== tests"; printf '%s' "$summary"
echo "== churn"; grep -h "evictions, heap\|test result\|panicked" $L/churn.log
