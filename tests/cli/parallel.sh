#!/usr/bin/env bash
# `mpirun -np N deltamoe ... --parallel ep|es|tp` end to end on this one machine: generate's greedy
# tokens and perplexity equal the one-process run for all four architectures at np = 2 and 4,
# only rank 0 prints (one JSON object), bench model's traffic matches its model, errors are
# clear, and a rank that dies ends the job within 10 s instead of hanging it.
# Skipped (exit 77) without mpirun or in a build without MPI, except under CI=true.
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
if ! command -v mpirun >/dev/null || [ "$("$bin" info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["build"]["mpi"])')" = "not built" ]; then
  [ "${CI:-}" = true ] && fail "MPI missing under CI (scripts/install-deps.sh installs libopenmpi-dev)"
  echo "SKIP: no mpirun or a build without MPI"; exit 77
fi
# Root in containers: both variables, and no cross-memory attach.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
run() { local np="$1"; shift; mpirun -np "$np" "$bin" "$@"; }

printf 'The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n%.0s' {1..6} >"$tmp/text.txt"
for arch in mixtral qwen2-moe qwen3-moe olmoe; do
  m="$tmp/$arch"
  "$bin" make-model --arch "$arch" --preset tiny --vocab 400 --seed 5 --out "$m" --quiet
  "$bin" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json >"$tmp/g1.json" 2>/dev/null
  "$bin" perplexity --model "$m" --file "$tmp/text.txt" --context 32 --json >"$tmp/p1.json" 2>/dev/null
  for np in 2 4; do
    placement=$([ "$np" = 2 ] && echo balanced || echo dynamic)
    run "$np" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json \
      --parallel ep --ep-placement "$placement" >"$tmp/g.json" 2>"$tmp/g.err" || { cat "$tmp/g.err"; fail "$arch np $np: generate"; }
    # Only rank 0 prints: one JSON object, one summary line.
    python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$tmp/g.json" || fail "$arch np $np: stdout is not one JSON object"
    [ "$(grep -c 'generated' "$tmp/g.err")" -eq 1 ] || { cat "$tmp/g.err"; fail "$arch np $np: not one summary on stderr"; }
    [ "$(jget "$tmp/g.json" "d['parallel']['ep_placement']")" = "$placement" ] || fail "$arch np $np: placement"
    [ "$(jget "$tmp/g.json" "d['generated_ids']")" = "$(jget "$tmp/g1.json" "d['generated_ids']")" ] || fail "$arch np $np: greedy tokens differ from one process"
    [ "$(jget "$tmp/g.json" "(d['parallel']['ranks'], d['parallel']['mode'], d['threads'])")" = "($np, 'ep', 1)" ] || fail "$arch np $np: parallel report"
    # Expert slicing: the same greedy tokens.
    run "$np" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json \
      --parallel es >"$tmp/g.json" 2>/dev/null || fail "$arch np $np: generate --parallel es"
    [ "$(jget "$tmp/g.json" "(d['generated_ids'], d['parallel']['mode'])")" = "($(jget "$tmp/g1.json" "d['generated_ids']"), 'es')" ] || fail "$arch np $np: es greedy tokens differ from one process"
    # Tensor slicing (attention heads too; at np 4 each KV head serves two ranks) and the
    # per-layer choice: the same tokens.
    for mode in tp auto; do
      run "$np" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json \
        --parallel "$mode" >"$tmp/g.json" 2>"$tmp/g.err" || { cat "$tmp/g.err"; fail "$arch np $np: generate --parallel $mode"; }
      [ "$(jget "$tmp/g.json" "(d['generated_ids'], d['parallel']['mode'])")" = "($(jget "$tmp/g1.json" "d['generated_ids']"), '$mode')" ] || fail "$arch np $np: $mode greedy tokens differ from one process"
    done
    run "$np" perplexity --model "$m" --file "$tmp/text.txt" --context 32 --json --parallel ep \
      --ep-placement contiguous >"$tmp/p.json" 2>/dev/null
    python3 - "$tmp/p1.json" "$tmp/p.json" <<'EOF' || fail "$arch np $np: perplexity differs"
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:])
assert a["scored_tokens"] == b["scored_tokens"], (a["scored_tokens"], b["scored_tokens"])
assert abs(a["mean_nll"] - b["mean_nll"]) <= 1e-5 * max(1.0, abs(a["mean_nll"])), (a["mean_nll"], b["mean_nll"])
EOF
  done
done

# bench model: one JSON object from rank 0 with the traffic per token and MoE layer within 5%
# of the model's prediction (the tiny model's near-uniform random routing).
m="$tmp/mixtral"
"$bin" make-model --arch mixtral --preset tiny --vocab 400 --seed 6 --embed-std 1 --out "$tmp/uni" --quiet
run 2 bench model --model "$tmp/uni" -p 256 -n 128 -r 2 --parallel ep --json >"$tmp/b.json" 2>"$tmp/b.err" || { cat "$tmp/b.err"; fail "bench model np 2"; }
python3 - "$tmp/b.json" <<'EOF' || fail "bench model np 2: traffic"
import json, sys
d = json.load(open(sys.argv[1]))
p = d["parallel"]
assert p["ranks"] == 2 and p["mode"] == "ep", p
for phase in ("pp", "tg"):
    r = p[phase]
    assert 0.95 <= r["bytes_over_predicted"] <= 1.05, (phase, r)
    assert abs(r["bytes_over_routing_model"] - 1) < 1e-9, (phase, r)
    assert 0 < r["remote_pair_share"] < 1, (phase, r)
assert d["pp_tokens_per_s"] > 0 and d["tg_tokens_per_s"] > 0
EOF
for mode in es tp; do
  run 2 bench model --model "$tmp/uni" -p 64 -n 8 -r 1 --parallel "$mode" --json >"$tmp/b.json" 2>"$tmp/b.err" || { cat "$tmp/b.err"; fail "bench model $mode"; }
  python3 - "$tmp/b.json" "$mode" <<'EOF' || fail "bench model np 2 $mode: traffic"
import json, sys
p = json.load(open(sys.argv[1]))["parallel"]
assert p["mode"] == sys.argv[2] and "ep_placement" not in p, p
for phase in ("pp", "tg"):
    assert abs(p[phase]["bytes_over_predicted"] - 1) < 1e-9, (phase, p[phase])
EOF
done
# --parallel auto reports each MoE layer's choice for the pp and tg row counts, with the
# modelled costs of both layouts and the measured collective curves behind them.
run 2 bench model --model "$tmp/uni" -p 64 -n 8 -r 1 --parallel auto --json >"$tmp/b.json" 2>"$tmp/b.err" || { cat "$tmp/b.err"; fail "bench model auto"; }
python3 - "$tmp/b.json" <<'EOF' || fail "bench model np 2 auto: choices"
import json, sys
p = json.load(open(sys.argv[1]))["parallel"]
assert p["mode"] == "auto", p
for phase, rows in (("pp", 64), ("tg", 1)):
    c = p[phase]["ffn_choices"]
    assert c["rows"] == rows and c["ep_layers"] + c["es_layers"] == len(c["layers"]) == 2, c
    for l in c["layers"]:
        cheaper = "ep" if l["ep_comm_ms"] < l["es_comm_ms"] else "es"
        assert l["layout"] == cheaper and not l["forced"] and l["es_comm_ms"] > 0, l
    assert c["all_reduce"]["latency_us"] >= 0 and c["all_to_all"]["latency_us"] >= 0, c
EOF
# Heads that do not split: 4 query heads over 3 ranks.
rc=0; run 3 generate --model "$m" --prompt "Hi" -n 2 --parallel tp >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -ne 0 ] && grep -q 'deltamoe: error: \[model\] --parallel tp splits attention heads over 3 ranks: needs 4 query heads divisible by 3' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "--parallel tp on 3 ranks"; }
[ ! -s "$tmp/o.txt" ] || fail "stdout not empty on error (tp)"

# The classifier: eval's predictions at np = 2 and 4 equal one process's, with a per-token
# budget (threshold routing: 0 to E experts per token).
data=/usr/share/datasets/fashion-mnist
if [ -e "$data/train-images-idx3-ubyte.gz" ]; then
  "$bin" train --routing threshold --target-k 1.5 --max-train 512 --val-size 100 --epochs 1 \
    --hidden 32 --inter 32 --layers 2 --threads 1 --no-progress --no-test --out "$tmp/cls.safetensors" >/dev/null 2>&1
  "$bin" eval --model "$tmp/cls.safetensors" --predictions-out "$tmp/p1.csv" --json >"$tmp/e1.json" 2>/dev/null
  for np in 2 4; do
    run "$np" eval --model "$tmp/cls.safetensors" --parallel ep --predictions-out "$tmp/p$np.csv" \
      --json >"$tmp/e.json" 2>/dev/null || fail "eval np $np"
    cmp -s "$tmp/p1.csv" "$tmp/p$np.csv" || fail "eval np $np: predictions differ from one process"
    [ "$(jget "$tmp/e.json" "(d['accuracy'], d['avg_experts'], d['parallel']['ranks'])")" = \
      "$(jget "$tmp/e1.json" "(d['accuracy'], d['avg_experts'])" | sed "s/)$/, $np)/")" ] || fail "eval np $np: report"
  done
elif [ "${CI:-}" = true ]; then
  fail "Fashion-MNIST missing under CI"
fi

# Errors: mpirun without --parallel, a command without --parallel, --parallel with an expert
# cache, a bad mode.
rc=0; run 2 generate --model "$m" --prompt "Hi" -n 2 >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -ne 0 ] && grep -q 'deltamoe: error: \[dist\] started on 2 ranks by mpirun without --parallel' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "mpirun without --parallel"; }
rc=0; run 2 tokenize --model "$m" --text "Hi" >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -ne 0 ] && grep -q 'deltamoe: error: \[dist\] .*`tokenize` has no --parallel' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "mpirun tokenize"; }
rc=0; run 2 bench moe-layer --tokens 1 --parallel ep >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -ne 0 ] && grep -q 'deltamoe: error: \[bench\] bench moe-layer runs in one process' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "mpirun bench moe-layer"; }
rc=0; run 2 generate --model "$m" --prompt "Hi" -n 2 --parallel ep --expert-cache 50% >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -ne 0 ] && grep -q 'deltamoe: error: \[model\] --parallel ep and an expert cache' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "--parallel with --expert-cache"; }
[ ! -s "$tmp/o.txt" ] || fail "stdout not empty on error"
rc=0; "$bin" generate --model "$m" --prompt "Hi" --parallel xp >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -eq 2 ] && grep -q '^deltamoe: error: \[cli\] --parallel' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "bad --parallel"; }
rc=0; "$bin" generate --model "$m" --prompt "Hi" --parallel es --ep-placement dynamic >"$tmp/o.txt" 2>"$tmp/e.txt" || rc=$?
[ "$rc" -eq 1 ] && grep -q '^deltamoe: error: \[cli\] --ep-placement dynamic places experts for --parallel ep, not --parallel es' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "--ep-placement without ep"; }
# --parallel ep without mpirun: one rank, the same tokens.
"$bin" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json >"$tmp/g1.json" 2>/dev/null
"$bin" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json --parallel ep >"$tmp/g.json" 2>/dev/null
[ "$(jget "$tmp/g.json" "d['generated_ids']")" = "$(jget "$tmp/g1.json" "d['generated_ids']")" ] || fail "--parallel ep on one rank: tokens differ"
[ "$(jget "$tmp/g.json" "d['parallel']['ranks']")" = 1 ] || fail "--parallel ep on one rank: ranks"

# A rank that dies (SIGKILL, as the OOM killer would) ends the whole job, non-zero and with a
# message, within 10 s: no rank is left waiting in a collective.
run 2 bench model --model "$m" -p 0 -n 500 -r 1000 --parallel ep >"$tmp/o.txt" 2>"$tmp/e.txt" &
job=$!
victim=""
for _ in $(seq 100); do
  for pid in $(pgrep -f "$bin bench model --model $m" || true); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then victim=$pid; fi
  done
  [ -n "$victim" ] && break
  sleep 0.1
done
[ -n "$victim" ] || { kill "$job" 2>/dev/null; fail "rank 1 never started"; }
sleep 1
kill -9 "$victim"
t0=$(date +%s.%N)
rc=0
for _ in $(seq 150); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$job" 2>/dev/null; then kill -9 "$job"; fail "the job still runs 15 s after rank 1 died"; fi
wait "$job" || rc=$?
secs=$(python3 -c "import time,sys; print(round(time.time() - float(sys.argv[1]), 1))" "$t0")
[ "$rc" -ne 0 ] || fail "the job exited 0 after rank 1 died"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= 10 else 1)" "$secs" || fail "the job took $secs s to end after rank 1 died"
grep -qi 'signal 9\|killed' "$tmp/e.txt" || { cat "$tmp/e.txt"; fail "no message about the dead rank"; }
echo "parallel: ok (the job ended ${secs} s after rank 1 died)"
