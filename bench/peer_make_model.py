#!/usr/bin/env python3
"""Writes a random-weight MoE model (Mixtral by default) as a Hugging Face directory (config.json,
model*.safetensors, tokenizer.json) for the peer benchmarks, with transformers.

Presets:
  reference      the issue's model: Mixtral, 24 layers, hidden 1024, 16 heads / 8 KV heads,
                 32 experts top-8, expert intermediate 512, vocab 32000 (~5.4 GB in f32)
  tiny           Mixtral, 2 layers, hidden 64, 4 heads / 2 KV heads, 4 experts top-2,
                 intermediate 128, vocab 32000: the conversion check (peer_llamacpp.py verify)
  tiny-qwen2moe  Qwen2-MoE of the same size, with a shared expert (48) and q/k/v biases
  tiny-olmoe     OLMoE of the same size (q/k RMSNorm, 4 KV heads)
Every preset gets Mixtral's tokenizer (vocab 32000), whatever the architecture.

The tokenizer is the real Mistral / Mixtral SentencePiece BPE (32000 pieces, byte fallback) that
PyPI's mistral-common ships as mistral_common/data/tokenizer.model.v1, turned into tokenizer.json
by transformers. Give it with --spm, or install mistral-common, or have the file at
/work/peer/tok/tokenizer.model.v1.

--init-std scales the random weights (transformers' default is 0.02): the conversion check uses
0.2 on the tiny model so attention is far from uniform and a wrong Q/K layout changes the logits.
Needs torch and transformers (dev-only; not used by deltamoe itself).

usage: peer_make_model.py [--preset reference|tiny|tiny-qwen2moe|tiny-olmoe] [--out DIR] [--seed 0] [--init-std S]
                          [--dtype float32] [--spm tokenizer.model.v1] [--json]
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import PEER_DIR, die, emit, log  # noqa: E402

PRESETS = {  # (transformers class names, config)
    "reference": ("MixtralConfig", "MixtralForCausalLM", dict(
        num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
        num_local_experts=32, num_experts_per_tok=8, intermediate_size=512, rope_theta=1e6)),
    "tiny": ("MixtralConfig", "MixtralForCausalLM", dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, intermediate_size=128, rope_theta=1e6)),
    "tiny-qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
        num_experts_per_tok=2, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        norm_topk_prob=False, rope_theta=1e6)),
    "tiny-olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_experts=4,
        num_experts_per_tok=2, intermediate_size=32, norm_topk_prob=False, rope_theta=1e4)),
}


def find_spm(path):
    if path:
        if not os.path.isfile(path):
            die(f"--spm {path}: no such file")
        return path
    try:
        import mistral_common  # noqa: F401
        cand = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
        if os.path.isfile(cand):
            return cand
    except ImportError:
        pass
    cand = os.path.join(PEER_DIR, "tok", "tokenizer.model.v1")
    if os.path.isfile(cand):
        return cand
    die("no tokenizer.model.v1: pass --spm, or `pip download --no-deps mistral-common` and unzip "
        "mistral_common/data/tokenizer.model.v1 from the wheel")


def write_tokenizer(spm_path, out_dir):
    """tokenizer.json + tokenizer_config.json from the SentencePiece model (adds <s> in front)."""
    from transformers import AutoTokenizer, LlamaTokenizer
    tmp = tempfile.mkdtemp()
    try:
        shutil.copy(spm_path, os.path.join(tmp, "tokenizer.model"))
        tok = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, legacy=False)
        tok.save_pretrained(out_dir)
    finally:
        shutil.rmtree(tmp)
    for name in ("tokenizer.model",):
        p = os.path.join(out_dir, name)
        if os.path.exists(p):
            os.remove(p)
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tok("The quick brown fox jumps over the lazy dog.").input_ids
    if len(tok) != 32000 or ids[0] != 1:
        die(f"tokenizer conversion looks wrong: {len(tok)} tokens, ids {ids[:5]}")
    return len(tok)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="reference", help="model shape (default: reference)")
    ap.add_argument("--out", help="output directory (default: /work/peer/models/ref-mixtral for reference, "
                                  "tiny-mixtral for tiny, else the preset's name)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed (default: 0)")
    ap.add_argument("--init-std", type=float, default=None,
                    help="std of the random linear and embedding weights (default: 0.02, 0.2 for tiny)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype the weights are saved in (default: float32)")
    ap.add_argument("--spm", help="SentencePiece tokenizer.model.v1 (default: from mistral-common or /work/peer/tok)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()

    default_dir = {"reference": "ref-mixtral", "tiny": "tiny-mixtral"}.get(args.preset, args.preset)
    out = args.out or os.path.join(PEER_DIR, "models", default_dir)
    std = args.init_std if args.init_std is not None else (0.2 if args.preset.startswith("tiny") else 0.02)
    spm = find_spm(args.spm)
    try:
        import torch
        import transformers
    except ImportError as e:
        die(f"needs torch and transformers ({e})")

    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    cfg_cls, model_cls, shape = PRESETS[args.preset]
    cfg = getattr(transformers, cfg_cls)(**shape, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                                         tie_word_embeddings=False, initializer_range=std, bos_token_id=1,
                                         eos_token_id=2, pad_token_id=None)
    torch.manual_seed(args.seed)
    log(f"building a random {args.preset} {model_cls} (init std {std}) in {out}")
    model = getattr(transformers, model_cls)(cfg).to(getattr(torch, args.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    if args.preset.startswith("tiny"):
        # RMSNorm weights start at 1.0; give them some spread too, so a swapped norm shows.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.uniform_(0.5, 1.5)
    model.save_pretrained(out, max_shard_size="1GB")
    del model
    n_tok = write_tokenizer(spm, out)
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".safetensors"))
    emit({"model_dir": out, "preset": args.preset, "params": n_params, "weights_bytes": size, "vocab": n_tok,
          "init_std": std, "dtype": args.dtype, "seed": args.seed, "time_s": round(time.time() - t0, 1)}, args.json)


if __name__ == "__main__":
    main()
