#!/usr/bin/env bash
# Session 18, device run BR: why P1's raw graphs replay ~15% slower in the bench's process than
# in replay_modes' (BQ: chain of 100 at 0.92 us per kernel there, 1.07-1.11 in the bench). The
# bench now also times its raw kernel-copy graphs at process start, before any bridge exists
# (the P1 rows' notes); run with the defaults twice, with glibc's malloc, with eager module
# loading; and replay_modes' `presence` at chain 100 once more for this machine's bare figure.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 100 load-pack/replay_modes 1000 100 presence 2>&1 | tail -8 | tee $OUT/presence-100.txt
run() { local tag=$1; shift; env "$@" timeout 120 load-pack/gpubridge bench --only P1 --out $OUT/p1-$tag.json > /tmp/p1-$tag.md 2>&1; echo "P1 $tag rc $?"; }
run default-1
run default-2
run system-malloc GPUBRIDGE_ALLOCATOR=system
run eager CUDA_MODULE_LOADING=EAGER
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1-*.json")):
    for r in json.load(open(f)):
        if r["id"] != "P1" or "spin" not in r["metric"]: continue
        n = r.get("note", "")
        kc = re.search(r"as the bridge's graphs of small plans copy, ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)(?:, ([0-9.]+) us/kernel at process start)?", n)
        alone = re.search(r"raw graph alone \(not interleaved\) ([0-9.]+)", n)
        chain = re.search(r"chain of (\d+)", r["metric"]).group(1)
        print(f"{f.split('/')[-1][3:-5]:14} chain {chain:>4}: bridge {r['value']:.3f} raw memcpy interleaved {r['baseline_value']:.3f} (alone {alone.group(1) if alone else '?'}) ratio {r['ratio']:.3f} | raw kc {kc.group(1) if kc else '?'} bridge/kc {kc.group(2) if kc else '?'} | kc at start {kc.group(3) if kc and kc.group(3) else '-'}")
PY
