#!/usr/bin/env bash
# deltamoe export-graph: a tiny MoE training step exports to memgraph-v1 and `deltamoe
# schedule` accepts it. No timing assertions.
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

"$bin" export-graph --synthetic --layers 2 --experts 4 --hidden 16 --inter 8 --batch 16 \
  --out "$tmp/g.json.gz" --json >"$tmp/export.json" 2>"$tmp/err.txt" || { cat "$tmp/err.txt"; exit 1; }
[ -s "$tmp/g.json.gz" ] || { echo "no graph written"; exit 1; }
[ "$(ls "$tmp" | grep -c '\.tmp' || true)" = 0 ] || { echo "temp file left"; exit 1; }
[ "$(jget "$tmp/export.json" "d['params'] == d['gradient_outputs'] and d['params'] > 10")" = True ] \
  || { echo "params/outputs"; cat "$tmp/export.json"; exit 1; }
[ "$(jget "$tmp/export.json" "d['nodes'] > d['tape_ops']")" = True ] || { echo "no backward nodes"; exit 1; }
# It is gzip (magic bytes) and memgraph-v1.
python3 -c "import gzip,json,sys; d=json.load(gzip.open(sys.argv[1])); assert d['format']=='memgraph-v1', d['format']" "$tmp/g.json.gz"

# With the ILP on (auto): it used to overrun --time-limit 2 by minutes on this graph; the
# wall-clock check is generous (30 s) so only that kind of overrun fails it.
start=$(date +%s)
"$bin" schedule "$tmp/g.json.gz" --json --time-limit 2 >"$tmp/sched.json" 2>"$tmp/err2.txt" \
  || { cat "$tmp/err2.txt"; exit 1; }
[ $(( $(date +%s) - start )) -lt 30 ] || { echo "schedule overran --time-limit 2"; exit 1; }
[ "$(jget "$tmp/sched.json" "d['peak_bytes'] > 0 and d['peak_bytes'] <= d['program_peak_bytes']")" = True ] \
  || { echo "schedule output"; cat "$tmp/sched.json"; exit 1; }
[ "$(jget "$tmp/sched.json" "d['program_peak_bytes']")" = "$(jget "$tmp/export.json" "d['program_peak_bytes']")" ] \
  || { echo "program peak differs between export and schedule"; exit 1; }

# A missing --out is a usage error.
if "$bin" export-graph --synthetic >/dev/null 2>&1; then echo "missing --out accepted"; exit 1; fi
echo ok
