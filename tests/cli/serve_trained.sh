#!/usr/bin/env bash
# deltamoe serve on a checkpoint written by `deltamoe train`: the server's classes and experts
# used equal `deltamoe eval`'s (--predictions-out) on the first test images, for the routing
# the model was trained with and for an override. Skipped when Fashion-MNIST is not installed.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid
data=/usr/share/datasets/fashion-mnist
if [ ! -e "$data/t10k-images-idx3-ubyte.gz" ]; then echo "serve trained: data not installed, skipped"; exit 0; fi

# A small two-layer model whose per-expert thresholds were adapted in training (per layer).
"$bin" train --routing threshold --target-k 1.5 --max-train 2000 --val-size 200 --epochs 1 --hidden 64 \
  --inter 64 --layers 2 --threads 1 --no-progress --out "$tmp/m.safetensors" >/dev/null 2>&1
n=12
{ zcat "$data/t10k-images-idx3-ubyte.gz" || true; } | head -c $((16 + 784 * n)) | tail -c +17 >"$tmp/images.raw"
body='{"images_b64": ['
for i in $(seq 0 $((n - 1))); do
  [ "$i" -gt 0 ] && body+=','
  body+="\"$(dd if="$tmp/images.raw" bs=784 skip="$i" count=1 status=none | base64 -w0)\""
done
body+=']}'
model_args=(--model "$tmp/m.safetensors")

check() {  # check EVAL_ARGS -- SERVE_ARGS: compares classes and mean experts on the n images
  local eval_args=() serve_args=()
  while [ "$1" != "--" ]; do eval_args+=("$1"); shift; done
  shift
  serve_args=("$@")
  "$bin" eval --model "$tmp/m.safetensors" --threads 1 ${eval_args[@]+"${eval_args[@]}"} \
    --predictions-out "$tmp/p.csv" >/dev/null 2>&1
  start_server --queue-size 4 --queue-timeout-us 100 --max-request-images 16 ${serve_args[@]+"${serve_args[@]}"}
  local r
  r=$(http POST /v1/classify "$body")
  stop_server >/dev/null || { echo "server exit status $?"; exit 1; }
  pid=""
  [ "$(status_of <<<"$r")" = 200 ] || { echo "classify: $r"; exit 1; }
  local json classes experts
  json=$(tail -n1 <<<"$r")
  classes=$(grep -o '"classes":\[[^]]*\]' <<<"$json" | sed 's/.*\[//; s/\]//' | tr ',' '\n')
  experts=$(grep -o '"mean_experts":\[[^]]*\]' <<<"$json" | sed 's/.*\[//; s/\]//' | tr ',' '\n')
  paste -d' ' <(tail -n +2 "$tmp/p.csv" | head -n "$n" | cut -d, -f3,4 | tr ',' ' ') \
    <(paste -d' ' <(echo "$classes") <(echo "$experts")) >"$tmp/cmp.txt"
  [ "$(wc -l <"$tmp/cmp.txt")" = "$n" ] || { echo "expected $n answers: $(cat "$tmp/cmp.txt")"; exit 1; }
  awk '{ if ($1 != $3 || ($2 - $4) > 1e-6 || ($4 - $2) > 1e-6) { print "mismatch (eval class, K | serve class, K): " $0; bad = 1 } }
       END { exit bad }' "$tmp/cmp.txt" || { echo "routing: ${serve_args[*]:-trained}"; exit 1; }
  grep -q '"experts_used":\[\[\[' <<<"$json" || { echo "experts_used is not per image, per layer: $json"; exit 1; }
}

check -- # the routing stored in the checkpoint (adapted per-layer thresholds)
check --routing top-k:1 -- --routing top-k:1
check --routing top-p:0.6 -- --routing top-p:0.6
echo "serve trained: predictions and experts used match deltamoe eval"
