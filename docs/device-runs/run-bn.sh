#!/usr/bin/env bash
# Session 17, device run BN: BM again (the release cuda_runtime and wgpu_single_isolation test
# executables in load-pack/) after the poison-single answers became one checker,
# `testing::PoisonAdd::check_singles` (commit 4d24ced).
exec bash "$(dirname "$0")/run-bm.sh"
