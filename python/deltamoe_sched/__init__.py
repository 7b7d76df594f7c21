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

__all__ = ["order", "peak", "ilp_available", "SchedError"]

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


def ilp_available():
    """Whether the exact ILP (COIN-OR CBC) was built in."""
    return _core.ilp_available()
