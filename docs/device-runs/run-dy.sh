#!/usr/bin/env bash
# Session 22, device run DY: the soak's singles P99 under faults was 18-25 ms in the median
# faulted interval (DU-DX) against DJ's 1.2 ms. Likely cause: a spinning caller replays a tiny
# graph on its own thread and runs its completion (the fault injector's 50 ms "slow" sleep)
# holding the graph's lock; the executor, given a plan of the same shape, blocked on that lock
# and every plan of the device waited. Now the executor waits at most `GRAPH_BUSY_WAIT` (100 us)
# and runs the plan unreplayed (zero-copy or stream launches), and an eviction of a held graph
# is deferred until its caller lets go. The release cuda_runtime tests, then a 3-minute GPU soak
# with faults at DJ's settings, its P99 by interval and the busy fallbacks.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
(
  export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
  timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
  grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
)
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
S=/tmp/soak-${RUN:-dy}
mkdir -p $S
timeout ${SOAK_LIMIT:-260} load-pack/gpubridge soak --duration ${SOAK:-3m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out $S > $S/out.txt 2>&1; echo "soak rc $?"
tail -9 $S/out.txt
cp $S/summary.json $OUT/soak-summary.json 2>/dev/null
cp $S/soak.jsonl $OUT/soak.jsonl 2>/dev/null
python3 - $S/soak.jsonl <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
end = rows[-1]["t_s"]
faulted = [r for r in rows if 45 < r["t_s"] <= end * 0.9]
p = [r["singles"]["p99_us"] for r in faulted]
q = [r["quiescent"]["device"] for r in rows if r.get("quiescent")]
caps = [b["graph_captures"] - a["graph_captures"] for a, b in zip(q, q[1:])]
print(f"singles P99 by faulted interval: median {st.median(p):.0f} us, above 5 ms in {sum(x > 5000 for x in p)} of {len(p)}; captures per interval {st.median(caps)}")
print(f"busy fallbacks {q[-1].get('graph_busy_fallbacks')}, deferred evictions {q[-1].get('graph_deferred_evictions')}, evictions {q[-1].get('graph_evictions')}")
PY
