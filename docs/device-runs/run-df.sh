#!/usr/bin/env bash
# Session 20, device run DF: the device pack of `a1f2d9d` (small graphs read once-read inputs from
# the mapped staging; per-request lists inline): every packed test with GPUBRIDGE_REQUIRE_GPU=1
# and GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11 and `run all` on cuda, cpu and wgpu (run-bg.sh),
# then `bench --only P1,P2` in four processes, and the profiling double (`examples/overhead`,
# CPU only) for the bridge's host cost on this machine's cores.
set -u
RUN=df bash "$(dirname "$0")/run-bg.sh" | grep -v "^  - \|occurrences"
cd "$(dirname "$0")/../.."
xz -dkf device-pack-xz/overhead.xz && chmod +x device-pack-xz/overhead
echo "== overhead double (H200 host)"; timeout 60 device-pack-xz/overhead 200000 2>&1 | tail -8
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for i in 1 2 3 4; do
  timeout 150 ./gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"]: continue
        mode = "spin" if n.startswith("spin") or "spin_wait" in r["metric"] else "dflt"
        same = re.search(r"over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        print(f"{f.split('/')[-1][:-5]} {mode} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}" + (f" | kc {same.group(1)} bridge/kc {same.group(2)}" if same else ""))
PY
