#!/usr/bin/env bash
# Session 12, device run Z: the device pack with Plan::reuse_steps (the bench's chain reuses its
# launches by length; CUDA replays skip the comparison for the list their graph last ran):
# every packed GPU test with GPUBRIDGE_REQUIRE_GPU=1, then P1 and P2, then P6 once more.
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
L=/tmp/z; mkdir -p $L; : > $L/failed.txt
summary=""
for t in tests/*; do
  n=$(basename "$t")
  s=$(date +%s)
  timeout 150 "./$t" --test-threads=1 > "$L/test-$n.log" 2>&1; rc=$?
  summary+=$(printf '%-36s rc %-3s %4ss %s' "$n" "$rc" "$(( $(date +%s) - s ))" "$(grep -E '^test result' "$L/test-$n.log" | tail -1 | cut -c1-60)")$'\n'
  grep -h "^test .*FAILED\|panicked" "$L/test-$n.log" | head -5 | sed "s/^/    $n: /" >> $L/failed.txt
done
echo "tests done at $(( $(date +%s) - T0 )) s"
grep -h "reused_steps" $L/test-cuda_runtime-*.log
timeout 200 ./gpubridge bench --only P1,P2 --out $L/bench-p1p2.json > $L/bench-p1p2.md 2> $L/bench-p1p2.err; echo "P1,P2 rc $? at $(( $(date +%s) - T0 )) s"
left=$(( 570 - ($(date +%s) - T0) ))
if [ $left -gt 200 ]; then
  GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout $(( left - 15 )) ./gpubridge bench --only P6 --out $L/bench-p6.json > $L/bench-p6.md 2> $L/bench-p6.err; echo "P6 rc $? at $(( $(date +%s) - T0 )) s"
fi
cd /tmp && tar czf "$OUT/z.tgz" z
echo "== tests"; printf '%s' "$summary" | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'; cat $L/failed.txt
echo "== P1 P2"; python3 - <<'PY' 2>/dev/null || cut -c1-400 $L/bench-p1p2.md
import json
for r in json.load(open('/tmp/z/bench-p1p2.json')):
    v, b = r.get('value'), r.get('baseline_value')
    print(r['id'], r['metric'][:70], round(v, 3) if v else v, round(b, 3) if b else b, round(r['ratio'], 3) if r.get('ratio') else None, r.get('pass'))
    print('   ', r['note'][:420])
PY
echo "== P6"; [ -f $L/bench-p6.json ] && python3 -c "
import json
for r in json.load(open('/tmp/z/bench-p6.json')):
    print(r['metric'][:60], round(r['value'],3), round(r['baseline_value'],3), round(r['ratio'],3), r['pass'])"
