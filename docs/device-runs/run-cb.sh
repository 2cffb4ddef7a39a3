#!/usr/bin/env bash
# Session 18, device run CB: graphs do not count (CA). In the bench the slowdown came at the
# third stream to run work, where the one-thread probes needed about sixteen: the bench's
# streams run work from several threads (the executors', the caller's). `threads`: thread
# after thread makes a stream (or uses one shared stream) and runs one kernel.
set -u
cd "$(dirname "$0")/../.."
xz -dkf load-pack/replay_modes.xz && chmod +x load-pack/replay_modes
export NODEVICE_SELECT=1
{
echo "== threads, a stream each, chain 100"; timeout 100 load-pack/replay_modes 300 100 threads 2>&1 | tail -9
echo "== threads, one shared stream, chain 100"; THREADS_SAME_STREAM=1 timeout 100 load-pack/replay_modes 300 100 threads 2>&1 | tail -9
} | tee $OUT/threads.txt
