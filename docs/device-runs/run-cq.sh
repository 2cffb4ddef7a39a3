#!/usr/bin/env bash
# Session 19, device run CQ: CP found that an uploaded graph not yet launched slows every graph
# of the context ~20% (for good when destroyed unlaunched). The executor and the baseline no
# longer upload their graphs ahead. Here: `bench --only P1,P2` with the checkpoints (the raw
# kernel-copy chain of 100 timed on host and device at each step), three processes.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
for i in 1 2 3; do
  echo "== bench --only P1,P2, process $i"
  GPUBRIDGE_BENCH_CHECKPOINTS=1 timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json 2>&1 >/dev/null | grep checkpoint | sed -n '1,8p;$p'
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
