#!/usr/bin/env python3
"""Issue 5's two throughput/latency targets, repeated so that single-run noise does not decide.

  ratio   closed-loop samples/s at B = 64 over B = 1 (per-expert, T = inf, 2 workers), on the
          small and the wide model, both policies; B = 1 and B = 64 alternate, --repeats times
  p99     at 70 % of each configuration's own closed-loop capacity (1 worker, the client on the
          other core): p99 against T + 2 x the wave service time (of the realised batches; and,
          as a second reading, of full batches of B: T + 2 x S(B), measured in a closed loop
          with T = inf), --repeats times, for T = 200 us
          (where even an ideal queue misses the bound, see bench/queue_sim.py), T = 1 ms (where
          the ideal meets it by 20-35 %, less than this VM's stalls) and T = 2 and 5 ms (where the
          margin is larger than most stalls)

A stall probe runs before and after (the VM's own floor under any p99). Medians are what the
report quotes. Writes one JSON object to --out and prints a summary on stderr.
Usage: python3 bench/queue_targets.py --bin build/deltamoe --out docs/experiments/expert-queues/targets.json
       python3 bench/queue_targets.py --table RUN.json [--compare OLDER.json]   (markdown tables of a run)
"""
import argparse
import json
import os
import statistics
import sys

from queue_common import loadgen, stall_probe


def run(args, extra, model, workers):
    return loadgen(args.bin, ["--in-process"] + extra, model, workers)


def fmt_t(t_us):
    return f"{t_us} us" if t_us < 1000 else f"{t_us // 1000} ms"


def print_tables(path, compare):
    """The report's markdown tables for one saved run; with `compare`, that run's bounds beside."""
    with open(path) as f:
        j = json.load(f)
    older = {}
    if compare:
        with open(compare) as f:
            older = {(r["policy"], r["B"], r["T_us"]): r["median_bound_ms"] for r in json.load(f)["p99"]}
    if j.get("ratio"):
        print("| model | policy | B=1 samples/s | B=64 samples/s | B=64 / B=1 | median |")
        print("|---|---|---|---|---|---|")
        for r in j["ratio"]:
            print(f"| {r['model']} | {r['policy']} | {', '.join(f'{x:.0f}' for x in r['b1_samples_per_s'])} | "
                  f"{', '.join(f'{x:.0f}' for x in r['b64_samples_per_s'])} | "
                  f"{', '.join(f'{x:.1f}' for x in r['ratios'])} | {r['median_ratio']:.1f}x |")
        print()
    if j.get("p99"):
        full = any("full_batch_bound_ms" in r for r in j["p99"])
        extra_h, extra_l = (" older run's bound |", "---|") if older else ("", "")
        if full:
            extra_h, extra_l = extra_h + " full-batch bound ms | median meets it |", extra_l + "---|---|"
        print("| policy | B | T | p99 ms (runs) | median p99 | bound ms (median) |" + extra_h +
              " runs meeting | median meets |")
        print("|---|---|---|---|---|---|" + extra_l + "---|---|")
        for r in j["p99"]:
            key = (r["policy"], r["B"], r["T_us"])
            extra = f" {older[key]:.2f} |" if key in older else (" - |" if older else "")
            if full:
                extra += (f" {r['full_batch_bound_ms']:.2f} | {'**yes**' if r['median_meets_full_batch_bound'] else 'no'} |"
                          if "full_batch_bound_ms" in r else " - | - |")
            print(f"| {r['policy']} | {r['B']} | {fmt_t(r['T_us'])} | {', '.join(f'{x:.2f}' for x in r['p99_ms'])} | "
                  f"{r['median_p99_ms']:.2f} | {r['median_bound_ms']:.2f} |{extra} {sum(r['meets'])} of "
                  f"{len(r['meets'])} | {'**yes**' if r['median_meets'] else 'no'} |")
    for k in ("stall_probe_before", "stall_probe_after"):
        if k in j:
            p = j[k]
            print(f"\n{k}: {p['gaps_over_1ms_per_s']:.1f} gaps > 1 ms per s, longest {p['max_gap_ms']:.1f} ms, "
                  f"{100 * p['lost_share']:.1f} % lost")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/deltamoe")
    ap.add_argument("--model", default="out/queue-study/top2.safetensors")
    ap.add_argument("--wide-model", default="out/queue-study/wide-top2.safetensors")
    ap.add_argument("--out", default="docs/experiments/expert-queues/targets.json")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--only", choices=["ratio", "p99"], help="run one of the two targets")
    ap.add_argument("--table", metavar="RUN.json", help="print a saved run as markdown tables (runs nothing)")
    ap.add_argument("--compare", metavar="OLDER.json", help="with --table: an older run's bounds beside")
    args = ap.parse_args()
    if args.table:
        print_tables(args.table, args.compare)
        return
    for m in (args.model, args.wide_model):
        if not os.path.exists(m):
            sys.exit(f"queue_targets: {m} is missing (bench/queue_study.py trains it)")
    d = str(args.duration)
    result = {"stall_probe_before": stall_probe(args.bin), "ratio": [], "p99": []}
    for name, model in [("small", args.model), ("wide", args.wide_model)] if args.only != "p99" else []:
        for policy in ["top-k:2", "top-p:0.6"]:
            ratios, tps = [], {1: [], 64: []}
            for _ in range(args.repeats):
                for b in (1, 64):
                    j = run(args, ["--routing", policy, "--mode", "per-expert", "--queue-size", str(b),
                                   "--queue-timeout-us", "-1", "--closed-loop", "--concurrency", "1024",
                                   "--duration", d], model, 2)
                    tps[b].append(j["throughput_rps"])
                ratios.append(tps[64][-1] / tps[1][-1] if tps[1][-1] > 0 else 0.0)
            r = {"model": name, "policy": policy, "b1_samples_per_s": tps[1], "b64_samples_per_s": tps[64],
                 "ratios": ratios, "median_ratio": statistics.median(ratios)}
            result["ratio"].append(r)
            print(f"ratio {name} {policy}: {', '.join(f'{x:.1f}' for x in ratios)} (median {r['median_ratio']:.1f}x)",
                  file=sys.stderr)
    cells = [(16, 200), (64, 200), (16, 1000), (64, 1000), (128, 1000), (64, 2000), (64, 5000), (256, 5000)]
    for policy in ["top-k:2", "top-p:0.6"] if args.only != "ratio" else []:
        # The other reading of "the batch service time": that of a *full* batch of B, S(B), as
        # in the worst-case argument behind the formula (wait T, one batch ahead, then one's
        # own). Measured as the wave service of a closed loop with T = inf (every batch full;
        # the window counters leave out the drain's partial ones), 1 worker.
        full = {}
        for b in sorted({b for b, _ in cells}):
            j = run(args, ["--routing", policy, "--mode", "per-expert", "--queue-size", str(b), "--queue-timeout-us",
                           "-1", "--closed-loop", "--concurrency", "4096", "--duration", d], args.model, 1)
            full[b] = j["wave_service_ms"]
            print(f"full-batch wave service {policy} B={b}: {full[b]:.3f} ms (mean stem batch "
                  f"{j.get('mean_batch_stem', 0):.1f})", file=sys.stderr)
        result.setdefault("full_batch_wave_service_ms", {})[policy] = {str(b): v for b, v in full.items()}
        for b, t in cells:
            p99s, bounds, meets, p50s = [], [], [], []
            for _ in range(args.repeats):
                base = ["--routing", policy, "--mode", "per-expert", "--queue-size", str(b), "--queue-timeout-us", str(t)]
                cap = run(args, base + ["--closed-loop", "--concurrency", "1024", "--duration", d], args.model, 1)
                j = run(args, base + ["--rate", f"{0.7 * cap['throughput_rps']:.1f}", "--duration", d], args.model, 1)
                bound = t / 1000.0 + 2 * j["wave_service_ms"]
                p99s.append(j["p99_ms"])
                p50s.append(j["p50_ms"])
                bounds.append(bound)
                meets.append(j["p99_ms"] <= bound)
            r = {"policy": policy, "B": b, "T_us": t, "p99_ms": p99s, "bound_ms": bounds, "meets": meets,
                 "p50_ms": p50s, "median_p99_ms": statistics.median(p99s),
                 "median_bound_ms": statistics.median(bounds)}
            r["median_meets"] = r["median_p99_ms"] <= r["median_bound_ms"]
            r["full_batch_bound_ms"] = t / 1000.0 + 2 * full[b]
            r["median_meets_full_batch_bound"] = r["median_p99_ms"] <= r["full_batch_bound_ms"]
            result["p99"].append(r)
            print(f"p99 {policy} B={b} T={t}: {', '.join(f'{x:.2f}' for x in p99s)} ms, bound "
                  f"{r['median_bound_ms']:.2f} ms (median {'meets' if r['median_meets'] else 'misses'})",
                  file=sys.stderr)
    result["stall_probe_after"] = stall_probe(args.bin)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
