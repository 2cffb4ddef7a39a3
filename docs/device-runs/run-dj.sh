#!/usr/bin/env bash
# Session 20, device run DJ: the device pack of the session's last code (mapped inputs and
# outputs of small graphs, `cuda.mapped_graph_buffers`, per-request lists inline, P1 in blocks):
# every packed test with GPUBRIDGE_REQUIRE_GPU=1 and GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11
# and `run all` on cuda, cpu and wgpu (run-bg.sh); `bench --only P1,P2` twice; then a 4-minute
# GPU soak with faults at DB's settings (xtask::soak::EXACT_ENV), a regression check of the
# executor's changes under load with launch, allocation and copy failures, a slow and a lost
# device.
set -u
RUN=dj bash "$(dirname "$0")/run-bg.sh" | grep -v "^  - \|occurrences"
cd "$(dirname "$0")/../.."
(
  cd device-pack
  export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
  for i in 1 2; do
    timeout 150 ./gpubridge bench --only P1,P2 --out $OUT/p1p2-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
  done
)
python3 - "$OUT" <<'PY'
import json, sys, glob, re
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    for r in json.load(open(f)):
        n = r.get("note", "")
        if r["id"] not in ("P1", "P2") or "diagnostic" in r["metric"] or not (n.startswith("spin") or "spin_wait" in r["metric"]): continue
        m = re.search(r"chain of (\d+)", r["metric"])
        what = f"P1 chain {m.group(1):>4}" if m else ("P2 " + ("P50" if "P50" in r["metric"] else "P99"))
        print(f"{f.split('/')[-1][:-5]} {what:14} {r['value']:.3f} base {r['baseline_value']:.3f} ratio {r['ratio']:.3f} pass {r['pass']}")
PY
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
mkdir -p /tmp/djs
timeout 330 device-pack/gpubridge soak --duration ${SOAK:-4m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/djs > /tmp/djs/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/djs/out.txt
cp /tmp/djs/summary.json $OUT/soak-summary.json 2>/dev/null
cp /tmp/djs/soak.jsonl $OUT/soak.jsonl 2>/dev/null
