#!/usr/bin/env bash
# The language-model commands end to end on models made by make-model: generate (text,
# --json, greedy determinism, routing budgets), perplexity, bench model, tokenize, and the
# one-line errors of bad input (unsupported architecture, missing / misshaped tensor,
# truncated shard, unknown tokenizer model, prompt longer than the context, bad flags).
set -euo pipefail
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
# expect_error CMD...: non-zero exit, exactly one line on stderr starting "deltamoe: error: ["
expect_error() {
  if "$@" >"$tmp/out.txt" 2>"$tmp/err.txt"; then fail "no error from: $*"; fi
  [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] || { cat "$tmp/err.txt"; fail "not one line: $*"; }
  grep -q '^deltamoe: error: \[' "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "no component: $*"; }
  [ ! -s "$tmp/out.txt" ] || fail "stdout not empty on error: $*"
}

for arch in mixtral qwen2-moe qwen3-moe olmoe; do
  m="$tmp/$arch"
  "$bin" make-model --arch "$arch" --preset tiny --vocab 400 --seed 5 --out "$m" --quiet
  [ -f "$m/tokenizer.json" ] || fail "$arch: no tokenizer.json"
  "$bin" generate --model "$m" --prompt "Once upon a time" -n 12 --ignore-eos --json >"$tmp/g.json" 2>"$tmp/g.err"
  [ "$(jget "$tmp/g.json" "len(d['generated_ids'])")" = 12 ] || fail "$arch: generated_ids"
  for key in prompt_ids text prompt_tokens_per_s generation_tokens_per_s mean_experts_per_token routing; do
    [ "$(jget "$tmp/g.json" "'$key' in d")" = True ] || fail "$arch: missing $key"
  done
  grep -q "tokens/s" "$tmp/g.err" || fail "$arch: no speed on stderr"
  # The decoded text is what tokenize --decode gives for the same ids.
  ids=$(jget "$tmp/g.json" "','.join(map(str, d['generated_ids']))")
  "$bin" tokenize --model "$m" --decode "$ids" --skip-special --json >"$tmp/t.json"
  [ "$(jget "$tmp/t.json" "d['text']")" = "$(jget "$tmp/g.json" "d['text']")" ] || fail "$arch: streamed text != decode"
done

m="$tmp/mixtral"
# Greedy is deterministic; sampling is deterministic in --seed and differs across seeds.
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --json >"$tmp/a.json" 2>/dev/null
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --json >"$tmp/b.json" 2>/dev/null
[ "$(jget "$tmp/a.json" "d['generated_ids']")" = "$(jget "$tmp/b.json" "d['generated_ids']")" ] || fail "greedy differs"
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --temperature 1 --seed 1 --json >"$tmp/s1.json" 2>/dev/null
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --temperature 1 --seed 1 --json >"$tmp/s1b.json" 2>/dev/null
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --temperature 1 --seed 2 --json >"$tmp/s2.json" 2>/dev/null
[ "$(jget "$tmp/s1.json" "d['generated_ids']")" = "$(jget "$tmp/s1b.json" "d['generated_ids']")" ] || fail "seeded sampling differs"
[ "$(jget "$tmp/s1.json" "d['generated_ids']")" != "$(jget "$tmp/s2.json" "d['generated_ids']")" ] || fail "seeds 1 and 2 agree"
# Both weight layouts give the same greedy text (f32: mapped in place vs packed copies).
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --weight-layout packed --json >"$tmp/pk.json" 2>/dev/null
[ "$(jget "$tmp/a.json" "d['generated_ids']")" = "$(jget "$tmp/pk.json" "d['generated_ids']")" ] || fail "mapped and packed greedy differ"
expect_error "$bin" generate --model "$m" --prompt "Hello" --weight-layout strided
# --dtype auto (the default) computes in the checkpoint's own dtype: f32 here, bf16 for a bf16
# checkpoint, whose matrices bench model then finds mapped in place (none copied to f32), with
# the same greedy tokens as an explicit --dtype bf16; --kv-dtype auto (the default) keeps the
# cache in f32 beside f32 weights and in f16 beside bf16 ones.
[ "$(jget "$tmp/a.json" "d['dtype']")" = f32 ] || fail "auto dtype of an f32 checkpoint"
"$bin" make-model --arch mixtral --preset tiny --vocab 400 --seed 5 --dtype bf16 --out "$tmp/mb16" --quiet
"$bin" generate --model "$tmp/mb16" --prompt "Hello" -n 6 --ignore-eos --json >"$tmp/ab16.json" 2>/dev/null
"$bin" generate --model "$tmp/mb16" --prompt "Hello" -n 6 --ignore-eos --dtype bf16 --json >"$tmp/eb16.json" 2>/dev/null
[ "$(jget "$tmp/ab16.json" "d['dtype']")" = bf16 ] || fail "auto dtype of a bf16 checkpoint"
[ "$(jget "$tmp/ab16.json" "d['generated_ids']")" = "$(jget "$tmp/eb16.json" "d['generated_ids']")" ] || fail "auto and bf16 differ"
"$bin" bench model --model "$tmp/mb16" -p 8 -n 2 -r 1 --json >"$tmp/bb16.json" 2>/dev/null
[ "$(jget "$tmp/bb16.json" "d['dtype'] == 'bf16' and d['kv_dtype'] == 'f16' and d['mapped_weight_bytes'] > 0.5 * d['weight_bytes']")" = True ] || fail "bench model auto dtype of a bf16 checkpoint"
expect_error "$bin" bench model --model "$tmp/mb16" -p 8 -n 2 --kv-dtype auto,f16
# int8 weights: generate runs and keeps most greedy tokens of f32 (quantisation can flip a
# close argmax, so not all); bench model reports about a quarter of f32's weight bytes, none
# mapped; int8 has no packed layout (a one-line error, not a silent other layout).
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --dtype int8 --json >"$tmp/i8.json" 2>/dev/null
[ "$(jget "$tmp/i8.json" "len(d['generated_ids'])")" = 10 ] || fail "int8 generate"
[ "$(python3 -c "import json,sys; a=json.load(open(sys.argv[1]))['generated_ids']; b=json.load(open(sys.argv[2]))['generated_ids']; print(a[0] == b[0])" "$tmp/a.json" "$tmp/i8.json")" = True ] || fail "int8 first greedy token differs from f32"
"$bin" bench model --model "$m" -p 16 -n 4 -r 1 --dtype int8 --json >"$tmp/bi8.json" 2>/dev/null
"$bin" bench model --model "$m" -p 16 -n 4 -r 1 --json >"$tmp/bf32.json" 2>/dev/null
[ "$(jget "$tmp/bf32.json" "d['dtype'] == 'f32' and d['kv_dtype'] == 'f32'")" = True ] || fail "bench model auto dtypes of an f32 checkpoint"
[ "$(python3 -c "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(a['dtype'] == 'int8' and a['weight_layout'] == 'int8_copies' and a['mapped_weight_bytes'] == 0 and a['weight_bytes'] < 0.4 * b['weight_bytes'] and a['tg_tokens_per_s'] > 0)" "$tmp/bi8.json" "$tmp/bf32.json")" = True ] || fail "bench model int8"
# -d: the tests run after that many cached tokens (the KV cache holds them), and a depth past
# the model's context is refused before any test runs.
"$bin" bench model --model "$m" -p 8 -n 4 -d 100 -r 1 --json >"$tmp/bd.json" 2>/dev/null
[ "$(python3 -c "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(a['depth'] == 100 and b['depth'] == 0 and a['kv_cache_bytes'] > b['kv_cache_bytes'] and a['tg_tokens_per_s'] > 0 and a['pp_tokens_per_s'] > 0)" "$tmp/bd.json" "$tmp/bf32.json")" = True ] || fail "bench model -d"
expect_error "$bin" bench model --model "$m" -p 8 -n 4 -d 1000000 -r 1
grep -q "context" "$tmp/err.txt" || fail "bench model -d past the context: error does not say context"
expect_error "$bin" bench model --model "$m" -p 8 -n 4 -d 8 -r 1 --expert-cache 50%
expect_error "$bin" generate --model "$m" --prompt "Hello" --dtype int8 --weight-layout packed
grep -q "int8" "$tmp/err.txt" || fail "int8 + packed error does not say int8"

# Experts beyond RAM: with the experts in a cache of one layer's experts (50% of a 2-layer
# model), greedy tokens equal the all-resident run's; generate and bench model report the
# cache's counters; bad values and combinations are one-line errors.
"$bin" generate --model "$m" --prompt "Hello" -n 10 --ignore-eos --expert-cache 50% --expert-policy router --json >"$tmp/ec.json" 2>"$tmp/ec.err"
[ "$(jget "$tmp/ec.json" "d['generated_ids']")" = "$(jget "$tmp/a.json" "d['generated_ids']")" ] || fail "expert cache changed greedy tokens"
[ "$(jget "$tmp/ec.json" "d['expert_cache']['slots'] == 4 and d['expert_cache']['requests'] > 0 and d['expert_cache']['bytes_read'] > 0")" = True ] || fail "generate expert_cache counters"
grep -q "expert cache: 4 of 8 experts" "$tmp/ec.err" || { cat "$tmp/ec.err"; fail "no expert cache line on stderr"; }
"$bin" bench model --model "$m" -p 0 -n 6 -r 1 --expert-cache 50% --substitute --drop-page-cache --json >"$tmp/bec.json" 2>/dev/null
[ "$(jget "$tmp/bec.json" "all(k in d['expert_cache'] for k in ('hit_rate', 'stall_ms_per_token', 'prediction_precision', 'disk_read_gbps', 'frac_of_disk_roofline', 'peak_rss_over_bound', 'substitution_check')) and d['expert_cache']['disk_read_gbps'] > 0 and 0 <= d['expert_cache']['substitution_check']['top1_agreement'] <= 1")" = True ] || fail "bench model expert_cache report"
expect_error "$bin" generate --model "$m" --prompt "Hello" --expert-cache 10%
grep -q "one MoE layer may need all its 4" "$tmp/err.txt" || fail "small budget message"
expect_error "$bin" generate --model "$m" --prompt "Hello" --expert-cache lots
grep -q "\[offload\] --expert-cache 'lots'" "$tmp/err.txt" || fail "bad budget message"
expect_error "$bin" generate --model "$m" --prompt "Hello" --expert-policy lfu
grep -q "need --expert-cache" "$tmp/err.txt" || fail "policy without cache message"
expect_error "$bin" generate --model "$m" --prompt "Hello" --expert-cache 50% --dtype bf16
grep -q "reads experts as the file stores them (f32)" "$tmp/err.txt" || fail "dtype mismatch message"
# Per-token budgets: top-k:1 uses 1 expert per token, top-p a mean between 1 and E.
"$bin" generate --model "$m" --prompt "Hello" -n 4 --routing top-k:1 --json >"$tmp/k1.json" 2>/dev/null
[ "$(jget "$tmp/k1.json" "d['mean_experts_per_token']")" = 1.0 ] || fail "top-k:1 mean experts"
"$bin" generate --model "$m" --prompt "Hello there" -n 4 --routing top-p:0.7 --json >"$tmp/p.json" 2>/dev/null
[ "$(jget "$tmp/p.json" "1.0 <= d['mean_experts_per_token'] <= 4.0")" = True ] || fail "top-p mean experts"

# Perplexity: finite, and above 1.
printf 'The cat sat on the mat. The dog sat on the log.\nA bird in the hand is worth two in the bush.\n' >"$tmp/text.txt"
"$bin" perplexity --model "$m" --file "$tmp/text.txt" --context 16 --json >"$tmp/ppl.json" 2>/dev/null
[ "$(jget "$tmp/ppl.json" "1.0 < d['perplexity'] < 1e6 and d['scored_tokens'] > 10")" = True ] || fail "perplexity"

# bench model: one JSON object with the figures and units.
"$bin" bench model --model "$m" -p 16 -n 4 -r 1 --json >"$tmp/bench.json" 2>/dev/null
for key in pp_tokens_per_s tg_tokens_per_s decode_roofline_tokens_per_s decode_frac_of_roofline \
           read_bandwidth_gbps rss_bytes weight_bytes kv_cache_bytes mean_experts_per_token \
           mapped_weight_bytes mapped_huge_page_bytes decode_frac_of_roofline_beside \
           read_bandwidth_gbps_beside_tg; do
  [ "$(jget "$tmp/bench.json" "'$key' in d")" = True ] || fail "bench: missing $key"
done
# The bandwidth probe beside the tg chunks (256 MiB, resident during the tests) is not counted
# as the model's memory: this tiny model's process stays far below it.
[ "$(jget "$tmp/bench.json" "0 < d['peak_rss_bytes'] < 200e6 and d['decode_frac_of_roofline_beside'] > 0")" = True ] || fail "bench: probe counted in peak RSS"
[ "$(jget "$tmp/bench.json" "d['weight_layout'] == 'mapped' and d['mapped_weight_bytes'] > 0.9 * d['weight_bytes']")" = True ] || fail "bench: weights not mapped"
# Two layouts side by side in one process: one report each and their ratios.
"$bin" bench model --model "$m" -p 16 -n 4 -r 1 --weight-layout mapped,packed --json >"$tmp/bench2.json" 2>/dev/null
[ "$(jget "$tmp/bench2.json" "[l['weight_layout'] for l in d['layouts']] == ['mapped', 'packed'] and d['tg_ratio_mapped_over_packed'] > 0 and d['pp_ratio_mapped_over_packed'] > 0")" = True ] || fail "bench: two layouts"
expect_error "$bin" bench model --model "$m" -p 16 -n 4 --weight-layout mapped,packed,mapped
# Two KV dtypes side by side: the f16 cache holds half the bytes.
"$bin" bench model --model "$m" -p 16 -n 4 -r 1 --kv-dtype f32,f16 --json >"$tmp/bench4.json" 2>/dev/null
[ "$(jget "$tmp/bench4.json" "[(l['label'], l['kv_dtype']) for l in d['layouts']] == [('kv_f32', 'f32'), ('kv_f16', 'f16')] and d['tg_ratio_kv_f32_over_kv_f16'] > 0 and d['layouts'][0]['kv_cache_bytes'] == 2 * d['layouts'][1]['kv_cache_bytes']")" = True ] || fail "bench: two KV dtypes"
expect_error "$bin" bench model --model "$m" -p 16 -n 4 --kv-dtype f32,f16 --weight-layout mapped,packed
expect_error "$bin" bench model --model "$m" -p 16 -n 4 --kv-dtype bf16
"$bin" generate --model "$m" --prompt "hello" -n 3 --kv-dtype f16 >/dev/null 2>&1 || fail "generate --kv-dtype f16"
# Batched decode (-b): several sequences per step; the roofline counts the distinct experts a
# step reads (between top-k and all experts).
"$bin" bench model --model "$m" -p 0 -n 4 -r 1 -b 6 --json >"$tmp/bench3.json" 2>/dev/null
[ "$(jget "$tmp/bench3.json" "d['decode_batch'] == 6 and d['tg_tokens_per_s'] > 0 and 2 <= d['distinct_experts_per_layer_step'] <= 4")" = True ] || fail "bench: decode batch"

# Bad input: one line naming the file and the thing, non-zero exit, nothing on stdout.
bad="$tmp/bad"
cp -r "$m" "$bad"
sed -i 's/MixtralForCausalLM/LlamaForCausalLM/' "$bad/config.json"
expect_error "$bin" generate --model "$bad" --prompt hi
grep -q "MixtralForCausalLM" "$tmp/err.txt" || fail "unsupported arch does not list the supported ones"
rm -rf "$bad" && cp -r "$m" "$bad"
python3 - "$bad/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
b = open(p, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
name = "model.layers.1.block_sparse_moe.experts.0.w2.weight"
h["renamed." + name] = h.pop(name)
hb = json.dumps(h).encode()
hb += b" " * (-len(hb) % 8)
open(p, "wb").write(struct.pack("<Q", len(hb)) + hb + b[8 + n:])
PY
expect_error "$bin" generate --model "$bad" --prompt hi
grep -q "experts.0.w2.weight" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "missing tensor not named"; }
rm -rf "$bad" && cp -r "$m" "$bad"
sz=$(stat -c %s "$bad/model.safetensors")
truncate -s $((sz - 100)) "$bad/model.safetensors"
expect_error "$bin" generate --model "$bad" --prompt hi
grep -q "model.safetensors" "$tmp/err.txt" || fail "truncated shard not named"
rm -rf "$bad" && cp -r "$m" "$bad"
sed -i 's/"type": *"BPE"/"type": "WordPiece"/' "$bad/tokenizer.json"
expect_error "$bin" generate --model "$bad" --prompt hi
grep -q "tokenizer.json" "$tmp/err.txt" || fail "bad tokenizer not named"
# A prompt longer than the context.
"$bin" make-model --arch mixtral --preset tiny --vocab 400 --max-pos 16 --out "$tmp/short" --quiet
expect_error "$bin" generate --model "$tmp/short" --prompt "$(printf 'word %.0s' $(seq 40))"
grep -q "context" "$tmp/err.txt" || fail "long prompt error does not say context"
# Bad flag values: usage errors.
if "$bin" generate --model "$m" --prompt hi --dtype f16 2>/dev/null; then fail "--dtype f16 accepted"; fi
if "$bin" generate --model "$m" --prompt hi --temperature -1 2>/dev/null; then fail "--temperature -1 accepted"; fi
expect_error "$bin" generate --model "$m" --prompt hi --routing best:3
echo "llm: all checks passed"
