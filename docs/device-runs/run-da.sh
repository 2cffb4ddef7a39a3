#!/usr/bin/env bash
# Session 19, device run DA: BG again (every packed test with GPUBRIDGE_REQUIRE_GPU=1 and
# GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11, `run all` on cuda, cpu and wgpu) on the device pack
# of the session's last code (`d9ddc9b`: the CUDA executor drops packers with
# Plan::release_packers), then `bench --only P1,P2` twice with the pack's CLI.
set -u
RUN=da bash "$(dirname "$0")/run-bg.sh" | grep -v "^  - \|occurrences"
cd "$(dirname "$0")/../../device-pack"
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for i in 1 2; do
  timeout 150 ./gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
        same = re.search(r"raw kernel-copy graph over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        print(f"{f.split('/')[-1][:-5]} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}" + (f" | bridge/kc {same.group(2)}" if same else ""))
PY
