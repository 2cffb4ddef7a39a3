#!/usr/bin/env bash
# Session 14, device run AU: the device pack after review (metric handles lent to closures, the
# baseline's chain on the executor's mapped staging, the wgpu rule in one function): every packed
# GPU test with GPUBRIDGE_REQUIRE_GPU=1 and GPUBRIDGE_REQUIRE_WGPU=1, P1 and P2 in two processes,
# `devices`.
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
L=/tmp/au; mkdir -p $L; : > $L/failed.txt
summary=""
for t in tests/*; do
  n=$(basename "$t")
  s=$(date +%s)
  timeout 150 "./$t" --test-threads=1 > "$L/test-$n.log" 2>&1; rc=$?
  summary+=$(printf '%-36s rc %-3s %4ss %s' "$n" "$rc" "$(( $(date +%s) - s ))" "$(grep -E '^test result' "$L/test-$n.log" | tail -1 | cut -c1-60)")$'\n'
  grep -h "^test .*FAILED\|panicked" "$L/test-$n.log" | head -5 | sed "s/^/    $n: /" >> $L/failed.txt
done
echo "tests done at $(( $(date +%s) - T0 )) s"
for i in 1 2; do
  timeout 150 ./gpubridge bench --only P1,P2 --out $L/bench-p1p2-$i.json > $L/bench-p1p2-$i.md 2> $L/bench-p1p2-$i.err; echo "P1,P2 ($i) rc $?"
done
./gpubridge devices > $L/devices.txt 2>&1; echo "devices rc $?"
cd /tmp && tar czf "$OUT/au.tgz" au
echo "== tests"; printf '%s' "$summary" | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}' | grep -v ' rc 0 ' ; echo "$(printf '%s' "$summary" | grep -c ' rc 0 ') executables rc 0"; cat $L/failed.txt
for i in 1 2; do
echo "== P1 P2 ($i)"; I=$i python3 - <<'PY'
import json, os, re
for r in json.load(open('/tmp/au/bench-p1p2-%s.json' % os.environ['I'])):
    if r['id'] in ('P1', 'P2') and ('chain' in r['metric'] or 'P50' in r['metric']) and 'spin' in r['metric']:
        v, b = r.get('value'), r.get('baseline_value')
        m = re.search(r'\((\d+)% below\)', r['note'])
        print(r['id'], r['metric'][40:100], round(v, 3) if v else v, round(b, 3) if b else b, round(r['ratio'], 3) if r.get('ratio') else None, r.get('pass'), (m.group(1) + '% below') if m else '')
        if 'chain' in r['metric']:
            print('   ', r['note'][r['note'].find('per call'):][:260])
PY
done
grep -h "small_graphs_copy\|wgpu_is_opened" $L/test-*.log
echo "== devices"; cat $L/devices.txt
