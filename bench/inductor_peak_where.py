#!/usr/bin/env python3
"""Where a training step's memory peaks, eager or compiled (issue 17; dev-only, needs torch,
and torchvision for its models).

Runs one training step of a model of python/export_graph.py the way bench/inductor_peak_study.py
does (same batch, activation checkpointing recipe, gradients freed before the step), under the
PyTorch profiler with profile_memory=True, and replays the profiler's allocation events:
the live bytes they add up to, where the largest value falls (the step's peak above its start,
in PyTorch's own allocations: memory that oneDNN or other native code allocates itself is not
in them, so this can read a few MB below the study's resident-memory reading), which compiled
graph and which operator were running then, and the allocations and frees inside that
operator. It tells a peak that an order can move (live tensors between operators) from one that none can
(scratch memory inside one operator, which neither Inductor's memory model nor ours sees).

    PYTHONPATH=build/python python3 bench/inductor_peak_where.py --model resnet18 --ac \\
        --mode inductor --json

prints one JSON object with --json (else a short report); logs go to stderr.
"""
import argparse
import json
import os
import sys
import tempfile

import torch

import inductor_peak_study as study  # noqa: E402  (bench/, beside this script)
import peer_common  # noqa: E402


def replay(trace):
    """Memory events of a chrome trace in time order, with the live bytes after each."""
    events = [t for t in trace["traceEvents"] if t.get("name") == "[memory]"]
    events.sort(key=lambda t: t["ts"])
    live, out = 0, []
    for t in events:
        live += t["args"]["Bytes"]
        out.append((t["ts"], t["args"]["Bytes"], live))
    return out


def live_before(mem, ts):
    """Live bytes just before time ts (0 before the first event)."""
    before = [m[2] for m in mem if m[0] < ts]
    return before[-1] if before else 0


def innermost(ops, ts, tid=None):
    inside = [o for o in ops if o["ts"] <= ts <= o["ts"] + o["dur"] and (tid is None or o["tid"] == tid)]
    return min(inside, key=lambda o: o["dur"]) if inside else None


def where(trace):
    mem = replay(trace)
    if not mem:
        peer_common.die("[inductor-peak-where] the profiler recorded no memory events")
    ops = [t for t in trace["traceEvents"] if t.get("ph") == "X" and "dur" in t]
    i_peak = max(range(len(mem)), key=lambda i: mem[i][2])
    ts_peak, _, peak = mem[i_peak]
    # The outermost aten operator at the peak inside the graph (or the step): the one whose
    # scratch or outputs make the peak.
    atens = [o for o in ops if o["name"].startswith("aten::") and o["ts"] <= ts_peak <= o["ts"] + o["dur"]]
    op = max(atens, key=lambda o: o["dur"]) if atens else None
    # Compiled graphs are named by their cache key, None with caches off: say which call of
    # the step it was, and whether autograd ran it as a forward or a backward.
    calls = sorted((o for o in ops if o["name"].startswith("## Call CompiledFxGraph")),
                   key=lambda o: o["ts"])
    graph = next((o for o in calls if o["ts"] <= ts_peak <= o["ts"] + o["dur"]), None)
    label = None
    if graph:
        backward = any(o["name"] == "CompiledFunctionBackward" and
                       o["ts"] <= ts_peak <= o["ts"] + o["dur"] for o in ops)
        label = (f"{'backward' if backward else 'forward'} "
                 f"(compiled graph call {calls.index(graph) + 1} of {len(calls)})")
    rec = {"peak_bytes": peak, "end_bytes": mem[-1][2], "graph": label,
           "operator": op["name"] if op else None}
    if op:
        start = live_before(mem, op["ts"])
        rec["live_bytes_before_operator"] = start
        rec["operator_rise_bytes"] = peak - start
        rec["operator_events"] = [
            {"bytes": b, "live_bytes": lv,
             "by": (innermost(ops, ts, op["tid"]) or {}).get("name")}
            for ts, b, lv in mem if op["ts"] <= ts <= op["ts"] + op["dur"]][:64]
    if graph:
        rec["live_bytes_before_graph"] = live_before(mem, graph["ts"])
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model of python/export_graph.py")
    ap.add_argument("--ac", action="store_true", help="with activation checkpointing")
    ap.add_argument("--mode", choices=("eager", "inductor", "deltamoe"), default="inductor",
                    help="eager, torch.compile as shipped, or with deltamoe's order added")
    ap.add_argument("--batch-scale", type=int, default=4,
                    help="the exported graph's input batch times this (as the study)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    if a.model not in study.export_graph.MODELS:
        peer_common.die(f"[inductor-peak-where] unknown model {a.model!r} "
                        f"(known: {', '.join(sorted(study.export_graph.MODELS))})")
    torch.set_num_threads(2)
    built = study.build(a.model, a.ac, a.batch_scale)
    if built is None:
        peer_common.die(f"[inductor-peak-where] no activation-checkpointing recipe for {a.model}")
    model, step, x, y = built
    params = list(model.parameters())
    fn = study.step_as(step, a.mode)
    for _ in range(2):  # compile, then one step as measured
        study.clear_grads(params)
        fn(x, y)
    study.clear_grads(params)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    rec = {"model": a.model, "ac": a.ac, "mode": a.mode, "batch_scale": a.batch_scale,
           "torch": torch.__version__, **where(trace)}
    if a.json:
        print(json.dumps(rec))
        return
    mb = 1e6
    print(f"{a.model}{' (AC)' if a.ac else ''} {a.mode}: peak {rec['peak_bytes'] / mb:.2f} MB "
          f"above the step's start, "
          f"{'in ' + rec['operator'] if rec['operator'] else 'between aten operators'}, "
          f"{rec['graph'] or 'outside compiled graphs'}")
    if rec.get("operator"):
        print(f"  live before that operator {rec['live_bytes_before_operator'] / mb:.2f} MB, "
              f"its rise {rec['operator_rise_bytes'] / mb:.2f} MB:")
        for e in rec["operator_events"]:
            print(f"    {e['bytes'] / mb:+8.2f} MB -> {e['live_bytes'] / mb:7.2f}  {e['by']}")


if __name__ == "__main__":
    sys.exit(main())
