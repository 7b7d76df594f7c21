#!/usr/bin/env bash
# deltamoe schedule / gen-graph: JSON shape, pinned peaks on hand-made graphs, --order-out,
# several graphs, errors. No timing assertions.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
data="$src/tests/data"
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# One graph: one JSON object with every documented key.
"$bin" schedule "$data/xla_counterexample.json" --json --time-limit 2 >"$tmp/one.json" 2>"$tmp/err.txt"
for key in nodes algorithm peak_bytes lower_bound_bytes lower_bound_kind gap proven_optimal \
           is_series_parallel sp_fraction arena_bytes fragmentation seconds program_peak_bytes \
           bfs_peak_bytes dfs_peak_bytes lpmf_peak_bytes xla_peak_bytes notes; do
  [ "$(jget "$tmp/one.json" "'$key' in d")" = True ] || { echo "missing $key"; cat "$tmp/one.json"; exit 1; }
done
[ "$(jget "$tmp/one.json" "d['nodes']")" = 7 ] || { echo "nodes != 7"; exit 1; }
# XLA's list scheduler needs 6 bytes here, the optimum (program order) needs 5.
[ "$(jget "$tmp/one.json" "d['xla_peak_bytes']")" = 6 ] || { echo "xla peak != 6"; cat "$tmp/one.json"; exit 1; }
[ "$(jget "$tmp/one.json" "d['peak_bytes']")" = 5 ] || { echo "auto peak != 5"; cat "$tmp/one.json"; exit 1; }
[ "$(jget "$tmp/one.json" "d['arena_bytes'] >= d['peak_bytes']")" = True ] || { echo "arena < peak"; exit 1; }

# A specific baseline is returned as is.
"$bin" schedule "$data/xla_counterexample.json" --algo xla --json >"$tmp/xla.json" 2>/dev/null
[ "$(jget "$tmp/xla.json" "(d['algorithm'], d['peak_bytes'])")" = "('xla', 6)" ] || { echo "--algo xla"; cat "$tmp/xla.json"; exit 1; }

# --order-out: file ids, a topological permutation, written atomically (no temp left behind).
"$bin" schedule "$data/xla_counterexample.json" --order-out "$tmp/order.json" >/dev/null 2>&1
[ "$(jget "$tmp/order.json" "sorted(d['order'])")" = "[10, 20, 30, 40, 50, 60, 70]" ] || { echo "bad order ids"; cat "$tmp/order.json"; exit 1; }
[ "$(ls "$tmp" | grep -c '\.tmp\.' || true)" = 0 ] || { echo "temp file left"; exit 1; }

# Views keep their base alive (d reads a through a view: a + d + workspace = 64, the
# working-set bound, so proven optimal); the persistent param is excluded.
"$bin" schedule "$data/views.json" --json >"$tmp/views.json" 2>/dev/null
[ "$(jget "$tmp/views.json" "d['program_peak_bytes']")" = 64 ] || { echo "views program peak"; cat "$tmp/views.json"; exit 1; }
[ "$(jget "$tmp/views.json" "(d['peak_bytes'], d['proven_optimal'])")" = "(64, True)" ] || { echo "views best peak"; cat "$tmp/views.json"; exit 1; }

# Every rule at once, program order (hand-computed): x and y live from the start (107);
# a needs 107 + 40 + workspace 10 = 157; y, read by nobody, is freed after its own step;
# b needs 140 + 30 = 170 (a is kept by its views' reader c, x by b); s, an output view,
# keeps b to the end: final 50. The persistent w counts nowhere.
"$bin" schedule "$data/model_features.json" --algo program --json >"$tmp/mf.json" 2>/dev/null
[ "$(jget "$tmp/mf.json" "d['peak_bytes']")" = 170 ] || { echo "model_features program peak"; cat "$tmp/mf.json"; exit 1; }
"$bin" schedule "$data/model_features.json" --json >"$tmp/mf_auto.json" 2>/dev/null
[ "$(jget "$tmp/mf_auto.json" "d['peak_bytes'] <= 170 and d['lower_bound_bytes'] <= d['peak_bytes']")" = True ] || { echo "model_features auto"; exit 1; }

# Several graphs: {"graphs": [...]}; generated .json.gz works; fusion report.
"$bin" gen-graph --kind transformer --nodes 200 --seed 2 --out "$tmp/t.json.gz" 2>/dev/null
"$bin" gen-graph --kind layered --nodes 300 --seed 2 --out "$tmp/l.json.gz" 2>/dev/null
"$bin" gen-graph --kind sp --nodes 300 --seed 2 --out "$tmp/s.json" 2>/dev/null
"$bin" gen-graph --kind chain --nodes 50 --out "$tmp/c.json" 2>/dev/null
"$bin" schedule "$tmp/t.json.gz" "$tmp/l.json.gz" "$tmp/s.json" "$tmp/c.json" --json --no-ilp --time-limit 1 \
  --fusion-report >"$tmp/many.json" 2>/dev/null
[ "$(jget "$tmp/many.json" "len(d['graphs'])")" = 4 ] || { echo "graphs array"; exit 1; }
[ "$(jget "$tmp/many.json" "all(g['peak_bytes'] <= min(g[k+'_peak_bytes'] for k in ['program','bfs','dfs','lpmf','xla']) for g in d['graphs'])")" = True ] \
  || { echo "worse than a baseline"; exit 1; }
[ "$(jget "$tmp/many.json" "all(g['lower_bound_bytes'] <= g['peak_bytes'] for g in d['graphs'])")" = True ] || { echo "bound > peak"; exit 1; }
[ "$(jget "$tmp/many.json" "d['graphs'][0]['fusion']['candidates'] > 0")" = True ] || { echo "no fusion candidates"; exit 1; }
# Human output names the algorithm and the baselines.
"$bin" schedule "$tmp/c.json" --time-limit 0 >"$tmp/human.txt" 2>/dev/null
grep -q "lower bound" "$tmp/human.txt" && grep -q "lpmf" "$tmp/human.txt" || { echo "human table"; cat "$tmp/human.txt"; exit 1; }
grep -q "proven optimal" "$tmp/human.txt" || { echo "a chain should be proven optimal"; cat "$tmp/human.txt"; exit 1; }

# Errors: one line with the component and the file; exit status 1. Usage errors: 2.
if "$bin" schedule "$data/bad_cycle.json" 2>"$tmp/err.txt" >/dev/null; then echo "cycle accepted"; exit 1; fi
grep -q "\[memgraph\].*bad_cycle.json.*cycle through ids" "$tmp/err.txt" || { echo "bad error: $(cat "$tmp/err.txt")"; exit 1; }
[ "$(wc -l <"$tmp/err.txt")" = 1 ] || { echo "error is not one line"; exit 1; }
set +e
"$bin" schedule "$data/views.json" --algo magic >/dev/null 2>&1; rc=$?
set -e
[ "$rc" = 2 ] || { echo "unknown algo exit $rc"; exit 1; }
if "$bin" schedule "$tmp/missing.json" 2>/dev/null; then echo "missing file accepted"; exit 1; fi
if "$bin" schedule "$data/views.json" "$data/views.json" --order-out "$tmp/o.json" 2>/dev/null; then
  echo "--order-out with two graphs accepted"; exit 1
fi
# One bad graph among several: the good ones are still reported (JSON: an {"path", "error"}
# entry in place of the bad one), one line per failure on stderr, exit status 1.
rc=0
"$bin" schedule "$data/xla_counterexample.json" "$data/bad_cycle.json" "$data/views.json" --json \
  --time-limit 2 >"$tmp/mixed.json" 2>"$tmp/err.txt" || rc=$?
[ "$rc" = 1 ] || { echo "one bad graph of three: exit $rc"; exit 1; }
[ "$(jget "$tmp/mixed.json" "[('error' in g) for g in d['graphs']]")" = "[False, True, False]" ] || { echo "mixed report"; cat "$tmp/mixed.json"; exit 1; }
[ "$(jget "$tmp/mixed.json" "d['graphs'][0]['peak_bytes'] > 0 and d['graphs'][2]['peak_bytes'] > 0")" = True ] || { echo "good graphs not reported"; exit 1; }
[ "$(wc -l <"$tmp/err.txt")" = 1 ] && grep -q "\[memgraph\].*bad_cycle.json" "$tmp/err.txt" || { echo "mixed stderr: $(cat "$tmp/err.txt")"; exit 1; }
"$bin" schedule --help | grep -q "least-peak-memory-first" || { echo "--help lacks algorithm descriptions"; exit 1; }
echo "schedule cli: ok"
