#!/usr/bin/env bash
# Session 21, device run DX: DW's soak passed, but its singles' P99 was still 18 ms in the median
# faulted interval (DJ: 1.2 ms): with tiny plans captured as graphs (session 20, after DJ) ~60
# graphs are captured right after each of the soak's pauses (which release the caches), against
# DJ's ~33, and every plan waits behind them. Captures are now paced (`cuda.capture_burst` 16
# back to back, then one per `cuda.capture_every_us` 2000), and tiny shapes are handed for
# capture again once their graph is gone (as in DU and DV). The release cuda_runtime tests, then
# a 3-minute GPU soak with faults at DJ's settings, and the soak's P99 by interval. The code it ran
# is `512fd72` with run-dx-capture-pace.patch applied (not kept: no change in the soak, and two
# tests failed as written).
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
mkdir -p /tmp/dxs
timeout 250 load-pack/gpubridge soak --duration ${SOAK:-3m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/dxs > /tmp/dxs/out.txt 2>&1; echo "soak rc $?"
tail -9 /tmp/dxs/out.txt
cp /tmp/dxs/summary.json $OUT/soak-summary.json 2>/dev/null
cp /tmp/dxs/soak.jsonl $OUT/soak.jsonl 2>/dev/null
python3 - /tmp/dxs/soak.jsonl <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
end = rows[-1]["t_s"]
faulted = [r for r in rows if 45 < r["t_s"] <= end * 0.9]
p = [r["singles"]["p99_us"] for r in faulted]
q = [r["quiescent"]["device"] for r in rows]
caps = [b["graph_captures"] - a["graph_captures"] for a, b in zip(q, q[1:])]
print(f"singles P99 by faulted interval: median {st.median(p):.0f} us, above 5 ms in {sum(x > 5000 for x in p)} of {len(p)}; captures per interval {st.median(caps)}")
PY
