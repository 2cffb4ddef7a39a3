#!/usr/bin/env bash
# Session 5, device run B: the 8-minute GPU soak with faults (R1, R2), graph cache at 64 MiB.
set -u
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GPUBRIDGE_REQUIRE_GPU=1
mkdir -p /tmp/soak
for t in tests/cuda_runtime* tests/nvtx*; do timeout 60 ./$t --test-threads=1 --nocapture > /tmp/soak/$(basename $t).log 2>&1; trc=$?; echo "$(basename $t): rc $trc $(grep -h 'test result' /tmp/soak/$(basename $t).log)"; grep -h "evictions, heap\|panicked" /tmp/soak/$(basename $t).log; done
export GPUBRIDGE__CUDA__GRAPH_CACHE_MB=64
./gpubridge soak --duration ${SOAK:-8m} --backend cuda --rate 100000 --tasks 256 --batch-rate 100 \
  --faults launch:0.002,oom:0.002,copy:0.002,slow=50ms:0.002,lost:every=5000 --out /tmp/soak > /tmp/soak.out 2>&1; rc=$?
mkdir -p /tmp/soak; cp /tmp/soak.out /tmp/soak/ 2>/dev/null
cd /tmp && tar czf $OUT/soak.tgz soak
echo "soak rc $rc"; tail -25 /tmp/soak.out
