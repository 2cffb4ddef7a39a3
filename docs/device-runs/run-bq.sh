#!/usr/bin/env bash
# Session 18, device run BQ: whether what a bridge keeps open on the GPU slows other graphs'
# replays (replay_modes' new `presence` experiment: a raw memcpy graph and a raw kernel-copy
# graph of P1's chain, replayed while idle streams, a cuBLAS handle and one then three idle CUDA
# backends are opened beside them), at chains of 10 and 100; the bridge's host code alone on this
# host (the profiling double of `overhead`); and P1/P2 with the step cache Fx-hashed, twice.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes overhead; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for n in 10 100; do
  for i in 1 2; do
    echo "== presence, chain $n, process $i"
    timeout 100 load-pack/replay_modes 1000 $n presence 2>&1 | tail -9
  done
done | tee $OUT/presence.txt
timeout 60 load-pack/overhead 20000 2>&1 | tail -8 | tee $OUT/overhead.txt
for i in 1 2; do timeout 120 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /tmp/p1p2-$i.md 2>&1; echo "P1,P2 ($i) rc $?"; done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"]: continue
        m = re.search(r"kernel copies.*?([0-9.]+) us/kernel \(bridge ([0-9.]+)x", r.get("note", ""))
        kc = f" kc {m.group(1)} ({m.group(2)}x)" if m else ""
        print(f"{f.split('/')[-1]:12} {r['id']} {r['metric'][:60]:60} {round(r['value'],3)} base {r['baseline_value'] and round(r['baseline_value'],3)} ratio {r['ratio'] and round(r['ratio'],3)} pass {r['pass']}{kc}")
PY
