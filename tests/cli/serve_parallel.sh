#!/usr/bin/env bash
# `mpirun -np N deltamoe serve --model DIR --parallel MODE`: only rank 0 listens, the other ranks
# run each engine step with it. Greedy completions (one at a time and several batched
# together) equal the one-process server's for every parallel layout at np = 2 (tp and auto
# also at np = 4), /healthz answers, a classifier refuses --parallel, and SIGTERM to rank 0
# drains and ends the whole job with exit 0. No timing assertions; every wait is bounded.
# Skipped (exit 77) without mpirun or in a build without MPI, except under CI=true.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid
fail() { echo "FAIL: $*"; exit 1; }
if ! command -v mpirun >/dev/null || [ "$("$bin" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["mpi"])')" = "not built" ]; then
  [ "${CI:-}" = true ] && fail "MPI missing under CI (scripts/install-deps.sh installs libopenmpi-dev)"
  echo "SKIP: no mpirun or a build without MPI"; exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
body_of() { sed '1,/^\r$/d'; }
text_of() { body_of | python3 -c "import json,sys; print(repr(json.loads(sys.stdin.read())['choices'][0]['text']))"; }
prompts=("Once upon a time" "The quick brown fox" "A stitch in time" "Hello")
req() { printf '{"prompt":"%s","max_tokens":10,"temperature":0,"ignore_eos":true}' "$1"; }

"$bin" make-model --arch qwen2-moe --preset tiny --vocab 400 --seed 5 --out "$tmp/m" --quiet
model_args=(--model "$tmp/m")

# The one-process server's answers.
start_server
for i in "${!prompts[@]}"; do http POST /v1/completions "$(req "${prompts[$i]}")" | text_of >"$tmp/want$i"; done
stop_server || fail "one-process server exit"

rank0_pid() {  # the rank-0 process of the mpirun job $pid
  local p
  for p in $(pgrep -f "$bin serve --model $tmp/m" || true); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0'; then echo "$p"; return; fi
  done
}
for spec in "2 ep" "2 es" "2 tp" "2 auto" "4 tp" "4 auto"; do
  read -r np mode <<<"$spec"
  rm -f "$tmp/port"
  mpirun -np "$np" "$bin" serve --model "$tmp/m" --parallel "$mode" --port 0 --port-file "$tmp/port" 2>"$tmp/server.log" &
  pid=$!
  for _ in $(seq 600); do [ -s "$tmp/port" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  [ -s "$tmp/port" ] || { cat "$tmp/server.log"; fail "np $np $mode: server did not start"; }
  port=$(cat "$tmp/port")
  grep -q -- "--parallel $mode over $np ranks" "$tmp/server.log" || { cat "$tmp/server.log"; fail "np $np $mode: startup line"; }
  [ "$(http GET /healthz | status_of)" = 200 ] || fail "np $np $mode: healthz"
  # One at a time, then all together (batched into the same steps).
  for i in "${!prompts[@]}"; do
    [ "$(http POST /v1/completions "$(req "${prompts[$i]}")" | text_of)" = "$(cat "$tmp/want$i")" ] || fail "np $np $mode: prompt $i differs from one process"
  done
  for i in "${!prompts[@]}"; do http POST /v1/completions "$(req "${prompts[$i]}")" | text_of >"$tmp/got$i" & done
  wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
  for i in "${!prompts[@]}"; do
    [ "$(cat "$tmp/got$i")" = "$(cat "$tmp/want$i")" ] || fail "np $np $mode: batched prompt $i differs from one process"
  done
  # SIGTERM to rank 0: it drains, tells the other ranks to stop, and the job exits 0.
  r0=$(rank0_pid)
  [ -n "$r0" ] || fail "np $np $mode: no rank 0 process"
  kill -TERM "$r0"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; fail "np $np $mode: job did not end after SIGTERM to rank 0"; }
  rc=0; wait "$pid" || rc=$?
  pid=""
  [ "$rc" -eq 0 ] || { cat "$tmp/server.log"; fail "np $np $mode: exit $rc"; }
  [ "$(grep -c 'listening on' "$tmp/server.log")" -eq 1 ] || fail "np $np $mode: more than one rank printed"
done

# --parallel is a language-model flag; per-expert queues that hold tokens do not combine.
source "$src/tests/cli/error_lib.bash"
expect_one_line_error 1 "\[serve\] --parallel applies to language models" \
  "$bin" serve --random-model --parallel tp --port 0
expect_one_line_error 1 "\[serve\] --mode per-expert holds tokens at MoE layers between steps, which --parallel" \
  "$bin" serve --model "$tmp/m" --parallel tp --mode per-expert --queue-size 4 --queue-timeout-us 100 --port 0
echo "serve --parallel: OK"
