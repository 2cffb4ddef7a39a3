#!/usr/bin/env bash
# Session 7, device run H2, on two GPUs: every GPU test with GPUBRIDGE_REQUIRE_GPU=1 (issue 3:
# placement and failover on a 2-GPU machine).
set -u
tar -xJf load-pack/x2.tar.xz -C /tmp
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
nvidia-smi --query-gpu=index,name,pci.bus_id --format=csv,noheader
mkdir -p /tmp/x2logs
for t in /tmp/x2/*; do
  n=$(basename $t)
  timeout 200 $t --test-threads=1 --nocapture > /tmp/x2logs/$n.log 2>&1; rc=$?
  echo "$n rc $rc: $(grep -h 'test result' /tmp/x2logs/$n.log | tail -1)"
  grep -h "CUDA device(s)\|panicked at" /tmp/x2logs/$n.log
done
tar czf $OUT/x2-logs.tgz -C /tmp x2logs
