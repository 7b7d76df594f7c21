#!/usr/bin/env python3
"""Golden data for tests/unit/test_lm_train.cpp (dev-only; never a run-time dependency).

Trains tiny models with `deltamoe train-lm` (fortunes corpus, 20 steps) into
tests/golden/train_lm/ (Mixtral, top-2) and tests/golden/train_lm_residual/ (PR-MoE's
residual design: `--shared-inter 24 --top-k 1`, written as Qwen2MoeForCausalLM), each with
config.json, model.safetensors, tokenizer.json, tokenizer_config.json, and adds
golden.safetensors: Hugging Face transformers' logits of that directory (loaded with
AutoModelForCausalLM / AutoTokenizer as any user would) for a few prompts, with the prompt ids
its tokenizer gives ("prompt.N" int32, "logits.N" f32 [T, vocab]).

Needs: pip install torch transformers tokenizers safetensors. Debian: fortunes fortunes-min.
Usage: python3 python/make_golden_train_lm.py build/deltamoe [VARIANT...]  (default: all)
"""
import importlib.metadata as md
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "golden")
VARIANTS = {"train_lm": ["--top-k", "2"],
            "train_lm_residual": ["--top-k", "1", "--shared-inter", "24"]}
PROMPTS = ["The meaning of life is", "A fortune cookie says:\nYou will", "Q: Why?\nA:"]


def make(binary, name):
    out = os.path.join(GOLDEN, name)
    args = VARIANTS[name]
    subprocess.run([binary, "train-lm", "--vocab", "300", "--hidden", "32", "--heads", "4",
                    "--kv-heads", "2", "--experts", "4", "--inter", "32",
                    "--layers", "2", "--steps", "20", "--seq-len", "32", "--batch", "4",
                    "--threads", "1", "--no-progress", "--force", "--out", out] + args,
                   check=True)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    tensors = {}
    for i, p in enumerate(PROMPTS):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0]
        tensors[f"prompt.{i}"] = ids[0].to(torch.int32).contiguous()
        tensors[f"logits.{i}"] = logits.to(torch.float32).contiguous()
    save_file(tensors, os.path.join(out, "golden.safetensors"),
              metadata={"transformers": md.version("transformers"), "torch": md.version("torch")})
    print(f"wrote {out}: {type(model).__name__}, {len(PROMPTS)} prompts")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "build/deltamoe"
    for name in sys.argv[2:] or list(VARIANTS):
        make(binary, name)


if __name__ == "__main__":
    main()
