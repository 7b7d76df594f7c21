#!/usr/bin/env python3
"""deltamoe_sched (the scheduler's Python package) against independent references.

Run with the package on the path: PYTHONPATH=build/python python3 tests/python/sched_module.py
Checks: on random small DAGs, every order returned is a permutation that respects the edges,
its reported peak equals python/memgraph_sim.py's (an independent simulator) and is never
below the optimum found by enumerating every topological order, and it equals that optimum
when the result says proven_optimal; graphs given as dict, JSON text, path, .json.gz and
PathLike give the same answer; peak() agrees with the simulator; bad input raises ValueError
(SchedError) with the component in brackets. Exit 0 on success, 1 with a message otherwise.
"""
import gzip
import itertools
import json
import os
import pathlib
import random
import sys
import tempfile

# python/ (for memgraph_sim) after PYTHONPATH: its deltamoe_sched sources lack the built _core.
sys.path.append(os.path.join(os.path.dirname(__file__), "..", "..", "python"))
import deltamoe_sched  # noqa: E402
import memgraph_sim  # noqa: E402


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def random_graph(rng, n):
    nodes = [{"id": 0, "name": "x", "op": "input", "inputs": [], "size": rng.randint(1, 50)}]
    for i in range(1, n):
        k = rng.randint(1, min(3, i))
        inputs = sorted(rng.sample(range(i), k))
        nodes.append({"id": i * 3 + 1, "name": f"n{i}", "op": "op",
                      "inputs": [nodes[j]["id"] for j in inputs],
                      "size": rng.choice([0, 1, 5, 20, 100, 400])})
    last = nodes[-1]["id"]
    return {"format": "memgraph-v1", "name": "random", "nodes": nodes, "outputs": [last]}


def topological_orders(g):
    nodes = g["nodes"]
    preds = {n["id"]: set(n["inputs"]) for n in nodes}
    ids = [n["id"] for n in nodes]

    def rec(done, order):
        if len(order) == len(ids):
            yield list(order)
            return
        for i in ids:
            if i not in done and preds[i] <= done:
                done.add(i)
                order.append(i)
                yield from rec(done, order)
                order.pop()
                done.remove(i)
    yield from rec(set(), [])


def check_order(g, order):
    pos = {v: i for i, v in enumerate(order)}
    if sorted(pos) != sorted(n["id"] for n in g["nodes"]):
        fail(f"order {order} is not a permutation of the graph's ids")
    for n in g["nodes"]:
        for p in n["inputs"]:
            if pos[p] > pos[n["id"]]:
                fail(f"order {order} runs {n['id']} before its input {p}")


def main():
    rng = random.Random(7)
    proven = 0
    for trial in range(40):
        g = random_graph(rng, rng.randint(3, 8))
        best = min(memgraph_sim.simulate(g, o)["peak_bytes"] for o in topological_orders(g))
        for algo in ("auto", "sp", "exact", "lpmf", "bfs", "dfs", "program"):
            r = deltamoe_sched.order(g, algo=algo, time_limit=5)
            check_order(g, r["order"])
            sim = memgraph_sim.simulate(g, r["order"])["peak_bytes"]
            if sim != r["peak_bytes"]:
                fail(f"trial {trial} {algo}: reported peak {r['peak_bytes']}, simulator {sim}")
            if deltamoe_sched.peak(g, r["order"]) != sim:
                fail(f"trial {trial} {algo}: peak() disagrees with the simulator")
            if sim < best:
                fail(f"trial {trial} {algo}: peak {sim} below the enumerated optimum {best}")
            if r["proven_optimal"] and sim != best:
                fail(f"trial {trial} {algo}: proven optimal {sim}, enumerated optimum {best}")
            if r["lower_bound_bytes"] > best:
                fail(f"trial {trial} {algo}: lower bound {r['lower_bound_bytes']} > {best}")
            if algo == "auto":
                proven += r["proven_optimal"]
                if sim != best:
                    fail(f"trial {trial}: auto found {sim}, the optimum is {best}")
    if proven == 0:
        fail("auto proved no small graph optimal")

    # Swap plans, checked by memgraph_sim.check_swaps (the plan's rules written separately):
    # within the budget, the bytes moved as reported; the ILP's never above the greedy's.
    planned = 0
    for trial in range(40):
        g = random_graph(rng, rng.randint(5, 12))
        o = deltamoe_sched.order(g, time_limit=2)["order"]
        to_host = trial % 2 == 0
        first = deltamoe_sched.swap_plan(g, o, 0.5, overlap_steps=trial % 3,
                                         outputs_to_host=to_host, method="greedy")
        least, top = max(1, first["min_budget_bytes"]), first["order_peak_bytes"]
        for budget in (0.5, least, (least + top) // 2, max(1, least - 1)):
            p = deltamoe_sched.swap_plan(g, o, budget, overlap_steps=trial % 3,
                                         outputs_to_host=to_host, method="greedy")
            if budget == least and not p["feasible"]:
                fail(f"swap trial {trial}: the least budget {least} has no plan")
            if not p["feasible"]:
                if p["min_budget_bytes"] <= p["budget_bytes"] or p["swaps"]:
                    fail(f"swap trial {trial}: infeasible but least budget "
                         f"{p['min_budget_bytes']} <= {p['budget_bytes']}")
                continue
            peak, out, back = memgraph_sim.check_swaps(g, o, p)
            if peak > p["budget_bytes"] or peak != p["peak_bytes"]:
                fail(f"swap trial {trial}: checked peak {peak}, reported {p['peak_bytes']}, "
                     f"budget {p['budget_bytes']}")
            if out + back != p["bytes_moved"]:
                fail(f"swap trial {trial}: checked bytes {out} + {back}, reported "
                     f"{p['bytes_moved']}")
            planned += bool(p["swaps"])
            if deltamoe_sched.ilp_available():
                q = deltamoe_sched.swap_plan(g, o, p["budget_bytes"], overlap_steps=trial % 3,
                                             outputs_to_host=to_host, method="ilp")
                if q["bytes_moved"] > p["bytes_moved"] or \
                        memgraph_sim.check_swaps(g, o, q)[0] > q["budget_bytes"]:
                    fail(f"swap trial {trial}: ILP plan {q['bytes_moved']} worse than the "
                         f"greedy's {p['bytes_moved']} or over the budget")
    if planned < 10:
        fail(f"only {planned} swap plans moved anything")

    # The same graph as dict, text, path (.json and .json.gz) and PathLike.
    g = random_graph(rng, 8)
    want = deltamoe_sched.order(g)
    with tempfile.TemporaryDirectory() as d:
        plain, packed = os.path.join(d, "g.json"), os.path.join(d, "g.json.gz")
        with open(plain, "w") as f:
            json.dump(g, f)
        with gzip.open(packed, "wt") as f:
            json.dump(g, f)
        for form in (json.dumps(g), plain, packed, pathlib.Path(packed)):
            got = deltamoe_sched.order(form)
            if (got["order"], got["peak_bytes"]) != (want["order"], want["peak_bytes"]):
                fail(f"graph given as {type(form).__name__} {form!s:.40}: another result")
        missing = os.path.join(d, "missing.json")
        cases = [
            (lambda: deltamoe_sched.order({"format": "memgraph-v2", "nodes": []}), "[memgraph]"),
            (lambda: deltamoe_sched.order(g, algo="fastest"), "[sched]"),
            (lambda: deltamoe_sched.order(g, time_limit=-1), "[sched]"),
            (lambda: deltamoe_sched.order(missing), "missing.json"),
            (lambda: deltamoe_sched.peak(g, list(reversed(want["order"]))), "[memgraph]"),
            (lambda: deltamoe_sched.peak(g, [12345]), "12345"),
            (lambda: deltamoe_sched.swap_plan(g, want["order"], 1.5), "[sched]"),
            (lambda: deltamoe_sched.swap_plan(g, want["order"], 0), "[sched]"),
            (lambda: deltamoe_sched.swap_plan(g, want["order"], 100, method="best"), "[sched]"),
            (lambda: deltamoe_sched.order('{"format": "memgraph-v1", "nodes": [{"id": 0, '
                                          '"op": "a", "inputs": [0], "size": 1}]}'),
             "[memgraph]"),
        ]
        for call, needle in cases:
            try:
                call()
            except ValueError as e:
                if needle not in str(e) or "\n" in str(e):
                    fail(f"error {e!r} should be one line naming {needle}")
            else:
                fail(f"no error for a case that names {needle}")
    try:
        deltamoe_sched.order(42)
        fail("a graph given as an int was accepted")
    except TypeError:
        pass
    print(f"sched_module: 40 random graphs x 7 algorithms match the simulator and the "
          f"enumerated optimum (auto proved {proven} optimal); {planned} swap plans pass "
          f"check_swaps; inputs and errors OK")


if __name__ == "__main__":
    main()
