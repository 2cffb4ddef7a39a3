#!/usr/bin/env bash
# Session 18, device run BV: BU found every graph ~20% slower on the device, for good, once more
# than eight streams of the context have run work (CUDA's default of eight hardware connections
# per device, CUDA_DEVICE_MAX_CONNECTIONS). Here: the `channels` probe with 16 and 32
# connections, and `bench --only P1,P2` with the checkpoints, with the default and with 32.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge replay_modes; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for c in 16 32; do
  echo "== chain 100, CUDA_DEVICE_MAX_CONNECTIONS=$c"
  CUDA_DEVICE_MAX_CONNECTIONS=$c timeout 100 load-pack/replay_modes 500 100 channels 2>&1 | tail -12
done | tee $OUT/channels.txt
for c in default 32; do
  for i in 1 2; do
    echo "== bench --only P1,P2, connections $c, process $i"
    if [ $c = default ]; then unset CUDA_DEVICE_MAX_CONNECTIONS; else export CUDA_DEVICE_MAX_CONNECTIONS=$c; fi
    GPUBRIDGE_BENCH_CHECKPOINTS=1 timeout 120 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-$c-$i.json 2>&1 >/dev/null | grep checkpoint | sed -n '1p;5,6p;$p'
  done
done | tee $OUT/checkpoints.txt
unset CUDA_DEVICE_MAX_CONNECTIONS
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        if r["id"] not in ("P1", "P2") or "spin" not in r["note"][:20] or "diagnostic" in r["metric"]: continue
        n = r.get("note", "")
        kc = re.search(r"as the bridge's graphs of small plans copy, ([0-9.]+) us/kernel \(bridge ([0-9.]+)x that\)(?:, ([0-9.]+) us/kernel at process start)?", n)
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        extra = f" | kc {kc.group(1)} bridge/kc {kc.group(2)} kc at start {kc.group(3)}" if kc else ""
        print(f"{f.split('/')[-1][5:-5]:10} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}{extra}")
PY
