#!/usr/bin/env bash
# Session 7, device run E: the 8-minute GPU soak with faults (issue 9: R1, R2), with the CLI's
# default of two malloc arenas, graph cache 64 MiB, cuBLAS heuristics cache 256 (as runs 5 and D).
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64 CUBLASLT_HEURISTICS_CACHE_CAPACITY=256
F=launch:0.002,oom:0.002,copy:0.002,slow=50ms:0.002,lost:every=5000
mkdir -p /tmp/soak8
./gpubridge soak --duration ${SOAK:-8m} --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults $F --out /tmp/soak8 > /tmp/soak8/out.txt 2>&1; echo "soak rc $?"
tail -12 /tmp/soak8/out.txt
cd /tmp && tar czf $OUT/soak.tgz soak8
