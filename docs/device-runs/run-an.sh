#!/usr/bin/env bash
# Session 14, device run AN: (1) P3 (`load --backends cuda --rates 1M,1.5M`) with the CLI before
# this session's changes (`old`, commit 58c23ed), with graph copies by kernel (`kc`, 0bdb7d4) and
# with cached metric handles too (`new`, the device pack of 14ea5bb), alternating, twice: AK and
# AL had worse P3 tails than the thirteenth session; (2) the replay-modes probe's stream
# experiment (a graph uploaded to one stream and launched on another) in two processes; (3) P1 in
# two processes unpinned and two pinned to two CPUs (`taskset -c 2,3`).
set -u
tar -xJf device-pack-xz/pack.tar.xz
for f in load-pack/*.xz; do xz -dkf "$f"; done; chmod +x load-pack/gpubridge-* load-pack/replay_modes
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
L=/tmp/an; mkdir -p $L
NEW=device-pack/gpubridge
for round in 1 2; do
  for v in old kc new; do
    G=load-pack/gpubridge-$v; [ $v = new ] && G=$NEW
    (cd device-pack && LD_LIBRARY_PATH="$PWD/lib" timeout 100 ../$G load --backends cuda --rates 1M,1.5M --seconds 2 --out $L/load-$v-$round.json > $L/load-$v-$round.txt 2>&1); echo "load $v $round rc $?"
  done
done
for i in 1 2; do timeout 60 load-pack/replay_modes 2000 10 streams > $L/streams-$i.txt 2>&1; done
lscpu -e | head -20 > $L/lscpu.txt
for i in 1 2; do
  (cd device-pack && LD_LIBRARY_PATH="$PWD/lib" timeout 100 ./gpubridge bench --only P1 --out $L/p1-free-$i.json > $L/p1-free-$i.md 2>&1); echo "P1 free $i rc $?"
  (cd device-pack && LD_LIBRARY_PATH="$PWD/lib" timeout 100 taskset -c 2,3 ./gpubridge bench --only P1 --out $L/p1-pin-$i.json > $L/p1-pin-$i.md 2>&1); echo "P1 pinned $i rc $?"
done
cd /tmp && tar czf "$OUT/an.tgz" an
echo "== P3"; for round in 1 2; do for v in old kc new; do echo "$v $round: $(grep -E '^cuda' $L/load-$v-$round.txt | awk '{print $2, $3, "P50", $7, "P99", $9, "lag99", $15, $NF}' | tr '\n' ';')"; done; done
echo "== streams"; cat $L/streams-*.txt | grep -v "^chain"
echo "== cpus"; cat $L/lscpu.txt | head -6
echo "== P1"
for f in $L/p1-*.json; do F=$f python3 - <<'PY'
import json, os, re
f = os.environ['F']
for r in json.load(open(f)):
    if r['id'] == 'P1' and 'chain of 10 ' in r['metric'] and 'spin' in r['metric']:
        kc = re.search(r'copy, ([\d.]+) us/kernel', r['note'])
        alone = re.search(r'alone \(not interleaved\) ([\d.]+)', r['note'])
        call = re.search(r'per call ([\d.]+) us of which request start to submission ([\d.]+) us, executor pack\+replay\+wait ([\d.]+)', r['note'])
        print(os.path.basename(f), 'bridge', round(r['value'], 3), 'raw', round(r['baseline_value'], 3), 'ratio', round(r['ratio'], 3), r['pass'], 'kc', kc.group(1), 'alone', alone.group(1), 'call/start/replay', call.groups())
PY
done
