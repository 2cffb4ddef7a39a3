#!/usr/bin/env bash
# Session 7, device run G: instrumented GPU tests (coverage, issue 13) at the inline-plans commit;
# P1/P2 with tiny plans run on the caller's thread, and P2 with that off, in the same run (issue 3).
set -u
root=$PWD
tar -xJf coverage-pack-xz/pack.tar.xz
timeout 240 bash coverage-pack/run.sh; echo "coverage run.sh rc $?"
if [ ! -s "$OUT/profraw.tgz" ]; then tar -czf "$OUT/profraw.tgz" -C /tmp/gpubridge-profraw .; fi
grep -h "spinning_callers\|nvml_sampler\|test result" /tmp/gpubridge-cov-logs/cuda_runtime*.log
cd "$root"
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
mkdir -p /tmp/g
$G profile sum --backend cuda --sum-vectors 10 --sum-len 100 --iterations 3000 --warmup 200 > /tmp/g/profile-p2.txt 2>&1
timeout 200 $G bench --only P1,P2 --out /tmp/g/bench-p1p2.json > /tmp/g/bench-p1p2.md 2> /tmp/g/bench.err; echo "bench rc $?"
GPUBRIDGE__CUDA__INLINE_TINY_PLANS=false timeout 100 $G bench --only P2 --out /tmp/g/bench-p2-inline-off.json > /tmp/g/bench-p2-inline-off.md 2> /tmp/g/bench-off.err; echo "bench off rc $?"
cd /tmp && tar czf "$OUT/g.tgz" g
head -12 /tmp/g/profile-p2.txt
tail -2 /tmp/g/bench.err /tmp/g/bench-off.err
cut -c1-400 /tmp/g/bench-p1p2.md
echo "== inline off"; cut -c1-400 /tmp/g/bench-p2-inline-off.md
