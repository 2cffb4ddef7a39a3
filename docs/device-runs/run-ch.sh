#!/usr/bin/env bash
# Session 18, device run CH (run twice): P3 A/B for the batcher's first gathering fix (the runner
# waited, at most 10 ms, for the pushes of the places it had counted; replaced after this run): the CLI before it
# (`gpubridge-old`, the same code without the fix) and after (`gpubridge`), alternated three
# rounds each (old first, then new first), `load --rates 1M,1.5M --seconds 2`.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge gpubridge-old; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
one() { timeout 60 load-pack/$1 load --backends cuda --rates 1M,1.5M --seconds 2 --out $OUT/load-$1-$2.json > /tmp/l.txt 2>&1
  awk -v who=$1 -v r=$2 '$1=="cuda" {print who, r, $2, "P50", $7, "P99", $9, "served", $NF}' /tmp/l.txt; }
for r in 1 2 3; do
  if [ $r = 2 ]; then one gpubridge $r; one gpubridge-old $r; else one gpubridge-old $r; one gpubridge $r; fi
done | tee $OUT/ab.txt
