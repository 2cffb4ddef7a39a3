#!/usr/bin/env bash
# Session 20, device run DI: small graphs also write once-written outputs straight into the
# mapped staging: the release cuda_runtime tests with GPUBRIDGE_REQUIRE_GPU=1, `replay_modes
# inputs` (now with a fourth graph whose last kernel writes the output to mapped memory) at
# chains 10 and 100, and `bench --only P1,P2` in three processes.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
for n in 10 100; do
  echo "== chain $n"; timeout 90 load-pack/replay_modes 2000 $n inputs 2>&1 | tail -5
done | tee $OUT/inputs.txt
for i in 1 2 3; do
  timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench $i failed"
done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] == "P2" and "spin" in r["metric"]:
            print(f[-6], "P2", r["metric"][-30:], f"{r['value']:.1f}", r["pass"]); continue
        if r["id"] != "P1" or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
        m = re.search(r"chain of (\d+)", r["metric"]).group(1)
        kc = re.search(r"over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        print(f[-6], f"{m:>4}", f"{r['value']:.3f}/{r['baseline_value']:.3f}={r['ratio']:.3f}", "ok" if r["pass"] else "MISS", f"| b/kc {kc.group(2) if kc else '-'}")
PY
