#!/usr/bin/env bash
# Session 24, device run EE: issue 9's eight-minute GPU soak with faults (DZ's settings) on the
# CLI whose P99 check asks for evidence (the ratio's bootstrap interval over the windows'
# intervals and the trend with the host's steal held equal), and the first GPU soak that reads
# the host's steal. No library code changed since DZ/EC (`1e64970`); the soak is the CLI's.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
export GPUBRIDGE_ALLOCATOR=system MALLOC_ARENA_MAX=2 CUDA_MODULE_LOADING=EAGER
export GLIBC_TUNABLES=glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:every=2000,lost:every=5000
S=/tmp/soak-${RUN:-ee}
mkdir -p $S
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout ${SOAK_LIMIT:-560} load-pack/gpubridge soak --duration ${SOAK:-8m} --interval 2s --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out $S > $S/out.txt 2>&1; echo "soak rc $?"
tail -10 $S/out.txt
cp $S/summary.json $OUT/soak-summary.json 2>/dev/null
cp $S/soak.jsonl $OUT/soak.jsonl 2>/dev/null
python3 - $S/soak.jsonl <<'PY'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
end = rows[-1]["t_s"]
faulted = [r for r in rows if 45 < r["t_s"] <= end * 0.9]
p = [r["singles"]["p99_us"] for r in faulted]
steal = [r["host_steal"] for r in rows if r.get("host_steal") is not None]
print(f"singles P99 by faulted interval: median {st.median(p):.0f} us, above 5 ms in {sum(x > 5000 for x in p)} of {len(p)}")
if steal:
    print(f"host steal by interval: median {st.median(steal)*100:.2f}%, max {max(steal)*100:.2f}%, {len(steal)} readings")
PY
