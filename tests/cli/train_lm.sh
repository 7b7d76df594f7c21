#!/usr/bin/env bash
# deltamoe train-lm on a small text: a Hugging Face directory that `generate` loads, the --json
# report, checkpoints and --resume (a resumed run ends where an uninterrupted one does), and
# one-line errors found before any training. No timing assertions.
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
source "$src/tests/cli/error_lib.bash"

for i in $(seq 1 200); do
  printf 'The cat number %d sat on the mat.\nThe dog ate the hat of cat %d.\n\n' "$i" "$((i * 7 % 13))"
done >"$tmp/corpus.txt"
small=(--data "$tmp/corpus.txt" --vocab 320 --hidden 32 --heads 4 --kv-heads 2 --experts 4 --inter 32
       --seq-len 16 --batch 4 --threads 1 --no-progress)
"$bin" train-lm "${small[@]}" --steps 12 --out "$tmp/a" --json >"$tmp/a.json"
for key in out data routing parameters vocab_size train_tokens validation_tokens steps train_loss \
           train_experts_per_token train_tokens_per_s validation_loss validation_perplexity \
           validation_experts_per_token time_s; do
  grep -q "\"$key\": " "$tmp/a.json" || fail "no $key"
done
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [ -s "$tmp/a/$f" ] || fail "no $f"
done
[ -z "$(ls -A "$tmp" | grep '^\.' || true)" ] || fail "temporary directory left: $(ls -A "$tmp")"
grep -q '"spec": "top-k:2"' "$tmp/a/config.json" || fail "routing not recorded"
"$bin" generate --model "$tmp/a" --prompt "The cat" -n 5 >/dev/null 2>"$tmp/g.txt" || { cat "$tmp/g.txt"; fail "generate"; }

# Top-p with a target: trained and recorded.
"$bin" train-lm "${small[@]}" --steps 4 --routing top-p --target-k 1.5 --out "$tmp/p" --json >"$tmp/p.json"
grep -q '"routing": "top-p' "$tmp/p.json" || fail "top-p not used"
grep -q '"target_k": 1.5' "$tmp/p/config.json" || fail "target-k not recorded"
# generate routes as trained (top-p at the controller's final P), not with the config's top-k.
"$bin" generate --model "$tmp/p" --prompt "The cat" -n 3 >/dev/null 2>"$tmp/gp.txt" || { cat "$tmp/gp.txt"; fail "generate top-p"; }
grep -q "routing top-p" "$tmp/gp.txt" || { cat "$tmp/gp.txt"; fail "generate does not route top-p"; }

# 12 steps at once, or 6 (checkpoint) then --resume to 12: the same weights.
"$bin" train-lm "${small[@]}" --steps 12 --checkpoint-every 6 --out "$tmp/b" >/dev/null
"$bin" train-lm "${small[@]}" --steps 6 --checkpoint-every 6 --out "$tmp/c" >/dev/null
resume=(--data "$tmp/corpus.txt" --seq-len 16 --batch 4 --threads 1 --no-progress)
"$bin" train-lm "${resume[@]}" --steps 12 --checkpoint-every 6 --resume --out "$tmp/c" >/dev/null
cmp "$tmp/b/model.safetensors" "$tmp/c/model.safetensors" || fail "resumed weights differ"

# --tokenizer: a given tokenizer.json is used (and written) as is, no BPE trained.
tok=(--data "$tmp/corpus.txt" --hidden 32 --heads 4 --kv-heads 2 --experts 4 --inter 32 --seq-len 16
     --batch 4 --threads 1 --no-progress)
"$bin" train-lm "${tok[@]}" --steps 2 --tokenizer "$tmp/a/tokenizer.json" --out "$tmp/t" >/dev/null
cmp "$tmp/a/tokenizer.json" "$tmp/t/tokenizer.json" || fail "--tokenizer not used as is"
printf '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}\n' >"$tmp/nosep.json"
expect_one_line_error 1 "endoftext" "$bin" train-lm "${tok[@]}" --tokenizer "$tmp/nosep.json" --out "$tmp/x"
expect_one_line_error 2 "vocab" "$bin" train-lm "${small[@]}" --tokenizer "$tmp/a/tokenizer.json" --out "$tmp/x"

# Pyramid MoE (--layer-experts): per-layer expert counts in config.json, loaded by generate.
pyr=(--data "$tmp/corpus.txt" --hidden 32 --heads 4 --kv-heads 2 --inter 32 --seq-len 16 --batch 4
     --threads 1 --no-progress --tokenizer "$tmp/a/tokenizer.json")
"$bin" train-lm "${pyr[@]}" --steps 2 --layer-experts 2,4 --routing top-p --target-k 1.5 \
  --out "$tmp/pyr" >/dev/null 2>"$tmp/pyr.err" || { cat "$tmp/pyr.err"; fail "--layer-experts"; }
tr -d ' \n' <"$tmp/pyr/config.json" | grep -q '"deltamoe_layer_experts":\[2,4\]' || fail "layer experts not recorded"
grep -q '"trained_layers"' "$tmp/pyr/config.json" || fail "per-layer routing not recorded"
"$bin" generate --model "$tmp/pyr" --prompt "The cat" -n 3 >/dev/null 2>"$tmp/gy.txt" || { cat "$tmp/gy.txt"; fail "generate pyramid"; }
"$bin" generate --model "$tmp/pyr" --routing threshold:0.3 --prompt "The cat" -n 3 >/dev/null 2>"$tmp/gy.txt" ||
  { cat "$tmp/gy.txt"; fail "generate pyramid with a threshold routing"; }
expect_one_line_error 1 "--layer-experts lists 3 layers" "$bin" train-lm "${pyr[@]}" --layer-experts 2,4,4 --out "$tmp/x"
expect_one_line_error 2 "excludes" "$bin" train-lm "${pyr[@]}" --experts 4 --layer-experts 2,4 --out "$tmp/x"
expect_one_line_error 1 "fewest" "$bin" train-lm "${pyr[@]}" --layer-experts 1,4 --out "$tmp/x"

# Null experts (AdaMoE): M extra router outputs, recorded in config.json; generate routes with
# them and refuses a routing without them.
"$bin" train-lm "${pyr[@]}" --experts 4 --steps 2 --routing null-experts:2:3 --target-k 1.5 \
  --out "$tmp/nul" >/dev/null 2>"$tmp/nul.err" || { cat "$tmp/nul.err"; fail "null experts"; }
grep -q '"deltamoe_null_experts": 3' "$tmp/nul/config.json" || fail "null experts not recorded"
"$bin" generate --model "$tmp/nul" --prompt "The cat" -n 3 >/dev/null 2>"$tmp/gn.txt" || { cat "$tmp/gn.txt"; fail "generate null experts"; }
grep -q "routing null-experts" "$tmp/gn.txt" || { cat "$tmp/gn.txt"; fail "generate does not route with null experts"; }
expect_one_line_error 1 "null-expert router outputs" "$bin" generate --model "$tmp/nul" --routing top-k:2 --prompt "The" -n 2

# --teacher: a 1-layer student distilled from the 2-layer model a, with a's tokenizer.
"$bin" train-lm "${tok[@]}" --layers 1 --steps 3 --teacher "$tmp/a" --out "$tmp/s" >/dev/null 2>"$tmp/s.err" ||
  { cat "$tmp/s.err"; fail "--teacher"; }
cmp "$tmp/a/tokenizer.json" "$tmp/s/tokenizer.json" || fail "the student does not take the teacher's tokenizer"
grep -q '"num_hidden_layers": 1' "$tmp/s/config.json" || fail "student layers"
expect_one_line_error 2 "vocab" "$bin" train-lm "${small[@]}" --teacher "$tmp/a" --out "$tmp/x"
expect_one_line_error 2 "teacher" "$bin" train-lm "${tok[@]}" --distill-weight 0.3 --out "$tmp/x"
expect_one_line_error 2 "teacher" "$bin" train-lm "${tok[@]}" --distill-steps 3 --out "$tmp/x"

# Errors before any training: one line each, nothing on stdout.
expect_one_line_error 1 "not empty" "$bin" train-lm "${small[@]}" --out "$tmp/a"
expect_one_line_error 1 "heads" "$bin" train-lm --data "$tmp/corpus.txt" --hidden 30 --heads 4 --out "$tmp/x"
expect_one_line_error 1 "resume" "$bin" train-lm --data "$tmp/corpus.txt" --resume --out "$tmp/a"
expect_one_line_error 2 "hidden" "$bin" train-lm --data "$tmp/corpus.txt" --hidden 64 --resume --out "$tmp/c"
expect_one_line_error 1 "cannot read" "$bin" train-lm --data "$tmp/missing.txt" --out "$tmp/x"
expect_one_line_error 2 "routing" "$bin" train-lm "${small[@]}" --routing magic --out "$tmp/x"
[ ! -e "$tmp/x" ] || fail "output left after an error"
# A malformed deltamoe_routing in config.json: one line naming it.
cp -r "$tmp/a" "$tmp/bad"
sed -i 's/"kind": "top-k"/"kind": 7/' "$tmp/bad/config.json"
expect_one_line_error 1 "deltamoe_routing" "$bin" generate --model "$tmp/bad" --prompt "The" -n 2
echo "train-lm: ok"
