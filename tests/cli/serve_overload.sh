#!/usr/bin/env bash
# Overload: far more load than a small admission bound allows. Every request must be
# answered 200 or 503 (no transport errors, nothing lost), and a light load afterwards must
# get only 200 (recovery). Short (a few seconds) and bounded; the 30 s version is in the study.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid

start_server --queue-size 16 --queue-timeout-us 500 --max-inflight 8 --max-request-images 4 --threads 1 --http-threads 64
heavy=$(timeout 120 "$bin" loadgen --url "http://127.0.0.1:$port" --rate 20000 --duration 2 --concurrency 48 --json)
field() { grep -o "\"$1\":[0-9]*" <<<"$2" | head -1 | cut -d: -f2; }
errors=$(grep -o '"errors":{[^}]*}' <<<"$heavy")
[[ "$errors" =~ ^\"errors\":\{(\"503\":[0-9]+)?\}$ ]] || { echo "errors other than 503: $errors"; exit 1; }
n503=$(grep -o '"503":[0-9]*' <<<"$errors" | cut -d: -f2); n503=${n503:-0}
sent=$(field requests_sent "$heavy"); ok=$(field requests_ok "$heavy")
[ "$sent" -gt 0 ] && [ $((ok + n503)) -eq "$sent" ] || { echo "lost requests: $heavy"; exit 1; }
echo "overload: sent $sent, 200: $ok, 503: $n503"
light=$(timeout 120 "$bin" loadgen --url "http://127.0.0.1:$port" --rate 50 --duration 1 --concurrency 4 --json)
grep -q '"errors":{}' <<<"$light" || { echo "not recovered: $light"; exit 1; }
[ "$(field requests_ok "$light")" = "$(field requests_sent "$light")" ] || { echo "light load lost requests: $light"; exit 1; }
m=$(http GET /metrics)
grep -q '^deltamoe_inflight_samples 0$' <<<"$m" || { echo "samples left in flight"; exit 1; }
rc=0; stop_server || rc=$?
pid=""
[ "$rc" = 0 ] || { echo "server exit $rc"; exit 1; }
echo "serve overload: ok"
