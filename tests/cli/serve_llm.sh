#!/usr/bin/env bash
# deltamoe serve on a language model (make-model, tiny): OpenAI completions and chat, streamed
# and not, /v1/models, /healthz, /metrics, the chat page, 400s in OpenAI's error shape, 503 with
# Retry-After past the queue bound, loadgen --openai, and SIGTERM finishing a stream before
# exit 0. No timing assertions; every wait is bounded.
set -euo pipefail
bin="$1"
src="$2"
source "$src/tests/cli/serve_lib.bash"  # sets $tmp (removed at exit) and $pid
jget() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(eval(sys.argv[1]))" "$1"; }
body_of() { sed '1,/^\r$/d'; }
"$bin" make-model --arch mixtral --preset tiny --vocab 400 --seed 3 --out "$tmp/m" --quiet
model_args=(--model "$tmp/m")

# A flag of the other kind of model is a one-line error before anything is loaded.
fail() { echo "FAIL: $*"; exit 1; }
source "$src/tests/cli/error_lib.bash"
expect_one_line_error 1 "\[serve\] --max-inflight applies to classifier models" \
  "$bin" serve --model "$tmp/m" --max-inflight 4 --port 0
# Per-expert queues across steps: B and T only with --mode per-expert, both given, T finite.
expect_one_line_error 1 "\[serve\] --queue-size and --queue-timeout-us go with --mode per-expert" \
  "$bin" serve --model "$tmp/m" --queue-size 4 --port 0
expect_one_line_error 1 "\[serve\] --mode per-expert for a language model needs --queue-size B" \
  "$bin" serve --model "$tmp/m" --mode per-expert --queue-size 4 --port 0
expect_one_line_error 1 "\[serve\] --queue-timeout-us for a language model must be in" \
  "$bin" serve --model "$tmp/m" --mode per-expert --queue-size 4 --queue-timeout-us -1 --port 0
expect_one_line_error 1 "\[serve\] --mode whole-model is not a batching mode of language models" \
  "$bin" serve --model "$tmp/m" --mode whole-model --port 0
expect_one_line_error 1 "\[serve\] --kv-block applies to language models" \
  "$bin" serve --random-model --kv-block 8 --port 0

start_server --kv-cache-mb 8 --max-batch-tokens 64
grep -q "chat template" "$tmp/server.log" || { cat "$tmp/server.log"; exit 1; }
r=$(http GET /healthz)
[ "$(status_of <<<"$r")" = 200 ] || { echo "healthz: $r"; exit 1; }
r=$(http GET /v1/models)
[ "$(body_of <<<"$r" | jget "d['data'][0]['id']")" = m ] || { echo "models: $r"; exit 1; }

# Completions, greedy: the same request twice gives the same text, and the same as generate.
req='{"prompt":"Once upon a time","max_tokens":12,"temperature":0,"ignore_eos":true}'
r=$(http POST /v1/completions "$req")
[ "$(status_of <<<"$r")" = 200 ] || { echo "completions: $r"; exit 1; }
b=$(body_of <<<"$r")
[ "$(jget "d['object']" <<<"$b")" = text_completion ] || { echo "object: $b"; exit 1; }
[ "$(jget "d['usage']['completion_tokens']" <<<"$b")" = 12 ] || { echo "usage: $b"; exit 1; }
[ "$(jget "d['choices'][0]['finish_reason']" <<<"$b")" = length ] || { echo "finish: $b"; exit 1; }
text=$(jget "d['choices'][0]['text']" <<<"$b")
gen=$("$bin" generate --model "$tmp/m" --prompt "Once upon a time" -n 12 --ignore-eos --json 2>/dev/null | jget "d['text']")
[ "$text" = "$gen" ] || { echo "server text '$text' != generate '$gen'"; exit 1; }

# Streamed: events end with [DONE]; the pieces add up to the same text; usage chunk.
r=$(http POST /v1/completions '{"prompt":"Once upon a time","max_tokens":12,"temperature":0,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}')
[ "$(status_of <<<"$r")" = 200 ] || { echo "stream: $r"; exit 1; }
grep -qi '^content-type: text/event-stream' <<<"$r" || { echo "stream content type: $r"; exit 1; }
grep -q '^data: \[DONE\]' <<<"$r" || { echo "no [DONE]: $r"; exit 1; }
streamed=$(grep '^data: {' <<<"$r" | sed 's/^data: //' | python3 -c "
import json,sys
t=''
for line in sys.stdin:
    d=json.loads(line)
    if d['choices']: t+=d['choices'][0]['text']
print(t)")
[ "$streamed" = "$text" ] || { echo "streamed '$streamed' != '$text'"; exit 1; }
grep -q '"completion_tokens":12' <<<"$r" || { echo "no usage chunk: $r"; exit 1; }
# One chunk per generated token (text held back or not), then the finish chunk: 12 + 1.
chunks=$(grep '^data: {' <<<"$r" | sed 's/^data: //' | python3 -c "
import json,sys
print(sum(1 for line in sys.stdin if json.loads(line)['choices']))")
[ "$chunks" = 13 ] || { echo "stream chunks with a choice: $chunks, want 13: $r"; exit 1; }

# Chat, through the model's chat template.
r=$(http POST /v1/chat/completions '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":5,"temperature":0}')
[ "$(status_of <<<"$r")" = 200 ] || { echo "chat: $r"; exit 1; }
[ "$(body_of <<<"$r" | jget "d['choices'][0]['message']['role']")" = assistant ] || { echo "chat body: $r"; exit 1; }
r=$(http POST /v1/chat/completions '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":3,"stream":true}')
grep -q '"role":"assistant"' <<<"$r" || { echo "chat stream role: $r"; exit 1; }
grep -q '^data: \[DONE\]' <<<"$r" || { echo "chat stream [DONE]: $r"; exit 1; }

# The template's own check (Mixtral: roles must alternate) is a 400 with its message.
r=$(http POST /v1/chat/completions '{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}')
[ "$(status_of <<<"$r")" = 400 ] || { echo "template raise not 400: $r"; exit 1; }
grep -qi 'alternate' <<<"$r" || { echo "template raise reason: $r"; exit 1; }

# Bad requests: 400 with OpenAI's error shape naming the field.
r=$(http POST /v1/completions '{"prompt":"x","n":3}')
[ "$(status_of <<<"$r")" = 400 ] || { echo "n=3 not 400: $r"; exit 1; }
grep -q '"type":"invalid_request_error"' <<<"$r" || { echo "error shape: $r"; exit 1; }
r=$(http POST /v1/completions '{"prompt":"x","max_tokens":100000}')
[ "$(status_of <<<"$r")" = 400 ] || { echo "too long not 400: $r"; exit 1; }
grep -q "context" <<<"$r" || { echo "too long reason: $r"; exit 1; }
r=$(http POST /v1/completions 'nope')
[ "$(status_of <<<"$r")" = 400 ] || { echo "not json: $r"; exit 1; }
r=$(http GET /v1/completions)
[ "$(status_of <<<"$r")" = 405 ] || { echo "GET completions not 405: $r"; exit 1; }

r=$(http GET /)
[ "$(status_of <<<"$r")" = 200 ] && grep -q '<title>deltamoe chat</title>' <<<"$r" || { echo "chat page: $(head -c 300 <<<"$r")"; exit 1; }
r=$(http GET /metrics)
for m in deltamoe_llm_time_to_first_token_seconds_bucket deltamoe_llm_time_per_output_token_seconds_count \
         deltamoe_llm_batch_sequences_bucket deltamoe_llm_kv_blocks_total deltamoe_llm_generation_tokens_total \
         'deltamoe_llm_expert_tokens_total{expert="0"}' 'deltamoe_llm_expert_step_rows{expert="3"}' \
         deltamoe_llm_requests_waiting; do
  grep -qF "$m" <<<"$r" || { echo "metrics miss $m"; exit 1; }
done

# loadgen --openai: streamed Poisson load, one JSON object, every request answered.
out=$(timeout 300 "$bin" loadgen --openai --url "http://127.0.0.1:$port" --rate 20 --duration 1 \
      --prompt-tokens 4:16 --output-tokens 4:8 --json)
[ "${out:0:1}" = "{" ] && [ "${out: -1}" = "}" ] || { echo "loadgen stdout: $out"; exit 1; }
[ "$(jget "d['ok'] == d['sent'] and d['ok'] > 0" <<<"$out")" = True ] || { echo "loadgen: $out"; exit 1; }
# (TPOT can be 0 here: a busy client may read all of a tiny model's events at once)
[ "$(jget "d['e2e_p50_ms'] >= d['ttft_p50_ms'] > 0 and d['tpot_p50_ms'] >= 0 and d['output_tokens'] >= 4 * d['ok']" <<<"$out")" = True ] || { echo "loadgen figures: $out"; exit 1; }

# A second phase (--then-rate) and the per-request timeline: one CSV row per request.
out=$(timeout 300 "$bin" loadgen --openai --url "http://127.0.0.1:$port" --rate 20 --duration 0.5 \
      --then-rate 10 --then-duration 0.5 --prompt-tokens 4 --output-tokens 4 --timeline-out "$tmp/tl.csv" --json)
[ "$(jget "'recovery_s' in d and d['then_rate_rps'] == 10" <<<"$out")" = True ] || { echo "loadgen phases: $out"; exit 1; }
[ "$(head -1 "$tmp/tl.csv")" = "scheduled_s,done_s,status,ttft_ms,tpot_ms,met_slo" ] || { echo "timeline header"; exit 1; }
[ "$(($(wc -l <"$tmp/tl.csv") - 1))" = "$(jget "d['sent'] + d['not_sent']" <<<"$out")" ] || { echo "timeline rows"; exit 1; }
# --prompt-ids: prompts from other ids (all valid here: vocab 400); a bad range is refused at once.
out=$(timeout 300 "$bin" loadgen --openai --url "http://127.0.0.1:$port" --rate 10 --duration 0.5 \
      --prompt-ids 300:399 --prompt-tokens 4 --output-tokens 2 --json)
[ "$(jget "d['ok'] == d['sent'] > 0" <<<"$out")" = True ] || { echo "loadgen --prompt-ids: $out"; exit 1; }
if err=$("$bin" loadgen --openai --url "http://127.0.0.1:$port" --prompt-ids 9:3 --duration 1 --rate 1 2>&1); then
  echo "loadgen accepted --prompt-ids 9:3"; exit 1
fi
grep -q -- "--prompt-ids" <<<"$err" || { echo "loadgen --prompt-ids error: $err"; exit 1; }
# Closed loop too (requests recorded as they end, listed by send time).
out=$(timeout 300 "$bin" loadgen --openai --url "http://127.0.0.1:$port" --closed-loop --concurrency 2 \
      --duration 0.5 --prompt-tokens 4 --output-tokens 4 --timeline-out "$tmp/tlc.csv" --json)
[ "$(($(wc -l <"$tmp/tlc.csv") - 1))" = "$(jget "d['sent']" <<<"$out")" ] && [ "$(jget "d['sent'] > 0" <<<"$out")" = True ] || { echo "closed-loop timeline rows: $out"; exit 1; }
python3 -c "import csv,sys; t=[float(r['scheduled_s']) for r in csv.DictReader(open(sys.argv[1]))]; sys.exit(t != sorted(t))" "$tmp/tlc.csv" || { echo "closed-loop timeline order"; exit 1; }

# SIGTERM with a stream in progress: the stream finishes ([DONE]) and the server exits 0.
exec 4<>"/dev/tcp/127.0.0.1/$port"
body='{"prompt":"Once","max_tokens":200,"ignore_eos":true,"stream":true}'
printf 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' "${#body}" "$body" >&4
timeout 60 dd bs=1 count=1 status=none <&4 >/dev/null  # the response has started
kill -TERM "$pid"
rest=$(timeout 120 cat <&4)
exec 4<&-
grep -q '^data: \[DONE\]' <<<"$rest" || { echo "stream cut by SIGTERM: $rest"; exit 1; }
for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
wait "$pid" || { echo "exit status $? after SIGTERM: $(cat "$tmp/server.log")"; exit 1; }
pid=""

# Per-expert queues across steps (B = 64 rows is never reached, so every decode token waits
# T = 2 ms at each MoE layer): the same greedy text as generate, streamed too, and /metrics
# counts held tokens.
start_server --mode per-expert --queue-size 64 --queue-timeout-us 2000 --kv-cache-mb 8
grep -q "per-expert queues B=64" "$tmp/server.log" || { cat "$tmp/server.log"; exit 1; }
r=$(http POST /v1/completions "$req")
[ "$(body_of <<<"$r" | jget "d['choices'][0]['text']")" = "$gen" ] || { echo "per-expert text: $r"; exit 1; }
out=$(timeout 300 "$bin" loadgen --openai --url "http://127.0.0.1:$port" --closed-loop --concurrency 4 \
      --duration 1 --prompt-tokens 4:16 --output-tokens 4:8 --json)
[ "$(jget "d['ok'] == d['sent'] and d['ok'] > 0" <<<"$out")" = True ] || { echo "per-expert loadgen: $out"; exit 1; }
r=$(http GET /metrics)
held=$(grep '^deltamoe_llm_held_token_steps_total ' <<<"$r" | awk '{print $2}')
python3 -c "import sys; sys.exit(0 if float('$held') > 0 else 1)" || { echo "no held tokens: $r"; exit 1; }
grep -qF 'deltamoe_llm_expert_queue_rows{expert="0"}' <<<"$r" || { echo "metrics miss queue rows"; exit 1; }
grep -q '^deltamoe_llm_expert_runs_total ' <<<"$r" || { echo "metrics miss expert runs"; exit 1; }
stop_server || { echo "per-expert server exit $?"; exit 1; }
pid=""

# Experts in a cache of one layer's experts (50% of the tiny model's two layers): the same
# greedy text as generate, and /metrics exports the cache's counters. With per-expert queues
# across steps the cache is refused at start.
expect_one_line_error 1 "\[serve\] --mode per-expert holds tokens at MoE layers" \
  "$bin" serve --model "$tmp/m" --mode per-expert --queue-size 4 --queue-timeout-us 100 --expert-cache 50% --port 0
start_server --expert-cache 50% --kv-cache-mb 8
r=$(http POST /v1/completions "$req")
[ "$(body_of <<<"$r" | jget "d['choices'][0]['text']")" = "$gen" ] || { echo "expert-cache text: $r"; exit 1; }
r=$(http GET /metrics)
for m in deltamoe_expert_cache_slots deltamoe_expert_cache_hits_total deltamoe_expert_cache_misses_total \
         deltamoe_expert_cache_read_bytes_total deltamoe_expert_cache_prefetch_precision_ratio \
         deltamoe_expert_cache_stall_seconds_total; do
  grep -q "^$m " <<<"$r" || { echo "metrics miss $m"; exit 1; }
done
req_n=$(grep '^deltamoe_expert_cache_requests_total ' <<<"$r" | awk '{print $2}')
python3 -c "import sys; sys.exit(0 if float('$req_n') > 0 else 1)" || { echo "no cache requests: $r"; exit 1; }
stop_server || { echo "expert-cache server exit $?"; exit 1; }
pid=""

# Past the queue bound: 503 with Retry-After.
start_server --max-waiting 0
r=$(http POST /v1/completions '{"prompt":"x","max_tokens":2}')
[ "$(status_of <<<"$r")" = 503 ] || { echo "queue bound not 503: $r"; exit 1; }
grep -qi '^retry-after:' <<<"$r" || { echo "503 without Retry-After: $r"; exit 1; }
stop_server
pid=""
echo "serve_llm: ok"
