#!/usr/bin/env bash
# Session 19, device run CW: BG again (every packed test with GPUBRIDGE_REQUIRE_GPU=1 and
# GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11, `run all` on cuda, cpu and wgpu) on the device pack
# of the final code (signal words, no graph uploads, P1 over the graph's own bytes), then
# `bench --only P1,P2` in five processes and `bench --only P4,P8` once with the pack's CLI.
set -u
RUN=cw bash "$(dirname "$0")/run-bg.sh"
cd "$(dirname "$0")/../../device-pack"
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for i in 1 2 3 4 5; do
  timeout 150 ./gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
done
timeout 150 ./gpubridge bench --only P4,P8 --out $OUT/p4p8.json > /dev/null 2>&1 || echo "bench P4,P8 failed"
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p*.json")):
    for r in json.load(open(f)):
        if "diagnostic" in r["metric"]: continue
        n = r.get("note", "")
        if r["id"] in ("P1", "P2") and not n.startswith("spin"): continue
        same = re.search(r"raw kernel-copy graph over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        below = re.search(r"\(([0-9]+)% below\)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else r["id"] + (" P50" if "P50" in r["metric"] else (" P99" if "P99" in r["metric"] else ""))
        extra = (f" | {below.group(1)}% below stream" if below else "") + (f" | kc same bytes {same.group(1)} bridge/kc {same.group(2)}" if same else "")
        v, b, q = r.get("value"), r.get("baseline_value"), r.get("ratio")
        fmt = lambda x: "-" if x is None else f"{x:.3f}"
        print(f"{f.split('/')[-1][:-5]:6} {what:14} {fmt(v)} base {fmt(b)} ratio {fmt(q)} pass {r['pass']}{extra}")
PY
