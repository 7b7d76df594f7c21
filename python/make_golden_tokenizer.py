#!/usr/bin/env python3
"""Golden data for tests/unit/test_tokenizer.cpp (dev-only; never a run-time dependency).

Writes tests/golden/tokenizer/:
  mixtral.tokenizer.model.gz  the real Mixtral-8x7B / Mistral-7B-v0.1 SentencePiece model
                              (mistral-common's tokenizer.model.v1, Apache-2.0)
  mixtral.tokenizer.json.gz   the tokenizer.json transformers converts from it (legacy form:
                              Prepend + Replace normalizer, <s> template, as on the Hub)
  gpt2.tokenizer.json.gz      GPT-2's byte-level BPE built from openai-whisper's
                              gpt2.tiktoken (MIT): vocab + the canonical merge of each token
  golden.json.gz              per-variant id / text hashes over the fortunes text, hard cases
                              with full ids, derived variants (as patches), package versions

Variants: mixtral_spm (sentencepiece), mixtral_legacy, mixtral_metaspace (Metaspace
prepend_scheme first instead of the normalizer), gpt2 ("a b" merges), qwen2_style (Qwen2's
split regex + NFC + ChatML specials + test added tokens, [a, b] merges), synthetic (our
make_synthetic_tokenizer_json output, when --synthetic FILE is given).

Needs: pip install tokenizers sentencepiece transformers protobuf mistral-common, and
  pip download --no-deps --no-binary :all: openai-whisper -d /tmp/whisper
Debian: apt-get install fortunes fortunes-min.
Usage: python3 python/make_golden_tokenizer.py --whisper-sdist /tmp/whisper/openai_whisper-*.tar.gz
           [--synthetic /tmp/synthetic.tokenizer.json]
"""
import argparse
import base64
import copy
import glob
import gzip
import importlib.metadata as md
import json
import os
import subprocess
import tarfile

import sentencepiece as spm
from tokenizers import Tokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "tokenizer")
FORTUNES = "/usr/share/games/fortunes"
CHUNK = 32  # units per hash

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

HARD_CASES = [
    "", " ", "  ", "\n", "\n\n", "\t", " \t \n ", "Hello", " Hello", "  Hello", "Hello  world",
    "Hello world ", "Hello world  ", "a\nb", "line one\n  line two\n\tline three\n",
    "It's 2024: 3.14159, 1,000,000 and 007.", "don't WON'T I'd we'll they're you've",
    "naïve café résumé Ångström", "cafe\u0301 (decomposed e-acute)", "Ω ≈ ∑ √2 ≠ ∞",
    "日本語のテキストと中文文本", "한국어 텍스트", "emoji 😀👍🏽🇫🇷 👨‍👩‍👧", "русский текст", "العربية",
    "<s>", "</s>", "<s>Hello</s>", "Hello <s> world </s>", "<unk>", "<|endoftext|>",
    "text<|endoftext|>more", "<|im_start|>user\nHi<|im_end|>\n", "a<think>b</think>c",
    "x [MASK] y", "x[MASK]y", "  [MASK]  ", "café au lait", "un café", "cafés", "▁▁ leading ▁",
    "<0x41>", "tab\tseparated\tvalues", "crlf\r\nline", "back\bspace over\bstrike",
    "\u00a0non-breaking\u2003em space\u3000ideographic", "zero\u200bwidth", "a" * 300,
    " " * 40 + "x", "x" + "\n" * 5, "The quick brown fox jumps over the lazy dog. " * 20,
]
# Raw bytes that are not valid UTF-8 (the API takes them; the reference sees U+FFFD).
HARD_BYTES = [b"bad \xff byte", b"trunc \xe2\x82", b"\xc0\xafoverlong", b"\xed\xa0\x80surrogate",
              b"mixed \xe2\x82\xac ok \xf0\x9f\x98 cut"]


def fnv(data: bytes, h: int = 0xCBF29CE484222325) -> int:
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def ids_bytes(ids):
    import struct
    return struct.pack("<i", len(ids)) + struct.pack("<%di" % len(ids), *ids)


def fortune_units():
    """Fortune entries (text between '%' lines) of every fortunes file, in name order."""
    files = sorted(f for f in os.listdir(FORTUNES)
                   if os.path.isfile(os.path.join(FORTUNES, f)) and not os.path.islink(os.path.join(FORTUNES, f))
                   and "." not in f)
    units, total = [], 0
    for f in files:
        raw = open(os.path.join(FORTUNES, f), "rb").read()
        total += len(raw)
        text = raw.decode("utf-8", errors="replace")
        for entry in text.split("\n%\n"):
            if entry.strip("\n"):
                units.append(entry)
    return files, total, units


def gpt2_json(sdist):
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
        lines = tar.extractfile(member).read().decode().splitlines()
    ranks = {}
    for line in lines:
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    enc = {b: chr(c) for b, c in zip(bs, cs)}
    to_str = lambda t: "".join(enc[b] for b in t)
    vocab, merges = {}, []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[to_str(tok)] = rank
        if len(tok) == 1:
            continue
        parts = [bytes([b]) for b in tok]
        while len(parts) > 2:  # BPE with the ranks below this token's: the last merge is canonical
            best = min((ranks.get(parts[i] + parts[i + 1], 1 << 30), i) for i in range(len(parts) - 1))
            if best[0] >= rank:
                break
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        assert len(parts) == 2, tok
        merges.append((rank, to_str(parts[0]) + " " + to_str(parts[1])))
    merges = [m for _, m in sorted(merges)]
    eot = len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": eot, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def mixtral_json(model_path):
    from transformers.convert_slow_tokenizer import LlamaConverter

    class Slow:  # what LlamaConverter reads from a slow tokenizer
        def __init__(self):
            self.vocab_file = model_path
            self.legacy = True
            self.add_prefix_space = True
            self.sp = spm.SentencePieceProcessor(model_file=model_path)

        def convert_ids_to_tokens(self, i):
            return self.sp.id_to_piece(i)

    from tokenizers import AddedToken
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    class Converter(LlamaConverter):
        # transformers 5.x's SpmConverter.tokenizer passes the scores where the extractor
        # expects a model type; the BPE branch done directly (merges ordered by piece score).
        def tokenizer(self, proto):
            vocab_scores = self.vocab(proto)
            vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
            tok = Tokenizer(BPE(vocab, generate_merges(vocab, vocab_scores), unk_token=proto.trainer_spec.unk_piece,
                                fuse_unk=True, byte_fallback=True, dropout=None))
            tok.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                            for p in proto.pieces if p.type in (3, 4)])
            return tok

    tok = Converter(Slow()).converted()
    j = json.loads(tok.to_str())
    j["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    return j


def qwen_added(base_size):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    out = [{"id": base_size + i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True} for i, c in enumerate(specials)]
    extra = [("<think>", False, False, False, False, False), ("</think>", False, False, False, False, False),
             ("[MASK]", False, True, True, False, True), ("café", True, False, False, True, False)]
    for k, (c, single, l, r, norm, special) in enumerate(extra):
        out.append({"id": base_size + 3 + k, "content": c, "single_word": single, "lstrip": l, "rstrip": r,
                    "normalized": norm, "special": special})
    return out


def derive(base, patch):
    j = copy.deepcopy(base)
    for k, v in patch.get("set", {}).items():
        j[k] = v
    if patch.get("merges_as_pairs"):
        j["model"]["merges"] = [m.split(" ") for m in j["model"]["merges"]]
    return j


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--whisper-sdist", required=True)
    ap.add_argument("--synthetic", help="tokenizer.json written by make_synthetic_tokenizer_json")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)

    import mistral_common
    model_path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    mixtral = mixtral_json(model_path)
    gpt2 = gpt2_json(glob.glob(args.whisper_sdist)[0])
    with open(model_path, "rb") as f, gzip.GzipFile(os.path.join(OUT, "mixtral.tokenizer.model.gz"), "wb", mtime=0) as g:
        g.write(f.read())
    for name, j in [("mixtral", mixtral), ("gpt2", gpt2)]:
        with gzip.GzipFile(os.path.join(OUT, name + ".tokenizer.json.gz"), "wb", mtime=0) as g:
            g.write(json.dumps(j, ensure_ascii=False).encode())

    variants = {
        "mixtral_legacy": {"base": "mixtral"},
        "mixtral_metaspace": {"base": "mixtral", "set": {
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}}},
        "gpt2": {"base": "gpt2"},
        "qwen2_style": {"base": "gpt2", "merges_as_pairs": True, "set": {
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "added_tokens": qwen_added(len(gpt2["model"]["vocab"]))}},
    }
    bases = {"mixtral": mixtral, "gpt2": gpt2}
    if args.synthetic:
        bases["synthetic"] = json.load(open(args.synthetic))
        variants["synthetic"] = {"base": "synthetic"}

    files, total, units = fortune_units()
    text_fnv = 0xCBF29CE484222325
    for u in units:
        text_fnv = fnv(u.encode() + b"\0", text_fnv)
    print(f"fortunes: {len(files)} files, {total} bytes, {len(units)} units")

    sp = spm.SentencePieceProcessor(model_file=model_path)
    encoders = {"mixtral_spm": (lambda t, s: ([sp.bos_id()] if s else []) + sp.encode(t),
                                lambda ids, skip: sp.decode(ids))}
    for name, patch in variants.items():
        tok = Tokenizer.from_str(json.dumps(derive(bases[patch["base"]], patch)))
        encoders[name] = (lambda t, s, tok=tok: tok.encode(t, add_special_tokens=s).ids,
                          lambda ids, skip, tok=tok: tok.decode(ids, skip_special_tokens=skip))

    golden = {
        "versions": {p: md.version(p) for p in ["tokenizers", "sentencepiece", "transformers", "mistral-common"]},
        "fortunes": {"files": files, "bytes": total, "units": len(units), "text_fnv": "%016x" % text_fnv,
                     "package": subprocess.run(["dpkg-query", "-W", "-f=${Version}", "fortunes"],
                                               capture_output=True, text=True).stdout},
        "chunk": CHUNK,
        "patches": variants,
        "variants": {},
    }
    for name, (enc, dec) in encoders.items():
        ids_fnv, text_fnv_list, counts, first = [], [], [], []
        for c in range(0, len(units), CHUNK):
            hi, ht, n = 0xCBF29CE484222325, 0xCBF29CE484222325, 0
            for k, u in enumerate(units[c:c + CHUNK]):
                ids = enc(u, True)
                if c + k < 3:
                    first.append(ids)
                hi = fnv(ids_bytes(ids), hi)
                ht = fnv(dec(ids, False).encode() + b"\0", ht)
                n += len(ids)
            ids_fnv.append("%016x" % hi)
            text_fnv_list.append("%016x" % ht)
            counts.append(n)
        hard = []
        for raw in [c.encode() for c in HARD_CASES] + HARD_BYTES:
            t = raw.decode("utf-8", errors="replace")
            ids, plain = enc(t, True), enc(t, False)
            hard.append({"hex": raw.hex(), "ids": ids, "ids_plain": plain,
                         "decoded": dec(ids, False), "decoded_skip": dec(ids, True)})
        golden["variants"][name] = {"ids_fnv": ids_fnv, "text_fnv": text_fnv_list, "counts": counts,
                                    "first_units": first, "hard": hard, "total_ids": sum(counts)}
        print(f"{name}: {sum(counts)} ids")
    with gzip.GzipFile(os.path.join(OUT, "golden.json.gz"), "wb", mtime=0) as g:
        g.write(json.dumps(golden, ensure_ascii=False, separators=(",", ":")).encode())
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
