#!/usr/bin/env bash
# Session 19, device run CZ: the request's inner future boxed (built in place once instead of
# moved by value through every layer; the profiling double's chain-10 call 1.50 -> 1.35 us on
# the build machine). The CLI before (`gpubridge-old`, `996ccb6`) and after (`gpubridge`),
# alternated: `bench --only P1,P2` three rounds each, then `load --rates 1M,1.5M --seconds 2`
# two rounds each.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge gpubridge-old; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
bench() { timeout 150 load-pack/$1 bench --only P1,P2 --out $OUT/p1p2-$1-$2.json > /dev/null 2>&1 || echo "bench $1 $2 failed"; }
for r in 1 2 3; do
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
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
        call = re.search(r"per call ([0-9.]+) us of which request start to submission ([0-9.]+) us, executor pack\+replay\+wait ([0-9.]+)", n)
        same = re.search(r"raw kernel-copy graph over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        extra = (f" | bridge/kc {same.group(2)}" if same else "") + (f" | call {call.group(1)} start {call.group(2)} exec {call.group(3)}" if call else "")
        print(f"{f.split('/')[-1][5:-5]:18} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}{extra}")
PY
