#!/usr/bin/env bash
# Session 17, device run BJ: P3 A/B. BI's load missed "served" at 1M (the generator's send lag
# P99 3.5 ms): the CLI of c25f865 (session 16's last commit, `old`) and of this session's pack
# (`new`, with the batcher's singles isolation), alternated, same command: rounds FIRST..LAST
# (1..2, then 3..5 on the same machine; `new` there the device pack's CLI, built by `cargo test`;
# 6..8 with `new` built as `old` was: cargo build --release -p gpubridge-samples --features
# gpubridge/wgpu,gpubridge/gds).
set -u
for b in old new; do xz -dkf load-pack/gpubridge-$b.xz && chmod +x load-pack/gpubridge-$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
for i in $(seq ${FIRST:-1} ${LAST:-2}); do for b in old new; do
  timeout 90 load-pack/gpubridge-$b load --backends cuda --rates 1M,1.5M --seconds 2 --out $OUT/load-$b-$i.json > /tmp/load-$b-$i.txt 2>&1
  echo "== $b $i (rc $?)"; grep -E "^cuda " /tmp/load-$b-$i.txt
done; done
