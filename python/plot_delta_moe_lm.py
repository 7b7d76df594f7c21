#!/usr/bin/env python3
"""Plots for the delta-MoE language-model report from the CSVs `deltamoe sweep-lm` writes.

Usage: python3 python/plot_delta_moe_lm.py --dir docs/experiments
Writes delta-moe-lm-e1.png, delta-moe-lm-e2-load.png, delta-moe-lm-e2-tokens.png and
delta-moe-lm-e3-frontier.png into --dir. Needs matplotlib; uses only the csv module otherwise.
"""
import argparse
import csv
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_delta_moe import mean_ci  # noqa: E402  (one 95% t-interval for both reports)


def read(d, name):
    with open(os.path.join(d, name), newline="") as f:
        return list(csv.DictReader(f))


def label(method, budget):
    return f"top-{budget:g}" if method == "top-k" else f"{method} K*={budget:g}"


def save(fig, d, name):
    fig.tight_layout()
    fig.savefig(os.path.join(d, name), dpi=120)
    plt.close(fig)


def plot_e1(d):
    ppl = defaultdict(list)
    for r in read(d, "delta-moe-lm-e1.csv"):
        ppl[(int(r["k_train"]), int(r["k_eval"]))].append(float(r["perplexity"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for kt in sorted({k for k, _ in ppl}):
        ks = sorted(ke for t, ke in ppl if t == kt)
        m = [mean_ci(ppl[(kt, k)]) for k in ks]
        ax.errorbar(ks, [v[0] for v in m], yerr=[v[1] for v in m], marker="o", capsize=3,
                    label=f"trained top-{kt}")
    ax.set_xlabel("experts per token at evaluation (top-k)")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("E1: k at inference vs perplexity")
    ax.legend()
    save(fig, d, "delta-moe-lm-e1.png")


def plot_e2(d):
    share = defaultdict(list)
    for r in read(d, "delta-moe-lm-e2-load.csv"):
        share[(float(r["k"]), int(r["layer"]), int(r["expert"]))].append(float(r["share"]))
    ks = sorted({k[0] for k in share})
    layers = sorted({k[1] for k in share})
    experts = sorted({k[2] for k in share})
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.5), squeeze=False)
    for li, layer in enumerate(layers):
        ax = axes[0][li]
        w = 0.8 / max(1, len(ks))
        for i, k in enumerate(ks):
            ax.bar([e + i * w for e in experts],
                   [mean_ci(share.get((k, layer, e), [0.0]))[0] for e in experts], width=w,
                   label=f"top-{k:g}")
        ax.axhline(1.0 / len(experts), color="k", lw=0.8, ls="--")
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("expert")
        ax.set_ylabel("share of routed tokens")
        ax.legend(fontsize=7)
    fig.suptitle("E2: expert load on the validation tokens (mean over seeds)")
    save(fig, d, "delta-moe-lm-e2-load.png")

    k = defaultdict(list)
    order = defaultdict(list)
    for r in read(d, "delta-moe-lm-e2-tokens.csv"):
        if r["method"] == "top-k":
            continue
        k[(r["method"], float(r["budget"]), r["by"], r["bucket"])].append(
            float(r["experts_per_token"]))
        if r["bucket"] not in order[r["by"]]:
            order[r["by"]].append(r["bucket"])
    cfgs = sorted({(m, b) for m, b, _, _ in k})
    bys = ["frequency", "position", "loss"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), squeeze=False)
    for bi, by in enumerate(bys):
        ax = axes[0][bi]
        buckets = order[by]
        w = 0.8 / max(1, len(cfgs))
        for i, (m, b) in enumerate(cfgs):
            ax.bar([j + i * w for j in range(len(buckets))],
                   [mean_ci(k.get((m, b, by, bk), [0.0]))[0] for bk in buckets], width=w,
                   label=label(m, b))
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(buckets))], buckets, fontsize=8)
        ax.set_ylabel("experts per token (mean over layers)")
        ax.set_title(f"by {by}" + (" of the next token" if by == "loss" else ""))
        if bi == 0:
            ax.legend(fontsize=7)
    fig.suptitle("E2: which tokens take how many experts (delta models, mean over seeds)")
    save(fig, d, "delta-moe-lm-e2-tokens.png")


def plot_e3(d):
    pts = defaultdict(lambda: defaultdict(list))
    for r in read(d, "delta-moe-lm-e3.csv"):
        key = (r["method"], float(r["budget"]))
        for c in ("perplexity", "experts_per_token", "tokens_per_s"):
            pts[key][c].append(float(r[c]))
    post = defaultdict(lambda: defaultdict(list))
    for r in read(d, "delta-moe-lm-posthoc.csv"):
        post[float(r["p"])]["k"].append(float(r["experts_per_token"]))
        post[float(r["p"])]["ppl"].append(float(r["perplexity"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"top-k": "o", "top-p": "s", "threshold": "^", "null-experts": "D"}
    for ai, (xcol, xlabel) in enumerate([("experts_per_token", "measured experts per token"),
                                         ("tokens_per_s", "measured tokens/s (1 thread)")]):
        ax = axes[ai]
        for method in ("top-k", "top-p", "threshold", "null-experts"):
            keys = sorted(k for k in pts if k[0] == method)
            if not keys:
                continue
            xs = [mean_ci(pts[k][xcol])[0] for k in keys]
            ys = [mean_ci(pts[k]["perplexity"]) for k in keys]
            ax.errorbar(xs, [y[0] for y in ys], yerr=[y[1] for y in ys], marker=markers[method],
                        capsize=3, ls="-" if method == "top-k" else ":", label=method)
            for x, y, k in zip(xs, ys, keys):
                ax.annotate(f"{k[1]:g}", (x, y[0]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        if xcol == "experts_per_token" and post:
            ps = sorted(post)
            ax.plot([mean_ci(post[p]["k"])[0] for p in ps],
                    [mean_ci(post[p]["ppl"])[0] for p in ps], "x--", color="gray",
                    label="top-2 model, post-hoc top-p")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation perplexity")
        ax.legend(fontsize=8)
    fig.suptitle("E3: perplexity against experts per token and speed (labels: k or K*)")
    save(fig, d, "delta-moe-lm-e3-frontier.png")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="directory with the sweep-lm CSVs")
    d = ap.parse_args().dir
    plot_e1(d)
    plot_e2(d)
    plot_e3(d)


if __name__ == "__main__":
    main()
