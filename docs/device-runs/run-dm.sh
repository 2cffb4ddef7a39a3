#!/usr/bin/env bash
# Session 20, device run DM: tiny plans replay a small mapped graph once their shape's graph is
# captured (zero-copy only before that): the release cuda_runtime tests with
# GPUBRIDGE_REQUIRE_GPU=1, then the CLI before (`gpubridge-old`, `f0ceedc`) and after
# (`gpubridge`), alternated: `bench --only P1,P2` two rounds each and `load --rates 1M,1.5M
# --seconds 2` two rounds each (P3).
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge gpubridge-old cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
bench() { timeout 150 load-pack/$1 bench --only P1,P2 --out $OUT/p1p2-$1-$2.json > /dev/null 2>&1 || echo "bench $1 $2 failed"; }
for r in 1 2; do
  if [ $r = 2 ]; then bench gpubridge $r; bench gpubridge-old $r; else bench gpubridge-old $r; bench gpubridge $r; fi
done
one() { timeout 60 load-pack/$1 load --backends cuda --rates 1M,1.5M --seconds 2 --out /tmp/load-$1-$2.json > /tmp/l.txt 2>&1
  awk -v who=$1 -v r=$2 '$1=="cuda" {print who, r, $2, "P50", $7, "P99", $9, "served", $NF}' /tmp/l.txt; }
for r in 1 2; do
  if [ $r = 2 ]; then one gpubridge $r; one gpubridge-old $r; else one gpubridge-old $r; one gpubridge $r; fi
done | tee $OUT/p3-ab.txt
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"]: continue
        spin = n.startswith("spin") or "spin_wait" in r["metric"]
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        print(f"{f.split('/')[-1][5:-5]:18} {'spin' if spin else 'dflt'} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}")
PY
