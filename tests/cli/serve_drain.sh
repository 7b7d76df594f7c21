#!/usr/bin/env bash
# SIGTERM drains: with T = ∞ and B = 256 the queues never flush by themselves, so requests
# sent before SIGTERM are held; the drain must answer every one with 200 and exit 0.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid

start_server --queue-size 256 --queue-timeout-us -1
img=$(head -c 784 /dev/zero | tr '\0' '\100' | base64 -w0)
clients=()
for i in 1 2 3; do
  http POST /v1/classify "{\"images_b64\": [\"$img\"]}" >"$tmp/resp$i" &
  clients+=($!)
done
# Wait (bounded) until the three are admitted and held.
for _ in $(seq 300); do
  http GET /metrics | grep -q '^deltamoe_inflight_samples 3$' && break
  sleep 0.1
done
http GET /metrics | grep -q '^deltamoe_inflight_samples 3$' || { echo "requests not held in queues"; exit 1; }
rc=0; stop_server || rc=$?
pid=""
[ "$rc" = 0 ] || { echo "server exit $rc: $(cat "$tmp/server.log")"; exit 1; }
for i in 1 2 3; do
  wait "${clients[$((i-1))]}"
  [ "$(status_of <"$tmp/resp$i")" = 200 ] || { echo "held request $i not answered 200: $(cat "$tmp/resp$i")"; exit 1; }
  grep -q '"classes":\[' "$tmp/resp$i" || { echo "response $i has no classes"; exit 1; }
done
grep -q "answered 3" "$tmp/server.log" || { echo "server log: $(cat "$tmp/server.log")"; exit 1; }
echo "serve drain: ok"
