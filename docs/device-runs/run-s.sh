#!/usr/bin/env bash
# Session 10, device run S: P3 against glibc's malloc arenas (run R: the CLI's default of two
# arenas completed under a third of 1M offered; 16 arenas completed 1M), and the batcher's knobs with
# enough arenas; `gpubridge-mi` is the same CLI built with `--features mimalloc`.
set -u
for b in gpubridge gpubridge-mi; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
L="load --backends cuda --rates ${RATES:-750k,1M} --seconds 2 --warmup 0.5"
v() { # name, then env assignments and the command
  local name=$1; shift
  echo "=== $name: $*"
  env "$@" > /tmp/s-$name.txt 2>&1
  grep -E "^cuda|^cpu|runners:" /tmp/s-$name.txt | cut -c1-330
}
v arena4 MALLOC_ARENA_MAX=4 $G $L
v arena8 MALLOC_ARENA_MAX=8 $G $L
v arena16 MALLOC_ARENA_MAX=16 $G $L
v arena64 MALLOC_ARENA_MAX=64 $G $L
v mimalloc load-pack/gpubridge-mi $L
v mi-cpu load-pack/gpubridge-mi load --backends cpu --rates ${RATES:-750k,1M} --seconds 2 --warmup 0.5
v mi-chunk256 GPUBRIDGE__BATCHING__ANSWER_CHUNK=256 load-pack/gpubridge-mi $L
v mi-inline4x160 GPUBRIDGE__BATCHING__BATCHES_IN_FLIGHT=4 GPUBRIDGE__BATCHING__MAX_MICRO_BATCH=160 load-pack/gpubridge-mi $L
v mi-inline2x160 GPUBRIDGE__BATCHING__MAX_MICRO_BATCH=160 load-pack/gpubridge-mi $L
v mi-nospin GPUBRIDGE__BATCHING__RUNNER_SPIN_US=0 load-pack/gpubridge-mi $L
v mi-workers12 load-pack/gpubridge-mi $L --workers 12
v mi-delay50 GPUBRIDGE__BATCHING__MAX_QUEUE_DELAY_US=50 load-pack/gpubridge-mi $L
v mi-tick1ms load-pack/gpubridge-mi $L --tick-us 1000
cd /tmp && tar czf $OUT/s.tgz s-*.txt
