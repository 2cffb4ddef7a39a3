#!/usr/bin/env bash
# Session 10, device run R: P3 (1M singles/s) where the time goes, one knob at a time. Each
# variant: `gpubridge load` on CUDA at 750k and 1M offered, 2 s measured after 0.5 s warm-up;
# the runners' line splits a batch's running time into device queue, executor, hand-offs and
# unpack, and `answer50` is the answers' way back to the callers.
set -u
xz -dkf load-pack/gpubridge.xz && chmod +x load-pack/gpubridge
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache
G=load-pack/gpubridge
L="load --backends cuda --rates ${RATES:-750k,1M} --seconds 2 --warmup 0.5"
v() { # name, then env assignments and extra args
  local name=$1; shift
  echo "=== $name: $*"
  env "$@" > /tmp/r-$name.txt 2>&1
  grep -E "^cuda|^cpu|runners:" /tmp/r-$name.txt | cut -c1-400
}
v default $G $L --calibrate
v chunk256 GPUBRIDGE__BATCHING__ANSWER_CHUNK=256 $G $L
v tick1ms $G $L --tick-us 1000
v arena16 MALLOC_ARENA_MAX=16 $G $L
v nospin GPUBRIDGE__BATCHING__RUNNER_SPIN_US=0 $G $L
v workers12 $G $L --workers 12
v inflight4x160 GPUBRIDGE__BATCHING__BATCHES_IN_FLIGHT=4 GPUBRIDGE__BATCHING__MAX_MICRO_BATCH=160 $G $L
v inflight8x160 GPUBRIDGE__BATCHING__BATCHES_IN_FLIGHT=8 GPUBRIDGE__BATCHING__MAX_MICRO_BATCH=160 $G $L
v inflight4 GPUBRIDGE__BATCHING__BATCHES_IN_FLIGHT=4 $G $L
v delay200 GPUBRIDGE__BATCHING__MAX_QUEUE_DELAY_US=200 $G $L
v cpu $G load --backends cpu --rates ${RATES:-750k,1M} --seconds 2 --warmup 0.5
cd /tmp && tar czf $OUT/r.tgz r-*.txt
