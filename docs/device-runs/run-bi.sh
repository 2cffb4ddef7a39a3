#!/usr/bin/env bash
# Session 17, device run BI: the device pack after the connected-components validation became a
# vectorised reduction and the batcher's singles isolation (commits 965e87e and ec82b97): the
# new cuda_runtime test, P9, P1 and P2 in processes of their own (twice), the W rows on the
# Vulkan device, and P3's load at 1M and 1.5M singles a second.
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
cr=$(ls tests/cuda_runtime-*)
timeout 200 $cr --test-threads=1 > /tmp/cr.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cr.log | sed 's/; finished.*//')"
grep -h "a_poison\|FAILED\|panicked at" /tmp/cr.log | grep -v "poisoned" | head -5
timeout 150 ./gpubridge bench --only P9 --out $OUT/p9.json > /tmp/p9.md 2>/tmp/p9.err; echo "P9 rc $?"
for i in 1 2; do timeout 120 ./gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /tmp/p1p2-$i.md 2>&1; echo "P1,P2 ($i) rc $?"; done
(
  export GPUBRIDGE_REQUIRE_WGPU=1 LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
  fi
  timeout 120 ./gpubridge bench --only W1,W2 --out $OUT/w.json > /tmp/w.md 2>&1; echo "W rc $?"
)
timeout 90 ./gpubridge load --backends cuda --rates 1M,1.5M --seconds 2 --out $OUT/load.json > /tmp/load.txt 2>&1; echo "load rc $?"
tail -8 /tmp/load.txt
python3 - "$OUT" <<'PY'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    if f.endswith("load.json"): continue
    for r in json.load(open(f)):
        if r.get("pass") is None and "diagnostic" in r["metric"]: continue
        v = r.get("value"); b = r.get("baseline_value"); q = r.get("ratio")
        print(f"{f.split('/')[-1]:12} {r['id']:4} {r['metric'][:70]:70} {v if v is None else round(v,3)} {r['unit']} base {b if b is None else round(b,3)} ratio {q if q is None else round(q,3)} pass {r.get('pass')}")
PY
