#!/usr/bin/env bash
# Session 13, device run AG: the release CLI of the final code (load-pack/gpubridge.xz): P1 and P2
# three times (three processes), P1's note now giving the whole call's parts (the job from taken
# to outputs ready, the unpack) so that chain 10's remaining microseconds can be placed.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
G=load-pack/gpubridge
mkdir -p /tmp/ag
export XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
for i in 1 2 3; do
  timeout 150 $G bench --only P1,P2 --out /tmp/ag/bench-p1p2-$i.json > /tmp/ag/bench-p1p2-$i.md 2> /tmp/ag/bench-p1p2-$i.err; echo "P1,P2 ($i) rc $?"
done
cd /tmp && tar czf "$OUT/ag.tgz" ag
for i in 1 2 3; do
echo "== P1 P2 ($i)"; I=$i python3 - <<'PY'
import json, os
for r in json.load(open('/tmp/ag/bench-p1p2-%s.json' % os.environ['I'])):
    if r['id'] in ('P1', 'P2') and ('chain' in r['metric'] or 'P50' in r['metric']):
        v, b = r.get('value'), r.get('baseline_value')
        print(r['id'], r['metric'][40:100], round(v, 3) if v else v, round(b, 3) if b else b, round(r['ratio'], 3) if r.get('ratio') else None, r.get('pass'))
        print('   ', r['note'][r['note'].find('per call'):][:300] if 'chain' in r['metric'] else r['note'][:200])
PY
done
