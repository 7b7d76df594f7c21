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
# One routing vocabulary (issue 18, item 5): the spec form of every command; --k, --p and
# --nulls are hidden aliases, refused beside a spec that sets the same parameter.
expect_flag_error --k "$bin" train --routing top-k:3 --k 3 --out "$out"
expect_flag_error --p "$bin" train --routing top-p:0.5 --p 0.6 --out "$out"
expect_flag_error --routing "$bin" train --routing top-p:1.5 --out "$out"
expect_flag_error --routing "$bin" train --routing top-q:2 --out "$out"
expect_flag_error --target-k "$bin" eval --model "$tmp/m.safetensors" --target-k 2
expect_flag_error --k "$bin" eval --model "$tmp/m.safetensors" --k 2
help=$("$bin" train --help)
grep -q -- "--routing TEXT=top-k" <<<"$help" || fail "train --help does not show the routing default"
for f in --k --p --nulls; do
  ! grep -q -- "^ *$f " <<<"$help" || fail "train --help shows the alias $f"
done
# --help shows every default: each numeric option of every subcommand has "=VALUE" (a value,
# or a word such as "preset" or "none" where the stored default is a sentinel).
for c in "bench moe-layer" "bench model" eval export-graph gen-graph generate info loadgen \
         make-model perplexity schedule serve sweep sweep-lm tokenize train train-lm train-tokenizer; do
  # shellcheck disable=SC2086
  missing=$("$bin" $c --help | grep -E '^ +-' | grep -E ' (INT|FLOAT|UINT)\b' | grep -v REQUIRED | grep -v '=' || true)
  [ -z "$missing" ] || fail "$c --help shows no default for: $missing"
done
# Compute threads are --threads for both kinds of served model; --workers is a hidden alias.
expect_flag_error --workers "$bin" serve --workers 0 --port 0
# (the help is captured first: grep -q stops reading at a match, and under pipefail the
# writer's SIGPIPE would fail the pipeline)
help=$("$bin" serve --help)
grep -q -- "--threads INT:INT in \[1 - 256\]=2" <<<"$help" || fail "serve --help: --threads"
! grep -q -- "--workers" <<<"$help" || fail "serve --help shows the alias --workers"
# export-graph takes the model's options, not those of a training run.
expect_one_line_error 2 "^deltamoe: error: \[cli\] .*--epochs" "$bin" export-graph --synthetic --epochs 3 --out "$tmp/g.json"
# The spec and the alias spellings build the same model (same graph, byte for byte).
"$bin" export-graph --synthetic --routing top-k:3 --out "$tmp/a.json" 2>/dev/null
"$bin" export-graph --synthetic --routing top-k --k 3 --out "$tmp/b.json" 2>/dev/null
cmp -s "$tmp/a.json" "$tmp/b.json" || fail "top-k:3 and --k 3 differ"
"$bin" export-graph --synthetic --routing top-k --out "$tmp/c.json" 2>/dev/null
! cmp -s "$tmp/a.json" "$tmp/c.json" || fail "top-k:3 equals the default top-k (2): the spec was ignored"
"$bin" export-graph --synthetic --routing top-p:0.7 --target-k 2 --out "$tmp/a.json" 2>/dev/null
"$bin" export-graph --synthetic --routing top-p --p 0.7 --target-k 2 --out "$tmp/b.json" 2>/dev/null
cmp -s "$tmp/a.json" "$tmp/b.json" || fail "top-p:0.7 and --p 0.7 differ"
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
