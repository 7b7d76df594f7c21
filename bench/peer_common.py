"""Helpers shared by the peer benchmarks (peer_llamacpp.py, peer_hf.py, peer_make_model.py):
logging, one-line errors, the machine (lscpu, load), the Hugging Face model directory, and the
deltamoe side (`deltamoe bench model --json`), which is reported as missing when the binary
lacks the subcommand."""
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_DIR = os.environ.get("DELTAMOE_PEER_DIR", "/work/peer")
DEFAULT_MODEL = os.path.join(PEER_DIR, "models", "ref-mixtral")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg, code=2):
    """One-line error on stderr and a non-zero exit."""
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def emit(obj, as_json):
    """The result: one JSON object on stdout with --json, otherwise indented for reading."""
    if as_json:
        print(json.dumps(obj, sort_keys=True))
    else:
        print(json.dumps(obj, indent=2, sort_keys=True))


def write_json_atomic(path, text):
    """Writes `text` (and a newline) to `path` through a temporary file and a rename, so a
    reader never sees half a result."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def add_run_options(parser):
    """The options every peer benchmark shares: the deltamoe binary beside the peer, and how
    to wait for (and repeat runs disturbed by) other load on the machine."""
    parser.add_argument("--deltamoe", default=os.path.join(REPO, "build", "deltamoe"),
                        help="deltamoe binary (default: build/deltamoe of this repo)")
    parser.add_argument("--deltamoe-args", default="",
                        help="extra arguments for deltamoe bench model, e.g. --deltamoe-args='-r 1' (default: none)")
    parser.add_argument("--max-busy", type=float, default=0.15,
                        help="with --wait-quiet: the busy fraction of the CPUs counted as quiet (default: 0.15)")
    parser.add_argument("--wait-quiet", type=float, default=0,
                        help="seconds to wait for a quiet machine before each run (default: 0, don't wait); a run "
                             "during which other processes used more than --max-busy is then repeated")
    parser.add_argument("--retries", type=int, default=2,
                        help="with --wait-quiet: repeats of a disturbed run (default: 2)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for one run (default: 1800)")
    parser.add_argument("--fresh-page-cache", nargs="?", const="read", choices=["read", "drop"],
                        help="before the rounds, drop every weight file of both sides from the page cache "
                             "(posix_fadvise DONTNEED); 'read' (the default when given without a value) then "
                             "reads each back once, sequentially: both start from the state a first read from "
                             "disk leaves (2 MiB folios, mapped by 2 MiB pages where the kernel can), instead of "
                             "whatever history left them in; 'drop' leaves them out, so each engine's first load "
                             "reads its file through its own mapping (deltamoe asks for 2 MiB pages, llama.cpp "
                             "does not). Decode speed depends on it (docs/benchmarks.md, \"Page-cache state\") "
                             "(default: off)")


def tokens_per_s_summary(runs, pp, tg):
    """{pp: summary of pp_tokens_per_s, tg: summary of tg_tokens_per_s} over the runs, keyed
    by the test names (e.g. "pp512", "tg128")."""
    return {pp: summarize(runs, "pp_tokens_per_s"), tg: summarize(runs, "tg_tokens_per_s")}


def deltamoe_column(dm_runs, peer, pp, tg):
    """deltamoe's summaries over its runs, and its ratio to the peer's medians, per test."""
    dm = tokens_per_s_summary(dm_runs, pp, tg)
    if dm_runs:
        dm["raw_first_run"] = dm_runs[0]["raw"]
        raws = [r["raw"] for r in dm_runs if r.get("raw")]
        for key in ("decode_frac_of_roofline_beside", "read_bandwidth_gbps_beside_tg"):
            dm[key] = summarize(raws, key)
    return dm, {k: ratio((dm[k] or {}).get("median"), (peer[k] or {}).get("median")) for k in (pp, tg)}


def report_header(benchmark, args, cfg, load, results, errors, dm_ok):
    """The fields every peer report shares: model, CPU, load, results, errors, versions."""
    peer_git = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True,
                              text=True).stdout.strip()
    return {"benchmark": benchmark, "model_dir": os.path.realpath(args.model),
            "model": {k: cfg.get(k) for k in ("architectures", "num_hidden_layers", "hidden_size",
                                              "num_attention_heads", "num_key_value_heads", "num_local_experts",
                                              "num_experts_per_tok", "intermediate_size", "vocab_size")},
            "cpu": cpu_info(), "load": load, "results": results, "errors": errors,
            "disturbed_runs": [r["run"] for r in load if r.get("disturbed")],
            "versions": {"peer_scripts_git": peer_git, "deltamoe_binary": args.deltamoe if dm_ok else None,
                         "deltamoe_args": args.deltamoe_args,
                         "deltamoe_version": subprocess.run([args.deltamoe, "--version"], capture_output=True,
                                                            text=True).stdout.strip() if dm_ok else None},
            "deltamoe_available": dm_ok, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def refresh_page_cache(paths, mode="read"):
    """Drops each file's pages from the page cache and, with mode "read", reads the file back
    sequentially (16 MiB reads), so every file starts from the same state: the one a first read
    from disk leaves. Returns [{"path", "bytes", "read_s", "mode"}]."""
    out = []
    for path in paths:
        t0 = time.time()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total = 0
            while mode == "read":
                chunk = os.read(fd, 16 << 20)
                if not chunk:
                    break
                total += len(chunk)
        finally:
            os.close(fd)
        out.append({"path": path, "bytes": total, "read_s": round(time.time() - t0, 2), "mode": mode})
        log(f"page cache {'refreshed' if mode == 'read' else 'dropped'}: {path} "
            f"({total / 1e9:.2f} GB read in {out[-1]['read_s']} s)")
    return out


def model_weight_files(model_dir):
    """The safetensors files of a Hugging Face model directory."""
    return sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))


def summarize(runs, key):
    """Median, min, max and the values of `key` over the runs that have it (None if none)."""
    vals = [r[key] for r in runs if r.get(key) is not None]
    if not vals:
        return None
    return {"median": round(median(vals), 3), "min": round(min(vals), 3), "max": round(max(vals), 3),
            "runs": [round(v, 3) for v in vals]}


def ratio(a, b):
    return round(a / b, 4) if a and b else None


def cpu_info():
    """`lscpu` model name, the SIMD flags that matter for these kernels, and the core count."""
    info = {"model_name": None, "flags": [], "cpus": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "Model name":
            info["model_name"] = val.strip()
        elif key.strip() == "Flags":
            info["flags"] = [f for f in val.split() if re.match(r"(avx|amx|fma|f16c|sse4)", f)]
        elif key.strip() in ("CPU family", "Model"):
            info[key.strip().lower().replace(" ", "_")] = val.strip()
    return info


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals), idle


def machine_busy(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` (sampled from /proc/stat while we sleep) and the
    1-minute load average: taken before each measurement so a noisy machine shows in the JSON."""
    t0, i0 = _cpu_times()
    time.sleep(seconds)
    t1, i1 = _cpu_times()
    busy = 1.0 - (i1 - i0) / max(1, t1 - t0)
    return {"busy_fraction": round(busy, 3), "loadavg_1m": float(open("/proc/loadavg").read().split()[0])}


class OthersMeter:
    """CPU used by other processes while one of our child commands runs: the machine's busy
    jiffies (/proc/stat) minus our children's CPU time (getrusage), over the wall time and all
    CPUs. `with OthersMeter() as m: run(...)`, then m.result()."""

    def __enter__(self):
        import resource
        self._ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._t, self._i = _cpu_times()
        self._w = time.time()
        return self

    def __exit__(self, *exc):
        import resource
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        t, i = _cpu_times()
        tick = os.sysconf("SC_CLK_TCK")
        ncpu = os.cpu_count() or 1
        wall = max(1e-6, time.time() - self._w)
        busy_s = ((t - self._t) - (i - self._i)) / tick
        ours_s = (ru.ru_utime - self._ru.ru_utime) + (ru.ru_stime - self._ru.ru_stime)
        self.others_fraction = min(1.0, max(0.0, busy_s - ours_s) / (wall * ncpu))
        self.ours_cores = ours_s / wall
        return False

    def result(self):
        return {"others_cpu_fraction": round(self.others_fraction, 3), "our_cores": round(self.ours_cores, 2)}


def wait_quiet(max_busy, timeout_s, window=3):
    """Waits (up to timeout_s) until `window` consecutive 2-second samples find the machine at most
    max_busy busy; returns the last sample."""
    t_end = time.time() + timeout_s
    quiet = 0
    while True:
        s = machine_busy(2.0)
        quiet = quiet + 1 if s["busy_fraction"] <= max_busy else 0
        if quiet >= window:
            return s
        if time.time() >= t_end:
            log(f"machine still busy ({s['busy_fraction']:.0%}) after waiting {timeout_s:.0f} s; measuring anyway")
            return s
        if quiet == 0:
            log(f"machine busy ({s['busy_fraction']:.0%} of the CPUs, load {s['loadavg_1m']}); waiting")
            time.sleep(8)


# --- the Hugging Face model directory -------------------------------------------------------

def hf_config(model_dir):
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        die(f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    with open(path) as f:
        return json.load(f)


def rope_theta(cfg):
    if "rope_theta" in cfg:
        return float(cfg["rope_theta"])
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "rope_theta" in rp:
        return float(rp["rope_theta"])
    return 10000.0


def model_fingerprint(model_dir):
    """Sizes and mtimes of the weight files: a GGUF made from the same files can be reused."""
    parts = []
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", ".json")):
            st = os.stat(os.path.join(model_dir, name))
            parts.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)


# --- the deltamoe side ----------------------------------------------------------------------

def deltamoe_status(binary):
    """(True, None) when `BINARY bench model --help` works, else (False, why)."""
    if not binary or not (os.path.isfile(binary) or shutil.which(binary)):
        return False, f"no deltamoe binary at {binary} (build it: cmake --preset default && cmake --build --preset default)"
    r = subprocess.run([binary, "bench", "model", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        first = (r.stderr.strip() or r.stdout.strip()).splitlines()[:1]
        return False, f"`{binary} bench model` is not available in this build ({first[0] if first else 'rc ' + str(r.returncode)})"
    return True, None


def _find_tps(obj, kinds):
    """The tokens/s figure for one phase in a `deltamoe bench model --json` object: the first of
    "<kind>_tokens_per_s" (what deltamoe prints: pp_tokens_per_s, tg_tokens_per_s), then
    {"<kind><N>": {"tokens_per_s": x}} / {"<kind>": {...}}, or a "tests" list of llama-bench-like
    rows {"n_prompt", "n_gen", "tokens_per_s"|"avg_ts"}. Never a roofline or a stddev."""
    if not isinstance(obj, dict):
        return None
    for kind in kinds:
        if isinstance(obj.get(f"{kind}_tokens_per_s"), (int, float)):
            return float(obj[f"{kind}_tokens_per_s"])
    for kind in kinds:
        for k, v in obj.items():
            if re.fullmatch(rf"{kind}\d*", k.lower()) and isinstance(v, dict):
                for key in ("tokens_per_s", "avg_ts"):
                    if isinstance(v.get(key), (int, float)):
                        return float(v[key])
    for k in ("tests", "results", "rows"):
        for row in obj.get(k) if isinstance(obj.get(k), list) else []:
            if not isinstance(row, dict):
                continue
            is_pp = row.get("n_prompt", 0) > 0 and row.get("n_gen", 0) == 0
            is_tg = row.get("n_gen", 0) > 0 and row.get("n_prompt", 0) == 0
            if (is_pp and "pp" in kinds) or (is_tg and "tg" in kinds):
                for key in ("tokens_per_s", "avg_ts"):
                    if isinstance(row.get(key), (int, float)):
                        return float(row[key])
    return None


def run_deltamoe(binary, model_dir, dtype, n_prompt, n_gen, threads, timeout=1800, extra=()):
    """One `deltamoe bench model ... --json` run: {"pp_tokens_per_s", "tg_tokens_per_s", "raw",
    "wall_s"}; raises RuntimeError with the command's last stderr line when it fails."""
    cmd = [binary, "bench", "model", "--model", model_dir, "-p", str(n_prompt), "-n", str(n_gen),
           "--threads", str(threads), "--dtype", dtype, "--json", *extra]
    log("run: " + " ".join(cmd))
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-1:] or [f"rc {r.returncode}"]
        raise RuntimeError(f"{' '.join(cmd)}: {tail[0]}")
    raw = json.loads(r.stdout)
    return {"pp_tokens_per_s": _find_tps(raw, ("pp", "prompt", "prefill")),
            "tg_tokens_per_s": _find_tps(raw, ("tg", "gen", "generation")),
            "raw": raw, "wall_s": round(wall, 2)}


def measured(label, fn, max_busy=0.15, wait_s=0.0, retries=2):
    """Runs fn() and returns (its result, load records). With wait_s > 0 it first waits (up to
    wait_s) for a quiet machine, and a run during which other processes used more than max_busy
    of the CPUs is discarded and repeated (at most `retries` times; the last one is kept)."""
    records = []
    for attempt in range(retries + 1):
        sample = wait_quiet(max_busy, wait_s) if wait_s > 0 else machine_busy(1.0)
        with OthersMeter() as m:
            res = fn()
        rec = {"run": label, "attempt": attempt, "before": sample, **m.result()}
        records.append(rec)
        if wait_s <= 0 or m.others_fraction <= max_busy:
            return res, records
        if attempt == retries:
            rec["disturbed"] = True
            log(f"{label}: still disturbed after {retries} repeats ({m.others_fraction:.0%}); keeping it, marked")
            return res, records
        rec["discarded"] = True
        log(f"{label}: other processes used {m.others_fraction:.0%} of the CPUs during the run; repeating it")
