#!/usr/bin/env bash
# Session 17, device run BL: BG again (every packed test with GPUBRIDGE_REQUIRE_GPU=1 and
# GPUBRIDGE_REQUIRE_WGPU=1, the devices, P11, `run all` on cuda, cpu and wgpu) on the device pack
# of the final code (`cargo xtask device-pack`).
RUN=bl exec bash "$(dirname "$0")/run-bg.sh"
