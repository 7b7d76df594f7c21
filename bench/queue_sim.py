#!/usr/bin/env python3
"""Ideal single-server batching queue: is "p99 <= T + 2 x batch service at 70% of capacity" feasible?

A discrete-event simulation of the queue discipline the runtime uses, with none of its costs:
Poisson arrivals at rate lambda; one server; a batch starts when the server is free and either
B samples wait or the oldest has waited T (T = 0: whenever the server is free and a sample
waits; T = inf: only full batches); a batch of b samples takes S(b) = a + c*b exactly
(deterministic, no client). Capacity = B / S(B) (the closed loop: full batches), the load is
70% of it, and the target's bound is T + 2 x S(mean realised batch).

With --stalls FILE (the JSON of `deltamoe loadgen --stall-probe --json`, or a file with its
"before"/"after" objects, as the study saves it), the same ideal server also loses its CPU the
way this VM's threads do: stalls arrive as a Poisson process at the probe's rate of gaps over
100 us, with lengths drawn so that the probe's rates of gaps over 1 ms and over 5 ms and its
longest gap are reproduced (log-uniform within 0.1-1 ms, 1-5 ms and 5 ms-longest). During a
stall no batch starts and a running batch makes no progress; arrivals go on (the loadgen
counts latency from the scheduled send time). Both columns are printed: the queue alone, and
the queue on this machine.

The default service curve is fitted to the wave service times the study measured for the small
model with one worker (docs/experiments/expert-queues: 0.05 ms at 1 sample, ~0.2 ms at ~8,
~0.8 ms at ~28): S(b) = 0.03 ms + 0.025 ms * b.

Usage: python3 bench/queue_sim.py [--a-ms 0.03] [--c-ms 0.025] [--load 0.7] [--stalls probe.json] [--json]
Prints one row per (B, T): ideal p50/p99, mean batch, the bound, and whether the ideal meets it.
"""
import argparse
import heapq
import json
import math
import random
import sys


def stall_intervals(probe, horizon_ms, seed=2):
    """Sorted, disjoint (start, end) stalls in ms over [0, horizon_ms], drawn to match a probe."""
    rng = random.Random(seed)
    r100, r1, r5 = probe["gaps_over_100us_per_s"], probe["gaps_over_1ms_per_s"], probe["gaps_over_5ms_per_s"]
    longest = max(5.0, probe["max_gap_ms"])
    if r100 <= 0:
        return []
    bands = [((r100 - r1) / r100, 0.1, 1.0), ((r1 - r5) / r100, 1.0, min(5.0, longest)), (r5 / r100, 5.0, longest)]
    out, t = [], 0.0
    while True:
        t += rng.expovariate(r100 / 1000.0)
        if t > horizon_ms:
            return out
        u = rng.random()
        for share, lo, hi in bands:
            if u < share or (share, lo, hi) == bands[-1]:
                length = math.exp(rng.uniform(math.log(lo), math.log(hi)))
                break
            u -= share
        if out and t <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], t + length))
        else:
            out.append((t, t + length))


class Cpu:
    """Progress of one thread that loses the CPU during `stalls` (sorted, disjoint)."""

    def __init__(self, stalls):
        self.stalls, self.k = stalls, 0

    def finish(self, t, work):
        """When `work` ms of CPU time started at t are done (work 0: when t is runnable). Calls must
        come with non-decreasing t."""
        s = self.stalls
        while True:
            while self.k < len(s) and s[self.k][1] <= t:
                self.k += 1
            if self.k < len(s) and s[self.k][0] <= t:
                t = s[self.k][1]
                continue
            next_stall = s[self.k][0] if self.k < len(s) else math.inf
            if t + work <= next_stall:
                return t + work
            work -= next_stall - t
            t = s[self.k][1]


def simulate(lam, b_max, t_max, a, c, n=200_000, seed=1, probe=None):
    """Returns (latencies, batch sizes) for n arrivals; times in ms. With `probe` (a stall-probe
    JSON object) the server loses its CPU as that machine's threads did."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(lam)
        arrivals.append(t)
    cpu = Cpu(stall_intervals(probe, arrivals[-1] * 2 + 1000.0) if probe else [])
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
        start = cpu.finish(start, 0.0)  # a stalled thread starts nothing
        # Everything that has arrived by `start` is waiting; take up to B of it.
        end_idx = head
        while end_idx < n and end_idx - head < b_max and arrivals[end_idx] <= start:
            end_idx += 1
        b = end_idx - head
        done = cpu.finish(start, a + c * b)
        for k in range(head, end_idx):
            lat.append(done - arrivals[k])
        batches.append(b)
        head, free_at = end_idx, done
    return lat, batches


def pct(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, int(q * len(s)))]


def load_probe(path, pick):
    """The stall probe in `path`: a probe object, or one with several (the study's "before" and
    "after"; queue_targets.py's "stall_probe_before/after"): then the noisier or the quieter of
    them by time lost, as `pick` says."""
    with open(path) as f:
        j = json.load(f)
    if "gaps_over_100us_per_s" in j:
        return j
    probes = [v for v in j.values() if isinstance(v, dict) and "gaps_over_100us_per_s" in v]
    if not probes:
        sys.exit(f"queue_sim: {path} holds no stall probe (run `deltamoe loadgen --stall-probe --json`)")
    return (max if pick == "noisier" else min)(probes, key=lambda p: p["lost_share"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a-ms", type=float, default=0.03, help="fixed cost of a batch (ms)")
    ap.add_argument("--c-ms", type=float, default=0.025, help="cost per sample in a batch (ms)")
    ap.add_argument("--load", type=float, default=0.7, help="offered load as a share of capacity B / S(B)")
    ap.add_argument("--arrivals", type=int, default=200_000)
    ap.add_argument("--stalls", help="stall-probe JSON: also simulate the queue on a CPU that stalls like this")
    ap.add_argument("--stall-pick", choices=["noisier", "quieter"], default="noisier",
                    help="which probe to use when --stalls holds several (default: noisier)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = ap.parse_args()
    probe = load_probe(args.stalls, args.stall_pick) if args.stalls else None
    rows = []
    for b in [1, 16, 64, 256]:
        for t_us in [0, 200, 1000, 2000, 5000, -1]:
            t = None if t_us < 0 else t_us / 1000.0
            cap = b / (args.a_ms + args.c_ms * b)  # samples per ms
            lam = args.load * cap
            lat, batches = simulate(lam, b, t, args.a_ms, args.c_ms, n=args.arrivals)
            mean_b = sum(batches) / len(batches)
            service = args.a_ms + args.c_ms * mean_b
            bound = math.inf if t is None else t + 2 * service
            p99 = pct(lat, 0.99)
            row = {"B": b, "T_us": t_us, "capacity_per_s": cap * 1000, "mean_batch": mean_b,
                   "service_ms": service, "p50_ms": pct(lat, 0.5), "p99_ms": p99,
                   "bound_ms": None if t is None else bound, "meets_bound": p99 <= bound,
                   "p99_over_bound": None if t is None else p99 / bound}
            if probe:
                lat_s, _ = simulate(lam, b, t, args.a_ms, args.c_ms, n=args.arrivals, probe=probe)
                row["stalled_p99_ms"] = pct(lat_s, 0.99)
                row["stalled_meets_bound"] = row["stalled_p99_ms"] <= bound
            rows.append(row)
    if args.json:
        print(json.dumps({"a_ms": args.a_ms, "c_ms": args.c_ms, "load": args.load, "stall_probe": probe,
                          "rows": rows}))
        return
    print(f"ideal server, S(b) = {args.a_ms} + {args.c_ms}*b ms, load {args.load:.0%} of B/S(B)", file=sys.stderr)
    if probe:
        print(f"stalls: {probe['gaps_over_100us_per_s']:.1f} gaps > 100 us per s, {probe['gaps_over_1ms_per_s']:.1f} "
              f"> 1 ms, {probe['gaps_over_5ms_per_s']:.1f} > 5 ms, longest {probe['max_gap_ms']:.1f} ms", file=sys.stderr)
    extra_h, extra_l = (" p99 with stalls ms | with stalls <= bound |", "---|---|") if probe else ("", "")
    print("| B | T | capacity/s | mean batch | S(mean) ms | p50 ms | p99 ms | bound ms | p99 <= bound |" + extra_h)
    print("|---|---|---|---|---|---|---|---|---|" + extra_l)
    for r in rows:
        t = "inf" if r["T_us"] < 0 else f"{r['T_us']} us"
        bound = "inf" if r["bound_ms"] is None else f"{r['bound_ms']:.2f}"
        extra = (f" {r['stalled_p99_ms']:.2f} | {'yes' if r['stalled_meets_bound'] else 'no'} |") if probe else ""
        print(f"| {r['B']} | {t} | {r['capacity_per_s']:.0f} | {r['mean_batch']:.1f} | {r['service_ms']:.3f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {bound} | {'yes' if r['meets_bound'] else 'no'} |" + extra)


if __name__ == "__main__":
    main()
