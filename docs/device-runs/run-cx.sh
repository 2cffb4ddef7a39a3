#!/usr/bin/env bash
# Session 19, device run CX: the final code's release CLI and replay_modes (their helpers and
# the baseline's chain variants shared after review): `replay_modes modes`, `alternate` and
# `addresses` at chain 100, and `bench --only P1` twice.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for e in modes alternate addresses; do
  echo "== $e, chain 100"; timeout 60 load-pack/replay_modes 300 100 $e 2>&1 | tail -10 | cut -c1-160
done | tee $OUT/replay-modes.txt
for i in 1 2; do
  timeout 150 load-pack/gpubridge bench --only P1 --out $OUT/p1-$i.json > /dev/null 2>&1 || echo "bench $i failed"
done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] != "P1" or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
        same = re.search(r"raw kernel-copy graph over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        print(f"{f.split('/')[-1][:-5]} chain {m.group(1):>4} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']} | kc same bytes {same.group(1) if same else '-'}")
PY
