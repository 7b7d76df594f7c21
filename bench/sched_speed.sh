#!/usr/bin/env bash
# Scheduler speed on synthetic graphs: `deltamoe schedule --algo auto --no-ilp`, one thread.
# Usage: bench/sched_speed.sh [path/to/deltamoe] [time-limit-seconds]
# For each kind (layered, transformer, sp) and size (1e4, 1e5 nodes) it reports the wall time
# of the whole command (read + schedule + placement + output) and the driver's own seconds,
# once with --time-limit 0 (baselines, SP analysis, bounds, placement: no search) and once
# with the search budget (default: 1 s for 1e4 nodes, 10 s for 1e5 nodes, the issue's targets).
# Prints one JSON object on stdout.
set -euo pipefail
bin="${1:-build/deltamoe}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
rows=()
for n in 10000 100000; do
  limit="${2:-$([ "$n" = 10000 ] && echo 1 || echo 10)}"
  for kind in layered transformer sp; do
    f="$tmp/$kind-$n.json.gz"
    "$bin" gen-graph --kind "$kind" --nodes "$n" --seed 1 --out "$f" 2>/dev/null
    for tl in 0 "$limit"; do
      start=$(date +%s.%N)
      out=$("$bin" schedule "$f" --algo auto --no-ilp --time-limit "$tl" --json 2>/dev/null)
      end=$(date +%s.%N)
      rows+=("$(python3 - "$kind" "$tl" "$start" "$end" "$out" <<'PY'
import json, sys
kind, tl, start, end, out = sys.argv[1:]
d = json.loads(out)
print(json.dumps({"kind": kind, "nodes": d["nodes"], "time_limit_s": float(tl),
                  "wall_s": round(float(end) - float(start), 3), "driver_s": round(d["seconds"], 3),
                  "algorithm": d["algorithm"], "peak_bytes": d["peak_bytes"],
                  "program_peak_bytes": d["program_peak_bytes"], "lpmf_peak_bytes": d["lpmf_peak_bytes"],
                  "lower_bound_bytes": d["lower_bound_bytes"]}))
PY
)")
    done
  done
done
python3 - "${rows[@]}" <<'PY'
import json, sys
print(json.dumps({"benchmark": "sched-speed", "threads": 1,
                  "runs": [json.loads(r) for r in sys.argv[1:]]}, indent=1))
PY
