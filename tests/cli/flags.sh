#!/usr/bin/env bash
# Bad flag values are rejected, not reinterpreted (issue 18, item 3): each gets one line
# "deltamoe: error: [cli] <flag>: ..." naming the flag, exit status 2, nothing on stdout,
# before any data is read or work is done.
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
source "$(dirname "$0")/error_lib.bash"
# expect_flag_error FLAG CMD...: exit 2, one line that names FLAG, stdout empty.
expect_flag_error() {
  local flag="$1"; shift
  expect_one_line_error 2 "^deltamoe: error: \[cli\] .*$flag" "$@"
}
out="$tmp/m.safetensors"
for v in -1 0 nan inf; do
  expect_flag_error --target-k "$bin" train --routing threshold --target-k "$v" --out "$out"
done
for v in 0 -3; do expect_flag_error --k "$bin" train --k "$v" --out "$out"; done
for v in 0 -1; do expect_flag_error --threads "$bin" train --threads "$v" --out "$out"; done
for v in 0 1.5 nan; do expect_flag_error --p "$bin" train --routing top-p --p "$v" --out "$out"; done
expect_flag_error --nulls "$bin" train --routing null-experts --nulls 0 --out "$out"
# Routing parameters the chosen routing would ignore.
expect_flag_error --p "$bin" train --routing top-k --p 0.7 --out "$out"
expect_flag_error --nulls "$bin" train --routing top-k --nulls 3 --out "$out"
expect_flag_error --target-k "$bin" train --routing top-k --target-k 1.5 --out "$out"
expect_flag_error --k "$bin" train --routing top-p --k 3 --out "$out"
expect_flag_error --p "$bin" export-graph --routing threshold --p 0.5 --out "$tmp/g.json"
# Other ranges.
expect_flag_error --dropout "$bin" train --dropout 1 --out "$out"
expect_flag_error --lr "$bin" train --lr -0.1 --out "$out"
expect_flag_error --epochs "$bin" train --epochs 0 --out "$out"
expect_flag_error --queue-timeout-us "$bin" serve --queue-timeout-us -5
expect_flag_error --batch "$bin" eval --model "$tmp/m.safetensors" --batch 0
expect_flag_error --target-k "$bin" eval --model "$tmp/m.safetensors" --target-k nan
expect_flag_error --threads "$bin" eval --model "$tmp/m.safetensors" --threads -1
expect_flag_error --threads "$bin" generate --model x --prompt y --threads 0
expect_flag_error --weight-layout "$bin" bench model --model x --weight-layout strided
# Values in range (routing flags with their own routing) get past the command line: the run
# then stops at the missing data or model, with that component's error and exit status 1.
expect_later_error() {
  local rc=0
  "$@" >"$tmp/out.txt" 2>"$tmp/err.txt" || rc=$?
  [ "$rc" -eq 1 ] || { cat "$tmp/err.txt"; fail "exit $rc, not 1: $*"; }
  if grep -q '\[cli\]' "$tmp/err.txt"; then cat "$tmp/err.txt"; fail "rejected valid flags: $*"; fi
}
expect_later_error "$bin" train --routing top-p --p 0.7 --target-k 1.5 --data-dir "$tmp/none" --out "$out"
expect_later_error "$bin" train --routing null-experts --k 3 --nulls 4 --target-k 2 --data-dir "$tmp/none" --out "$out"
expect_later_error "$bin" train --routing threshold --target-k 2 --data-dir "$tmp/none" --out "$out"
expect_later_error "$bin" serve --queue-timeout-us -1 --model "$tmp/none.safetensors"
[ ! -e "$out" ] || fail "a checkpoint was written"
echo "flags: ok"
