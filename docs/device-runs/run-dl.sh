#!/usr/bin/env bash
# Session 20, device run DL: an A/B of P2 (10 x 100 sum, host in -> host out) between the CLI of
# the session's last code (`gpubridge`: the tiny plan runs zero-copy, waited for by
# cuStreamQuery) and the same code with zero-copy turned off (`gpubridge-nozc`, built with
# ZERO_COPY_MAX_LAUNCHES = 0: the plan runs as a small graph with mapped inputs and outputs,
# waited for by its signal word), alternated, `bench --only P2` three rounds each.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge gpubridge-nozc; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for r in 1 2 3; do
  for b in gpubridge gpubridge-nozc; do
    timeout 120 load-pack/$b bench --only P2 --out $OUT/p2-$b-$r.json > /dev/null 2>&1 || echo "$b $r failed"
  done
done
python3 - "$OUT" <<'PY'
import json, sys, glob
for f in sorted(glob.glob(sys.argv[1] + "/p2-*.json")):
    vals = []
    for r in json.load(open(f)):
        if r["id"] != "P2" or "diagnostic" in r["metric"]: continue
        mode = "spin" if "spin" in r["metric"] else "dflt"
        q = "P50" if "P50" in r["metric"] else "P99"
        vals.append(f"{mode} {q} {r['value']:.1f} (raw {r['baseline_value']:.1f})")
    print(f.split('/')[-1][3:-5].ljust(18), " | ".join(vals))
PY
