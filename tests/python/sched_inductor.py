#!/usr/bin/env python3
"""deltamoe_sched.inductor inside torch.compile (needs PyTorch; CPU).

A training step (forward + backward of a small MLP) compiled by Inductor with our scheduler
among its peak-memory methods: the loss and gradients equal eager mode's (1e-5), our method
ran on every graph Inductor reordered and Inductor estimated its order, the order kept is at
most every built-in method's estimate, and disable() restores Inductor's own function.
Exit 0 on success, 77 without torch, 1 with a message otherwise.
"""
import sys

try:
    import torch
    import torch._inductor.memory as memory
except ImportError:
    print("SKIP: no PyTorch")
    sys.exit(77)
import deltamoe_sched.inductor as dsi


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 256),
                            torch.nn.GELU(), torch.nn.Linear(256, 10))
    x = torch.randn(32, 64)

    def step(inp):
        loss = m(inp).square().mean()
        loss.backward()
        return loss

    want = step(x).detach()
    want_grads = [p.grad.clone() for p in m.parameters()]
    for p in m.parameters():
        p.grad = None
    own = memory.reorder_for_peak_memory
    with dsi.enabled():
        if memory.reorder_for_peak_memory is own:
            fail("enable() did not install the method")
        got = torch.compile(step)(x).detach()
    if memory.reorder_for_peak_memory is not own:
        fail("disable() did not restore Inductor's reorder_for_peak_memory")
    if (got - want).abs().max().item() > 1e-5:
        fail(f"compiled loss {got.item()} vs eager {want.item()}")
    for p, w in zip(m.parameters(), want_grads):
        if (p.grad - w).abs().max().item() > 1e-5:
            fail("compiled gradients differ from eager")
    reports = dsi.reports(clear=True)
    if not reports:
        fail("Inductor reordered no graph with our method")
    for r in reports:
        est = r["estimated_peak_bytes"]
        if dsi.METHOD_NAME not in est or "nodes" not in r:
            fail(f"our method missing from Inductor's estimates: {r}")
        builtin = min(v for k, v in est.items() if k != dsi.METHOD_NAME)
        if est[r["chosen"]] > builtin:
            fail(f"kept {r['chosen']} at {est[r['chosen']]} bytes, a built-in had {builtin}")
        print(f"graph of {r['nodes']} nodes: ours {est[dsi.METHOD_NAME]} B "
              f"({r['algorithm']}), best built-in {builtin} B, kept {r['chosen']}")
    print(f"sched_inductor: torch {torch.__version__}, {len(reports)} graphs, outputs equal eager")


if __name__ == "__main__":
    main()
