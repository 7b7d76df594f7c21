#!/usr/bin/env python3
"""Plots for the per-expert queue study (bench/queue_study.py output directory).

Writes into the same directory:
  model_curve.png             per-sample time of each model call vs rows per call (small and wide model)
  closed_loop_throughput.png  closed-loop throughput vs B, per-expert vs whole-model, per policy and model
  p99_vs_load.png             p99 latency vs offered load for each method
  frontier.png                throughput vs p99 (every open-loop run), per method
  latency_cdf.png             latency CDFs at 70% load
  bt_heatmap.png              p99 at 70% load over B x T (per-expert queues)
  overload_rss.png            server RSS during the 2x-capacity HTTP overload
Usage: python3 python/plot_queues.py docs/experiments/expert-queues
"""
import csv
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def main(d):
    curves = [(name, read(os.path.join(d, fn))) for name, fn in
              [("small (D=256, 256 KiB per expert matrix)", "model_curve.csv"),
               ("wide (D=512, I=2048, 4 MiB per expert matrix)", "model_curve_wide.csv")]]
    curves = [(n, c) for n, c in curves if c]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
        for ax, (name, curve) in zip(axes[0], curves):
            for key, label in [("stem_us_per_sample", "stem"), ("gate_us_per_sample", "LayerNorm + router"),
                               ("expert_us_per_sample", "one expert"), ("head_us_per_sample", "head")]:
                ax.plot([f(r["batch"]) for r in curve], [f(r[key]) for r in curve], "o-", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("rows per call (batch)")
            ax.set_ylabel("us per sample (one thread)")
            ax.set_title(f"model service curve: {name}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "model_curve.png"), dpi=110)
        plt.close(fig)

    closed = read(os.path.join(d, "closed_loop.csv"))
    opened = read(os.path.join(d, "open_loop.csv"))
    policies = sorted({r["policy"] for r in closed + opened})

    wide = read(os.path.join(d, "closed_loop_wide.csv"))
    sets = [(n, rows) for n, rows in [("small model", closed), ("wide model", wide)] if rows]
    if sets:
        fig, axes = plt.subplots(len(sets), len(policies), figsize=(5 * len(policies), 4 * len(sets)), squeeze=False)
        for row_axes, (name, rows) in zip(axes, sets):
            for ax, pol in zip(row_axes, policies):
                for mode in ["per-expert", "whole-model"]:
                    rs = sorted([r for r in rows if r["policy"] == pol and r["mode"] == mode and f(r["throughput_rps"]) > 0],
                                key=lambda r: f(r["B"]))
                    ax.plot([f(r["B"]) for r in rs], [f(r["throughput_rps"]) for r in rs], "o-", label=mode)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("B (samples per batch), T = inf")
                ax.set_ylabel("closed-loop samples/s (2 workers)")
                ax.set_title(f"{name}, {pol}")
                ax.grid(alpha=0.3)
                ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(d, "closed_loop_throughput.png"), dpi=110)
        plt.close(fig)

    load = [r for r in opened if r["sweep"] == "load"]
    if load:
        methods = list(dict.fromkeys(r["method"] for r in load))
        fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.5), squeeze=False)
        for ax, pol in zip(axes[0], policies):
            for m in methods:
                rs = sorted([r for r in load if r["policy"] == pol and r["method"] == m], key=lambda r: f(r["load"]))
                ax.plot([100 * f(r["load"]) for r in rs], [f(r["p99_ms"]) for r in rs], "o-", label=m)
            ax.set_yscale("log")
            ax.axhline(5.0, color="gray", ls="--", lw=0.8)
            ax.set_xlabel("offered load (% of capacity)")
            ax.set_ylabel("p99 latency (ms)")
            ax.set_title(pol)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "p99_vs_load.png"), dpi=110)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(policies), figsize=(6 * len(policies), 4.5), squeeze=False)
        for ax, pol in zip(axes[0], policies):
            for m in methods:
                rs = [r for r in load if r["policy"] == pol and r["method"] == m]
                ax.plot([f(r["p99_ms"]) for r in rs], [f(r["throughput_rps"]) for r in rs], "o", label=m)
            ax.set_xscale("log")
            ax.set_xlabel("p99 latency (ms)")
            ax.set_ylabel("throughput (samples/s)")
            ax.set_title(f"{pol}: throughput vs p99")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "frontier.png"), dpi=110)
        plt.close(fig)

    files = sorted(glob.glob(os.path.join(d, "latencies", "*.txt")))
    if files:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for path in files:
            v = np.sort(np.loadtxt(path, ndmin=1))
            if v.size == 0:
                continue
            ax.plot(v, np.arange(1, v.size + 1) / v.size, label=os.path.basename(path)[:-4], lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("latency from scheduled send (ms)")
        ax.set_ylabel("CDF")
        ax.set_title("latency CDF at 70% of capacity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "latency_cdf.png"), dpi=110)
        plt.close(fig)

    bt = [r for r in opened if r["sweep"] == "bt"]
    if bt:
        fig, axes = plt.subplots(1, len(policies), figsize=(5.5 * len(policies), 4), squeeze=False)
        for ax, pol in zip(axes[0], policies):
            rs = [r for r in bt if r["policy"] == pol]
            bs = sorted({int(f(r["B"])) for r in rs})
            ts = sorted({int(f(r["T_us"])) for r in rs}, key=lambda t: 1e18 if t < 0 else t)
            grid = np.full((len(bs), len(ts)), np.nan)
            for r in rs:
                grid[bs.index(int(f(r["B"]))), ts.index(int(f(r["T_us"])))] = f(r["p99_ms"])
            im = ax.imshow(np.log10(grid), cmap="viridis", aspect="auto")
            for i in range(len(bs)):
                for j in range(len(ts)):
                    ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", color="w", fontsize=7)
            ax.set_xticks(range(len(ts)), ["inf" if t < 0 else str(t) for t in ts])
            ax.set_yticks(range(len(bs)), [str(b) for b in bs])
            ax.set_xlabel("T (us)")
            ax.set_ylabel("B")
            ax.set_title(f"{pol}: p99 ms at 70% load")
            fig.colorbar(im, ax=ax, label="log10 p99 ms")
        fig.tight_layout()
        fig.savefig(os.path.join(d, "bt_heatmap.png"), dpi=110)
        plt.close(fig)

    rss = read(os.path.join(d, "overload_rss.csv"))
    if rss:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([f(r["t_s"]) for r in rss], [f(r["rss_kib"]) / 1024 for r in rss])
        ax.set_xlabel("time (s)")
        ax.set_ylabel("server RSS (MiB)")
        ax.set_ylim(bottom=0)
        ax.set_title("2x-capacity HTTP overload, then 30% load")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(d, "overload_rss.png"), dpi=110)
        plt.close(fig)


def tables(d):
    """Markdown tables of the study's numbers (printed to stdout, pasted into the report)."""
    closed = read(os.path.join(d, "closed_loop.csv"))
    opened = read(os.path.join(d, "open_loop.csv"))
    policies = list(dict.fromkeys(r["policy"] for r in closed + opened))
    layers = 1
    if os.path.exists(os.path.join(d, "model.json")):
        import json
        layers = json.load(open(os.path.join(d, "model.json"))).get("layers", 1)
    wide = read(os.path.join(d, "closed_loop_wide.csv"))
    for name, rows_all in [("small model", closed), ("wide model", wide)]:
        for pol in policies:
            rs = [r for r in rows_all if r["policy"] == pol]
            if not rs:
                continue
            bs = sorted({int(f(r["B"])) for r in rs})
            print(f"\nClosed loop, {name}, {pol} (samples/s, 2 workers, T = inf; mean expert GEMM rows per call "
                  f"in brackets; B=64 / B=1 in the last column)\n")
            print("| mode | " + " | ".join(f"B={b}" for b in bs) + " | B=64 / B=1 |")
            print("|---|" + "---|" * (len(bs) + 1))
            for mode in ["per-expert", "whole-model"]:
                cells, tp = [], {}
                for b in bs:
                    m = [r for r in rs if r["mode"] == mode and int(f(r["B"])) == b]
                    if m:
                        tp[b] = f(m[0]["throughput_rps"])
                    cells.append(f"{tp[b]:.0f} ({f(m[0]['mean_expert_rows_per_call']):.1f})" if m else "")
                ratio = f"{tp[64] / tp[1]:.1f}x" if tp.get(1) and tp.get(64) else ""
                print(f"| {mode} | " + " | ".join(cells) + f" | {ratio} |")
    for pol in policies:
        load = [r for r in opened if r["policy"] == pol and r["sweep"] == "load"]
        loads = sorted({f(r["load"]) for r in load})
        print(f"\nOpen loop, {pol}: p99 ms / SLO(5 ms) attainment / mean expert rows per call\n")
        print("| method | " + " | ".join(f"{100 * x:.0f}%" for x in loads) + " |")
        print("|---|" + "---|" * len(loads))
        for m in dict.fromkeys(r["method"] for r in load):
            cells = []
            for x in loads:
                q = [r for r in load if r["method"] == m and f(r["load"]) == x]
                cells.append(f"{f(q[0]['p99_ms']):.2f} / {f(q[0]['slo_attainment']):.2f} / "
                             f"{f(q[0]['mean_expert_rows_per_call']):.1f}" if q else "")
            print(f"| {m} | " + " | ".join(cells) + " |")
        for sweep in ["bt", "bt2"]:
            bt = [r for r in opened if r["policy"] == pol and r["sweep"] == sweep]
            if not bt:
                continue
            workers = bt[0].get("workers", "")
            ts = sorted({int(f(r["T_us"])) for r in bt}, key=lambda t: 1e18 if t < 0 else t)
            print(f"\nPer-expert queues at 70% of each configuration's own capacity, {pol}, {workers} worker(s): "
                  f"p99 ms (server-side p99) [capacity samples/s, mean expert batch, wave service ms, "
                  f"bound T + 2 x wave, p99 <= bound?]\n")
            print("| B | " + " | ".join("T=inf" if t < 0 else f"T={t}us" for t in ts) + " |")
            print("|---|" + "---|" * len(ts))
            for b in sorted({int(f(r["B"])) for r in bt}):
                cells = []
                for t in ts:
                    q = [r for r in bt if int(f(r["B"])) == b and int(f(r["T_us"])) == t]
                    if not q:
                        cells.append("")
                        continue
                    q = q[0]
                    if q.get("note"):
                        cells.append("no capacity (a queue never fills)")
                        continue
                    ok = "yes" if str(q.get("meets_bound")) == "True" else "no"
                    cap = f(q["capacity_rps"]) if q.get("capacity_rps") else 0.0
                    cells.append(f"{f(q['p99_ms']):.2f} ({f(q['server_p99_ms']):.2f}) [{cap:.0f}, "
                                 f"{f(q['mean_batch_expert']):.1f}, {f(q['wave_service_ms']):.2f}, "
                                 f"{q['bound_ms'] if q['bound_ms'] == 'inf' else format(f(q['bound_ms']), '.2f')}, {ok}]")
                print(f"| {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[2] == "--tables":
        tables(sys.argv[1])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "docs/experiments/expert-queues")
