#!/usr/bin/env bash
# Session 18, device run CJ: CH again with the final fix: only a batch counted full waits (at most
# 10 ms) for its last pushes; a batch the delay ends takes what is there (P3's case), as before. The CLI before it
# (`gpubridge-old`, the same code without the fix) and after (`gpubridge`), alternated three
# rounds each (old first, then new first), `load --rates 1M,1.5M --seconds 2`.
exec bash "$(dirname "$0")/run-ch.sh"
