#!/usr/bin/env bash
# Session 20, device run DE: small graphs whose inputs each have one reading launch read them
# from the mapped staging (no copy node in front): the release cuda_runtime tests with
# GPUBRIDGE_REQUIRE_GPU=1, then `bench --only P1,P2` in three processes.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
for i in 1 2 3; do
  timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench $i failed"
done
python3 - "$OUT" <<'PY'
import json, sys, re, glob
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] == "P2" and "P50" in r["metric"]:
            print(f"{f[-6]} P2 {r['metric'][:40]} {r['value']:.1f} pass {r['pass']}")
        if r["id"] != "P1" or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
        same = re.search(r"over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        call = re.search(r"per call ([0-9.]+) us of which request start to submission ([0-9.]+) us, executor pack\+replay\+wait ([0-9.]+)", n)
        print(f"{f[-6]} chain {m.group(1):>4} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']} | kc {same.group(1)} bridge/kc {same.group(2)} | call {call.group(1)} sub {call.group(2)} exec {call.group(3)}")
PY
