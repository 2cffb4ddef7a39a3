#!/usr/bin/env bash
# Session 7, device run F: the instrumented GPU tests for coverage (issue 13); then the P2 shape
# profiled with the new hand-off line and the bench's P1/P2 rows (hand-offs measured) (issue 3).
set -u
root=$PWD
tar -xJf coverage-pack-xz/pack.tar.xz
timeout 240 bash coverage-pack/run.sh; echo "coverage run.sh rc $?"
if [ ! -s "$OUT/profraw.tgz" ]; then tar -czf "$OUT/profraw.tgz" -C /tmp/gpubridge-profraw .; fi
cd "$root"
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
mkdir -p /tmp/f
$G profile sum --backend cuda --sum-vectors 10 --sum-len 100 --iterations 3000 --warmup 200 > /tmp/f/profile-p2.txt 2>&1
timeout 240 $G bench --only P1,P2 --out /tmp/f/bench-p1p2.json > /tmp/f/bench-p1p2.md 2> /tmp/f/bench.err; echo "bench rc $?"

cd /tmp && tar czf "$OUT/f.tgz" f
cat /tmp/f/profile-p2.txt | head -12
tail -3 /tmp/f/bench.err
cat /tmp/f/bench-p1p2.md
