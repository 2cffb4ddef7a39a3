#!/usr/bin/env bash
# Session 20, device run DG: `bench --only P1` in ten more processes on DF's pack (`a1f2d9d`),
# for how often chain 10 passes now, with the raw memcpy graph's mode in each process.
set -u
cd "$(dirname "$0")/../.."
[ -x device-pack/gpubridge ] || tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
mkdir -p /tmp/dg
for i in $(seq -w 1 10); do
  timeout 120 ./gpubridge bench --only P1 --out /tmp/dg/p1-$i.json > /dev/null 2>&1 || echo "bench $i failed"
done
tar -czf $OUT/dg-p1.tgz -C /tmp dg
python3 - <<'PY'
import json, glob, re
for f in sorted(glob.glob("/tmp/dg/p1-*.json")):
    out = []
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] != "P1" or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
        m = re.search(r"chain of (\d+)", r["metric"]).group(1)
        kc = re.search(r"over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        alone = re.search(r"alone \(not interleaved\) ([0-9.]+)", n)
        out.append(f"{m}: {r['value']:.3f}/{r['baseline_value']:.3f}={r['ratio']:.3f} {'ok' if r['pass'] else 'MISS'} kc {kc.group(2)} alone {alone.group(1)}")
    print(f[-7:-5], " | ".join(out))
PY
