#!/usr/bin/env python3
"""Loads a `deltamoe train` checkpoint (M.safetensors + M.json) into PyTorch and evaluates it.

A cross-check of the checkpoint format and of the C++ forward pass: the PyTorch model below
is written from docs/training.md alone. It supports the fc stem with top-k, top-p, threshold
and null-experts routing (the per-layer policy state saved in M.json).

Usage: python3 python/delta_moe_torch.py --model M.safetensors [--predictions P.csv]
  --predictions: a CSV from `deltamoe eval --predictions-out`; reports how many predictions
  and expert counts agree.
"""
import argparse
import csv
import gzip
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def load_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, r, c = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=16).reshape(n, r * c).astype(np.float32) / 255.0)


def load_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=8).astype(np.int64))


def route(z, p, spec, experts):
    """Returns a [T, E] mask of chosen real experts and [T, E] gate weights."""
    kind = spec["kind"]
    t = z.shape[0]
    mask = torch.zeros(t, experts, dtype=torch.bool)
    denom_extra = torch.zeros(t)
    if kind == "top-k":
        idx = torch.topk(z[:, :experts], spec["k"], dim=1).indices
        mask.scatter_(1, idx, True)
    elif kind == "top-p":
        sp, order = torch.sort(p, dim=1, descending=True, stable=True)
        cum = torch.cumsum(sp, dim=1)
        keep = (cum - sp) < spec["p"] - 1e-6  # include the expert that reaches p
        mask.scatter_(1, order, keep)
    elif kind == "threshold":
        th = torch.tensor(spec["thresholds"])
        mask = p >= th
        none = ~mask.any(dim=1)
        mask[none, p[none].argmax(dim=1)] = True
    elif kind == "null-experts":
        zz = z.clone()
        zz[:, experts:] += spec["null_bias"]
        idx = torch.topk(zz, spec["k"], dim=1, sorted=True).indices
        real = idx < experts
        for i in range(t):
            chosen = idx[i][real[i]]
            nulls = idx[i][~real[i]]
            if len(chosen) == 0:
                order = torch.argsort(zz[i], descending=True, stable=True)
                chosen = order[order < experts][:1]
            mask[i, chosen] = True
            denom_extra[i] = p[i, nulls].sum()
    else:
        raise ValueError(kind)
    pr = p[:, :experts] * mask
    if spec.get("renormalize", True):
        w = pr / (pr.sum(dim=1, keepdim=True) + denom_extra[:, None]).clamp_min(1e-30)
    else:
        w = pr
    return mask, w


def forward(sd, cfg, x):
    assert cfg["stem"] == "fc", "this checker covers the fc stem"
    experts = cfg["experts"]
    act = F.gelu if cfg["activation"] == "gelu" else F.relu
    h = F.gelu(F.linear(x, sd["stem.weight"], sd["stem.bias"]))
    ks = []
    for layer in range(cfg["layers"]):
        pre = f"moe.{layer}."
        u = F.layer_norm(h, (h.shape[1],), sd[pre + "norm.weight"], sd[pre + "norm.bias"], eps=1e-5)
        z = F.linear(u, sd[pre + "router.weight"])
        p = torch.softmax(z, dim=1)
        spec = (cfg["layer_routing"] or [cfg["routing"]] * cfg["layers"])[layer]
        mask, w = route(z, p, spec, experts)
        y = torch.zeros_like(u)
        for e in range(experts):
            rows = mask[:, e].nonzero().flatten()
            if len(rows) == 0:
                continue
            ep = pre + f"experts.{e}."
            o = F.linear(act(F.linear(u[rows], sd[ep + "fc1.weight"], sd[ep + "fc1.bias"])),
                         sd[ep + "fc2.weight"], sd[ep + "fc2.bias"])
            y[rows] += w[rows, e:e + 1] * o
        h = h + y if cfg["residual"] else y
        ks.append(mask.sum(dim=1).float())
    h = F.layer_norm(h, (h.shape[1],), sd["head.norm.weight"], sd["head.norm.bias"], eps=1e-5)
    return F.linear(h, sd["head.weight"], sd["head.bias"]), torch.stack(ks).mean(dim=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--predictions")
    a = ap.parse_args()
    sd = load_file(a.model)
    with open(os.path.splitext(a.model)[0] + ".json") as f:
        cfg = json.load(f)
    x = load_images(os.path.join(a.data_dir, "t10k-images-idx3-ubyte.gz"))
    y = load_labels(os.path.join(a.data_dir, "t10k-labels-idx1-ubyte.gz"))
    with torch.no_grad():
        logits, k = forward(sd, cfg, x)
    pred = logits.argmax(dim=1)
    out = {"accuracy": (pred == y).float().mean().item(), "avg_experts": k.mean().item()}
    if a.predictions:
        with open(a.predictions) as f:
            rows = list(csv.DictReader(f))
        cpp_pred = torch.tensor([int(r["predicted"]) for r in rows])
        cpp_k = torch.tensor([float(r["experts_used"]) for r in rows])
        out["same_prediction"] = (cpp_pred == pred).float().mean().item()
        out["same_experts_used"] = ((cpp_k - k).abs() < 1e-4).float().mean().item()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
