"""Hugging Face MoE directory -> GGUF, with PyPI `gguf`; our own converter, used by
peer_llamacpp.py (benchmark baseline only). Mixtral becomes llama.cpp's `llama` architecture with
experts; Qwen2-MoE (`qwen2moe`, shared expert with its sigmoid gate, q/k/v biases) and OLMoE
(`olmoe`, q/k RMSNorm) are converted too. The tokenizer must be a SentencePiece-style
tokenizer.json (peer_make_model.py gives every preset Mixtral's).

What llama.cpp expects (read from its convert_hf_to_gguf.py / conversion/llama.py and
src/models/llama.cpp, vendored in llama-cpp-python 0.3.36):
  - token_embd.weight {H, V}, output_norm.weight {H}, output.weight {H, V} (absent when tied)
  - blk.N.attn_norm / ffn_norm {H} (f32 always), attn_q {H, n_head*d}, attn_k / attn_v
    {H, n_kv*d}, attn_output {n_head*d, H}
  - blk.N.ffn_gate_inp {H, E} (the router, f32 always), ffn_gate_exps / ffn_up_exps {H, I, E},
    ffn_down_exps {I, H, E}: the per-expert w1 / w3 / w2 stacked on a new outermost axis
  - ggml lists dims innermost first, so a numpy [E, I, H] array is ggml {H, I, E}
  - llama.cpp ropes adjacent pairs (rope type NORM) where HF rotates the two halves of each head,
    so the rows of q_proj / k_proj are permuted per head: (n_head, 2, d/2, H) -> (n_head, d/2, 2, H)
  - tokenizer.ggml.model "llama" (SentencePiece-style BPE with byte fallback): tokens, scores,
    token types. tokenizer.json has merges, not scores; a token made by merge rank r gets score
    -r, which gives llama.cpp's SPM tokenizer (highest-score pair first) the merge order of HF's
    BPE.
Weights are read with our own safetensors reader (np.memmap; F32, F16, BF16), one tensor or one
layer's experts at a time, and written with GGUFWriter's streaming calls, so a 5.4 GB model
never sits in memory whole.
"""
import json
import os
import struct

import numpy as np

from peer_common import die, log, rope_theta

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class SafetensorsDir:
    """Every tensor of model.safetensors or its shards, as lazily read numpy arrays."""

    def __init__(self, model_dir):
        files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
        if not files:
            die(f"{model_dir}: no *.safetensors files")
        self.index = {}
        for fn in files:
            path = os.path.join(model_dir, fn)
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in ST_DTYPES:
                    die(f"{fn}: tensor {name} has dtype {meta['dtype']}; only F32, F16, BF16 are read")
                self.index[name] = (path, 8 + n + meta["data_offsets"][0], meta["dtype"], tuple(meta["shape"]))

    def __contains__(self, name):
        return name in self.index

    def names(self):
        return list(self.index)

    def shape(self, name):
        return self.index[name][3]

    def f32(self, name):
        """The tensor as a float32 array (a copy)."""
        path, off, dt, shape = self.index[name]
        raw = np.memmap(path, dtype=ST_DTYPES[dt], mode="r", offset=off, shape=shape)
        if dt == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return np.array(raw, dtype=np.float32)


def permute_rope(w, n_head):
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --- tokenizer ------------------------------------------------------------------------------

def spm_vocab_from_tokenizer_json(model_dir, n_vocab):
    """(tokens, scores, types, specials) for tokenizer.ggml.model = llama from tokenizer.json."""
    import gguf
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        die(f"{model_dir}: no tokenizer.json")
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        die(f"{path}: only SentencePiece-style BPE with byte fallback (Llama / Mistral / Mixtral) is converted; "
            f"this one is {model.get('type')} byte_fallback={model.get('byte_fallback')}")
    id_to_tok = {i: t for t, i in model["vocab"].items()}
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for i, a in added.items():
        id_to_tok[i] = a["content"]
    rank = {}
    for r, m in enumerate(model.get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, r)
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        t = id_to_tok.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(t)
        if i in added and added[i].get("special"):
            types.append(gguf.TokenType.UNKNOWN if t == model.get("unk_token") else gguf.TokenType.CONTROL)
            scores.append(0.0)
        elif i in added:
            types.append(gguf.TokenType.USER_DEFINED)
            scores.append(-rank[t] if t in rank else 0.0)
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types.append(gguf.TokenType.BYTE)
            scores.append(0.0)
        else:
            types.append(gguf.TokenType.NORMAL)
            # a multi-character piece no merge makes must never win a pair in llama.cpp
            scores.append(float(-rank[t]) if t in rank else (0.0 if len(t) == 1 else -1e9))
    n_real = len(id_to_tok)
    if n_real > n_vocab:
        die(f"{path}: {n_real} tokens but config vocab_size {n_vocab}")

    def tok_id(key):
        if key is None:
            return None
        return model["vocab"].get(key, next((i for i, x in added.items() if x["content"] == key), None))

    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    tcfg = json.load(open(cfg_path)) if os.path.isfile(cfg_path) else {}

    def content(v):
        return v.get("content") if isinstance(v, dict) else v

    specials = {
        "bos": tok_id(content(tcfg.get("bos_token", "<s>"))),
        "eos": tok_id(content(tcfg.get("eos_token", "</s>"))),
        "unk": tok_id(content(tcfg.get("unk_token", model.get("unk_token") or "<unk>"))),
    }
    pp = json.dumps(tj.get("post_processor") or {})
    specials["add_bos"] = bool(tcfg.get("add_bos_token", '"<s>"' in pp or "bos" in pp.lower()))
    specials["add_eos"] = bool(tcfg.get("add_eos_token", False))
    pre = tj.get("pre_tokenizer") or {}
    norm = json.dumps(tj.get("normalizer") or {})
    specials["add_space_prefix"] = bool(
        (pre.get("type") == "Metaspace" and pre.get("prepend_scheme", "always") in ("first", "always"))
        or '"Prepend"' in norm)
    return tokens, scores, types, specials


# --- the conversion -------------------------------------------------------------------------

# HF architecture -> llama.cpp architecture and where its tensors are. llama.cpp runs Mixtral as
# `llama` (rope type NORM: Q/K rows permuted, router weights renormalised after top-k);
# Qwen2-MoE and OLMoE use rope type NEOX (HF's own layout, no permutation) and do not
# renormalise, so checkpoints with norm_topk_prob = true are refused for them.
ARCHS = {
    "MixtralForCausalLM": dict(gguf="llama", permute=True, moe="block_sparse_moe", experts=("w1", "w3", "w2"),
                               n_experts="num_local_experts"),
    "Qwen2MoeForCausalLM": dict(gguf="qwen2moe", permute=False, moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
                                n_experts="num_experts", qkv_bias=True, shared_expert=True),
    "OlmoeForCausalLM": dict(gguf="olmoe", permute=False, moe="mlp", experts=("gate_proj", "up_proj", "down_proj"),
                             n_experts="num_experts", qk_norm=True),
}


def arch_of(cfg, model_dir):
    name = (cfg.get("architectures") or [None])[0]
    if name not in ARCHS:
        die(f"{model_dir}: architecture {name} is not converted (one of {', '.join(ARCHS)})")
    a = ARCHS[name]
    if a["gguf"] != "llama":
        if cfg.get("norm_topk_prob"):
            die(f"{model_dir}: norm_topk_prob = true, but llama.cpp's {a['gguf']} does not renormalise top-k weights")
        if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
            die(f"{model_dir}: dense (mlp_only_layers / decoder_sparse_step) layers are not converted")
        if a.get("qk_norm") and cfg.get("num_key_value_heads", cfg["num_attention_heads"]) != cfg["num_attention_heads"]:
            die(f"{model_dir}: llama.cpp's olmoe wants k_norm over n_embd, so GQA is not converted")
        if cfg.get("clip_qkv"):
            die(f"{model_dir}: clip_qkv is not converted")
    return a


def _expert_source(st, bid, a, n_experts):
    """(gate [E,I,H], up [E,I,H], down [E,H,I]) producers for layer bid, per-expert or fused."""
    p = f"model.layers.{bid}.{a['moe']}.experts"
    g, u, d = a["experts"]
    if f"{p}.0.{g}.weight" in st:
        def stack(w):
            return lambda: np.stack([st.f32(f"{p}.{e}.{w}.weight") for e in range(n_experts)])
        return stack(g), stack(u), stack(d), st.shape(f"{p}.0.{g}.weight"), st.shape(f"{p}.0.{d}.weight")
    q = f"model.layers.{bid}.mlp.experts"
    if f"{q}.gate_up_proj" in st:  # transformers 5 fused layout [E, 2I, H] / [E, H, I]
        e, two_i, h = st.shape(f"{q}.gate_up_proj")
        i = two_i // 2
        return (lambda: st.f32(f"{q}.gate_up_proj")[:, :i, :], lambda: st.f32(f"{q}.gate_up_proj")[:, i:, :],
                lambda: st.f32(f"{q}.down_proj"), (i, h), st.shape(f"{q}.down_proj")[1:])
    die(f"layer {bid}: no expert tensors ({p}.0.{g}.weight or {q}.gate_up_proj)")


def plan_tensors(st, cfg, a, permute=True):
    """[(gguf name, numpy shape, keep_f32, producer)] in file order. permute=False writes the
    wrong Q/K row order on purpose (the verification's negative control)."""
    n_layer = cfg["num_hidden_layers"]
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    n_exp = cfg[a["n_experts"]]
    permute = a["permute"] == permute
    plan = []

    def add(gname, hname, keep_f32=False, fn=None, shape=None):
        if hname not in st:
            die(f"missing tensor {hname}")
        plan.append((gname, shape or st.shape(hname), keep_f32, fn or (lambda h=hname: st.f32(h))))

    add("token_embd.weight", "model.embed_tokens.weight")
    for b in range(n_layer):
        p = f"model.layers.{b}"
        add(f"blk.{b}.attn_norm.weight", f"{p}.input_layernorm.weight", True)
        qn, kn = f"{p}.self_attn.q_proj.weight", f"{p}.self_attn.k_proj.weight"
        add(f"blk.{b}.attn_q.weight", qn, fn=(lambda h=qn: permute_rope(st.f32(h), n_head)) if permute else None)
        add(f"blk.{b}.attn_k.weight", kn, fn=(lambda h=kn: permute_rope(st.f32(h), n_kv)) if permute else None)
        add(f"blk.{b}.attn_v.weight", f"{p}.self_attn.v_proj.weight")
        if a.get("qkv_bias"):
            for x in "qkv":
                add(f"blk.{b}.attn_{x}.bias", f"{p}.self_attn.{x}_proj.bias", True)
        if a.get("qk_norm"):
            add(f"blk.{b}.attn_q_norm.weight", f"{p}.self_attn.q_norm.weight", True)
            add(f"blk.{b}.attn_k_norm.weight", f"{p}.self_attn.k_norm.weight", True)
        add(f"blk.{b}.attn_output.weight", f"{p}.self_attn.o_proj.weight")
        add(f"blk.{b}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight", True)
        add(f"blk.{b}.ffn_gate_inp.weight", f"{p}.{a['moe']}.gate.weight", True)
        gate, up, down, gshape, dshape = _expert_source(st, b, a, n_exp)
        plan.append((f"blk.{b}.ffn_gate_exps.weight", (n_exp, *gshape), False, gate))
        plan.append((f"blk.{b}.ffn_up_exps.weight", (n_exp, *gshape), False, up))
        plan.append((f"blk.{b}.ffn_down_exps.weight", (n_exp, *dshape), False, down))
        if a.get("shared_expert"):
            sg = f"{p}.mlp.shared_expert_gate.weight"
            add(f"blk.{b}.ffn_gate_inp_shexp.weight", sg, True, fn=lambda h=sg: st.f32(h).reshape(-1),
                shape=(int(np.prod(st.shape(sg))),))
            for x in ("gate", "up", "down"):
                add(f"blk.{b}.ffn_{x}_shexp.weight", f"{p}.mlp.shared_expert.{x}_proj.weight")
    add("output_norm.weight", "model.norm.weight", True)
    if "lm_head.weight" in st and not cfg.get("tie_word_embeddings", False):
        add("output.weight", "lm_head.weight")
    return plan


def convert(model_dir, out_path, dtype="f32", permute=True):
    """Writes model_dir as a GGUF in f32 or bf16 (norms and the router stay f32, as llama.cpp's
    own converter keeps them). Returns a summary dict."""
    import gguf
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    a = arch_of(cfg, model_dir)
    if dtype not in ("f32", "bf16"):
        die(f"convert writes f32 or bf16 (q8_0 comes from llama-quantize), not {dtype}")
    st = SafetensorsDir(model_dir)
    plan = plan_tensors(st, cfg, a, permute=permute)
    n_vocab = cfg["vocab_size"]
    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head

    tmp = out_path + ".part"
    w = gguf.GGUFWriter(tmp, arch=a["gguf"])
    w.add_name(os.path.basename(os.path.normpath(model_dir)))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_BF16)
    w.add_vocab_size(n_vocab)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads", n_head))
    w.add_rope_freq_base(rope_theta(cfg))
    w.add_rope_dimension_count(head_dim)
    if cfg.get("head_dim"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_expert_count(cfg[a["n_experts"]])
    if cfg.get("moe_intermediate_size"):
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    if cfg.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])

    tokens, scores, types, sp = spm_vocab_from_tokenizer_json(model_dir, n_vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for key, fn in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id)):
        if sp[key] is not None:
            fn(sp[key])
    w.add_add_bos_token(sp["add_bos"])
    w.add_add_eos_token(sp["add_eos"])
    w.add_add_space_prefix(sp["add_space_prefix"])

    qtypes = []
    for name, shape, keep_f32, _ in plan:
        q = gguf.GGMLQuantizationType.F32 if (dtype == "f32" or keep_f32 or len(shape) == 1) else gguf.GGMLQuantizationType.BF16
        nbytes = int(np.prod(shape)) * (4 if q == gguf.GGMLQuantizationType.F32 else 2)
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=q)
        qtypes.append(q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    for (name, shape, _, fn), q in zip(plan, qtypes):
        t = np.ascontiguousarray(fn(), dtype=np.float32)
        assert t.shape == tuple(shape), (name, t.shape, shape)
        if q == gguf.GGMLQuantizationType.BF16:
            t = gguf.quants.quantize(t, q)
        w.write_tensor_data(t)
        total += t.nbytes
        del t
    w.close()
    os.replace(tmp, out_path)
    log(f"wrote {out_path}: {len(plan)} tensors, {total / 1e9:.2f} GB of weights ({dtype})")
    return {"path": out_path, "dtype": dtype, "arch": a["gguf"], "tensors": len(plan), "weight_bytes": total,
            "qk_rows": ("llama.cpp's" if permute else "wrong on purpose") + " order"}
