#!/usr/bin/env bash
# Session 19, device run CM: in CL every process's graphs ran ~18% faster from the first replay
# of a graph with a system-fencing kernel. `replay_modes fence`: a kernel-copy graph timed
# (host, device) before and after one launch of a kernel of each kind, one process per kind,
# each twice, chains of 100 and 10.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
for n in 100 10; do
  for k in idle fence_device fence_only host_write signal idle fence_only; do
    echo "== $k, chain $n"; KIND=$k timeout 60 load-pack/replay_modes 500 $n fence 2>&1 | tail -5
  done
done | tee $OUT/fence.txt
