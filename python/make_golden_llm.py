#!/usr/bin/env python3
"""Golden data for the MoE language models, made by Hugging Face transformers.

Usage (dev only; needs PyPI torch, transformers, safetensors):
  python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers safetensors
  /tmp/venv/bin/python python/make_golden_llm.py [--out tests/golden/llm]
  /tmp/venv/bin/python python/make_golden_llm.py --check-dir DIR   # transformers loads DIR?

For each case below it builds a tiny random model with transformers (seeded, float32,
weights rescaled so that logits are of order 1-10), saves it with save_pretrained into
<out>/<case>/ and writes <out>/<case>/golden.safetensors:

  prompt.{i}        int32 [n_i]          token ids of prompt i (no BOS added)
  logits.{i}        f32   [n_i, V]       transformers' logits for prompt i (f32 compute)
  greedy.{i}        int32 [8]            model.generate(do_sample=False, max_new_tokens=8),
                                         the new tokens only (EOS does not stop it)
  router.{i}.{l}.idx  int32 [n_i, k]     layer l's top-k experts per prompt token (MoE layers
  router.{i}.{l}.w    f32   [n_i, k]     only), in transformers' order, and their weights
  batch.ids         int32 [2, L]         prompts 0 and 1 right-padded with 0
  batch.mask        int32 [2, L]         attention mask (1 = token)
  batch.logits      f32   [2, L, V]      (mixtral only) logits of the padded batch (pad rows
                                         meaningless; the other cases record only the max
                                         difference, max_batch_vs_single)
  logits_bf16.{i}   f32   [n_i, V]       (bf16 case only) transformers computing in bf16

Metadata: case, architecture, transformers/torch versions, prompts, greedy_new_tokens,
weight_naming ("per-expert" or "stacked"), config_form ("4.x" or "5.x"), compute dtype,
min_router_margin and min_logit_margin (see below), max_batch_vs_single (max abs difference
of batch.logits from logits.{i} over real tokens).

Prompts are random ids, redrawn until every routing decision along prompt + greedy
continuation has a clear margin (k-th vs (k+1)-th router probability differ by >= 1e-3
relative) and every greedy step's best logit beats the second by >= 1e-3, so that an
independent implementation (another summation order) takes the same decisions.

Cases:
  mixtral          MixtralForCausalLM, sharded (model.safetensors.index.json), config.json in
                   the transformers 4.x form of published checkpoints (rope_theta, torch_dtype);
                   config.v5.json is the same config as transformers 5 writes it
  qwen2_moe        Qwen2MoeForCausalLM: shared expert + gate, qkv bias, norm_topk_prob=false,
                   mlp_only_layers=[1] (layer 1 is a dense MLP), tie_word_embeddings=true,
                   config in 4.x form
  qwen3_moe        Qwen3MoeForCausalLM: q/k RMSNorm per head, head_dim 16 != hidden/heads 8,
                   experts STACKED (save_original_format=False: experts.gate_up_proj
                   [E, 2I, H], experts.down_proj [E, H, I]); config in 5.x form
  olmoe            OlmoeForCausalLM: q/k RMSNorm over the projection, norm_topk_prob=false;
                   config in 5.x form
  mixtral_bf16     the mixtral case's config with bfloat16 weights (single file); logits.{i}
                   are the bf16 weights upcast to f32 and computed in f32; logits_bf16.{i}
                   are transformers computing in bf16 (for reference only: kernels differ)

Per-expert names are what transformers' save_pretrained writes by default (it reverts its
internal stacked layout to the original checkpoint names).
"""
import argparse
import copy
import json
import os
import random
import shutil
import sys

import safetensors
import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPT_LENGTHS = (7, 12, 5)
NEW_TOKENS = 8
MARGIN = 1e-3


def base_config(vocab=256, hidden=32, layers=2, heads=4, kv=2, experts=8, top_k=2, inter=32):
    return dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, num_experts_per_tok=top_k,
                max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.02,
                bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
                _experts=experts, _inter=inter)


def make_config(case):
    if case in ("mixtral", "mixtral_bf16"):
        c = base_config()
        c.update(num_local_experts=c.pop("_experts"), intermediate_size=c.pop("_inter"),
                 rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
        return transformers.MixtralConfig(**c)
    if case == "qwen2_moe":
        c = base_config(layers=3, experts=4)
        c.update(num_experts=c.pop("_experts"), moe_intermediate_size=c.pop("_inter"),
                 intermediate_size=64, shared_expert_intermediate_size=48,
                 norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[1],
                 tie_word_embeddings=True, rms_norm_eps=1e-6,
                 rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
        return transformers.Qwen2MoeConfig(**c)
    if case == "qwen3_moe":
        c = base_config()
        c.update(num_experts=c.pop("_experts"), moe_intermediate_size=c.pop("_inter"),
                 intermediate_size=64, head_dim=16, norm_topk_prob=True,
                 decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6,
                 rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"})
        return transformers.Qwen3MoeConfig(**c)
    if case == "olmoe":
        c = base_config(experts=8)
        c.update(num_experts=c.pop("_experts"), intermediate_size=c.pop("_inter"),
                 norm_topk_prob=False, clip_qkv=None,
                 rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
        return transformers.OlmoeConfig(**c)
    raise ValueError(case)


def init_weights(model, seed):
    """Seeded weights with scales that give logits of order 1-10 on a tiny model: linear
    weights N(0, 1/fan_in) (unit-variance outputs), embeddings N(0, 1), norms 1 + N(0, 0.1)
    (so a missing norm shows), biases N(0, 0.1), lm_head N(0, 2/H)."""
    g = torch.Generator().manual_seed(seed)
    tied = model.config.tie_word_embeddings
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:  # as the lm_head too when tied: keep logits O(1-10)
                v = torch.randn(p.shape, generator=g) * (0.35 if tied else 1.0)
            elif name == "lm_head.weight":
                v = torch.randn(p.shape, generator=g) * (2.0 / p.shape[-1]) ** 0.5
            else:
                v = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
            p.copy_(v.to(p.dtype))


class RouterTap:
    """Records (top-k indices, weights) of every MoE router call, by layer."""

    def __init__(self, model):
        self.calls = {}
        self.handles = []
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("TopKRouter"):
                layer = int(name.split(".layers.")[1].split(".")[0])
                self.handles.append(mod.register_forward_hook(self._hook(layer)))

    def _hook(self, layer):
        def hook(mod, inputs, output):
            logits, weights, idx = output
            probs = torch.softmax(logits.float(), dim=-1)
            top = torch.topk(probs, idx.shape[-1] + 1, dim=-1).values
            self.calls.setdefault(layer, []).append(
                (idx.detach().clone(), weights.detach().float().clone(), top))
        return hook

    def clear(self):
        self.calls = {}

    def remove(self):
        for h in self.handles:
            h.remove()


def router_margin(tap):
    m = float("inf")
    for calls in tap.calls.values():
        for _, _, top in calls:
            k = top.shape[-1] - 1
            rel = (top[:, k - 1] - top[:, k]) / top[:, k - 1]
            m = min(m, rel.min().item())
    return m


def logit_margin(logits):
    top2 = torch.topk(logits.float(), 2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]).min().item()


def greedy(model, ids):
    out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


def pick_prompts(model, cfg, rng):
    """Random prompts whose routing and greedy decisions all have clear margins."""
    tap = RouterTap(model)
    prompts, rmin, lmin = [], float("inf"), float("inf")
    for n in PROMPT_LENGTHS:
        for _ in range(500):
            ids = [rng.randrange(3, cfg.vocab_size) for _ in range(n)]
            new = greedy(model, ids)
            tap.clear()
            with torch.no_grad():
                logits = model(torch.tensor([ids + new])).logits[0]
            rm = router_margin(tap)
            lm = logit_margin(logits[n - 1:-1])
            if rm >= MARGIN and lm >= MARGIN:
                prompts.append(ids)
                rmin, lmin = min(rmin, rm), min(lmin, lm)
                break
        else:
            sys.exit(f"no prompt of length {n} with clear margins")
    tap.remove()
    return prompts, rmin, lmin


def golden_tensors(model, prompts, keep_batch_logits):
    """logits, greedy continuation and routing for each prompt, plus the padded batch."""
    out = {}
    tap = RouterTap(model)
    for i, ids in enumerate(prompts):
        out[f"prompt.{i}"] = torch.tensor(ids, dtype=torch.int32)
        tap.clear()
        with torch.no_grad():
            out[f"logits.{i}"] = model(torch.tensor([ids])).logits[0].float().contiguous()
        for layer, calls in sorted(tap.calls.items()):
            idx, w, _ = calls[0]
            out[f"router.{i}.{layer}.idx"] = idx.to(torch.int32).contiguous()
            out[f"router.{i}.{layer}.w"] = w.contiguous()
        out[f"greedy.{i}"] = torch.tensor(greedy(model, ids), dtype=torch.int32)
    tap.remove()
    a, b = prompts[0], prompts[1]
    L = max(len(a), len(b))
    ids = torch.zeros(2, L, dtype=torch.int32)
    mask = torch.zeros(2, L, dtype=torch.int32)
    for r, p in enumerate((a, b)):
        ids[r, :len(p)] = torch.tensor(p)
        mask[r, :len(p)] = 1
    with torch.no_grad():
        batch = model(input_ids=ids.long(), attention_mask=mask.long()).logits.float()
    out["batch.ids"], out["batch.mask"] = ids, mask
    if keep_batch_logits:
        out["batch.logits"] = batch.contiguous()
    diff = max((batch[r, :len(p)] - out[f"logits.{r}"]).abs().max().item()
               for r, p in enumerate((a, b)))
    return out, diff


def to_v4_config(path):
    """Rewrites a transformers-5 config.json into the 4.x form published checkpoints have."""
    with open(path) as f:
        c = json.load(f)
    rp = c.pop("rope_parameters", None) or {}
    c["rope_theta"] = rp.get("rope_theta", 10000.0)
    c["rope_scaling"] = None
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    c.pop("layer_types", None)  # 4.x Qwen2-MoE had no layer_types
    c["transformers_version"] = "4.46.0"
    with open(path, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def logits_of(model_dir, prompts, dtype=None):
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
    m.eval()
    with torch.no_grad():
        return [m(torch.tensor([p])).logits[0].float() for p in prompts]


def save_case(case, out_dir, seed):
    cfg = make_config(case)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval()
    init_weights(model, seed)
    d = os.path.join(out_dir, case)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    meta = {"case": case, "architecture": cfg.architectures[0] if cfg.architectures else
            type(model).__name__, "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "greedy_new_tokens": str(NEW_TOKENS)}
    bf16 = case == "mixtral_bf16"
    stacked = case == "qwen3_moe"
    if bf16:
        model = model.to(torch.bfloat16)
    save_kw = {"save_original_format": not stacked}
    if case == "mixtral":
        save_kw["max_shard_size"] = "100KB"
    model.save_pretrained(d, safe_serialization=True, **save_kw)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(d, extra)):
            os.remove(os.path.join(d, extra))
    v4 = case in ("mixtral", "qwen2_moe", "mixtral_bf16")
    if case == "mixtral":
        shutil.copy(os.path.join(d, "config.json"), os.path.join(d, "config.v5.json"))
    if v4:
        to_v4_config(os.path.join(d, "config.json"))
    meta["config_form"] = "4.x" if v4 else "5.x"
    meta["weight_naming"] = "stacked" if stacked else "per-expert"

    # Everything below runs on the model as reloaded from disk: the files are the truth.
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    rng = random.Random(seed)
    prompts, rmin, lmin = pick_prompts(model, model.config, rng)
    tensors, diff = golden_tensors(model, prompts, keep_batch_logits=case == "mixtral")
    meta.update(prompts=json.dumps(prompts), min_router_margin=f"{rmin:.3g}",
                min_logit_margin=f"{lmin:.3g}", max_batch_vs_single=f"{diff:.3g}",
                compute_dtype="float32")
    if bf16:
        meta["compute_dtype"] = ("float32 (bf16 weights upcast); logits_bf16.* computed in "
                                 "bfloat16")
        for i, l in enumerate(logits_of(d, prompts, torch.bfloat16)):
            tensors[f"logits_bf16.{i}"] = l.contiguous()
    if case == "mixtral":  # the 5.x form of the config loads to the same model
        alt = os.path.join(out_dir, "_v5_check")
        shutil.copytree(d, alt)
        shutil.copy(os.path.join(d, "config.v5.json"), os.path.join(alt, "config.json"))
        for a, b in zip(logits_of(alt, prompts), [tensors[f"logits.{i}"] for i in range(3)]):
            assert torch.equal(a, b), "config.v5.json gives other logits"
        shutil.rmtree(alt)
    safetensors.torch.save_file(tensors, os.path.join(d, "golden.safetensors"), metadata=meta)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    lg = tensors["logits.0"]
    print(f"{case}: {size / 1024:.0f} KiB, logits std {lg.std():.2f} max {lg.abs().max():.1f}, "
          f"router margin {rmin:.3g}, logit margin {lmin:.3g}, batch diff {diff:.2g}, "
          f"files {sorted(os.listdir(d))}")


def check_dir(model_dir):
    """Loads a model directory (e.g. from `deltamoe make-model`) with transformers and runs
    one forward pass; fails on missing or unexpected weights."""
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                       output_loading_info=True)
    bad = {k: v for k, v in info.items() if v}
    if bad:
        sys.exit(f"{model_dir}: loading info {bad}")
    # The weights are the file's (not re-initialised): compare the embedding and norms.
    files = [f for f in os.listdir(model_dir) if f.endswith(".safetensors")]
    for f in files:
        with safetensors.safe_open(os.path.join(model_dir, f), "pt") as st:
            for name in ("model.embed_tokens.weight", "model.norm.weight"):
                if name in st.keys():
                    want = st.get_tensor(name).float()
                    got = model.get_parameter(name).detach()
                    assert torch.equal(want, got), f"{name} differs from the file"
    ids = torch.arange(3, 11).unsqueeze(0) % model.config.vocab_size
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    print(f"{model_dir}: {type(model).__name__} loaded, {sum(p.numel() for p in model.parameters())}"
          f" parameters, logits {tuple(logits.shape)} std {logits.std():.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "golden", "llm"))
    ap.add_argument("--cases", default="mixtral,qwen2_moe,qwen3_moe,olmoe,mixtral_bf16")
    ap.add_argument("--check-dir", nargs="*", help="only load these model dirs with transformers")
    args = ap.parse_args()
    torch.set_num_threads(1)  # deterministic summation order
    if args.check_dir:
        for d in args.check_dir:
            check_dir(d)
        return
    os.makedirs(args.out, exist_ok=True)
    for n, case in enumerate(args.cases.split(",")):
        save_case(case, args.out, seed=1000 + n if case != "mixtral_bf16" else 1000)


if __name__ == "__main__":
    main()
