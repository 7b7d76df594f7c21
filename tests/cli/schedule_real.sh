#!/usr/bin/env bash
# deltamoe schedule on a real exported training graph (bench/graphs): JSON keys, never worse
# than any baseline, bound <= peak, --order-out written atomically; and, only where python3
# exists, python/memgraph_sim.py (an independent simulator) agrees with the C++ one on the
# program order and on the written order. No timing assertions.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
graph="$src/bench/graphs/squeezenet1_0-train.json.gz"
[ -f "$graph" ] || { echo "missing $graph"; exit 1; }
# Value of a top-level number/bool key in the pretty-printed (2-space) JSON object.
val() { sed -n "s/^  \"$2\": \([-0-9.a-z]*\),\{0,1\}$/\1/p" "$1"; }

"$bin" schedule "$graph" --json --time-limit 2 >"$tmp/r.json" 2>"$tmp/err.txt" || { cat "$tmp/err.txt"; exit 1; }
for key in nodes algorithm peak_bytes lower_bound_bytes lower_bound_kind gap proven_optimal \
           is_series_parallel sp_fraction arena_bytes fragmentation seconds program_peak_bytes \
           bfs_peak_bytes dfs_peak_bytes lpmf_peak_bytes xla_peak_bytes notes; do
  grep -q "^  \"$key\": " "$tmp/r.json" || { echo "missing $key"; cat "$tmp/r.json"; exit 1; }
done
[ "$(val "$tmp/r.json" nodes)" = 351 ] || { echo "nodes != 351"; cat "$tmp/r.json"; exit 1; }
peak=$(val "$tmp/r.json" peak_bytes)
lb=$(val "$tmp/r.json" lower_bound_bytes)
arena=$(val "$tmp/r.json" arena_bytes)
[ -n "$peak" ] && [ -n "$lb" ] && [ -n "$arena" ] || { echo "unparsable numbers"; cat "$tmp/r.json"; exit 1; }
for b in program bfs dfs lpmf xla; do
  bp=$(val "$tmp/r.json" "${b}_peak_bytes")
  [ "$peak" -le "$bp" ] || { echo "peak $peak above the $b baseline $bp"; exit 1; }
done
[ "$lb" -le "$peak" ] || { echo "lower bound $lb above peak $peak"; exit 1; }
[ "$lb" -gt 0 ] || { echo "no lower bound"; exit 1; }
[ "$arena" -ge "$peak" ] || { echo "arena $arena below peak $peak"; exit 1; }

# --order-out: a complete {"order": [...]} file, renamed into place (no temp file left).
"$bin" schedule "$graph" --time-limit 1 --json --order-out "$tmp/order.json" >"$tmp/o.json" 2>/dev/null
[ -s "$tmp/order.json" ] || { echo "no order file"; exit 1; }
[ "$(head -c 10 "$tmp/order.json")" = '{"order": ' ] || { echo "order file starts wrong"; head -c 80 "$tmp/order.json"; exit 1; }
tail -c 3 "$tmp/order.json" | grep -q ']}' || { echo "order file truncated"; exit 1; }
[ "$(tr ',' '\n' <"$tmp/order.json" | grep -c '[0-9]')" = 351 ] || { echo "order file lacks 351 ids"; exit 1; }
[ "$(ls -A "$tmp" | grep -vc '^\(r\.json\|err\.txt\|order\.json\|o\.json\)$' || true)" = 0 ] \
  || { echo "temp file left: $(ls -A "$tmp")"; exit 1; }

# Independent simulator cross-check (dev-only Python; skipped when python3 is absent).
if command -v python3 >/dev/null 2>&1; then
  for g in squeezenet1_0-train resnet18-train-ac gpt_small-train-compiled; do
    f="$src/bench/graphs/$g.json.gz"
    "$bin" schedule "$f" --algo program --json >"$tmp/p.json" 2>/dev/null
    cpp=$(val "$tmp/p.json" peak_bytes)
    py=$(python3 "$src/python/memgraph_sim.py" "$f" | sed -n 's/.*"peak_bytes": \([0-9]*\).*/\1/p')
    [ "$cpp" = "$py" ] || { echo "$g program peak: C++ $cpp, Python $py"; exit 1; }
  done
  # The written order is accepted by the Python simulator and has the reported peak.
  opeak=$(val "$tmp/o.json" peak_bytes)
  py=$(python3 "$src/python/memgraph_sim.py" "$graph" --order "$tmp/order.json" | sed -n 's/.*"peak_bytes": \([0-9]*\).*/\1/p')
  [ "$opeak" = "$py" ] || { echo "order-out peak: C++ $opeak, Python $py"; exit 1; }
else
  echo "python3 not found: simulator cross-check skipped"
fi
echo "schedule real graph: ok"
