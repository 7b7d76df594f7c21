#!/usr/bin/env python3
"""Independent Python implementation of the memgraph-v1 memory model (docs/graph_format.md).

Dev-only: the exporter uses it to print each graph's program-order peak, and it cross-checks
the C++ simulator (`deltamoe schedule --algo program`). No dependencies beyond the standard
library.

    python3 python/memgraph_sim.py GRAPH.json[.gz] [--order ORDER.json]

prints one JSON object: nodes, peak_bytes, peak_step, initial_live_bytes,
persistent_bytes, final_live_bytes.
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


def simulate(g, order=None):
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph")
    ap.add_argument("--order", help='JSON file {"order": [node ids...]}')
    a = ap.parse_args()
    g = load(a.graph)
    order = None
    if a.order:
        with open(a.order) as f:
            order = json.load(f)["order"]
    json.dump(simulate(g, order), sys.stdout)
    print()


if __name__ == "__main__":
    main()
