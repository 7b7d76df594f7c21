#!/usr/bin/env python3
"""Independent Python implementation of the memgraph-v1 memory model (docs/graph_format.md).

Dev-only: the exporter uses it to print each graph's program-order peak, and it cross-checks
the C++ simulator (`deltamoe schedule --algo program`). No dependencies beyond the standard
library.

    python3 python/memgraph_sim.py GRAPH.json[.gz] [--order ORDER.json] [--swaps REPORT.json]

prints one JSON object: nodes, peak_bytes, peak_step, initial_live_bytes,
persistent_bytes, final_live_bytes. With --swaps (the JSON of `deltamoe schedule
--swap-budget --json`, or its "swap" object) it also checks the swap plan on its own terms
and adds swap_peak_bytes, swap_bytes_to_host, swap_bytes_from_host.
"""
import argparse
import gzip
import json
import sys


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    g = json.loads(data)
    if g.get("format") != "memgraph-v1":
        raise ValueError(f"{path}: format is not memgraph-v1")
    return g


def simulate(g, order=None, needs=None):
    """Peak of `order` (a list of node ids; program order when None) under the memory model:
    freeable inputs live from the start; a step needs live + own + workspace; then own joins
    live and every buffer whose readers (through views, transitively) have all run is freed,
    unless it is an output or persistent; a buffer nobody reads is freed right after its
    producer."""
    nodes = g["nodes"]
    by_id = {n["id"]: n for n in nodes}
    if order is None:
        order = [n["id"] for n in nodes]
    base = {}

    def base_of(i):
        chain = []
        while by_id[i].get("view_of") is not None:
            chain.append(i)
            i = by_id[i]["view_of"]
        for c in chain:
            base[c] = i
        base[i] = i
        return i

    for n in nodes:
        base_of(n["id"])
    persistent = {base[i] for i in g.get("persistent", [])}
    outputs = {base[i] for i in g.get("outputs", [])}
    readers = {}
    for n in nodes:
        ins = set(n.get("inputs", []))
        if n.get("view_of") is not None:
            ins.add(n["view_of"])
        for u in ins:
            readers.setdefault(base[u], set()).add(n["id"])

    def free_input(n):
        return n["op"] == "input" and not n.get("inputs") and base[n["id"]] not in persistent

    def own(n):
        if n.get("view_of") is not None or base[n["id"]] in persistent or free_input(n):
            return 0
        return n["size"]

    remaining = {b: len(r) for b, r in readers.items()}
    live = sum(n["size"] for n in nodes if free_input(n))
    initial = live
    peak, peak_step = live, -1
    pos = {}
    for t, i in enumerate(order):
        n = by_id[i]
        for u in n.get("inputs", []):
            if u not in pos:
                raise ValueError(f"order position {t}: node {i} runs before its input {u}")
        pos[i] = t
        need = live + own(n) + n.get("workspace", 0)
        if needs is not None:
            needs.append(need)
        if need > peak:
            peak, peak_step = need, t
        live += own(n)
        done = set()
        for u in set(n.get("inputs", [])) | ({n["view_of"]} if n.get("view_of") is not None else set()):
            b = base[u]
            if b in done:
                continue
            done.add(b)
            remaining[b] -= 1
            if remaining[b] == 0 and b not in outputs and b not in persistent:
                live -= by_id[b]["size"]
        if n.get("view_of") is None and n["id"] not in readers and n["id"] not in outputs \
                and n["id"] not in persistent:
            live -= n["size"]
    if len(pos) != len(nodes):
        raise ValueError("order is not a permutation of all nodes")
    return {
        "nodes": len(nodes),
        "peak_bytes": peak,
        "peak_step": peak_step,
        "initial_live_bytes": initial,
        "persistent_bytes": sum(by_id[b]["size"] for b in persistent),
        "final_live_bytes": live,
    }


def check_swaps(g, order, plan):
    """Applies a swap plan (the "swap" report) to `order` and returns (peak, bytes to host,
    bytes from host). The plan's rules, as docs/sched.md states them: a swapped buffer is a
    non-persistent base; it leaves after one of its uses (its producer, a reader of it or of a
    view of it; none for a graph input that starts on the host) and comes back before the next
    one (none for an output that ends on the host); it is off the device from `overlap` steps
    after the first to `overlap` steps before the second; it is written to the host once
    (graph inputs never) and fetched once per swap. Raises ValueError on a broken rule."""
    nodes = g["nodes"]
    by_id = {n["id"]: n for n in nodes}
    if order is None:
        order = [n["id"] for n in nodes]
    pos = {i: t for t, i in enumerate(order)}
    n_steps = len(order)
    k = plan["overlap_steps"]

    def base(i):
        while by_id[i].get("view_of") is not None:
            i = by_id[i]["view_of"]
        return i

    persistent = {base(i) for i in g.get("persistent", [])}
    outputs = {base(i) for i in g.get("outputs", [])}
    use_steps = {}
    for n in nodes:
        srcs = set(n.get("inputs", []))
        if n.get("view_of") is not None:
            srcs.add(n["view_of"])
        for u in srcs:
            use_steps.setdefault(base(u), set()).add(pos[n["id"]])
    needs = []
    sim = simulate(g, order, needs)
    initial = sim["initial_live_bytes"]
    delta = [0] * (n_steps + 1)
    written, to_host, from_host = set(), 0, 0
    for s in plan["swaps"]:
        b = s["buffer"]
        node = by_id[b]
        if node.get("view_of") is not None or b in persistent or node["size"] == 0:
            raise ValueError(f"swap of {b}: a view, persistent or empty buffer cannot move")
        if s["bytes"] != node["size"]:
            raise ValueError(f"swap of {b}: {s['bytes']} bytes, the buffer has {node['size']}")
        is_input = node["op"] == "input" and not node.get("inputs")
        uses = set(use_steps.get(b, set()))
        if is_input and not uses:
            uses.add(pos[b])  # an unread input is freed after its own step
        elif not is_input:
            uses.add(pos[b])
        if s["evict_after"] is None:
            if not is_input:
                raise ValueError(f"swap of {b}: only a graph input may start on the host")
            u = -1
        else:
            u = pos[s["evict_after"]]
            if u not in uses:
                raise ValueError(f"swap of {b}: node {s['evict_after']} does not use it")
        later = sorted(t for t in uses if t > u)
        if s["fetch_before"] is None:
            if later or b not in outputs or not plan["outputs_to_host"]:
                raise ValueError(f"swap of {b}: left on the host but used later or not an "
                                 f"output allowed to end there")
            w, first, last = n_steps, u + 1 + k, n_steps - 1
        else:
            w = pos[s["fetch_before"]]
            if not later or later[0] != w:
                raise ValueError(f"swap of {b}: fetched before {s['fetch_before']}, which is "
                                 f"not its next use")
            first, last = u + 1 + k, w - 1 - k
            from_host += node["size"]
        if u == -1:
            first = -1
        if (first, last) != (s["off_first_step"], s["off_last_step"]) or first > last:
            raise ValueError(f"swap of {b}: off steps {s['off_first_step']}..{s['off_last_step']}"
                             f" differ from {first}..{last}")
        if not is_input and b not in written:
            written.add(b)
            to_host += node["size"]
        if first == -1:
            initial -= node["size"]
            first = 0
        delta[first] -= node["size"]
        delta[last + 1] += node["size"]
    peak, d = initial, 0
    for t in range(n_steps):
        d += delta[t]
        peak = max(peak, needs[t] + d)
    return peak, to_host, from_host


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph")
    ap.add_argument("--order", help='JSON file {"order": [node ids...]}')
    ap.add_argument("--swaps", help="schedule --swap-budget --json output (or its \"swap\")")
    a = ap.parse_args()
    g = load(a.graph)
    order = None
    if a.order:
        with open(a.order) as f:
            order = json.load(f)["order"]
    r = simulate(g, order)
    if a.swaps:
        with open(a.swaps) as f:
            plan = json.load(f)
        plan = plan.get("swap", plan)
        r["swap_peak_bytes"], r["swap_bytes_to_host"], r["swap_bytes_from_host"] = \
            check_swaps(g, order, plan)
    json.dump(r, sys.stdout)
    print()


if __name__ == "__main__":
    main()
