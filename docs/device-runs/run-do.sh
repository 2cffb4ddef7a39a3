#!/usr/bin/env bash
# Session 20, device run DO: the device pack of the session's last code (`7b9f8ec`: tiny plans
# replay their small mapped graph once captured): every packed test with GPUBRIDGE_REQUIRE_GPU=1
# and GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11 and `run all` on cuda, cpu and wgpu (run-bg.sh).
set -u
RUN=do bash "$(dirname "$0")/run-bg.sh" | grep -v "^  - \|occurrences"
