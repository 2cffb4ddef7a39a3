#!/usr/bin/env bash
# Session 13, device run AJ: run AI's steps again (every packed GPU test with
# GPUBRIDGE_REQUIRE_GPU=1, then P1 and P2 in three processes) on the device pack of the review
# commit (one cached-graph lookup in the executor, one replay-timing loop in the baseline).
exec bash "$(dirname "$0")/run-ai.sh"
