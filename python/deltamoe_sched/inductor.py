"""deltamoe's scheduler inside torch.compile: a method of Inductor's peak-memory reordering.

PyTorch Inductor (``torch._inductor.config.reorder_for_peak_memory``) orders its scheduler
nodes by trying a few topological sorts (LPMF, BFS, DFS; ``torch/_inductor/memory.py``),
estimating each order's peak with its own memory model and keeping the lowest. ``enable()``
adds our scheduler to that list: it writes Inductor's nodes and buffers as a memgraph-v1
graph (a node's buffers summed into one, as the format writes multi-output operations; a
freeable graph input as an "input" node), orders it with ``deltamoe_sched.order`` and hands
the order back. Inductor then estimates it like the others, so the order it keeps is never
worse, by its own estimate, than its built-in ones.

    import torch, deltamoe_sched.inductor as dsi
    dsi.enable()                      # or: with dsi.enabled(): ...
    model = torch.compile(model)
    ...
    dsi.reports()                     # per graph: every method's estimated peak, the winner

Supported: PyTorch versions whose ``torch._inductor.memory.reorder_for_peak_memory`` takes a
``methods`` list (checked at enable(); developed on 2.15). torch is imported only here.
"""
import contextlib
import functools
import inspect
import json
import time

from . import order as _order

METHOD_NAME = "deltamoe"
_state = {"original": None, "config": None, "reports": []}


def _memory():
    try:
        import torch._inductor.config as config
        import torch._inductor.memory as memory
    except ImportError as e:
        raise RuntimeError(f"[inductor] deltamoe_sched.inductor needs PyTorch: {e}") from e
    params = inspect.signature(memory.reorder_for_peak_memory).parameters
    if "methods" not in params or not hasattr(config, "reorder_for_peak_memory"):
        import torch
        raise RuntimeError(
            f"[inductor] this PyTorch ({torch.__version__}) has no pluggable peak-memory "
            "reordering (torch._inductor.memory.reorder_for_peak_memory(..., methods))")
    return memory, config


def to_memgraph(nodes, graph_outputs, name="inductor"):
    """Inductor scheduler nodes (memory planning info assigned) as a memgraph-v1 dict.

    Ids: the freeable graph inputs first, then the nodes in their current order. Returns
    (graph, node of each id)."""
    memory, _ = _memory()
    ids, graph_nodes, owner = {}, [], []
    for n in nodes:  # freeable inputs, in first-use order
        for b in n.mpi_node.pred_buffers:
            if isinstance(b, memory.FreeableInputBuffer) and b.name not in ids:
                ids[b.name] = len(graph_nodes)
                graph_nodes.append({"id": len(graph_nodes), "name": b.name, "op": "input",
                                    "inputs": [], "size": int(b.mpi_buffer.size_free)})
                owner.append(None)
    producer = {}
    for n in nodes:
        for buf in n.get_outputs():
            producer[buf.get_name()] = n
    node_id = {}
    outputs = []
    for n in nodes:
        i = len(graph_nodes)
        node_id[n] = i
        inputs = []
        for b in n.mpi_node.pred_buffers:
            if isinstance(b, memory.FreeableInputBuffer):
                inputs.append(ids[b.name])
            elif b.get_name() in producer and producer[b.get_name()] in node_id:
                inputs.append(node_id[producer[b.get_name()]])
        # Ordering-only dependencies (no buffer read) are edges too: they constrain the order.
        inputs += [node_id[p] for p in n.mpi_node.pred_nodes if p in node_id]
        graph_nodes.append({"id": i, "name": n.get_name(), "op": "inductor",
                            "inputs": sorted(set(inputs)), "size": int(n.mpi_node.size)})
        owner.append(n)
        if any(buf.get_name() in graph_outputs for buf in n.get_outputs()):
            outputs.append(i)
    return {"format": "memgraph-v1", "name": name, "nodes": graph_nodes,
            "outputs": outputs}, owner


def _method(graph_outputs, algo, time_limit, use_ilp, report):
    def deltamoe(nodes):
        t0 = time.perf_counter()
        graph, owner = to_memgraph(nodes, graph_outputs)
        r = _order(graph, algo=algo, time_limit=time_limit, use_ilp=use_ilp)
        report.update({"nodes": len(nodes), "algorithm": r["algorithm"],
                       "memgraph_peak_bytes": r["peak_bytes"],
                       "memgraph_lower_bound_bytes": r["lower_bound_bytes"],
                       "proven_optimal": r["proven_optimal"],
                       "schedule_s": time.perf_counter() - t0})
        return [owner[i] for i in r["order"] if owner[i] is not None]
    deltamoe.__name__ = METHOD_NAME
    return deltamoe


def enable(algo="auto", time_limit=2.0, use_ilp=True):
    """Turns on Inductor's peak-memory reordering with deltamoe's scheduler among its methods
    (for graphs compiled from now on; Inductor's compile caches are off meanwhile). `algo`, `time_limit` (seconds per graph), `use_ilp`:
    as deltamoe_sched.order. Raises RuntimeError when PyTorch lacks the hook."""
    memory, config = _memory()
    disable()
    original = memory.reorder_for_peak_memory
    defaults = list(inspect.signature(original).parameters["methods"].default)

    @functools.wraps(original)
    def reorder(nodes, name_to_buf, name_to_fused_node, graph_inputs, graph_outputs,
                methods=None):
        report = {"estimated_peak_bytes": {}}
        ours = _method(graph_outputs, algo, time_limit, use_ilp, report)
        # Inductor announces every method's estimated peak in one signpost: keep it.
        signpost = memory.signpost_event

        def capture(category, name, parameters, *args, **kwargs):
            if name == "memory" and "orm" in parameters:
                report["estimated_peak_bytes"] = dict(parameters["orm"])
            return signpost(category, name, parameters, *args, **kwargs)

        memory.signpost_event = capture
        try:
            result = original(nodes, name_to_buf, name_to_fused_node, graph_inputs,
                              graph_outputs, methods=(methods or defaults) + [ours])
        finally:
            memory.signpost_event = signpost
        est = report["estimated_peak_bytes"]
        if est:
            report["chosen"] = min(est, key=est.get)
        _state["reports"].append(report)
        return result

    _state["original"] = original
    _state["config"] = (config.reorder_for_peak_memory, config.force_disable_caches)
    memory.reorder_for_peak_memory = reorder
    config.reorder_for_peak_memory = True
    # A cached compiled graph skips the scheduler, and the cache key cannot see this method:
    # graphs compiled without it would come back from the cache in their old order.
    config.force_disable_caches = True


def disable():
    """Restores Inductor's own reordering (and its previous reordering and cache settings)."""
    if _state["original"] is None:
        return
    memory, config = _memory()
    memory.reorder_for_peak_memory = _state["original"]
    config.reorder_for_peak_memory, config.force_disable_caches = _state["config"]
    _state["original"] = None


@contextlib.contextmanager
def enabled(**kwargs):
    """enable(**kwargs) for the duration of a with-block."""
    enable(**kwargs)
    try:
        yield
    finally:
        disable()


def reports(clear=False):
    """One dict per graph reordered since enable(): nodes, our algorithm and memgraph peak,
    every method's peak as Inductor estimates it ("estimated_peak_bytes": baseline, lpmf,
    bfs, dfs, deltamoe) and the one it kept ("chosen")."""
    out = list(_state["reports"])
    if clear:
        _state["reports"].clear()
    return out


def dumps():
    """reports() as JSON text."""
    return json.dumps(reports(), indent=1)
