#!/usr/bin/env bash
# No run lost late (issue 18, item 4): every command that writes checks its output path before
# any work, so an unwritable path fails at once with one line naming the path, exit 1, and
# nothing else printed (no "training ..." line, no epoch).
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
source "$(dirname "$0")/error_lib.bash"
# expect_early_error PATH CMD...: exit 1, one line naming PATH (so no work started).
expect_early_error() {
  local path="$1"; shift
  expect_one_line_error 1 "^deltamoe: error: \[.*\] $path" "$@"
}
# /sys refuses new files even to root, so this works in containers that run tests as root.
expect_early_error /sys/m.safetensors "$bin" train --max-train 600 --val-size 50 --epochs 1 \
  --hidden 16 --inter 16 --no-test --no-progress --out /sys/m.safetensors
expect_early_error /sys/g.json "$bin" export-graph --synthetic --layers 1 --experts 2 --hidden 8 \
  --inter 8 --batch 4 --out /sys/g.json
expect_early_error /sys/g.json "$bin" gen-graph --kind chain --nodes 10 --out /sys/g.json
expect_early_error /sys/sweep "$bin" sweep --quick --out-dir /sys/sweep
expect_early_error /sys/port "$bin" serve --port-file /sys/port
expect_early_error "$tmp" "$bin" train --out "$tmp"
expect_early_error /sys/p.csv "$bin" eval --model "$tmp/none.safetensors" --predictions-out /sys/p.csv
expect_early_error /sys/lat.txt "$bin" loadgen --url http://127.0.0.1:1 --duration 0.2 --latencies-out /sys/lat.txt
# loadgen against nothing: its report still comes out (one JSON object, every request an
# error), but a run with no answered request exits 1 with one line saying so.
rc=0
"$bin" loadgen --url http://127.0.0.1:1 --rate 50 --duration 0.3 --grace 0.2 --json >"$tmp/lg.json" 2>"$tmp/lg.err" || rc=$?
[ "$rc" -eq 1 ] || fail "loadgen with every request failed: exit $rc"
python3 -c "import json; d=json.load(open('$tmp/lg.json')); assert d['requests_ok'] == 0 and d['requests_sent'] > 0" || fail "loadgen report"
grep -q "^deltamoe: error: \[loadgen\] every request failed" "$tmp/lg.err" || fail "loadgen message: $(cat "$tmp/lg.err")"
# A writable path in a directory that does not exist yet: created, and no file is left behind
# by the check itself when the run then fails on its input.
rc=0
"$bin" train --data-dir "$tmp/none" --out "$tmp/new/dir/m.safetensors" >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "missing data: exit $rc"
[ -d "$tmp/new/dir" ] || fail "directory of --out not created"
[ -z "$(ls -A "$tmp/new/dir")" ] || fail "check left files: $(ls -A "$tmp/new/dir")"
echo "outputs: ok"
