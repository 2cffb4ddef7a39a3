#!/usr/bin/env bash
# Session 20, device run DN: P3 again for DM's two CLIs (`gpubridge-old`, `f0ceedc`; `gpubridge`,
# tiny plans replaying their small mapped graph once captured), alternated, `load --rates
# 1M,1.5M --seconds 2` three rounds each (DM's second round of the new CLI missed 1M once).
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge gpubridge-old; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
one() { timeout 60 load-pack/$1 load --backends cuda --rates 1M,1.5M --seconds 2 --out /tmp/load-$1-$2.json > /tmp/l.txt 2>&1
  awk -v who=$1 -v r=$2 '$1=="cuda" {print who, r, $2, "achieved", $3, "P50", $7, "P99", $9, "batch", $11, "lag99", $15, "served", $NF}' /tmp/l.txt; }
for r in 1 2 3; do
  if [ $r = 2 ]; then one gpubridge $r; one gpubridge-old $r; else one gpubridge-old $r; one gpubridge $r; fi
done | tee $OUT/p3-ab.txt
head -5 /tmp/l.txt
