#!/usr/bin/env python3
"""Ideal single-server batching queue: is "p99 <= T + 2 x batch service at 70% of capacity" feasible?

A discrete-event simulation of the queue discipline the runtime uses, with none of its costs:
Poisson arrivals at rate lambda; one server; a batch starts when the server is free and either
B samples wait or the oldest has waited T (T = 0: whenever the server is free and a sample
waits; T = inf: only full batches); a batch of b samples takes S(b) = a + c*b exactly
(deterministic, no stalls, no client). Capacity = B / S(B) (the closed loop: full batches),
the load is 70% of it, and the target's bound is T + 2 x S(mean realised batch).

The default service curve is fitted to the wave service times the study measured for the small
model with one worker (docs/experiments/expert-queues: 0.05 ms at 1 sample, ~0.2 ms at ~8,
~0.8 ms at ~28): S(b) = 0.03 ms + 0.025 ms * b.

Usage: python3 bench/queue_sim.py [--a-ms 0.03] [--c-ms 0.025] [--load 0.7] [--json]
Prints one row per (B, T): ideal p50/p99, mean batch, the bound, and whether the ideal meets it.
"""
import argparse
import heapq
import json
import math
import random
import sys


def simulate(lam, b_max, t_max, a, c, n=200_000, seed=1):
    """Returns (latencies, batch sizes) for n arrivals; times in ms."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(lam)
        arrivals.append(t)
    lat, batches = [], []
    i, head, free_at = 0, 0, 0.0  # i: next arrival not yet queued; head: oldest waiting
    while head < n:
        # The server can start at `start`: when it is free and the batch rule allows.
        start = max(free_at, arrivals[head])
        if t_max is not None and t_max > 0:
            # Wait for B samples or for the oldest to reach T, whichever comes first.
            full_at = arrivals[head + b_max - 1] if head + b_max - 1 < n else math.inf
            start = max(free_at, min(full_at, arrivals[head] + t_max))
        elif t_max is None:  # T = inf: only full batches (the tail is flushed at the end)
            full_at = arrivals[head + b_max - 1] if head + b_max - 1 < n else arrivals[-1]
            start = max(free_at, full_at)
        # Everything that has arrived by `start` is waiting; take up to B of it.
        end_idx = head
        while end_idx < n and end_idx - head < b_max and arrivals[end_idx] <= start:
            end_idx += 1
        b = end_idx - head
        done = start + a + c * b
        for k in range(head, end_idx):
            lat.append(done - arrivals[k])
        batches.append(b)
        head, free_at = end_idx, done
    return lat, batches


def pct(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a-ms", type=float, default=0.03, help="fixed cost of a batch (ms)")
    ap.add_argument("--c-ms", type=float, default=0.025, help="cost per sample in a batch (ms)")
    ap.add_argument("--load", type=float, default=0.7, help="offered load as a share of capacity B / S(B)")
    ap.add_argument("--arrivals", type=int, default=200_000)
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    rows = []
    for b in [1, 16, 64]:
        for t_us in [0, 200, 1000, -1]:
            t = None if t_us < 0 else t_us / 1000.0
            cap = b / (args.a_ms + args.c_ms * b)  # samples per ms
            lam = args.load * cap
            lat, batches = simulate(lam, b, t, args.a_ms, args.c_ms, n=args.arrivals)
            mean_b = sum(batches) / len(batches)
            service = args.a_ms + args.c_ms * mean_b
            bound = math.inf if t is None else t + 2 * service
            p99 = pct(lat, 0.99)
            rows.append({"B": b, "T_us": t_us, "capacity_per_s": cap * 1000, "mean_batch": mean_b,
                         "service_ms": service, "p50_ms": pct(lat, 0.5), "p99_ms": p99,
                         "bound_ms": None if t is None else bound, "meets_bound": p99 <= bound,
                         "p99_over_bound": None if t is None else p99 / bound})
    if args.json:
        print(json.dumps({"a_ms": args.a_ms, "c_ms": args.c_ms, "load": args.load, "rows": rows}))
        return
    print(f"ideal server, S(b) = {args.a_ms} + {args.c_ms}*b ms, load {args.load:.0%} of B/S(B)", file=sys.stderr)
    print("| B | T | capacity/s | mean batch | S(mean) ms | p50 ms | p99 ms | bound ms | p99 <= bound |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = "inf" if r["T_us"] < 0 else f"{r['T_us']} us"
        bound = "inf" if r["bound_ms"] is None else f"{r['bound_ms']:.2f}"
        print(f"| {r['B']} | {t} | {r['capacity_per_s']:.0f} | {r['mean_batch']:.1f} | {r['service_ms']:.3f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {bound} | {'yes' if r['meets_bound'] else 'no'} |")


if __name__ == "__main__":
    main()
