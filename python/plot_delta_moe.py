#!/usr/bin/env python3
"""Plots for the delta-MoE report from the CSVs `deltamoe sweep` writes.

Usage: python3 python/plot_delta_moe.py --dir docs/experiments
Writes delta-moe-e1.png, delta-moe-e2-load.png, delta-moe-e2-class-expert.png,
delta-moe-e3-flops.png, delta-moe-e3-speed.png and delta-moe-e3-k-by-class.png into --dir.
Needs matplotlib (pip install matplotlib); uses only the csv module otherwise.
"""
import argparse
import csv
import math
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Boot"]
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262]


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mean_ci(v):
    n = len(v)
    m = sum(v) / n
    if n < 2:
        return m, 0.0
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    t = T975[n - 2] if n - 1 <= 9 else 1.96
    return m, t * sd / math.sqrt(n)


def heatmap(ax, data, rows, cols, fmt, cmap="viridis"):
    im = ax.imshow(data, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, fmt(data[i][j]), ha="center", va="center", color="w", fontsize=7)
    return im


def plot_e1(d):
    rows = read(os.path.join(d, "delta-moe-e1.csv"))
    acc = defaultdict(list)
    for r in rows:
        acc[(int(r["k_train"]), int(r["k_eval"]))].append(float(r["accuracy"]))
    kt = sorted({k for k, _ in acc})
    ke = sorted({k for _, k in acc})
    data = [[100 * mean_ci(acc[(a, b)])[0] for b in ke] for a in kt]
    fig, ax = plt.subplots(figsize=(7, 3))
    im = heatmap(ax, data, kt, ke, lambda v: f"{v:.1f}")
    ax.set_xlabel("k at evaluation")
    ax.set_ylabel("k in training")
    ax.set_title("E1: test accuracy (%) of top-k models")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "delta-moe-e1.png"), dpi=120)
    plt.close(fig)


def plot_e2(d):
    rows = read(os.path.join(d, "delta-moe-e2-load.csv"))
    share = defaultdict(list)
    for r in rows:
        share[(int(r["k"]), int(r["balance"]), int(r["layer"]), int(r["expert"]))].append(float(r["share"]))
    ks = sorted({k[0] for k in share})
    layers = sorted({k[2] for k in share})
    experts = sorted({k[3] for k in share})
    fig, axes = plt.subplots(len(layers), 2, figsize=(10, 3 * len(layers)), squeeze=False)
    for li, layer in enumerate(layers):
        for bi, bal in enumerate([1, 0]):
            ax = axes[li][bi]
            w = 0.8 / max(1, len(ks))
            for i, k in enumerate(ks):
                vals = [mean_ci(share.get((k, bal, layer, e), [0.0]))[0] for e in experts]
                ax.bar([e + i * w for e in experts], vals, width=w, label=f"k={k}")
            ax.axhline(1.0 / len(experts), color="k", lw=0.8, ls="--")
            ax.set_title(f"layer {layer}, {'balance loss α=0.01' if bal else 'no balance loss'}")
            ax.set_xlabel("expert")
            ax.set_ylabel("share of routed tokens")
            ax.legend(fontsize=7)
    fig.suptitle("E2: expert load on the test set (mean over seeds)")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "delta-moe-e2-load.png"), dpi=120)
    plt.close(fig)

    rows = read(os.path.join(d, "delta-moe-e2-class-expert.csv"))
    counts = defaultdict(int)
    for r in rows:
        counts[(int(r["k"]), int(r["balance"]), int(r["class"]), int(r["expert"]))] += int(r["count"])
    ks = sorted({k[0] for k in counts})
    fig, axes = plt.subplots(2, len(ks), figsize=(4 * len(ks), 7), squeeze=False)
    for bi, bal in enumerate([1, 0]):
        for ki, k in enumerate(ks):
            ax = axes[bi][ki]
            data = []
            for c in range(10):
                row = [counts[(k, bal, c, e)] for e in experts]
                s = sum(row) or 1
                data.append([v / s for v in row])
            heatmap(ax, data, CLASSES, experts, lambda v: f"{v:.2f}", cmap="magma")
            ax.set_title(f"k={k}, {'balance' if bal else 'no balance'}", fontsize=9)
            ax.set_xlabel("expert")
    fig.suptitle("E2: share of each class's routed tokens per expert (seed 1, both layers)")
    fig.tight_layout()
    fig.savefig(os.path.join(d, "delta-moe-e2-class-expert.png"), dpi=120)
    plt.close(fig)


def plot_e3(d):
    rows = read(os.path.join(d, "delta-moe-e3.csv"))
    pts = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["method"], float(r["budget"]))
        for col in ("accuracy", "expert_flops_per_sample", "samples_per_s", "avg_experts"):
            pts[key][col].append(float(r[col]))
        if r["shuffled_accuracy"]:
            pts[key]["shuffled"].append(float(r["shuffled_accuracy"]))
    markers = {"top-k": "o-", "top-p": "s--", "threshold": "^--", "null-experts": "D--"}
    for xcol, fname, xlabel, scale in (
        ("expert_flops_per_sample", "delta-moe-e3-flops.png", "expert MFLOP per sample", 1e-6),
        ("samples_per_s", "delta-moe-e3-speed.png", "measured samples/s (1 thread)", 1.0),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in ("top-k", "top-p", "threshold", "null-experts"):
            keys = sorted(k for k in pts if k[0] == method)
            if not keys:
                continue
            xs = [mean_ci(pts[k][xcol])[0] * scale for k in keys]
            ys = [100 * mean_ci(pts[k]["accuracy"])[0] for k in keys]
            es = [100 * mean_ci(pts[k]["accuracy"])[1] for k in keys]
            ax.errorbar(xs, ys, yerr=es, fmt=markers[method], label=method, capsize=3)
            for k, x, y in zip(keys, xs, ys):
                ax.annotate(f"{k[1]:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if method != "top-k" and xcol == "expert_flops_per_sample":
                sh = [100 * mean_ci(pts[k]["shuffled"])[0] if pts[k]["shuffled"] else float("nan") for k in keys]
                ax.plot(xs, sh, "x:", color="grey", alpha=0.7,
                        label="shuffled-K control" if method == "top-p" else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("E3: accuracy vs cost (labels: k or K*; bars: 95% CI over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(d, fname), dpi=120)
        plt.close(fig)

    rows = read(os.path.join(d, "delta-moe-e3-k-by-class.csv"))
    kc = defaultdict(list)
    for r in rows:
        if abs(float(r["budget"]) - 1.5) < 1e-9:
            kc[(r["method"], int(r["class"]))].append(float(r["avg_experts"]))
    methods = sorted({m for m, _ in kc})
    fig, ax = plt.subplots(figsize=(8, 3.5))
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ax.bar([c + i * w for c in range(10)], [mean_ci(kc[(m, c)])[0] for c in range(10)], width=w, label=m)
    ax.set_xticks([c + 0.4 - w / 2 for c in range(10)], CLASSES, rotation=30, fontsize=8)
    ax.set_ylabel("mean experts per token")
    ax.set_title("Experts used by class, delta policies at K* = 1.5")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(d, "delta-moe-e3-k-by-class.png"), dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="docs/experiments")
    a = ap.parse_args()
    plot_e1(a.dir)
    plot_e2(a.dir)
    plot_e3(a.dir)
    print(f"plots written to {a.dir}")


if __name__ == "__main__":
    main()
