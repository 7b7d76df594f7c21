#!/usr/bin/env python3
"""Hugging Face transformers beside deltamoe on the same model directory: pp and tg tokens/s
in llama-bench's sense, torch on 2 threads, f32 and bf16, alternating runs (A B A B).

  pp<P>  one forward over P random prompt tokens into an empty KV cache: P / time
  tg<N>  N greedy single-token decode steps with the KV cache (DynamicCache) after a 1-token
         prompt, as llama-bench's tg starts from an (almost) empty context: N / time

Each transformers measurement runs in a fresh process (load, warm-up: one full pp and a few
decode steps, then --reps timed repetitions of each, median), so the model is only in memory
while it is measured and never beside deltamoe's copy. deltamoe runs as
`deltamoe bench model --model DIR -p P -n N --threads T --dtype D --json` right after, per dtype
per round; it is reported as missing (with why) when the binary lacks that command.
Benchmark baseline only (needs torch + transformers, e.g. /work/venv-hf/bin/python).

usage: peer_hf.py [--model DIR] [--dtypes f32,bf16] [-p 512] [-n 128] [--threads 2]
                  [--rounds 3] [--reps 3] [--deltamoe build/deltamoe] [--json]
Prints one JSON object on stdout with --json; logs go to stderr.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import (add_run_options, deltamoe_column, model_weight_files, refresh_page_cache, report_header, tokens_per_s_summary, DEFAULT_MODEL, deltamoe_status, die, emit, hf_config, log,  # noqa: E402
                         measured, median, run_deltamoe)


def child(args):
    """One measurement in this process: {"pp_tokens_per_s", "tg_tokens_per_s", ...}."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    kw = {"experts_implementation": args.experts_impl} if args.experts_impl else {}
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, **kw)
    model.eval()
    load_s = time.perf_counter() - t0
    vocab = model.config.vocab_size
    prompt = torch.randint(3, vocab, (1, args.n_prompt))

    def pp_once():
        t = time.perf_counter()
        model(input_ids=prompt, use_cache=True)
        return time.perf_counter() - t

    def tg_once(steps):
        cache = transformers.DynamicCache(config=model.config)
        out = model(input_ids=prompt[:, :1], past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - t

    with torch.inference_mode():
        warm = pp_once() + tg_once(4)
        pp_t = [pp_once() for _ in range(args.reps)]
        tg_t = [tg_once(args.n_gen) for _ in range(args.reps)]
    return {"pp_tokens_per_s": args.n_prompt / median(pp_t), "tg_tokens_per_s": args.n_gen / median(tg_t),
            "pp_samples_tokens_per_s": [round(args.n_prompt / t, 3) for t in pp_t],
            "tg_samples_tokens_per_s": [round(args.n_gen / t, 3) for t in tg_t],
            "load_s": round(load_s, 2), "warmup_s": round(warm, 2),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
            "attn_implementation": getattr(model.config, "_attn_implementation", None),
            "experts_implementation": getattr(model.config, "_experts_implementation", None)}


def run_child(args, dtype):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model, "--dtype", dtype,
           "-p", str(args.n_prompt), "-n", str(args.n_gen), "--threads", str(args.threads), "--reps", str(args.reps),
           "--seed", str(args.seed)] + (["--experts-impl", args.experts_impl] if args.experts_impl else [])
    log("run: " + " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode != 0:
        raise RuntimeError(f"transformers run ({dtype}) failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    out = json.loads(r.stdout)
    out["wall_s"] = round(time.time() - t0, 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"Hugging Face model dir (default: {DEFAULT_MODEL})")
    ap.add_argument("--dtypes", default="f32,bf16", help="comma list of f32, bf16 (default: f32,bf16)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default: 512)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default: 128)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: 2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds, one process each (default: 3)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions inside one process (default: 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens (default: 0)")
    ap.add_argument("--experts-impl", default=None,
                    help="transformers experts_implementation: eager, batched_mm, grouped_mm (default: transformers' own)")
    add_run_options(ap)
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="f32", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not os.path.isdir(args.model):
        die(f"--model {args.model}: no such directory (make one with bench/peer_make_model.py)")
    if args.child:
        try:
            print(json.dumps(child(args)))
        except ImportError as e:
            die(f"needs torch and transformers ({e})")
        return
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        die(f"needs {' and '.join(missing)}; try /work/venv-hf/bin/python")

    cfg = hf_config(args.model)
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in ("f32", "bf16"):
            die(f"--dtypes: {d} is not f32 or bf16")
    dm_ok, dm_why = deltamoe_status(args.deltamoe)
    if not dm_ok:
        log(f"deltamoe side skipped: {dm_why}")
    page_cache = refresh_page_cache(model_weight_files(args.model), args.fresh_page_cache) \
        if args.fresh_page_cache else None
    pp, tg = f"pp{args.n_prompt}", f"tg{args.n_gen}"
    runs = {d: {"transformers": [], "deltamoe": []} for d in dtypes}
    load, errors = [], []
    for rnd in range(args.rounds):
        for d in dtypes:
            q = dict(max_busy=args.max_busy, wait_s=args.wait_quiet, retries=args.retries)
            try:
                r, rec = measured(f"transformers {d} round {rnd}", lambda: run_child(args, d), **q)
                runs[d]["transformers"].append(r)
                load += rec
                log(f"round {rnd + 1}/{args.rounds} {d}: transformers {pp} {r['pp_tokens_per_s']:.1f} "
                    f"{tg} {r['tg_tokens_per_s']:.2f} t/s")
            except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                errors.append(str(e))
                log(str(e))
            if dm_ok:
                try:
                    res, rec = measured(f"deltamoe {d} round {rnd}", lambda: run_deltamoe(
                        args.deltamoe, args.model, d, args.n_prompt, args.n_gen, args.threads, timeout=args.timeout,
                        extra=args.deltamoe_args.split()), **q)
                    runs[d]["deltamoe"].append(res)
                    load += rec
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                    errors.append(str(e))
                    log(str(e))

    results = {}
    for d in dtypes:
        hf = tokens_per_s_summary(runs[d]["transformers"], pp, tg)
        entry = {"transformers": hf}
        if runs[d]["transformers"]:
            first = runs[d]["transformers"][0]
            entry["transformers_info"] = {k: first[k] for k in ("torch", "transformers", "torch_threads",
                                                                "attn_implementation", "experts_implementation", "load_s")}
            entry["transformers_samples"] = [{k: r[k] for k in ("pp_samples_tokens_per_s", "tg_samples_tokens_per_s")}
                                             for r in runs[d]["transformers"]]
        if dm_ok:
            entry["deltamoe"], entry["ratio_ours_over_transformers"] = deltamoe_column(runs[d]["deltamoe"], hf, pp, tg)
        else:
            entry["deltamoe"] = {"missing": dm_why}
        results[d] = entry
    report = report_header("peer_hf", args, cfg, load, results, errors, dm_ok)
    report["settings"] = {"n_prompt": args.n_prompt, "n_gen": args.n_gen, "threads": args.threads,
                          "rounds": args.rounds, "reps_per_process": args.reps,
                          "tg_context": "1-token prompt, then n_gen cached decode steps",
                          "order": "alternating transformers, deltamoe per dtype per round",
                          "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")
                                  if k in os.environ}}
    report["page_cache_refreshed"] = page_cache
    emit(report, args.json)


if __name__ == "__main__":
    main()
