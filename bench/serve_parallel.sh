#!/usr/bin/env bash
# serve in one process beside `mpirun -np 2 serve --parallel MODE` on the same model, alternating
# (A B A B), each under the same closed-loop OpenAI load (`deltamoe loadgen --openai`): 4
# requests outstanding, 64-token prompts, 32 generated tokens, 30 s. Writes every loadgen JSON
# into one file and prints output tokens/s, TTFT and TPOT per run.
#   bash bench/serve_parallel.sh MODEL_DIR [MODE=tp] [ROUNDS=2] [OUT=bench/results/serve_parallel.json]
set -euo pipefail
model="$1"; mode="${2:-tp}"; rounds="${3:-2}"; out="${4:-bench/results/serve_parallel.json}"
bin="$(dirname "$0")/../build/deltamoe"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for round in $(seq "$rounds"); do
  for cfg in one "np2_$mode"; do
    rm -f "$tmp/port"
    if [ "$cfg" = one ]; then
      "$bin" serve --model "$model" --port 0 --port-file "$tmp/port" 2>"$tmp/server.log" & job=$!
    else
      mpirun -np 2 "$bin" serve --model "$model" --parallel "$mode" --port 0 --port-file "$tmp/port" 2>"$tmp/server.log" & job=$!
    fi
    for _ in $(seq 1500); do [ -s "$tmp/port" ] && break; kill -0 "$job" 2>/dev/null || break; sleep 0.2; done
    [ -s "$tmp/port" ] || { cat "$tmp/server.log"; exit 1; }
    "$bin" loadgen --openai --url "http://127.0.0.1:$(cat "$tmp/port")" --closed-loop --concurrency 4 \
      --prompt-tokens 64 --output-tokens 32 --duration 30 --json >"$tmp/${cfg}_$round.json" 2>/dev/null
    # SIGTERM to rank 0 (under mpirun: it drains and tells the other ranks to stop).
    target=$job
    for p in $(pgrep -f "$bin serve --model $model" || true); do
      tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0' && target=$p
    done
    kill -TERM "$target"; wait "$job"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], 'output tokens/s %.2f, ttft p50 %.0f ms, tpot p50 %.1f / p99 %.1f ms' % (d['output_tokens_per_s'], d['ttft_p50_ms'], d['tpot_p50_ms'], d['tpot_p99_ms']))" "$tmp/${cfg}_$round.json" "$cfg" "$round"
  done
done
python3 - "$tmp" "$out" "$model" "$mode" <<'PY'
import glob, json, os, subprocess, sys, time
tmp, out, model, mode = sys.argv[1:]
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
runs = {os.path.basename(f)[:-5]: json.load(open(f)) for f in sorted(glob.glob(os.path.join(tmp, "*.json")))}
json.dump({"model": model, "mode": mode, "cpu": name, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "load": "loadgen --openai --closed-loop --concurrency 4 --prompt-tokens 64 --output-tokens 32 --duration 30",
           "runs": runs}, open(out + ".tmp", "w"), indent=1)
os.replace(out + ".tmp", out)
print("wrote", out)
PY
