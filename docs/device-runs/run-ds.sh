#!/usr/bin/env bash
# Session 21, device run DS: early wakes as in DR, with the executor declining at once on paths it
# does not time (the caller then parks without its 5 us poll), only backends that wake early giving
# plans an early wake, and tiny shapes handed for capture again once their graph is gone: the
# release cuda_runtime tests, `bench --only P1,P2` with the lead at 0 and 20 us alternated, three
# rounds, then `load --rates 1M,1.5M --seconds 2` (P3) at each lead.
set -u
cd "$(dirname "$0")/../.."
for b in gpubridge cuda_runtime; do xz -dkf load-pack/$b.xz && chmod +x load-pack/$b; done
export NODEVICE_SELECT=1 XDG_CACHE_HOME=/tmp/gpubridge-cache GPUBRIDGE_REQUIRE_GPU=1
timeout 200 load-pack/cuda_runtime --test-threads=1 > $OUT/cuda-runtime.log 2>&1; echo "cuda_runtime rc $?: $(grep -h 'test result' $OUT/cuda-runtime.log | sed 's/; finished.*//')"
grep -h "FAILED\|panicked at" $OUT/cuda-runtime.log | head -5
bench() { GPUBRIDGE__CUDA__EARLY_WAKE_US=$2 timeout 150 load-pack/gpubridge bench --only P1,P2 --out $OUT/p1p2-wake$2-$1.json > /dev/null 2>&1 || echo "bench $1 $2 failed"; }
for r in 1 2 3; do
  if [ $r = 2 ]; then bench $r 20; bench $r 0; else bench $r 0; bench $r 20; fi
done
for w in 20 0; do GPUBRIDGE__CUDA__EARLY_WAKE_US=$w timeout 60 load-pack/gpubridge load --backends cuda --rates 1M,1.5M --seconds 2 --out /tmp/load-$w.json > /tmp/l.txt 2>&1
  awk -v w=$w '$1=="cuda" {print "P3 lead", w, $2, "P50", $7, "P99", $9, "served", $NF}' /tmp/l.txt; done | tee $OUT/p3.txt
python3 - "$OUT" <<'PY'
import json, sys, glob, re
print("run        | P1 spin 10/100/1000 | P1 default 10/100/1000 (pass) | default hand-offs us | P2 spin P50 | P2 default P50/P99")
for f in sorted(glob.glob(sys.argv[1] + "/p1p2-*.json")):
    rows = [r for r in json.load(open(f)) if r["id"] in ("P1", "P2") and "diagnostic" not in r["metric"]]
    def pick(pid, spin, what):
        return [r for r in rows if r["id"] == pid and (r.get("note", "").startswith("spin") or "spin_wait" in r["metric"]) == spin and what in r["metric"]]
    p1 = lambda spin: " ".join(f"{r['ratio']:.3f}" for c in ("chain of 10 ", "chain of 100 ", "chain of 1000 ") for r in pick("P1", spin, c))
    passes = "".join("y" if r["pass"] else "n" for c in ("chain of 10 ", "chain of 100 ", "chain of 1000 ") for r in pick("P1", False, c))
    hand = " ".join(re.search(r"hand-offs ([0-9.]+)", r["note"]).group(1) for c in ("chain of 10 ", "chain of 100 ", "chain of 1000 ") for r in pick("P1", False, c))
    p2s = " ".join(f"{r['value']:.1f}" for r in pick("P2", True, "P50"))
    p2d = " ".join(f"{r['value']:.1f}" for r in pick("P2", False, "P50") + pick("P2", False, "P99"))
    print(f"{f.split('/')[-1][5:-5]:10} | {p1(True)} | {p1(False)} ({passes}) | {hand} | {p2s} | {p2d}")
PY
