#!/usr/bin/env bash
# Session 20, device run DH: P1 with its raw memcpy graph and the bridge's calls measured in
# alternating blocks of 20 (each back to back, as a caller repeating it would run it) besides
# the old one-by-one alternation, `bench --only P1,P2` in six processes.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
mkdir -p /tmp/dh
for i in 1 2 3 4 5 6; do
  timeout 150 load-pack/gpubridge bench --only P1,P2 --out /tmp/dh/p1p2-$i.json > /dev/null 2>&1 || echo "bench $i failed"
done
tar -czf $OUT/dh.tgz -C /tmp dh
python3 - <<'PY'
import json, glob, re
for f in sorted(glob.glob("/tmp/dh/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] == "P2" and "spin" in r["metric"]:
            print(f[-6], "P2", r["metric"][-30:], f"{r['value']:.1f}", r["pass"]); continue
        if r["id"] != "P1" or "diagnostic" in r["metric"]: continue
        mode = "spin" if n.startswith("spin") else "dflt"
        m = re.search(r"chain of (\d+)", r["metric"]).group(1)
        kc = re.search(r"over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        alt = re.search(r"\(alternated\): bridge ([0-9.]+), raw ([0-9.]+) us/kernel \(([0-9.]+)x\)", n)
        alone = re.search(r"alone \(not interleaved\) ([0-9.]+)", n)
        print(f[-6], mode, f"{m:>4}", f"{r['value']:.3f}/{r['baseline_value']:.3f}={r['ratio']:.3f}", "ok" if r["pass"] else "MISS",
              f"| alternated {alt.group(1)}/{alt.group(2)}={alt.group(3)} | kc {kc.group(1) if kc else '-'} b/kc {kc.group(2) if kc else '-'} | alone {alone.group(1)}")
PY
