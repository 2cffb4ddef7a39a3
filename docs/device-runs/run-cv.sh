#!/usr/bin/env bash
# Session 19, device run CV: kernel-copy graphs end with a signal kernel whose word the replaying
# thread watches (known done ~2.3 us before cuStreamQuery says so, run CL); graphs are not
# uploaded ahead (CP); P1's raw graphs run over the bridge graph's own device bytes (CU: the
# chain's speed depends on its bytes' address). The release cuda_runtime tests with
# GPUBRIDGE_REQUIRE_GPU=1, then `bench --only P1,P2` three times.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 240 load-pack/cuda_runtime --test-threads=1 > /tmp/cr.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cr.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" /tmp/cr.log | head -5
cp /tmp/cr.log $OUT/cuda_runtime.log
for i in 1 2 3; do
  timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench $i failed"
done
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"]: continue
        n = r.get("note", "")
        mode = "spin" if n.startswith("spin") else "dflt"
        same = re.search(r"raw kernel-copy graph over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
        own = re.search(r"raw graph over bytes of its own, alone \(not interleaved\) ([0-9.]+)", n)
        call = re.search(r"per call ([0-9.]+) us of which request start to submission ([0-9.]+) us, executor pack\+replay\+wait ([0-9.]+)", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        extra = ""
        if same: extra += f" | kc same bytes {same.group(1)} bridge/kc {same.group(2)}"
        if own: extra += f" | raw own bytes {own.group(1)}"
        if call: extra += f" | call {call.group(1)} start {call.group(2)} exec {call.group(3)}"
        print(f"{f.split('/')[-1][5:-5]:3} {mode} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}{extra}")
PY
