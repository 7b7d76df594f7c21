#!/usr/bin/env bash
# deltamoe serve over loopback: healthz, classify (base64 and arrays), 400, 413, 404, metrics,
# loadgen JSON, SIGTERM exit 0. No timing assertions; every wait is bounded.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid

start_server --queue-size 4 --queue-timeout-us 200 --max-body-bytes 8000 --max-request-images 4
r=$(http GET /healthz)
[ "$(status_of <<<"$r")" = 200 ] || { echo "healthz: $r"; exit 1; }
grep -q '"status":"ok"' <<<"$r" || { echo "healthz body: $r"; exit 1; }

img=$(head -c 784 /dev/zero | tr '\0' '\200' | base64 -w0)
r=$(http POST /v1/classify "{\"images_b64\": [\"$img\", \"$img\"]}")
[ "$(status_of <<<"$r")" = 200 ] || { echo "classify b64: $r"; exit 1; }
for key in '"classes":\[' '"probabilities":\[\[' '"experts_used":\[\['; do
  grep -q "$key" <<<"$r" || { echo "missing $key in: $r"; exit 1; }
done
arr="$(printf '128,%.0s' $(seq 783))128"
r2=$(http POST /v1/classify "{\"images\": [[$arr]]}")
[ "$(status_of <<<"$r2")" = 200 ] || { echo "classify arrays: $r2"; exit 1; }
# The same image as base64 and as numbers gives the same class.
c1=$(grep -o '"classes":\[[0-9]*' <<<"$r" | head -1); c2=$(grep -o '"classes":\[[0-9]*' <<<"$r2")
[ "$c1" = "$c2" ] || { echo "b64 and array answers differ: $c1 vs $c2"; exit 1; }

r=$(http POST /v1/classify '{"images": [[1, 2, 3]]}')
[ "$(status_of <<<"$r")" = 400 ] || { echo "short image not 400: $r"; exit 1; }
grep -q '"error":"\[request\] images\[0\] has 3 values' <<<"$r" || { echo "400 without reason: $r"; exit 1; }
r=$(http POST /v1/classify 'not json')
[ "$(status_of <<<"$r")" = 400 ] || { echo "not-json not 400: $r"; exit 1; }
big=$(head -c 9000 /dev/zero | tr '\0' ' ')
r=$(http POST /v1/classify "$big")
[ "$(status_of <<<"$r")" = 413 ] || { echo "oversized not 413: $(head -n1 <<<"$r")"; exit 1; }
r=$(http GET /nope)
[ "$(status_of <<<"$r")" = 404 ] || { echo "unknown path not 404: $r"; exit 1; }

out=$(timeout 120 "$bin" loadgen --url "http://127.0.0.1:$port" --rate 200 --duration 1 --concurrency 8 --json)
[ "${out:0:1}" = "{" ] && [ "${out: -1}" = "}" ] || { echo "loadgen stdout is not one JSON object: $out"; exit 1; }
for key in '"p50_ms"' '"p99_ms"' '"throughput_rps"' '"errors":{}' '"requests_ok"'; do
  grep -q "$key" <<<"$out" || { echo "missing $key in: $out"; exit 1; }
done
if "$bin" loadgen --url http://192.0.2.1:80 --rate 1 --duration 1 2>"$tmp/err.txt"; then
  echo "non-loopback target accepted"; exit 1
fi
grep -q "\[loadgen\] only loopback" "$tmp/err.txt" || { echo "bad error: $(cat "$tmp/err.txt")"; exit 1; }

m=$(http GET /metrics)
for key in 'deltamoe_http_requests_total{code="200"}' 'deltamoe_http_requests_total{code="400"} 2' \
           'deltamoe_http_requests_total{code="413"} 1' 'deltamoe_queue_depth{queue="expert0"}' \
           'deltamoe_queue_flushes_total{queue="stem",reason="timeout"}' 'deltamoe_queue_batch_size_bucket' \
           'deltamoe_http_request_duration_seconds_bucket'; do
  grep -qF "$key" <<<"$m" || { echo "metrics lack $key"; exit 1; }
done
rc=0; stop_server || rc=$?
[ "$rc" = 0 ] || { echo "server exit $rc: $(cat "$tmp/server.log")"; exit 1; }
pid=""
grep -q "draining" "$tmp/server.log" || { echo "no drain message"; exit 1; }
echo "serve http: ok"
