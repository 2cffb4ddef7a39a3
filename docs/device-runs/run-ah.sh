#!/usr/bin/env bash
# Session 13, device run AH: is P1's bimodal chain-10 replay (run AG: 27.8, 21.8 and 27.8 us per
# call for the bridge's pack+replay+wait in three processes) about where the process runs?
# The host's NUMA layout and the GPU's affinity, then P1 four times unpinned and four times
# pinned to the GPU's NUMA node's cores (release CLI of the final code, load-pack/).
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
G=load-pack/gpubridge
mkdir -p /tmp/ah
export XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
lscpu | grep -iE 'numa|model name|^cpu\(s\)'
nvidia-smi topo -m 2>/dev/null | head -4
cpus=$(nvidia-smi topo -m 2>/dev/null | awk '/^GPU0/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+-[0-9]+$/) {print $i; exit}}')
echo "GPU0 CPU affinity: ${cpus:-unknown}"
for mode in free pinned; do
  for i in 1 2 3 4; do
    if [ $mode = pinned ] && [ -n "$cpus" ]; then pre="taskset -c $cpus"; else pre=""; fi
    timeout 60 $pre $G bench --only P1 --out /tmp/ah/p1-$mode-$i.json > /dev/null 2>&1
    MODE=$mode I=$i python3 - <<'PY'
import json, os, re
for r in json.load(open('/tmp/ah/p1-%s-%s.json' % (os.environ['MODE'], os.environ['I']))):
    if 'chain of 10 ' in r['metric'] and 'spin' in r['metric']:
        m = re.search(r'executor pack\+replay\+wait ([\d.]+)', r['note'])
        print(os.environ['MODE'], os.environ['I'], 'chain 10 spin', round(r['value'], 3), round(r['baseline_value'], 3), round(r['ratio'], 3), 'replay', m.group(1))
PY
  done
done
cd /tmp && tar czf "$OUT/ah.tgz" ah
