#!/usr/bin/env bash
# Session 17, device run BH: second half of `device-pack/run.sh` on the same pack as BG: the
# full bench (`gpubridge bench`, every P row against its baseline from the same run), the graph
# sample at P9's size written by gen-graph and verified, and the metrics endpoint under the
# demo load scraped over HTTP.
set -u
[ -d device-pack ] || tar -xJf device-pack-xz/pack.tar.xz
cd device-pack
export GPUBRIDGE_REQUIRE_GPU=1 NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
L=/tmp/bh; mkdir -p $L
timeout 420 ./gpubridge bench --out $OUT/bench.json > $OUT/bench.md 2> $L/bench.err; bench_rc=$?
./gpubridge gen-graph --nodes 10000000 --edges 20000000 --out /tmp/gpubridge-graph --seed 9 > $L/graph.txt 2>&1
timeout 120 ./gpubridge run graph --backend cuda --data /tmp/gpubridge-graph >> $L/graph.txt 2>&1; graph_rc=$?
fetch() { curl -sf "$1" 2>/dev/null || python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
./gpubridge serve --listen 127.0.0.1:9464 --demo-load > $L/serve.out 2> $L/serve.err & pid=$!
sleep 12
fetch http://127.0.0.1:9464/metrics > $L/scrape.txt; scrape_rc=$?
readyz=$(fetch http://127.0.0.1:9464/readyz 2>&1)
kill -INT $pid; wait $pid; serve_rc=$?
tar -czf $OUT/bh-logs.tgz -C /tmp bh
echo "== graph 10M/20M (rc $graph_rc)"; tail -25 $L/graph.txt
echo "== serve (rc $serve_rc, scrape rc $scrape_rc, readyz $readyz): $(grep -c '^gpubridge_' $L/scrape.txt) series"
grep -E '^gpubridge_(gpu_utilization|gpu_memory_used|pool_bytes|kernels_executed)' $L/scrape.txt | head -8
echo "== bench (rc $bench_rc)"; tail -3 $L/bench.err; cat $OUT/bench.md
