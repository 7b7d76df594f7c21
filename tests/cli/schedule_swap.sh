#!/usr/bin/env bash
# deltamoe schedule --swap-budget on real exported graphs: the plan in the JSON keeps the peak
# within the budget and moves bytes; the least budget is reported and one byte less fails with
# one line; bad flag values fail with one line; and, where python3 exists,
# python/memgraph_sim.py --swaps (an independent check of the plan's rules) agrees on the peak
# and the bytes moved. No timing assertions.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
source "$src/tests/cli/error_lib.bash"
# A number under "swap" (4-space indent in the pretty-printed JSON).
sval() { sed -n "s/^    \"$2\": \([-0-9.a-z]*\),\{0,1\}$/\1/p" "$1" | head -1; }

for g in squeezenet1_0-train resnet18-train-ac; do
  f="$src/bench/graphs/$g.json.gz"
  "$bin" schedule "$f" --time-limit 2 --swap-budget 80% --swap-outputs-to-host --swap-time-limit 2 \
    --json --order-out "$tmp/order.json" >"$tmp/r.json" 2>"$tmp/err.txt" || { cat "$tmp/err.txt"; fail "$g"; }
  for key in budget_bytes order_peak_bytes feasible min_budget_bytes peak_bytes method bytes_moved \
             bytes_to_host bytes_from_host transfer_ms greedy_bytes_moved ilp swaps; do
    grep -q "^    \"$key\": " "$tmp/r.json" || fail "$g: no swap.$key"
  done
  [ "$(sval "$tmp/r.json" feasible)" = true ] || fail "$g: not feasible at 80%"
  budget=$(sval "$tmp/r.json" budget_bytes)
  opeak=$(sval "$tmp/r.json" order_peak_bytes)
  speak=$(sval "$tmp/r.json" peak_bytes)
  moved=$(sval "$tmp/r.json" bytes_moved)
  least=$(sval "$tmp/r.json" min_budget_bytes)
  [ "$budget" -eq $((opeak * 8 / 10)) ] || [ "$budget" -eq $((opeak * 8 / 10 - 1)) ] || fail "$g: budget $budget is not 80% of $opeak"
  [ "$speak" -le "$budget" ] || fail "$g: peak $speak above the budget $budget"
  [ "$moved" -gt 0 ] || fail "$g: nothing moved"
  [ "$least" -le "$budget" ] || fail "$g: least budget $least above the budget"
  if command -v python3 >/dev/null 2>&1; then
    python3 "$src/python/memgraph_sim.py" "$f" --order "$tmp/order.json" --swaps "$tmp/r.json" >"$tmp/py.json"
    py_peak=$(sed -n 's/.*"swap_peak_bytes": \([0-9]*\).*/\1/p' "$tmp/py.json")
    py_out=$(sed -n 's/.*"swap_bytes_to_host": \([0-9]*\).*/\1/p' "$tmp/py.json")
    py_back=$(sed -n 's/.*"swap_bytes_from_host": \([0-9]*\).*/\1/p' "$tmp/py.json")
    [ "$py_peak" -le "$budget" ] || fail "$g: Python peak $py_peak above the budget $budget"
    [ "$((py_out + py_back))" -eq "$moved" ] || fail "$g: Python bytes $py_out + $py_back, C++ $moved"
  fi
  # The least budget works; one byte less does not, with one line naming the least budget.
  "$bin" schedule "$f" --time-limit 2 --swap-budget "$least" --swap-outputs-to-host --swap-method greedy \
    --json >"$tmp/l.json" 2>/dev/null || fail "$g: the least budget $least fails"
  expect_one_line_error 1 "least budget is .*($least B)" \
    "$bin" schedule "$f" --time-limit 2 --swap-budget "$((least - 1))" --swap-outputs-to-host --swap-method greedy --json
done

# Outputs kept on the device (the default): the gradients alone exceed 80% of resnet18's peak.
f="$src/bench/graphs/resnet18-train.json.gz"
expect_one_line_error 1 "no swap plan of this order fits" "$bin" schedule "$f" --time-limit 1 --swap-budget 80%
# A budget at the peak needs no swap.
"$bin" schedule "$f" --time-limit 1 --swap-budget 100% --json >"$tmp/n.json" 2>/dev/null
[ "$(sed -n 's/^    "method": "\(.*\)",$/\1/p' "$tmp/n.json")" = none ] || fail "100% budget swapped"

# Bad values: one line each, nothing on stdout.
# (Values the flag parser rejects exit 2, as every usage error does.)
for bad in 0% 150% abc 0 5XB; do
  expect_one_line_error 1 "swap-budget" "$bin" schedule "$f" --swap-budget "$bad"
done
expect_one_line_error 2 "swap-method" "$bin" schedule "$f" --swap-budget 80% --swap-method best
expect_one_line_error 2 "swap-overlap-steps" "$bin" schedule "$f" --swap-budget 80% --swap-overlap-steps=-1
echo "schedule swap: ok"
