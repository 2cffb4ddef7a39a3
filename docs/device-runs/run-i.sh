#!/usr/bin/env bash
# Session 7, device run I: instrumented GPU tests at the final library commit (coverage, issue 13);
# then a 4-minute GPU soak with faults with tiny plans run inline by the batcher's spinning
# runners (R2 through the new path; issue 9).
set -u
root=$PWD
tar -xJf coverage-pack-xz/pack.tar.xz
timeout 240 bash coverage-pack/run.sh; echo "coverage run.sh rc $?"
if [ ! -s "$OUT/profraw.tgz" ]; then tar -czf "$OUT/profraw.tgz" -C /tmp/gpubridge-profraw .; fi
cd "$root"
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:0.002,lost:every=5000
mkdir -p /tmp/soak4
load-pack/gpubridge soak --duration 4m --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/soak4 > /tmp/soak4/out.txt 2>&1; echo "soak rc $?"
tail -8 /tmp/soak4/out.txt
cd /tmp && tar czf "$OUT/soak4.tgz" soak4
