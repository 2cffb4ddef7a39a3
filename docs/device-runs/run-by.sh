#!/usr/bin/env bash
# Session 18, device run BY: BX pinned the trigger on the device: the first work on a stream made
# after the context's first twenty-odd streams (made, even if destroyed since) slows every later
# kernel chain ~20% for good; the bench's three bridges made 7 streams each. The executor now
# makes a lane's two copy streams only when the lane first runs a staged plan (3 streams per
# device instead of 7). Here: the release cuda_runtime tests with GPUBRIDGE_REQUIRE_GPU=1 (the
# staged test checks the streams made), and `bench --only P1,P2` with the checkpoints, twice.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 240 load-pack/cuda_runtime --test-threads=1 > /tmp/cr.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cr.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" /tmp/cr.log | head -5
cp /tmp/cr.log $OUT/cuda_runtime.log
for i in 1 2; do
  echo "== bench --only P1,P2, process $i"
  GPUBRIDGE_BENCH_CHECKPOINTS=1 timeout 120 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json 2>&1 >/dev/null | grep checkpoint | sed -n '1,7p;$p'
done | tee $OUT/checkpoints.txt
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"]: continue
        n = r.get("note", "")
        mode = "spin" if n.startswith("spin") else "dflt"
        kc = re.search(r"as the bridge's graphs of small plans copy, ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)(?:, ([0-9.]+) us/kernel at process start)?", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        extra = f" | kc {kc.group(1)} bridge/kc {kc.group(2)} kc at start {kc.group(3)}" if kc else ""
        print(f"{f.split('/')[-1][5:-5]:3} {mode} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}{extra}")
PY
