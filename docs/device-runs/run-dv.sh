#!/usr/bin/env bash
# Session 21, device run DV: DU's soak failed R1 (singles' P99 in most faulted intervals 20-36 ms,
# against ~1.2 ms in DB and DJ): a parked caller replaying a quick graph on its own thread ran the
# plan's completion (with the fault injector's 50 ms sleep) on a tokio worker, stalling the tasks
# queued there. That step is undone (parked callers replay on the executor again; early wakes
# stay). The release cuda_runtime tests, `bench --only P1,P2` twice, then DJ's 4-minute GPU soak
# with faults.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
(
  export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
  timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
  grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
  for i in 1 2; do
    timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-wake20-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
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
mkdir -p /tmp/dvs
timeout 330 load-pack/gpubridge soak --duration ${SOAK:-4m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/dvs > /tmp/dvs/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/dvs/out.txt
cp /tmp/dvs/summary.json $OUT/soak-summary.json 2>/dev/null
cp /tmp/dvs/soak.jsonl $OUT/soak.jsonl 2>/dev/null
