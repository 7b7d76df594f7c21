#!/usr/bin/env python3
"""PyTorch baseline for `deltamoe bench moe-layer`.

Times the Hugging Face style Mixtral sparse MoE block (the same code as the golden-tensor
generator, imported from make_golden_moe.py) on the shapes of `deltamoe bench moe-layer`:
H=1024, I=512, E=32, top-8 with renormalisation, tokens 1, 16, 128, 512; f32, and bf16
(module and activations in bfloat16, as with transformers' torch_dtype=torch.bfloat16; the
router softmax stays in float as in the HF code). Each measurement: warm-up, then the median
of repeated forward passes (at least --repeats runs and --min-seconds of work). For one token
the inputs rotate through a pool of 64, so different experts are read each time (the same 8
experts every time would sit in cache), as the C++ benchmark does.

Prints one JSON object on stdout (logs on stderr):
  {"results": [{"tokens", "dtype", "time_ms", "gflops", "routed", "repeats"}, ...],
   "torch_version", "threads", "hidden", "inter", "experts", "top_k", "expert"}
GFLOPs counted like the C++ benchmark: routed pairs x GEMMs per expert x 2*H*I + router
2*T*H*E (3 GEMMs for SwiGLU, 2 for GELU), whatever PyTorch actually executes.

Usage: python3 python/bench_moe_torch.py > torch.json
       deltamoe bench moe-layer --torch-json torch.json
"""
import os

# Must be set before torch (and its OpenMP runtime) is imported. With the default ACTIVE
# policy, OpenMP worker threads spin for a while after each parallel region, waiting for the
# next one; between regions BLAS (oneDNN/OpenBLAS threads) and the Python thread then compete
# with spinning threads for the same 2 cores, which slows every small GEMM of the MoE loop.
# PASSIVE makes idle workers sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden_moe import MixtralSparseMoeBlock  # noqa: E402


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def time_forward(block, xs, repeats, min_seconds, warmup):
    """Median seconds per forward pass over at least `repeats` runs and `min_seconds`."""
    n = len(xs)
    for i in range(warmup):
        block(xs[i % n])
    times, start, i = [], time.perf_counter(), 0
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        x = xs[i % n]
        t0 = time.perf_counter()
        block(x)
        times.append(time.perf_counter() - t0)
        i += 1
    return statistics.median(times), len(times)


def main():
    ap = argparse.ArgumentParser(description="PyTorch HF Mixtral MoE block timings (JSON on stdout)")
    ap.add_argument("--tokens", default="1,16,128,512", help="comma-separated token counts")
    ap.add_argument("--dtypes", default="f32,bf16", help="comma-separated: f32, bf16")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--inter", type=int, default=512)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--expert", choices=["swiglu", "gelu"], default="swiglu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="at least this many timed runs")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="and at least this much time")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    h, i, e, k = args.hidden, args.inter, args.experts, args.top_k
    gemms = 3 if args.expert == "swiglu" else 2
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    log(f"bench_moe_torch: H={h} I={i} E={e} K={k} {args.expert} experts, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")

    block = MixtralSparseMoeBlock(h, i, e, k, renormalize=True, kind=args.expert).eval()
    results = []
    with torch.inference_mode():
        for name in args.dtypes.split(","):
            if name not in dtypes:
                sys.exit(f"bench_moe_torch: unknown dtype {name!r} (f32 or bf16)")
            block = block.to(dtypes[name])
            for t in (int(s) for s in args.tokens.split(",")):
                pool = 64 if t == 1 else 4
                xs = [torch.randn(t, h).to(dtypes[name]) for _ in range(pool)]
                sec, runs = time_forward(block, xs, args.repeats, args.min_seconds, warmup=min(pool, 8))
                routed = t * k
                flops = routed * gemms * 2.0 * h * i + 2.0 * t * h * e
                r = {"tokens": t, "dtype": name, "time_ms": sec * 1e3, "gflops": flops / sec / 1e9,
                     "routed": routed, "repeats": runs}
                log(f"  {name} tokens={t}: {r['time_ms']:.3f} ms, {r['gflops']:.1f} GFLOP/s ({runs} runs)")
                results.append(r)

    print(json.dumps({"results": results, "torch_version": torch.__version__,
                      "threads": torch.get_num_threads(), "hidden": h, "inter": i, "experts": e,
                      "top_k": k, "expert": args.expert}))


if __name__ == "__main__":
    main()
