#!/usr/bin/env python3
"""Golden data for tests/unit/test_lm_train.cpp (dev-only; never a run-time dependency).

Trains a tiny model with `deltamoe train-lm` (fortunes corpus, 20 steps) into
tests/golden/train_lm/ (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)
and adds golden.safetensors: Hugging Face transformers' logits of that directory (loaded with
AutoModelForCausalLM / AutoTokenizer as any user would) for a few prompts, with the prompt ids
its tokenizer gives ("prompt.N" int32, "logits.N" f32 [T, vocab]).

Needs: pip install torch transformers tokenizers safetensors. Debian: fortunes fortunes-min.
Usage: python3 python/make_golden_train_lm.py build/deltamoe
"""
import importlib.metadata as md
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "golden", "train_lm")
PROMPTS = ["The meaning of life is", "A fortune cookie says:\nYou will", "Q: Why?\nA:"]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "build/deltamoe"
    subprocess.run([binary, "train-lm", "--vocab", "300", "--hidden", "32", "--heads", "4",
                    "--kv-heads", "2", "--experts", "4", "--top-k", "2", "--inter", "32",
                    "--layers", "2", "--steps", "20", "--seq-len", "32", "--batch", "4",
                    "--threads", "1", "--no-progress", "--force", "--out", OUT], check=True)
    model = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(OUT)
    tensors = {}
    for i, p in enumerate(PROMPTS):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0]
        tensors[f"prompt.{i}"] = ids[0].to(torch.int32).contiguous()
        tensors[f"logits.{i}"] = logits.to(torch.float32).contiguous()
    save_file(tensors, os.path.join(OUT, "golden.safetensors"),
              metadata={"transformers": md.version("transformers"), "torch": md.version("torch")})
    print(f"wrote {OUT}: {len(PROMPTS)} prompts")


if __name__ == "__main__":
    main()
