#!/usr/bin/env bash
# Session 17, device run BO: where BJ/BK's 8% at 1.5M singles a second comes from. Three CLIs:
# `old` (c25f865), `new` (this session's final code, 547cef1) and `var`, the final code with one
# line changed for this run only (not committed): the batcher's runner calls
# `execute_admitted` (the path before this session: items donated, no isolation) instead of
# `execute_singles`. Three rounds, the order rotated each round; same command as BJ.
set -u
for b in old var new; do xz -dkf load-pack/gpubridge-$b.xz && chmod +x load-pack/gpubridge-$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
for order in "var new old" "new old var" "old var new"; do for b in $order; do
  timeout 90 load-pack/gpubridge-$b load --backends cuda --rates 1M,1.5M --seconds 2 --out /tmp/load-$b.json > /tmp/load-$b.txt 2>&1
  echo "== $b (rc $?)"; grep -E "^cuda |runners" /tmp/load-$b.txt | sed 's/^ *runners: //' | cut -c1-170
done; done
