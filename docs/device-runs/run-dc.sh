#!/usr/bin/env bash
# Session 19, device run DC: the code after the closing review (`d0187fa`: capture splits the copy
# and signal kernels once; the chain baseline's bytes in one match): the release cuda_runtime
# tests with GPUBRIDGE_REQUIRE_GPU=1 and `bench --only P1` once.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 load-pack/cuda_runtime --test-threads=1 > /tmp/cr.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' /tmp/cr.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" /tmp/cr.log | head -5
timeout 150 load-pack/gpubridge bench --only P1 --out $OUT/p1.json > /dev/null 2>&1 || echo "bench failed"
python3 - "$OUT" <<'PY'
import json, sys, re
for r in json.load(open(sys.argv[1] + "/p1.json")):
    n = r.get("note", "")
    if r["id"] != "P1" or "diagnostic" in r["metric"] or not n.startswith("spin"): continue
    same = re.search(r"over them ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)", n)
    m = re.search(r"chain of (\d+)", r["metric"])
    print(f"chain {m.group(1):>4} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']} | bridge/kc same bytes {same.group(2) if same else '-'}")
PY
