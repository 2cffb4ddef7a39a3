#!/usr/bin/env bash
# Session 21, device run DU: the device pack of the session's last code (early wakes,
# parked callers replaying quick graphs on the inline lane, tiny shapes recaptured after
# eviction): every packed test with GPUBRIDGE_REQUIRE_GPU=1 and GPUBRIDGE_REQUIRE_WGPU=1 (one
# GPU: the two-GPU kind was not lent when it ran), the devices, P11 and `run all` on cuda, cpu
# and wgpu (run-bg.sh); `bench --only P1,P2` twice; then a 3-minute GPU soak
# with faults at DB's settings (xtask::soak::EXACT_ENV).
set -u
RUN=du bash "$(dirname "$0")/run-bg.sh" | grep -v "^  - \|occurrences"
cd "$(dirname "$0")/../.."
(
  cd device-pack
  export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
  for i in 1 2; do
    timeout 150 ./gpubridge bench --only P1,P2 --out $OUT/p1p2-pack-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
  done
)
python3 - "$OUT" <<'PY'
import json, sys, glob, re
print("run        | P1 spin 10/100/1000 | P1 default 10/100/1000 (pass) | default hand-offs us | P2 spin P50 | P2 default P50/P99")
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    rows = [r for r in json.load(open(f)) if r["id"] in ("P1", "P2") and "diagnostic" not in r["metric"]]
    def pick(pid, spin, what):
        return [r for r in rows if r["id"] == pid and (r.get("note", "").startswith("spin") or "spin_wait" in r["metric"]) == spin and what in r["metric"]]
    p1 = lambda spin: " ".join(f"{r['ratio']:.3f}" for c in ("chain of 10 ", "chain of 100 ", "chain of 1000 ") for r in pick("P1", spin, c))
    passes = "".join("y" if r["pass"] else "n" for c in ("chain of 10 ", "chain of 100 ", "chain of 1000 ") for r in pick("P1", False, c))
    hand = " ".join(re.search(r"hand-offs ([0-9.]+)", r["note"]).group(1) for c in ("chain of 10 ", "chain of 100 ", "chain of 1000 ") for r in pick("P1", False, c))
    p2s = " ".join(f"{r['value']:.1f}" for r in pick("P2", True, "P50"))
    p2d = " ".join(f"{r['value']:.1f}" for r in pick("P2", False, "P50") + pick("P2", False, "P99"))
    print(f"{f.split('/')[-1][5:-5]:10} | {p1(True)} | {p1(False)} ({passes}) | {hand} | {p2s} | {p2d}")
PY
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
mkdir -p /tmp/dus
timeout 270 device-pack/gpubridge soak --duration ${SOAK:-3m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/dus > /tmp/dus/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/dus/out.txt
cp /tmp/dus/summary.json $OUT/soak-summary.json 2>/dev/null
cp /tmp/dus/soak.jsonl $OUT/soak.jsonl 2>/dev/null
