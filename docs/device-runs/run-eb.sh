#!/usr/bin/env bash
# Session 22, device run EB: the device pack of the session's final code (`1e64970`, docs since: the
# executor's bounded wait for a graph a spinning caller holds, deferred evictions): every packed
# test with GPUBRIDGE_REQUIRE_GPU=1 and GPUBRIDGE_REQUIRE_WGPU=1 (one GPU: the two-GPU kind was
# not lent), the devices, P11 and `run all` on cuda, cpu and wgpu (run-bg.sh).
set -u
RUN=eb bash "$(dirname "$0")/run-bg.sh" | grep -v "^  - \|occurrences"
