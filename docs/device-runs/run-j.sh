#!/usr/bin/env bash
# Session 7, device run J: the CUDA runtime, conformance and R2 tests after packers run through
# plan::run_packer (a panicking packer on every CUDA path), GPUBRIDGE_REQUIRE_GPU=1.
set -u
tar -xJf load-pack/j.tar.xz -C /tmp
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/jlogs
for t in /tmp/j/*; do
  n=$(basename $t)
  timeout 200 $t --test-threads=1 > /tmp/jlogs/$n.log 2>&1; rc=$?
  echo "$n rc $rc: $(grep -h 'test result' /tmp/jlogs/$n.log | tail -1)"
  grep -h "^test .*FAILED\|panicked at .*cuda_runtime\|^test a_panicking" /tmp/jlogs/$n.log | head -5
done
tar czf $OUT/j-logs.tgz -C /tmp jlogs
