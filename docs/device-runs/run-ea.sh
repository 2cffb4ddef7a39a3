#!/usr/bin/env bash
# Session 22, device run EA: the executor now waits at most 100 us for a graph a spinning
# caller holds (`1e64970`): does P1 or P2 move? `bench --only P1,P2` twice, with DW's table.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
for i in 1 2; do
  timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-wake20-$i.json > /dev/null 2>&1 || echo "bench P1,P2 $i failed"
done
sed -n '/^python3 - "\$OUT"/,/^PY$/p' docs/device-runs/run-dw.sh > /tmp/table.sh
bash /tmp/table.sh
