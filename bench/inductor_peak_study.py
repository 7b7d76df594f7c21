#!/usr/bin/env python3
"""deltamoe's order inside torch.compile against Inductor's own (issue 17; dev-only, needs
torch, and torchvision for its models).

For each model of docs/experiments/peak-memory.md (python/export_graph.py's MODELS), with and
without activation checkpointing, one training step (forward, cross-entropy, backward into
.grad) runs three ways: eager; torch.compile with Inductor's peak-memory reordering as it
ships (its LPMF / BFS / DFS methods and the program order, the lowest estimate kept); and
torch.compile with deltamoe's scheduler added to those methods (deltamoe_sched.inductor).
Reported per run: Inductor's estimated peak of every method on every graph it compiled
(forward and backward), the peak measured as the rise of the process's resident-memory
high-water mark over one step alone (measured_peak: the previous step's gradients freed
before, nothing copied inside; tensors of 64 KiB and up are their own mappings, so resident
memory follows the live tensors; median of --repeats steps), the parameters' bytes
(gradient_bytes, part of every reading), compile time (first call), the SHA-256 of each
compiled graph's wrapper code (code_sha256: equal in both compiled runs = the same code), and the outputs, from
another step: loss and gradients of the two compiled runs compared bit for bit and against
eager. Compile caches are off in both compiled runs.

    PYTHONPATH=build/python python3 bench/inductor_peak_study.py --models gpt_small,vit_tiny \\
        --out bench/results/inductor_peak.json

prints one JSON object (also written to --out); logs go to stderr.
"""
import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

import peer_common  # noqa: E402  (bench/, beside this script)

# The built package first (PYTHONPATH=build/python): python/ holds its sources without the
# compiled _core, and export_graph puts python/ at the front of sys.path.
import deltamoe_sched.inductor as dsi  # noqa: E402

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import export_graph  # noqa: E402  (the models and their activation-checkpointing recipes)

# Study-only models beside export_graph's (whose graphs are the 34 of bench/graphs): more
# windowed-attention vision transformers, the kind where Inductor's own orders left room.
EXTRA_MODELS = {
    "swin_v2_t": (lambda: export_graph.tv_model("swin_v2_t", num_classes=10),
                  lambda: torch.randn(1, 3, 112, 112), "cls"),
    "swin_s": (lambda: export_graph.tv_model("swin_s", num_classes=10),
               lambda: torch.randn(1, 3, 112, 112), "cls"),
}
for _name, _spec in EXTRA_MODELS.items():
    export_graph.MODELS.setdefault(_name, _spec)
    export_graph.AC_UNITS.setdefault(_name, ["features.*"])


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def build(name, ac, batch_scale):
    ctor, mk_input, kind = export_graph.MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    model.train()
    x = mk_input()
    # Larger batches than the exported graphs': activations well above allocator noise.
    x = torch.cat([x] * batch_scale)
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


_libc = ctypes.CDLL("libc.so.6")


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def measured_peak(fn):
    """Bytes the process's resident memory rose to during fn() above where it started: the
    kernel's high-water mark (VmHWM), reset just before (/proc/self/clear_refs, 5). With
    glibc's mmap threshold fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_, set by main() for the
    child) every tensor of 64 KiB or more is its own mapping, returned when freed, so resident
    memory follows the live tensors; Python's cycle collector is off meanwhile."""
    gc.collect()
    gc.disable()
    try:
        _libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - start) * 1024
    finally:
        gc.enable()


def record_code(hashes):
    """Appends the SHA-256 of each graph's generated wrapper code to `hashes` from now on: two
    compiles with equal hashes run the same code (and so the same allocations)."""
    import hashlib

    from torch._inductor.graph import GraphLowering
    original = GraphLowering.codegen

    def codegen(self):
        result = original(self)
        code = getattr(result[0], "value", result[0])
        hashes.append(hashlib.sha256(str(code).encode()).hexdigest())
        return result
    GraphLowering.codegen = codegen


def clear_grads(params):
    for p in params:
        p.grad = None


def step_as(step, mode, time_limit=2.0):
    """The training step as `mode` runs it: "eager" as is; "inductor": torch.compile with
    Inductor's peak-memory reordering as shipped; "deltamoe": with our method added (to
    dsi.disable()). Compile caches are off in both compiled modes."""
    if mode == "eager":
        return step
    if mode == "deltamoe":
        dsi.enable(time_limit=time_limit)
    else:
        inductor_config.reorder_for_peak_memory = True
        inductor_config.force_disable_caches = True
    torch._dynamo.reset()
    return torch.compile(step)


def run(name, ac, mode, time_limit, repeats, batch_scale):
    built = build(name, ac, batch_scale)
    if built is None:
        return None
    model, step, x, y = built
    params = list(model.parameters())

    def call(fn):
        clear_grads(params)
        loss = fn(x, y)
        return loss.detach().clone(), [p.grad.clone() for p in params]

    def measured_step():
        # Only the step: the previous step's gradients are freed before the reading starts
        # and nothing is copied inside it (copies of the gradients, taken inside, would put
        # a floor of one gradient set under every run and hide the step's own peak).
        clear_grads(params)
        return measured_peak(lambda: fn(x, y))

    rec = {"model": name, "ac": ac, "mode": mode}
    if mode != "eager":
        rec["code_sha256"] = []
        record_code(rec["code_sha256"])  # Inductor generates code at the first call
    fn = step_as(step, mode, time_limit)
    t0 = time.perf_counter()
    call(fn)
    rec["first_call_s"] = time.perf_counter() - t0
    loss, grads = call(fn)
    peaks = sorted(measured_step() for _ in range(repeats))
    rec["gradient_bytes"] = sum(p.numel() * p.element_size() for p in params)
    rec["measured_peak_bytes_runs"] = peaks
    rec["measured_peak_bytes"] = peaks[len(peaks) // 2]  # the median
    if mode == "deltamoe":
        rec["graphs"] = dsi.reports(clear=True)
        dsi.disable()
    return rec, loss, grads


def summarise(name, ac, last_runs, outs):
    runs = {r["mode"]: r for r in last_runs}
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
    return {"model": name, "ac": ac,
            "estimated_peak_bytes_program": est_program,
            "estimated_peak_bytes_inductor_best": est_builtin,
            "estimated_peak_bytes_deltamoe": est_ours,
            "gradient_bytes": runs["eager"]["gradient_bytes"],
            "measured_peak_bytes_eager": runs["eager"]["measured_peak_bytes"],
            "measured_peak_bytes_inductor": runs["inductor"]["measured_peak_bytes"],
            "measured_peak_bytes_deltamoe": runs["deltamoe"]["measured_peak_bytes"],
            "compile_s_inductor": runs["inductor"]["first_call_s"],
            "compile_s_deltamoe": runs["deltamoe"]["first_call_s"],
            "outputs_bitwise_equal_to_inductor": same,
            "compiled_code_identical_to_inductor":
                runs["inductor"].get("code_sha256") == runs["deltamoe"].get("code_sha256"),
            "max_abs_diff_vs_eager": vs_eager}


def main():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        # glibc reads it at start-up: run again with it set (see measured_peak).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="gpt_small,moe_small,vit_tiny",
                    help="comma-separated: python/export_graph.py's models, or swin_v2_t, swin_s")
    ap.add_argument("--time-limit", type=float, default=2.0, help="seconds per graph (ours)")
    ap.add_argument("--repeats", type=int, default=5, help="measured steps per run (median)")
    ap.add_argument("--batch-scale", type=int, default=8,
                    help="the exported graphs' input batch times this")
    ap.add_argument("--ac", choices=("both", "on", "off"), default="both",
                    help="runs with activation checkpointing, without, or both")
    ap.add_argument("--out", default="bench/results/inductor_peak.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # MODEL:AC:MODE, a child run
    a = ap.parse_args()
    unknown = [m for m in a.models.split(",") if m not in export_graph.MODELS]
    if unknown:
        peer_common.die(f"[inductor-peak-study] unknown model(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(export_graph.MODELS))})")
    torch.set_num_threads(2)
    if a.one:
        name, ac, mode = a.one.split(":")
        r = run(name, ac == "1", mode, a.time_limit, a.repeats, a.batch_scale)
        if r is not None:
            rec, loss, grads = r
            torch.save((loss, grads), a.out + ".pt")
            with open(a.out + ".json", "w") as f:
                json.dump(rec, f)
        return
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((l.split(":", 1)[1].strip() for l in cpu.splitlines()
                       if l.startswith("Model name")), platform.processor())
    result = {"torch": torch.__version__, "cpu": model_name, "batch_scale": a.batch_scale,
              "date_utc": datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M"),
              "command": " ".join(sys.argv), "runs": [], "summary": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            for ac in {"both": (False, True), "on": (True,), "off": (False,)}[a.ac]:
                outs = {}
                for mode in ("eager", "inductor", "deltamoe"):
                    log(f"{name}{' ac' if ac else ''}: {mode}")
                    # A fresh process per run: memory the heap kept from an earlier run would
                    # hide part of a later run's peak.
                    out = os.path.join(tmp, f"{name}-{ac}-{mode}")
                    cmd = [sys.executable, sys.argv[0], "--one", f"{name}:{int(ac)}:{mode}",
                           "--time-limit", str(a.time_limit), "--repeats", str(a.repeats),
                           "--batch-scale", str(a.batch_scale), "--out", out]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    if not os.path.exists(out + ".json"):
                        break  # no activation-checkpointing recipe for this model
                    with open(out + ".json") as f:
                        result["runs"].append(json.load(f))
                    outs[mode] = torch.load(out + ".pt")
                if len(outs) < 3:
                    continue
                result["summary"].append(summarise(name, ac, result["runs"][-3:], outs))
                log(json.dumps(result["summary"][-1]))
    text = json.dumps(result, indent=1)
    if a.out:
        peer_common.write_json_atomic(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
