#!/usr/bin/env python3
"""Golden data for tests/unit/test_tokenizer_train.cpp (dev-only; never a run-time dependency).

Runs `deltamoe train-tokenizer` on the fortunes corpus (Debian fortunes + fortunes-min, the
default of train-lm) with a 1024-token vocabulary and writes tests/golden/tokenizer_train/:
  tokenizer.json   what our trainer made (the test checks that it still makes exactly this)
  golden.json      Hugging Face `tokenizers` on that file: for every validation document of
                   the split (train-tokenizer's rule) [token count, FNV-1a 64 hash of its ids
                   (int32 little-endian bytes)], and full ids for a few hard texts; the package version

Needs: pip install tokenizers. Debian: apt-get install fortunes fortunes-min.
Usage: python3 python/make_golden_tokenizer_train.py build/deltamoe
"""
import importlib.metadata as md
import json
import os
import subprocess
import sys

from tokenizers import Tokenizer

from fortunes import split  # python/, beside this script

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "golden", "tokenizer_train")
HARD = [
    "Hello, world! The quick brown fox.",
    "  Multiple   spaces\n\nand newlines\t tabs  ",
    "Ünïcödé ✓ 日本語 emoji 🎉 and invalid-free text",
    "1234567 numbers 3.14159 -- isn't it? We'll see, they'd've",
    "<|endoftext|>special inside<|endoftext|>",
    "",
]


def fnv1a(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little", signed=True):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "build/deltamoe"
    os.makedirs(OUT, exist_ok=True)
    tok_path = os.path.join(OUT, "tokenizer.json")
    subprocess.run([binary, "train-tokenizer", "--vocab", "1024", "--out", tok_path], check=True)
    tok = Tokenizer.from_file(tok_path)
    validation = split("validation")
    golden = {
        "tokenizers_version": md.version("tokenizers"),
        "vocab": 1024,
        "validation": [[len(e.ids), f"{fnv1a(e.ids):016x}"]
                       for e in (tok.encode(d) for d in validation)],
        "hard": [{"text": t, "ids": tok.encode(t).ids} for t in HARD],
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(f"{len(validation)} validation documents, {sum(v[0] for v in golden['validation'])} tokens")


if __name__ == "__main__":
    main()
