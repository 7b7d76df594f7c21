"""deltamoe's memory scheduler from Python.

Orders computation graphs (memgraph-v1, ../../docs/graph_format.md) for least peak memory
with the engine's C++ scheduler: series-parallel optimum, exact search / ILP, proven lower
bounds. Built by the project's CMake into ``build/python``; importable from there::

    PYTHONPATH=build/python python3 -c "import deltamoe_sched"

    import deltamoe_sched
    r = deltamoe_sched.order({"format": "memgraph-v1", "nodes": [...]})
    r["order"], r["peak_bytes"], r["lower_bound_bytes"], r["proven_optimal"]

``deltamoe_sched.inductor`` puts the same scheduler into torch.compile (PyTorch Inductor's
peak-memory reordering); it imports torch only when used.
"""
import json
import os

from . import _core

__all__ = ["order", "peak", "swap_plan", "ilp_available", "SchedError"]

SchedError = _core.SchedError  # a ValueError: "[memgraph] ..." / "[sched] ..."
ALGORITHMS = ("auto", "sp", "ilp", "exact", "lpmf", "bfs", "dfs", "xla", "program")


def _source(graph):
    """(text or path, is_path) for a memgraph given as dict, JSON text or file path."""
    if isinstance(graph, dict):
        return json.dumps(graph), False
    if isinstance(graph, os.PathLike):
        return os.fspath(graph), True
    if isinstance(graph, str):
        return (graph, False) if graph.lstrip().startswith("{") else (graph, True)
    raise TypeError(f"deltamoe_sched: a graph is a memgraph-v1 dict, JSON text or a path, "
                    f"not {type(graph).__name__}")


def order(graph, algo="auto", time_limit=10.0, use_ilp=True):
    """Orders `graph` for least peak memory.

    graph: a memgraph-v1 dict, its JSON text, or a path to a .json / .json.gz file.
    algo: one of ALGORITHMS (as `deltamoe schedule --algo`); auto runs every baseline and
    then the best method that applies, never worse than the best baseline.
    time_limit: seconds for the whole call (search stops early enough to end within it).
    Returns the report of `deltamoe schedule --json` as a dict, plus "order" (node ids).
    Raises SchedError (a ValueError) on a malformed graph or a bad argument. Releases the GIL
    while it runs.
    """
    if algo not in ALGORITHMS:
        raise SchedError(f"[sched] unknown algorithm {algo!r} (expected one of "
                         f"{', '.join(ALGORITHMS)})")
    src, is_path = _source(graph)
    return json.loads(_core.schedule(src, is_path, algo, float(time_limit), bool(use_ilp)))


def peak(graph, order_ids):
    """Peak bytes of an order (node ids) under the memgraph-v1 memory model.

    Raises SchedError when the order is not a topological order of every node once."""
    src, is_path = _source(graph)
    return _core.peak(src, is_path, [int(i) for i in order_ids])


def swap_plan(graph, order_ids, budget, overlap_steps=1, outputs_to_host=False, method="auto",
              time_limit=10.0, bandwidth_gb_s=25.0):
    """Which buffers to move to host memory and back so that `order_ids` fits `budget`.

    budget: bytes (int), or a float in (0, 1] taken as that share of the order's peak.
    The model and the options are those of `deltamoe schedule --swap-budget` (docs/sched.md,
    "Swap plans"); method is "auto" (greedy, then the exact ILP when CBC is built), "greedy"
    or "ilp". Returns the CLI's "swap" report as a dict: feasible, min_budget_bytes,
    bytes_moved, peak_bytes, the greedy's and the ILP's results, and "swaps" (buffer ids,
    evict_after / fetch_before node ids, the order positions off the device).
    """
    src, is_path = _source(graph)
    ids = [int(i) for i in order_ids]
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise SchedError(f"[sched] swap budget share {budget} is not in (0, 1]")
        budget_bytes, share = 0, budget
    else:
        if int(budget) <= 0:
            raise SchedError(f"[sched] swap budget {budget} is not a positive number of bytes")
        budget_bytes, share = int(budget), 0.0
    return json.loads(_core.swap_plan(src, is_path, ids, budget_bytes, share, int(overlap_steps),
                                      bool(outputs_to_host), str(method), float(time_limit),
                                      float(bandwidth_gb_s)))


def ilp_available():
    """Whether the exact ILP (COIN-OR CBC) was built in."""
    return _core.ilp_available()
