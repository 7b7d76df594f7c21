#!/usr/bin/env python3
"""llama.cpp beside deltamoe on the same random Mixtral model: pp512 / tg128 in llama-bench's
sense, alternating runs (A B A B), 2 threads. Benchmark baseline only: nothing of llama.cpp is
part of deltamoe, and its source and build live outside the repository (/work/peer by default).

Subcommands (`bench` is the default):
  build    get llama.cpp (PyPI's llama-cpp-python *source* package, which vendors it under
           vendor/llama.cpp, or a checkout given with --llama-cpp DIR), build it CPU-only with
           native flags (nice -n 19) and compile bench/peer_llama_logits.cpp against it
  convert  HF model dir -> GGUF in f32 / bf16 (our converter, bench/peer_gguf.py) or q8_0
           (llama-quantize from the f32 GGUF)
  verify   the conversion check: llama.cpp's logits on the GGUF against transformers' logits on
           the HF dir for a short prompt and greedy continuation (needs torch + transformers)
  bench    llama-bench -m X.gguf -p P -n N -t T -r 1 -o json, alternating with
           deltamoe bench model --model DIR -p P -n N --threads T --dtype D --json, R rounds,
           medians; deltamoe is reported as missing (with why) when the binary lacks the command
  moe-layer  one MoE FFN layer: bench/peer_ggml_moe.cpp (ggml's graph of llama.cpp's MoE FFN, on
           ggml's CPU backend) alternating with deltamoe bench moe-layer --json on the same
           shapes, per weight type (q8_0 beside deltamoe's int8), R rounds, medians and ratios

Examples:
  python3 bench/peer_llamacpp.py build
  python3 bench/peer_make_model.py --preset tiny && python3 bench/peer_llamacpp.py verify --model /work/peer/models/tiny-mixtral --negative-control
  python3 bench/peer_llamacpp.py bench --model /work/peer/models/ref-mixtral --dtypes f32,bf16,q8_0 --rounds 3 --json
  python3 bench/peer_llamacpp.py moe-layer --dtypes f32,bf16,q8_0 --tokens 1,16,128,512 --rounds 3 --json

Every subcommand prints one JSON object on stdout with --json; logs go to stderr.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_common import (add_run_options, deltamoe_column, model_weight_files, refresh_page_cache, report_header, tokens_per_s_summary, DEFAULT_MODEL, PEER_DIR, deltamoe_status, die, emit, hf_config,  # noqa: E402
                         log, measured, model_fingerprint, ratio, run_deltamoe, summarize)

DEFAULT_SRC = os.path.join(PEER_DIR, "llama.cpp-src")
DEFAULT_BUILD = os.path.join(PEER_DIR, "llama.cpp-build")
DEFAULT_GGUF = os.path.join(PEER_DIR, "gguf")

# llama.cpp weight type -> deltamoe --dtype of the same bytes per weight: q8_0 (int8, one f16
# scale per 32 weights) is what deltamoe's int8 stores.
DELTAMOE_DTYPE = {"f32": "f32", "bf16": "bf16", "q8_0": "int8"}
TARGETS = ["llama-bench", "llama-quantize", "llama-simple"]  # llama-cli needs the server build
LOGITS_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_llama_logits.cpp")


def sh(cmd, **kw):
    log("run: " + " ".join(cmd))
    return subprocess.run(cmd, **kw)


# --- build ----------------------------------------------------------------------------------

def fetch_sdist(dl_dir):
    """vendor/llama.cpp of PyPI's llama-cpp-python sdist (downloaded once into dl_dir)."""
    os.makedirs(dl_dir, exist_ok=True)
    tars = sorted(glob.glob(os.path.join(dl_dir, "llama_cpp_python-*.tar.gz")))
    if not tars:
        r = sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python",
                "-d", dl_dir], capture_output=True, text=True)
        if r.returncode != 0:
            die(f"pip download llama-cpp-python failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        tars = sorted(glob.glob(os.path.join(dl_dir, "llama_cpp_python-*.tar.gz")))
    tar = tars[-1]
    top = os.path.join(os.path.dirname(dl_dir.rstrip("/")), os.path.basename(tar)[:-len(".tar.gz")])
    if not os.path.isdir(top):
        log(f"extracting {tar}")
        with tarfile.open(tar) as t:
            t.extractall(os.path.dirname(top), filter="data")
    return os.path.join(top, "vendor", "llama.cpp")


def source_version(src):
    """What llama.cpp this is: the sdist's version and the llama.cpp commit its CHANGELOG names,
    or `git describe` of a checkout; ggml's and libllama's versions from their CMakeLists."""
    v = {"source_dir": os.path.realpath(src)}
    top = os.path.dirname(os.path.dirname(os.path.realpath(src)))
    if os.path.isfile(os.path.join(top, "CHANGELOG.md")) and os.path.basename(top).startswith("llama_cpp_python-"):
        v["llama_cpp_python_sdist"] = os.path.basename(top).split("-", 1)[1]
        text = open(os.path.join(top, "CHANGELOG.md")).read()
        sec = re.search(r"## \[(\d[^\]]*)\](.*?)(?=\n## \[)", text, re.S)
        m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", sec.group(2)) if sec else None
        if m:
            v["llama_cpp_commit"] = m.group(1)
    if os.path.exists(os.path.join(src, ".git")):  # a checkout, or the sdist's submodule git data
        r = subprocess.run(["git", "-C", src, "log", "-1", "--format=%H %cs"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            v["git_commit"], v["git_commit_date"] = r.stdout.split()
    for key, path, pre in (("ggml_version", "ggml/CMakeLists.txt", "GGML"), ("libllama_version", "CMakeLists.txt", "LLAMA")):
        try:
            t = open(os.path.join(src, path)).read()
            v[key] = ".".join(re.search(rf"set\({pre}_VERSION_{p} (\d+)\)", t).group(1) for p in ("MAJOR", "MINOR", "PATCH"))
        except (OSError, AttributeError):
            pass
    return v


def compile_peer_tool(src, bdir, source, name, libs, flags=()):
    """g++ -O2 of one of our peer programs against llama.cpp's headers and shared libraries."""
    tool = os.path.join(bdir, "bin", name)
    r = sh(["nice", "-n", "19", "g++", "-O2", "-std=c++17", *flags, source, "-o", tool, "-I", os.path.join(src, "include"), "-I", os.path.join(src, "ggml", "include"),
            "-L", os.path.join(bdir, "bin"), *libs, f"-Wl,-rpath,{os.path.join(bdir, 'bin')}"],
           stdout=sys.stderr)
    if r.returncode != 0:
        die(f"compiling {os.path.basename(source)} failed")
    return tool


def cmd_build(args):
    src = args.llama_cpp or (DEFAULT_SRC if os.path.isdir(DEFAULT_SRC) else fetch_sdist(os.path.join(PEER_DIR, "dl")))
    if not os.path.isfile(os.path.join(src, "include", "llama.h")):
        die(f"{src}: not a llama.cpp source tree (no include/llama.h)")
    bdir = args.build_dir
    t0 = time.time()
    if args.tools_only:
        if not os.path.isfile(os.path.join(bdir, "bin", "libggml.so")):
            die(f"--tools-only: no llama.cpp build in {bdir} (run `peer_llamacpp.py build` without it)")
    else:
        if not os.path.isfile(os.path.join(bdir, "CMakeCache.txt")):
            r = sh(["nice", "-n", "19", "cmake", "-S", src, "-B", bdir, "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
                    "-DGGML_OPENMP=ON", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                   stdout=sys.stderr)
            if r.returncode != 0:
                die("cmake configure failed")
        r = sh(["nice", "-n", "19", "cmake", "--build", bdir, "-j", str(args.jobs), "--target", *TARGETS], stdout=sys.stderr)
        if r.returncode != 0:
            die("llama.cpp build failed")
    compile_peer_tool(src, bdir, LOGITS_SRC, "peer_llama_logits", ["-lllama", "-lggml", "-lggml-base"])
    # -fopenmp: its cache flush runs on the OpenMP team that ggml's graph compute uses
    compile_peer_tool(src, bdir, GGML_MOE_SRC, "peer_ggml_moe", ["-lggml", "-lggml-base", "-lggml-cpu"], ["-fopenmp"])
    version = source_version(src)
    version["cmake_flags"] = "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_OPENMP=ON -DCMAKE_BUILD_TYPE=Release"
    version["compiler"] = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    if not args.tools_only:
        with open(os.path.join(bdir, "peer-version.json"), "w") as f:
            json.dump(version, f, indent=1)
    emit({"build_dir": bdir, "version": version, "targets": ([] if args.tools_only else TARGETS) + PEER_TOOLS,
          "build_s": round(time.time() - t0, 1)}, args.json)


def build_info(bdir):
    path = os.path.join(bdir, "peer-version.json")
    if not os.path.isfile(path):
        return {"note": f"no {path}: run `peer_llamacpp.py build`"}
    return json.load(open(path))


def binary(bdir, name):
    p = os.path.join(bdir, "bin", name)
    if not os.access(p, os.X_OK):
        die(f"{p} missing: run `python3 bench/peer_llamacpp.py build` first")
    return p


# --- conversion -----------------------------------------------------------------------------

def gguf_path(args, dtype, tag=""):
    name = os.path.basename(os.path.normpath(args.model))
    return os.path.join(args.gguf_dir, f"{name}{tag}-{dtype}.gguf")


def ensure_gguf(args, dtype, permute=True):
    """The GGUF of args.model in dtype, converted (or quantized) when missing or stale."""
    import peer_gguf
    os.makedirs(args.gguf_dir, exist_ok=True)
    tag = "" if permute else "-wrongqk"
    out = gguf_path(args, dtype, tag)
    stamp = out + ".src.json"
    fp = {"model_dir": os.path.realpath(args.model), "fingerprint": model_fingerprint(args.model), "permute": permute}
    if os.path.isfile(out) and os.path.isfile(stamp) and json.load(open(stamp)) == fp:
        return out
    t0 = time.time()
    if dtype in ("f32", "bf16"):
        peer_gguf.convert(args.model, out, dtype, permute=permute)
    elif dtype == "q8_0":
        src = ensure_gguf(args, "f32", permute)
        r = sh(["nice", "-n", "19", binary(args.build_dir, "llama-quantize"), src, out + ".part", "Q8_0"],
               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            die(f"llama-quantize failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        os.replace(out + ".part", out)
    else:
        die(f"unknown dtype {dtype} (f32, bf16, q8_0)")
    json.dump(fp, open(stamp, "w"))
    log(f"{out} ready in {time.time() - t0:.1f} s")
    return out


def cmd_convert(args):
    out = []
    for d in args.dtypes.split(","):
        p = ensure_gguf(args, d, permute=not args.no_permute)
        out.append({"dtype": d, "path": p, "bytes": os.path.getsize(p)})
    emit({"model_dir": args.model, "gguf": out}, args.json)


# --- verification ---------------------------------------------------------------------------

def llama_logits(args, gguf_file, prompt_ids, n_gen, mode="default"):
    """(rows [n, V] float32, generated ids) from peer_llama_logits."""
    import numpy as np
    tool = binary(args.build_dir, "peer_llama_logits")
    out = os.path.join(args.gguf_dir, "logits.f32")
    r = subprocess.run([tool, gguf_file, out, ",".join(map(str, prompt_ids)), str(n_gen), str(args.threads),
                        mode],
                       capture_output=True, text=True)
    if r.returncode != 0:
        die(f"peer_llama_logits failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    meta = json.loads(r.stdout)
    rows = np.fromfile(out, dtype=np.float32).reshape(-1, meta["n_vocab"])
    os.remove(out)
    return rows, meta["generated"]


def compare(ref, got):
    """Logit agreement of two [n, V] arrays (ref = transformers)."""
    import numpy as np
    diff = np.abs(ref - got)
    scale = float(np.abs(ref).max())
    top1 = (ref.argmax(-1) == got.argmax(-1))
    top5 = [len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5])) / 5 for a, b in zip(ref, got)]
    corr = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(ref, got)]
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "max_abs_logit": scale,
            "max_rel_diff": float(diff.max() / scale), "top1_agree": f"{int(top1.sum())}/{len(top1)}",
            "top1_agree_fraction": float(top1.mean()), "top5_overlap_mean": float(np.mean(top5)),
            "min_row_correlation": float(min(corr))}


MODES = {"exact": "f32 KV cache, flash attention off",
         "default": "llama.cpp defaults: f16 KV cache, flash attention auto (on for the CPU)"}


def cmd_verify(args):
    try:
        import numpy as np
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        die(f"verify needs numpy, torch and transformers ({e})")
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    ids = tok(args.prompt).input_ids
    log(f"prompt {args.prompt!r} -> {len(ids)} tokens {ids}")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    result = {"model_dir": args.model, "prompt": args.prompt, "prompt_ids": ids, "n_gen": args.n_gen,
              "transformers_dtype": "float32", "checks": {}}

    with torch.no_grad():
        hf_gen = model.generate(torch.tensor([ids]), max_new_tokens=args.n_gen, min_new_tokens=args.n_gen,
                                do_sample=False)[0, len(ids):].tolist()

    def check(dtype, permute=True, mode="default"):
        path = ensure_gguf(args, dtype, permute)
        rows, gen = llama_logits(args, path, ids, args.n_gen, mode)
        seq = ids + gen
        with torch.no_grad():  # teacher-forced on llama.cpp's own continuation: every row comparable
            ref = model(torch.tensor([seq[:len(rows)]])).logits[0].float().numpy()
        c = compare(ref, rows)
        c.update({"gguf": path, "llama_cpp_mode": MODES[mode], "llama_cpp_greedy": gen, "greedy_equal_to_transformers": gen == hf_gen,
                  "rows": int(len(rows)), "prompt_rows": len(ids)})
        # llama.cpp's prompt rows come from one batch, the rest from single-token decode steps
        c["max_abs_diff_prompt_rows"] = float(np.abs(ref[:len(ids)] - rows[:len(ids)]).max())
        c["max_abs_diff_decode_rows"] = float(np.abs(ref[len(ids):] - rows[len(ids):]).max()) if args.n_gen else None
        return c

    # f32 weights with an f32 KV cache and no flash attention must match transformers to f32
    # rounding; llama.cpp's defaults (f16 KV cache, flash attention, as llama-bench runs), bf16
    # and q8_0 are reported beside it
    todo = [("f32_exact", "f32", "exact")] + [(f"{d}_default", d, "default") for d in args.dtypes.split(",")]
    for key, d, mode in todo:
        c = result["checks"][key] = check(d, mode=mode)
        log(f"{key}: max |diff| {c['max_abs_diff']:.3g} of max |logit| {c['max_abs_logit']:.3g}, "
            f"top-1 {c['top1_agree']}, min row correlation {c['min_row_correlation']:.6f}, "
            f"greedy equal {c['greedy_equal_to_transformers']}")
    result["transformers_greedy"] = hf_gen
    if args.negative_control:
        c = check("f32", permute=False, mode="exact")
        result["negative_control_wrong_qk_order"] = c
        log(f"negative control (Q/K rows in the wrong rope order): max |diff| {c['max_abs_diff']:.3g}, top-1 {c['top1_agree']}")
        for f in glob.glob(os.path.join(args.gguf_dir, "*-wrongqk-*.gguf*")):
            os.remove(f)
    # tokenizer: llama.cpp's own tokenization of the prompt text
    tool = binary(args.build_dir, "peer_llama_logits")
    out = os.path.join(args.gguf_dir, "tok.f32")
    r = subprocess.run([tool, ensure_gguf(args, "f32"), out, "text:" + args.prompt, "0", str(args.threads)],
                       capture_output=True, text=True)
    if r.returncode == 0:
        lt = json.loads(r.stdout)["prompt"]
        result["tokenizer"] = {"llama_cpp_ids": lt, "transformers_ids": ids, "equal": lt == ids}
        os.remove(out)
    f32 = result["checks"]["f32_exact"]
    ok = bool(f32["max_rel_diff"] < args.tol and f32["top1_agree_fraction"] == 1.0
              and f32["greedy_equal_to_transformers"])
    if args.negative_control:
        nc = result["negative_control_wrong_qk_order"]
        result["negative_control_detected"] = bool(nc["max_rel_diff"] >= args.tol)
        ok = ok and result["negative_control_detected"]
    result["tolerance_max_rel_diff"] = args.tol
    result["pass"] = ok
    emit(result, args.json)
    if not ok:
        sys.exit(1)


# --- bench ----------------------------------------------------------------------------------

def run_llama_bench(args, gguf_file):
    cmd = [binary(args.build_dir, "llama-bench"), "-m", gguf_file, "-p", str(args.n_prompt), "-n", str(args.n_gen),
           "-t", str(args.threads), "-r", str(args.reps), "-o", "json", *args.llama_bench_args.split()]
    log("run: " + " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    rows = json.loads(r.stdout)
    out = {"wall_s": round(time.time() - t0, 2)}
    for row in rows:
        key = "pp" if row["n_gen"] == 0 else "tg"
        out[f"{key}_tokens_per_s"] = row["avg_ts"]
        out[f"{key}_samples_tokens_per_s"] = row.get("samples_ts")
    keep = ("build_commit", "build_number", "cpu_info", "model_type", "model_size", "model_n_params", "n_batch",
            "n_ubatch", "n_threads", "flash_attn", "type_k", "type_v", "use_mmap", "poll", "cpu_strict")
    out["info"] = {k: rows[0].get(k) for k in keep if k in rows[0]}
    return out


def cmd_bench(args):
    cfg = hf_config(args.model)
    dtypes = args.dtypes.split(",")
    ggufs = {d: ensure_gguf(args, d) for d in dtypes}
    page_cache = refresh_page_cache(list(ggufs.values()) + model_weight_files(args.model),
                                    args.fresh_page_cache) if args.fresh_page_cache else None
    dm_ok, dm_why = deltamoe_status(args.deltamoe)
    if not dm_ok:
        log(f"deltamoe side skipped: {dm_why}")
    pp, tg = f"pp{args.n_prompt}", f"tg{args.n_gen}"
    runs = {d: {"llama_cpp": [], "deltamoe": []} for d in dtypes}
    load = []
    errors = []
    for rnd in range(args.rounds):
        for d in dtypes:
            q = dict(max_busy=args.max_busy, wait_s=args.wait_quiet, retries=args.retries)
            try:
                res, rec = measured(f"llama_cpp {d} round {rnd}", lambda: run_llama_bench(args, ggufs[d]), **q)
                runs[d]["llama_cpp"].append(res)
                load += rec
                log(f"round {rnd + 1}/{args.rounds} {d}: llama.cpp {pp} {res.get('pp_tokens_per_s')} "
                    f"{tg} {res.get('tg_tokens_per_s')} t/s")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
                log(str(e))
            if dm_ok and d in DELTAMOE_DTYPE:
                try:
                    res, rec = measured(f"deltamoe {DELTAMOE_DTYPE[d]} round {rnd}", lambda: run_deltamoe(
                        args.deltamoe, args.model, DELTAMOE_DTYPE[d], args.n_prompt, args.n_gen, args.threads, timeout=args.timeout,
                        extra=args.deltamoe_args.split()), **q)
                    runs[d]["deltamoe"].append(res)
                    load += rec
                    log(f"round {rnd + 1}/{args.rounds} {d}: deltamoe {pp} {res['pp_tokens_per_s']} {tg} {res['tg_tokens_per_s']} t/s")
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as e:
                    errors.append(str(e))
                    log(str(e))

    results = {}
    for d in dtypes:
        lc = tokens_per_s_summary(runs[d]["llama_cpp"], pp, tg)
        entry = {"gguf": ggufs[d], "gguf_bytes": os.path.getsize(ggufs[d]), "llama_cpp": lc}
        if runs[d]["llama_cpp"]:
            entry["llama_bench_info"] = runs[d]["llama_cpp"][0]["info"]
        if not dm_ok:
            entry["deltamoe"] = {"missing": dm_why}
        elif d not in DELTAMOE_DTYPE:
            entry["deltamoe"] = {"missing": f"deltamoe has no {d} weights"}
        else:
            entry["deltamoe"], entry["ratio_ours_over_llama_cpp"] = deltamoe_column(runs[d]["deltamoe"], lc, pp, tg)
            entry["deltamoe"]["dtype"] = DELTAMOE_DTYPE[d]
        results[d] = entry

    report = report_header("peer_llamacpp", args, cfg, load, results, errors, dm_ok)
    report["settings"] = {"n_prompt": args.n_prompt, "n_gen": args.n_gen, "threads": args.threads,
                          "rounds": args.rounds, "llama_bench_reps_per_run": args.reps,
                          "llama_bench_args": args.llama_bench_args,
                          "order": "alternating llama.cpp, deltamoe per dtype per round"}
    report["versions"]["llama_cpp"] = build_info(args.build_dir)
    report["page_cache_refreshed"] = page_cache
    emit(report, args.json)


# --- one MoE layer: ggml's graph beside deltamoe bench moe-layer ----------------------------

GGML_MOE_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_ggml_moe.cpp")
PEER_TOOLS = ["peer_llama_logits", "peer_ggml_moe"]
# (ggml weight types map to deltamoe's --dtype through DELTAMOE_DTYPE, above.)

def layer_args(args):
    """The shape and timing options both sides of `moe-layer` get."""
    return ["--tokens", args.tokens, "--hidden", str(args.hidden), "--inter", str(args.inter),
            "--experts", str(args.experts), "--top-k", str(args.top_k), "--threads", str(args.threads),
            "--min-seconds", str(args.min_seconds), "--seed", str(args.seed)]


def run_layer(cmd, timeout):
    """One run of a layer benchmark that prints {"results": [{"tokens", "time_ms"}, ...]}:
    ({tokens: time_ms}, the whole JSON); RuntimeError with its last stderr line when it fails."""
    log("run: " + " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or [f"rc {r.returncode}"]
        raise RuntimeError(f"{os.path.basename(cmd[0])} {' '.join(cmd[1:3])}: {tail[0]}")
    raw = json.loads(r.stdout)
    return {int(row["tokens"]): float(row["time_ms"]) for row in raw["results"]}, raw


def deltamoe_layer_dtypes(binary):
    """(the --dtype values `deltamoe bench moe-layer` accepts, None) or (set(), why not)."""
    if not binary or not (os.path.isfile(binary) or shutil.which(binary)):
        return set(), f"no deltamoe binary at {binary}"
    r = subprocess.run([binary, "bench", "--help"], capture_output=True, text=True)
    m = re.search(r"--dtype TEXT:\{([^}]*)\}", r.stdout)
    if r.returncode != 0 or "moe-layer" not in r.stdout or not m:
        return set(), f"`{binary} bench moe-layer` is not available in this build"
    return set(m.group(1).split(",")), None


def layer_summary(runs, tokens):
    """Per token count: summarize() of time_ms over the runs."""
    return {t: summarize([{"time_ms": r.get(t)} for r in runs], "time_ms") for t in tokens}


def cmd_moe_layer(args):
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in DELTAMOE_DTYPE:
            die(f"--dtypes: unknown {d} (f32, bf16, q8_0)")
    if not re.fullmatch(r"[1-9]\d*(,[1-9]\d*)*", args.tokens):
        die(f"--tokens {args.tokens}: expected positive integers, comma-separated")
    tokens = [int(t) for t in args.tokens.split(",")]
    tool = binary(args.build_dir, "peer_ggml_moe")
    dm_dtypes, dm_why = deltamoe_layer_dtypes(args.deltamoe)
    if dm_why:
        log(f"deltamoe side skipped: {dm_why}")
    runs = {d: {"ggml": [], "deltamoe": []} for d in dtypes}
    raw = {d: {} for d in dtypes}
    load, errors = [], []
    q = dict(max_busy=args.max_busy, wait_s=args.wait_quiet, retries=args.retries)
    for rnd in range(args.rounds):
        for d in dtypes:
            sides = [("ggml", [tool, "--dtype", d, *layer_args(args), *args.ggml_args.split()])]
            if DELTAMOE_DTYPE[d] in dm_dtypes:
                sides.append(("deltamoe", [args.deltamoe, "bench", "moe-layer", "--dtype", DELTAMOE_DTYPE[d],
                                           *layer_args(args), "--skip-naive", "--json", *args.deltamoe_args.split()]))
            for side, cmd in sides:
                try:
                    (times, out), rec = measured(f"{side} {d} round {rnd}", lambda: run_layer(cmd, args.timeout), **q)
                except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
                    errors.append(str(e))
                    log(str(e))
                    continue
                runs[d][side].append(times)
                raw[d].setdefault(side, out)
                load += rec
                log(f"round {rnd + 1}/{args.rounds} {d}: {side} " +
                    " ".join(f"T={t} {ms:.3f} ms" for t, ms in sorted(times.items())))

    results = {}
    for d in dtypes:
        g = layer_summary(runs[d]["ggml"], tokens)
        entry = {"ggml": g, "ggml_first_run": raw[d].get("ggml"), "deltamoe_dtype": DELTAMOE_DTYPE[d]}
        if DELTAMOE_DTYPE[d] not in dm_dtypes:
            entry["deltamoe"] = {"missing": dm_why or f"this deltamoe has no --dtype {DELTAMOE_DTYPE[d]}"}
        else:
            dm = layer_summary(runs[d]["deltamoe"], tokens)
            entry["deltamoe"] = dm
            entry["deltamoe_first_run"] = raw[d].get("deltamoe")
            entry["ratio_ggml_over_deltamoe"] = {t: ratio((g[t] or {}).get("median"), (dm[t] or {}).get("median"))
                                                 for t in tokens}
        results[d] = entry

    report = report_header("peer_ggml_moe_layer", args, {}, load, results, errors, bool(dm_dtypes))
    for k in ("model_dir", "model"):  # one layer of random weights: no model directory
        report.pop(k)
    report["cpu_model_name"] = report["cpu"]["model_name"]
    report["settings"] = {"hidden": args.hidden, "inter": args.inter, "experts": args.experts, "top_k": args.top_k,
                          "tokens": tokens, "threads": args.threads, "min_seconds": args.min_seconds,
                          "rounds": args.rounds, "seed": args.seed, "ggml_args": args.ggml_args,
                          "deltamoe_dtype_of": DELTAMOE_DTYPE,
                          "order": "alternating ggml, deltamoe per dtype per round",
                          "time_ms": "per run: the median over its timed steps (T = 1: 64 inputs in turn, caches "
                                     "flushed before each; T > 1: 4 inputs in turn); here: median over the runs",
                          "ratio": "ggml time / deltamoe time: > 1 means deltamoe is faster"}
    report["versions"]["llama_cpp"] = build_info(args.build_dir)
    emit(report, args.json)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face model dir")
    common.add_argument("--build-dir", default=DEFAULT_BUILD, help="llama.cpp build dir")
    common.add_argument("--gguf-dir", default=DEFAULT_GGUF, help="where GGUFs are written")
    common.add_argument("--threads", type=int, default=2, help="threads")
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs: stderr)")
    sub = ap.add_subparsers(dest="cmd")

    b = sub.add_parser("build", parents=[common], help="fetch and build llama.cpp",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--llama-cpp", help=f"llama.cpp source checkout (default: {DEFAULT_SRC}, else the sdist's vendor/llama.cpp)")
    b.add_argument("--jobs", type=int, default=2, help="parallel build jobs")
    b.add_argument("--tools-only", action="store_true",
                   help="only compile our peer programs against the existing build in --build-dir (no cmake)")

    c = sub.add_parser("convert", parents=[common], help="HF dir -> GGUF", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--dtypes", default="f32", help="comma list of f32, bf16, q8_0")
    c.add_argument("--no-permute", action="store_true",
                   help="debug: write Q/K rows in the wrong rope order (a wrong model, for the negative control)")

    v = sub.add_parser("verify", parents=[common], help="llama.cpp logits vs transformers",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog. Once upon a time",
                   help="prompt text (tokenized by the HF tokenizer)")
    v.add_argument("--n-gen", type=int, default=16, help="greedy tokens after the prompt")
    v.add_argument("--dtypes", default="f32,bf16,q8_0",
                   help="GGUF dtypes to check with llama.cpp's defaults (f32 with an f32 KV cache and no "
                        "flash attention decides pass/fail)")
    v.add_argument("--tol", type=float, default=1e-4, help="f32 pass: max |diff| / max |logit| below this")
    v.add_argument("--negative-control", action="store_true",
                   help="also convert with Q/K rows in the wrong rope order and require the check to catch it")

    be = sub.add_parser("bench", parents=[common], help="llama-bench beside deltamoe bench model",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    be.add_argument("--dtypes", default="f32,bf16,q8_0", help="comma list of f32, bf16, q8_0")
    be.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (pp)")
    be.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (tg)")
    be.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are over these")
    be.add_argument("--reps", type=int, default=1, help="llama-bench -r within one run")
    be.add_argument("--llama-bench-args", default="",
                    help="extra arguments for llama-bench, e.g. --llama-bench-args='--repack 0' (its AMX q8_0 "
                         "buffer dies with SIGILL on some VMs, docs/benchmarks.md)")
    add_run_options(be)

    ml = sub.add_parser("moe-layer", parents=[common], help="one MoE layer: ggml's graph beside deltamoe bench moe-layer",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ml.add_argument("--dtypes", default="f32,bf16,q8_0", help="comma list of f32, bf16, q8_0 (deltamoe: int8)")
    ml.add_argument("--tokens", default="1,16,128,512", help="token counts, comma-separated")
    ml.add_argument("--hidden", type=int, default=1024, help="hidden size H")
    ml.add_argument("--inter", type=int, default=512, help="expert intermediate size I")
    ml.add_argument("--experts", type=int, default=32, help="experts E")
    ml.add_argument("--top-k", type=int, default=8, help="experts per token K")
    ml.add_argument("--min-seconds", type=float, default=0.5, help="least timed time per token count in one run")
    ml.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (each side its own generator)")
    ml.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are over these")
    ml.add_argument("--ggml-args", default="", help="extra arguments for peer_ggml_moe, e.g. --ggml-args='--hugepages 0'")
    add_run_options(ml)

    argv = sys.argv[1:]
    if not argv or argv[0] not in ("build", "convert", "verify", "bench", "moe-layer", "-h", "--help"):
        argv = ["bench"] + argv
    args = ap.parse_args(argv)
    if args.cmd not in ("build", "moe-layer") and not os.path.isdir(args.model):
        die(f"--model {args.model}: no such directory (make one with bench/peer_make_model.py)")
    if args.cmd == "build":
        cmd_build(args)
    elif args.cmd == "convert":
        cmd_convert(args)
    elif args.cmd == "verify":
        cmd_verify(args)
    elif args.cmd == "moe-layer":
        cmd_moe_layer(args)
    else:
        cmd_bench(args)


if __name__ == "__main__":
    main()
