#!/usr/bin/env bash
# Session 18, device run CI (run twice): CH again with the batcher counting a full batch by pushes (not places
# taken; a second atomic per request, dropped after this run), instead of CH's wait: the CLI before it
# (`gpubridge-old`, the same code without the fix) and after (`gpubridge`), alternated three
# rounds each (old first, then new first), `load --rates 1M,1.5M --seconds 2`.
exec bash "$(dirname "$0")/run-ch.sh"
