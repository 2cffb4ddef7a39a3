#!/usr/bin/env bash
# Session 13, device run AF: AE again after review: cuBLAS graphs stay on the executor, GraphStats::same_steps_replays,
# P1's chain of n kernels is n kernels and its raw replays interleave with the bridge's calls;
# the profiling double (examples/overhead) on the device host:
# every packed GPU test with GPUBRIDGE_REQUIRE_GPU=1, then P1 and P2 twice (two processes), P3 at
# 1M and 1.5M offered (the batcher's runners spin, so they replay graphs themselves now), then P6.
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
L=/tmp/af; mkdir -p $L; : > $L/failed.txt
summary=""
for t in tests/*; do
  n=$(basename "$t")
  s=$(date +%s)
  timeout 150 "./$t" --test-threads=1 > "$L/test-$n.log" 2>&1; rc=$?
  summary+=$(printf '%-36s rc %-3s %4ss %s' "$n" "$rc" "$(( $(date +%s) - s ))" "$(grep -E '^test result' "$L/test-$n.log" | tail -1 | cut -c1-60)")$'\n'
  grep -h "^test .*FAILED\|panicked" "$L/test-$n.log" | head -5 | sed "s/^/    $n: /" >> $L/failed.txt
done
echo "tests done at $(( $(date +%s) - T0 )) s"
grep -h "spinning_callers\|reused_steps" $L/test-cuda_runtime-*.log
for i in 1 2; do
  timeout 200 ./gpubridge bench --only P1,P2 --out $L/bench-p1p2-$i.json > $L/bench-p1p2-$i.md 2> $L/bench-p1p2-$i.err; echo "P1,P2 ($i) rc $? at $(( $(date +%s) - T0 )) s"
done
for mode in "" "--executor-thread"; do
  timeout 60 ../load-pack/overhead 100000 $mode > $L/overhead$mode.txt 2>&1; echo "overhead $mode rc $?"
done
timeout 120 ./gpubridge load --backends cuda --rates 1M,1.5M --seconds 2 --out $L/load.json > $L/load.txt 2>&1; echo "load rc $? at $(( $(date +%s) - T0 )) s"
left=$(( 570 - ($(date +%s) - T0) ))
if [ $left -gt 200 ]; then
  GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout $(( left - 15 )) ./gpubridge bench --only P6 --out $L/bench-p6.json > $L/bench-p6.md 2> $L/bench-p6.err; echo "P6 rc $? at $(( $(date +%s) - T0 )) s"
fi
cd /tmp && tar czf "$OUT/af.tgz" af
echo "== tests"; printf '%s' "$summary" | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'; cat $L/failed.txt
for i in 1 2; do
echo "== P1 P2 ($i)"; I=$i python3 - <<'PY' 2>/dev/null || cut -c1-400 $L/bench-p1p2-$i.md
import json, os
for r in json.load(open('/tmp/af/bench-p1p2-%s.json' % os.environ['I'])):
    v, b = r.get('value'), r.get('baseline_value')
    print(r['id'], r['metric'][:70], round(v, 3) if v else v, round(b, 3) if b else b, round(r['ratio'], 3) if r.get('ratio') else None, r.get('pass'))
    print('   ', r['note'][:420])
PY
done
echo "== overhead double"; cat $L/overhead*.txt | cut -c1-200
echo "== P3"; grep -E "^cuda|runners|knee" $L/load.txt | cut -c1-330
echo "== P6"; [ -f $L/bench-p6.json ] && python3 -c "
import json
for r in json.load(open('/tmp/af/bench-p6.json')):
    print(r['metric'][:60], round(r['value'],3), round(r['baseline_value'],3), round(r['ratio'],3), r['pass'])"
