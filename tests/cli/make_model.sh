#!/usr/bin/env bash
# deltamoe make-model: a tiny model of each family has the Hugging Face files, sharding
# writes an index whose shards exist, the output is deterministic in --seed, an existing
# directory is only replaced with --force, and bad flags give one-line errors.
# (That transformers loads the output: python/make_golden_llm.py --check-dir DIR.)
set -euo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

# Checks a model directory with Python's standard library only: config fields, every
# tensor of the index in its shard, header dtypes, weight statistics (std ≈ 0.02, norms 1).
check() {
  python3 - "$@" <<'EOF'
import json, os, struct, sys, array, math
d, arch, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = json.load(open(os.path.join(d, "config.json")))
assert cfg["architectures"] == [arch], cfg["architectures"]
assert cfg["torch_dtype"] == {"F32": "float32", "BF16": "bfloat16"}[dtype]
assert "rope_theta" in cfg and cfg["rope_scaling"] is None and cfg["hidden_act"] == "silu"
gen = json.load(open(os.path.join(d, "generation_config.json")))
assert gen["bos_token_id"] == 1 and gen["eos_token_id"] == 2
def header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n
index = os.path.join(d, "model.safetensors.index.json")
if os.path.exists(index):
    wm = json.load(open(index))["weight_map"]
    total = json.load(open(index))["metadata"]["total_size"]
else:
    h, _ = header(os.path.join(d, "model.safetensors"))
    wm = {k: "model.safetensors" for k in h if k != "__metadata__"}
    total = None
seen = 0
for shard in sorted(set(wm.values())):
    h, off = header(os.path.join(d, shard))
    assert h["__metadata__"] == {"format": "pt"}
    names = [k for k in h if k != "__metadata__"]
    assert sorted(names) == sorted(k for k, v in wm.items() if v == shard), shard
    for k in names:
        assert h[k]["dtype"] == dtype, (k, h[k]["dtype"])
        b, e = h[k]["data_offsets"]
        seen += e - b
    assert os.path.getsize(os.path.join(d, shard)) == off + max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
    if shard == wm["model.embed_tokens.weight"] and dtype == "F32":
        b, e = h["model.embed_tokens.weight"]["data_offsets"]
        with open(os.path.join(d, shard), "rb") as f:
            f.seek(off + b); a = array.array("f"); a.frombytes(f.read(e - b))
        mean = sum(a) / len(a); std = math.sqrt(sum((x - mean) ** 2 for x in a) / len(a))
        assert abs(mean) < 0.002 and abs(std - 0.02) < 0.002, (mean, std)
    if "model.norm.weight" in names and dtype == "F32":
        b, e = h["model.norm.weight"]["data_offsets"]
        with open(os.path.join(d, shard), "rb") as f:
            f.seek(off + b); a = array.array("f"); a.frombytes(f.read(e - b))
        assert set(a) == {1.0}
assert total is None or total == seen, (total, seen)
EOF
}

for arch in mixtral:MixtralForCausalLM qwen2-moe:Qwen2MoeForCausalLM qwen3-moe:Qwen3MoeForCausalLM olmoe:OlmoeForCausalLM; do
  "$bin" make-model --arch "${arch%%:*}" --out "$tmp/${arch%%:*}" 2>"$tmp/err.txt" || { cat "$tmp/err.txt"; fail "${arch%%:*}"; }
  check "$tmp/${arch%%:*}" "${arch##*:}" F32 || fail "check ${arch%%:*}"
  [ -f "$tmp/${arch%%:*}/model.safetensors" ] || fail "no model.safetensors"
  [ ! -e "$tmp/${arch%%:*}/model.safetensors.index.json" ] || fail "index for a single file"
done
grep -q '"block_sparse_moe\|num_local_experts' "$tmp/mixtral/config.json" || fail "mixtral config"
grep -q '"shared_expert_intermediate_size": 256' "$tmp/qwen2-moe/config.json" || fail "qwen2 shared"

# Sharded bf16 with a dense layer and tied embeddings; stacked experts.
"$bin" make-model --arch qwen2-moe --dtype bf16 --mlp-only-layers 1 --tie-embeddings \
  --max-shard-size 100KB --quiet --out "$tmp/q2" || fail "sharded qwen2"
check "$tmp/q2" Qwen2MoeForCausalLM BF16 || fail "check sharded"
[ "$(ls "$tmp/q2" | grep -c '^model-0000[0-9]-of-0000[0-9].safetensors$')" -ge 3 ] || fail "too few shards"
grep -q '"lm_head.weight"' "$tmp/q2/model.safetensors.index.json" && fail "tied model has lm_head"
"$bin" make-model --arch qwen3-moe --expert-layout stacked --quiet --out "$tmp/q3s" || fail "stacked"
check "$tmp/q3s" Qwen3MoeForCausalLM F32 || fail "check stacked"

# Deterministic in the seed; another seed gives other weights.
"$bin" make-model --arch olmoe --seed 7 --quiet --out "$tmp/s7a"
"$bin" make-model --arch olmoe --seed 7 --quiet --out "$tmp/s7b"
"$bin" make-model --arch olmoe --seed 8 --quiet --out "$tmp/s8"
cmp -s "$tmp/s7a/model.safetensors" "$tmp/s7b/model.safetensors" || fail "not deterministic"
cmp -s "$tmp/s7a/model.safetensors" "$tmp/s8/model.safetensors" && fail "seed ignored"

# An existing non-empty directory is kept without --force and replaced whole with it.
mkdir -p "$tmp/taken" && echo keep >"$tmp/taken/notes.txt"
if "$bin" make-model --out "$tmp/taken" 2>"$tmp/err.txt"; then fail "overwrote without --force"; fi
grep -q "exists and is not empty (use --force" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "message"; }
[ -f "$tmp/taken/notes.txt" ] || fail "touched the directory"
"$bin" make-model --force --quiet --out "$tmp/taken" || fail "--force"
[ ! -e "$tmp/taken/notes.txt" ] && [ -f "$tmp/taken/model.safetensors" ] || fail "--force did not replace"
mkdir -p "$tmp/empty" && "$bin" make-model --quiet --out "$tmp/empty" || fail "empty dir refused"
[ "$(ls -a "$tmp" | grep -c '\.tmp\.')" = 0 ] || fail "temporary directory left"

# Errors: one line, non-zero exit, nothing written.
touch "$tmp/file"
if "$bin" make-model --out "$tmp/file/m" 2>"$tmp/err.txt"; then fail "wrote under a file"; fi
[ "$(wc -l <"$tmp/err.txt")" = 1 ] || { cat "$tmp/err.txt"; fail "not one line"; }
if "$bin" make-model --heads 4 --kv-heads 3 --out "$tmp/bad" 2>"$tmp/err.txt"; then fail "bad heads"; fi
grep -q "num_attention_heads 4 is not a multiple of num_key_value_heads 3" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "heads message"; }
if "$bin" make-model --arch mixtral --shared-inter 8 --out "$tmp/bad" 2>"$tmp/err.txt"; then fail "shared on mixtral"; fi
if "$bin" make-model --max-shard-size 3XB --out "$tmp/bad" 2>"$tmp/err.txt"; then fail "bad size"; fi
grep -q "is not a positive size" "$tmp/err.txt" || { cat "$tmp/err.txt"; fail "size message"; }
[ ! -e "$tmp/bad" ] || fail "output left after an error"
"$bin" make-model --help | grep -q "reference  24, 1024, 16/8, 32 top-8, 512, 32000" || fail "help presets"
"$bin" make-model --help | grep -q "default 4GiB" || fail "help defaults"
echo ok
