#!/usr/bin/env bash
# Session 10, device run U: P3's generator against tokio's event_interval (how often a busy worker
# fires due timers): the sends' lag at 1M is at the generator's own limit (tick + 2 ms).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
L="load --backends cuda --rates 1M,1.5M --seconds 2 --warmup 0.5"
for e in 61 31 15 7 3; do
  echo "=== event_interval $e"
  $G $L --event-interval $e > /tmp/u-$e.txt 2>&1
  grep -E "^cuda|runners" /tmp/u-$e.txt | cut -c1-300
done
cd /tmp && tar czf $OUT/u.tgz u-*.txt
