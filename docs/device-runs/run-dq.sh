#!/usr/bin/env bash
# Session 21, device run DQ: the executor wakes a parked caller ahead of a graph replay's
# expected end (`cuda.early_wake_us`, default 20): the release cuda_runtime tests with
# GPUBRIDGE_REQUIRE_GPU=1, then `bench --only P1,P2` with early wakes on (default) and off
# (GPUBRIDGE__CUDA__EARLY_WAKE_US=0), alternated, three rounds each.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
bench() { GPUBRIDGE__CUDA__EARLY_WAKE_US=$2 timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-wake$2-$1.json > /dev/null 2>&1 || echo "bench $1 $2 failed"; }
for r in 1 2 3; do
  if [ $r = 2 ]; then bench $r 20; bench $r 0; else bench $r 0; bench $r 20; fi
done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"]: continue
        spin = n.startswith("spin") or "spin_wait" in r["metric"]
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        print(f"{f.split('/')[-1][5:-5]:10} {'spin' if spin else 'dflt'} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}")
PY
