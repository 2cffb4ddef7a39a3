#!/usr/bin/env bash
# Session 9, device run M: the P6 probe (raw reads and the staged load in several shapes,
# interleaved over rounds; saves with the commit's cost split out, with and without a syncfs
# first), and the planted-leak soak test rebuilt with the leak kept from the optimiser.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
xz -dkf load-pack/soak-test.xz && chmod +x load-pack/soak-test
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
mkdir -p /tmp/m
timeout 100 load-pack/soak-test --test-threads=1 soak::tests::a_planted_leak > /tmp/m/leak-test.log 2>&1; echo "planted leak test rc $?"
GPUBRIDGE_BENCH_P6_PROBE=1 GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 400 load-pack/gpubridge bench --only P6 --out /tmp/m/bench-p6.json > /tmp/m/bench-p6.md 2> /tmp/m/bench-p6.err; echo "bench rc $?"
cd /tmp && tar czf "$OUT/m.tgz" m
grep -E "rss_growth|^test result|FAILED" /tmp/m/leak-test.log
grep -v "^$" /tmp/m/bench-p6.err | tail -25
cut -c1-400 /tmp/m/bench-p6.md
