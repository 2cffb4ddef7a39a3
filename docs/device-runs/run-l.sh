#!/usr/bin/env bash
# Session 9, device run L: every packed GPU test with GPUBRIDGE_REQUIRE_GPU=1 (the eighth
# session's code had no device run), then the bench rows whose diagnostics no device run has
# printed yet: P6 (Transfer phases, the raw writer from cuMemHostAlloc buffers, the cold load by
# storage.threads), P9 (host-side breakdown), P1 and P2.
set -u
T0=$(date +%s)
tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
export LD_LIBRARY_PATH="$PWD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ ! -e /etc/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_ICD_FILENAMES="$PWD/icd/nvidia_icd.json" VK_DRIVER_FILES="$PWD/icd/nvidia_icd.json"
fi
export GPUBRIDGE_REQUIRE_WGPU=1
L=/tmp/l; mkdir -p $L
summary=""
for t in tests/*; do
  n=$(basename "$t")
  timeout 150 "./$t" --test-threads=1 > "$L/test-$n.log" 2>&1; rc=$?
  summary+=$(printf '%-36s rc %-3s %s' "$n" "$rc" "$(grep -E '^test result' "$L/test-$n.log" | tail -1)")$'\n'
  grep -h "^test .*FAILED" "$L/test-$n.log" | head -5 | sed 's/^/    /' >> $L/failed.txt
done
echo "tests done at $(( $(date +%s) - T0 )) s"
{ findmnt -T /tmp; df -h /tmp; uname -r; } > $L/fs.txt 2>&1
GPUBRIDGE_BENCH_STORAGE_MB=2048 timeout 200 ./gpubridge bench --only P6 --out $L/bench-p6.json > $L/bench-p6.md 2> $L/bench-p6.err; echo "P6 rc $? at $(( $(date +%s) - T0 )) s"
timeout 150 ./gpubridge bench --only P9,P1,P2 --out $L/bench-p9p1p2.json > $L/bench-p9p1p2.md 2> $L/bench-p9p1p2.err; echo "P9,P1,P2 rc $? at $(( $(date +%s) - T0 )) s"
cd /tmp && tar czf "$OUT/l.tgz" l
echo "== tests"; printf '%s' "$summary"; cat $L/failed.txt
echo "== P6"; grep -v "^$" $L/bench-p6.err | tail -30; cat $L/bench-p6.md
echo "== P9 P1 P2"; grep -v "^$" $L/bench-p9p1p2.err | tail -30; cat $L/bench-p9p1p2.md
