#!/usr/bin/env python3
"""deltamoe's order inside torch.compile against Inductor's own (issue 17; dev-only, needs
torch, and torchvision for its models).

For each model of docs/experiments/peak-memory.md (python/export_graph.py's MODELS), with and
without activation checkpointing, one training step (forward, cross-entropy, backward into
.grad) runs three ways: eager; torch.compile with Inductor's peak-memory reordering as it
ships (its LPMF / BFS / DFS methods and the program order, the lowest estimate kept); and
torch.compile with deltamoe's scheduler added to those methods (deltamoe_sched.inductor).
Reported per run: Inductor's estimated peak of every method on every graph it compiled
(forward and backward), the peak measured by the PyTorch profiler's memory records (bytes
allocated minus freed, highest point over the step, CPU allocator), compile time (first
call), and the outputs: loss and gradients of the two compiled runs compared bit for bit and
against eager. Compile caches are off in both compiled runs.

    PYTHONPATH=build/python python3 bench/inductor_peak_study.py --models gpt_small,vit_tiny \\
        --out bench/results/inductor_peak.json

prints one JSON object (also written to --out); logs go to stderr.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import export_graph  # noqa: E402  (the models and their activation-checkpointing recipes)
import deltamoe_sched.inductor as dsi  # noqa: E402


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def build(name, ac):
    ctor, mk_input, kind = export_graph.MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    model.train()
    x = mk_input()
    y = torch.randint(0, 512 if kind == "lm" else 10,
                      (x.shape[0], x.shape[1]) if kind == "lm" else (x.shape[0],))
    if ac:
        if hasattr(model, "ac"):
            model.ac = True
        elif not export_graph.apply_ac(model, name):
            return None

    def step(inp, target):
        out = model(inp)
        if kind == "lm":
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        else:
            loss = F.cross_entropy(out, target)
        loss.backward()
        return loss
    return model, step, x, y


def measured_peak(fn):
    """Highest bytes allocated minus freed during fn(), from the profiler's memory records."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.name == "[memory]"),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak


def run(name, ac, mode, time_limit):
    built = build(name, ac)
    if built is None:
        return None
    model, step, x, y = built
    params = list(model.parameters())

    def call(fn):
        for p in params:
            p.grad = None
        loss = fn(x, y)
        return loss.detach().clone(), [p.grad.clone() for p in params]

    rec = {"model": name, "ac": ac, "mode": mode}
    if mode == "eager":
        fn = step
        t0 = time.perf_counter()
        call(fn)
        rec["first_call_s"] = time.perf_counter() - t0
    else:
        if mode == "deltamoe":
            dsi.enable(time_limit=time_limit)
        else:
            inductor_config.reorder_for_peak_memory = True
            inductor_config.force_disable_caches = True
        torch._dynamo.reset()
        fn = torch.compile(step)
        t0 = time.perf_counter()
        call(fn)
        rec["first_call_s"] = time.perf_counter() - t0
    loss, grads = call(fn)
    rec["measured_peak_bytes"] = measured_peak(lambda: call(fn))
    if mode == "deltamoe":
        rec["graphs"] = dsi.reports(clear=True)
        dsi.disable()
    return rec, loss, grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt_small,moe_small,vit_tiny")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per graph (ours)")
    ap.add_argument("--out", default="bench/results/inductor_peak.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines()
                       if l.startswith("Model name")), platform.processor())
    result = {"torch": torch.__version__, "cpu": model_name,
              "date_utc": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(sys.argv), "runs": [], "summary": []}
    for name in a.models.split(","):
        for ac in (False, True):
            outs = {}
            for mode in ("eager", "inductor", "deltamoe"):
                log(f"{name}{' ac' if ac else ''}: {mode}")
                r = run(name, ac, mode, a.time_limit)
                if r is None:
                    break
                rec, loss, grads = r
                outs[mode] = (loss, grads)
                result["runs"].append(rec)
            if len(outs) < 3:
                continue
            runs = {r["mode"]: r for r in result["runs"][-3:]}
            same = torch.equal(outs["inductor"][0], outs["deltamoe"][0]) and all(
                torch.equal(g, h) for g, h in zip(outs["inductor"][1], outs["deltamoe"][1]))
            vs_eager = max([(outs["deltamoe"][0] - outs["eager"][0]).abs().item()] +
                           [(g - h).abs().max().item()
                            for g, h in zip(outs["deltamoe"][1], outs["eager"][1])])
            est_ours = est_builtin = est_program = 0
            for g in runs["deltamoe"]["graphs"]:
                e = g["estimated_peak_bytes"]
                est_ours += e["deltamoe"]
                est_builtin += min(v for k, v in e.items() if k != "deltamoe")
                est_program += e["baseline"]
            s = {"model": name, "ac": ac,
                 "estimated_peak_bytes_program": est_program,
                 "estimated_peak_bytes_inductor_best": est_builtin,
                 "estimated_peak_bytes_deltamoe": est_ours,
                 "measured_peak_bytes_eager": runs["eager"]["measured_peak_bytes"],
                 "measured_peak_bytes_inductor": runs["inductor"]["measured_peak_bytes"],
                 "measured_peak_bytes_deltamoe": runs["deltamoe"]["measured_peak_bytes"],
                 "compile_s_inductor": runs["inductor"]["first_call_s"],
                 "compile_s_deltamoe": runs["deltamoe"]["first_call_s"],
                 "outputs_bitwise_equal_to_inductor": same,
                 "max_abs_diff_vs_eager": vs_eager}
            result["summary"].append(s)
            log(json.dumps(s))
    text = json.dumps(result, indent=1)
    if a.out:
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, a.out)
    print(text)


if __name__ == "__main__":
    main()
