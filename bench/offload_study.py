#!/usr/bin/env python3
"""The expert-offload study (docs/experiments/offload.md).

Decodes a model larger than its memory budget with the experts in deltamoe's expert cache
(`bench model --expert-cache`) and, under the same memory limit, with plain mmap (all
weights used in place from the mapped checkpoint, as llama.cpp does; the kernel's page
cache decides what stays). Every run is its own process in a memory cgroup whose limit is
the budget plus the resident parts (attention, norms, routers, embeddings, KV cache) plus
10%, with the checkpoint's pages dropped first (posix_fadvise DONTNEED), so the disk is
really read.

  uniform   a random-weight model whose routers route almost uniformly (make-model
            --embed-std 1), the worst case for a cache: at each budget, mmap and the cache
            with each policy (lru, lfu, router) with prefetch, router without prefetch, and
            router with substitution (its logit error measured in the same run)
  skewed    a random-weight model with skewed, repetitive routing (make-model's default
            init): hit rate, prefetch precision / recall, tokens/s against all-resident
  chunks    (optional, --chunks) not run here: chunk sizes were compared by rebuilding

Usage (after a build; makes the models when absent, ~10 GB each):
  python3 bench/offload_study.py --work /work/offload --out docs/experiments/offload \\
      --json bench/results/offload_study.json
Needs root or a delegated cgroup (memory controller, v1 or v2). Only the Python standard
library and Debian's python3-matplotlib.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The study's model: Mixtral's layout at 1/4 of Mixtral-8x7B's hidden sizes (16 layers of 8
# experts, top-2, hidden 2048, expert inter 5632): 9.5 GB in bf16, 8.9 GB of it experts.
MODEL_ARGS = ["--layers", "16", "--hidden", "2048", "--heads", "16", "--kv-heads", "4",
              "--experts", "8", "--top-k", "2", "--inter", "5632", "--vocab", "32000",
              "--dtype", "bf16"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class MemCgroup:
    """A child memory cgroup of this process's own (v1 memory controller or v2)."""

    def __init__(self, name):
        self.path = None
        with open("/proc/self/cgroup") as f:
            lines = [l.strip().split(":", 2) for l in f if l.strip()]
        for _, ctrl, rel in lines:
            if "memory" in ctrl.split(","):
                base = "/sys/fs/cgroup/memory" + rel
                if os.path.isdir(base):
                    self.v2 = False
                    self.path = os.path.join(base, name)
        if self.path is None:
            for hid, ctrl, rel in lines:
                if hid == "0" and ctrl == "":
                    base = "/sys/fs/cgroup" + rel
                    if os.path.exists(os.path.join(base, "cgroup.controllers")):
                        with open(os.path.join(base, "cgroup.controllers")) as f:
                            if "memory" in f.read().split():
                                self.v2 = True
                                self.path = os.path.join(base, name)
        if self.path is None:
            sys.exit("offload_study: no writable memory cgroup (v1 memory controller or v2 "
                     "with memory); run as root or in a delegated cgroup")
        os.makedirs(self.path, exist_ok=True)

    def set_limit(self, nbytes):
        f = "memory.max" if self.v2 else "memory.limit_in_bytes"
        with open(os.path.join(self.path, f), "w") as fh:
            fh.write(str(int(nbytes)))
        if not self.v2:  # reset the peak counter
            try:
                with open(os.path.join(self.path, "memory.max_usage_in_bytes"), "w") as fh:
                    fh.write("0")
            except OSError:
                pass

    def peak(self):
        f = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            with open(os.path.join(self.path, f)) as fh:
                return int(fh.read().strip())
        except OSError:
            return None

    def preexec(self):
        procs = os.path.join(self.path, "cgroup.procs")
        return lambda: open(procs, "w").write(str(os.getpid()))

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:
            pass


def ensure_model(deltamoe, path, extra):
    if os.path.exists(os.path.join(path, "config.json")):
        return
    log(f"making {path} ...")
    subprocess.run([deltamoe, "make-model", *MODEL_ARGS, *extra, "--out", path, "--force"],
                   check=True)


def bench(deltamoe, model, args, cg=None, limit=None, tokens=16, label=""):
    cmd = [deltamoe, "bench", "model", "--model", model, "--dtype", "bf16", "-p", "0",
           "-n", str(tokens), "-r", "1", "--drop-page-cache", "--json", *args]
    if cg:
        cg.set_limit(limit)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True,
                       preexec_fn=cg.preexec() if cg else None)
    wall = time.time() - t0
    if p.returncode != 0:
        log(p.stderr[-2000:])
        return {"label": label, "args": args, "error": p.stderr.strip().splitlines()[-1:],
                "returncode": p.returncode, "wall_s": wall}
    r = json.loads(p.stdout)
    r["label"] = label
    r["args"] = args
    r["wall_s"] = wall
    if cg:
        r["cgroup_limit_bytes"] = limit
        r["cgroup_peak_bytes"] = cg.peak()
    ec = r.get("expert_cache", {})
    log(f"  {label:28s} {r['tg_tokens_per_s']:6.3f} tokens/s"
        + (f", hit {100 * ec['hit_rate']:.1f}%, {ec['bytes_read_per_token'] / 1e9:.2f} GB/token,"
           f" {100 * ec.get('frac_of_disk_roofline', 0):.0f}% of disk roofline"
           f" ({ec['disk_read_gbps']:.2f} GB/s)" if ec else
           f", {r['storage_read_bytes_per_token'] / 1e9:.2f} GB/token from storage")
        + f", peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB")
    return r


def budget_limit(deltamoe, model, budget):
    """Memory limit for a budget: (expert slots + resident weights + KV cache) x 1.1, from a
    one-token calibration run of the cache itself."""
    r = bench(deltamoe, model, ["--expert-cache", budget], tokens=1, label="calibrate " + budget)
    ec = r["expert_cache"]
    bound = ec["capacity_bytes"] + ec["resident_weight_bytes"] + r["kv_cache_bytes"]
    return bound, 1.10 * bound, r


def study_model(deltamoe, model, budgets, tokens, configs, cg, reps):
    out = {"all_resident": bench(deltamoe, model, [], tokens=tokens, label="all resident"),
           "budgets": {}, "scan_gbps": [scan_gbps(model)]}
    log(f"  sustained scan of the files: {out['scan_gbps'][0]:.2f} GB/s")
    for b in budgets:
        bound, limit, calib = budget_limit(deltamoe, model, b)
        log(f"budget {b}: bound {bound / 1e9:.2f} GB, cgroup limit {limit / 1e9:.2f} GB")
        runs = []
        for rep in range(reps):
            for label, args in configs:
                a = [x.replace("{B}", b) for x in args]
                r = bench(deltamoe, model, a, cg, limit, tokens, label)
                r["rep"] = rep
                runs.append(r)
        out["budgets"][b] = {"rss_bound_bytes": bound, "cgroup_limit_bytes": limit,
                             "runs": runs, "calibration": [calib]}
        out["scan_gbps"].append(scan_gbps(model))
        log(f"  sustained scan of the files: {out['scan_gbps'][-1]:.2f} GB/s")
    return out


def scan_gbps(model, threads=4, chunk=32 << 20):
    """Sustained read bandwidth of the model's files: every byte once, O_DIRECT, `threads`
    readers of `chunk` bytes at random aligned offsets (as the cache reads, but the whole
    files, so no device or host cache can hold them all)."""
    import mmap
    import random
    import threading
    files = [os.path.join(model, f) for f in sorted(os.listdir(model)) if f.endswith(".safetensors")]
    fds = [os.open(f, os.O_RDONLY | os.O_DIRECT) for f in files]
    jobs = [(fd, o) for fd, f in zip(fds, files) for o in range(0, os.path.getsize(f) // chunk * chunk, chunk)]
    random.Random(1).shuffle(jobs)
    lock, nxt, total = threading.Lock(), [0], [0]

    def reader():
        buf = mmap.mmap(-1, chunk)
        while True:
            with lock:
                if nxt[0] >= len(jobs):
                    return
                fd, off = jobs[nxt[0]]
                nxt[0] += 1
            n = os.preadv(fd, [buf], off)
            with lock:
                total[0] += n

    t0 = time.time()
    ts = [threading.Thread(target=reader) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for fd in fds:
        os.close(fd)
    return total[0] / (time.time() - t0) / 1e9


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def summarise(res):
    """Per model, budget and configuration: median tokens/s over repetitions and the
    quantities of the report."""
    rows = []
    for model, mres in res["models"].items():
        base = mres["all_resident"]["tg_tokens_per_s"]
        scan = median(mres["scan_gbps"])
        # The disk's best bandwidth seen in this study for this model (probes of every run,
        # calibrations included, and the full scans): the conservative roofline, since the
        # VM's disk is faster in bursts than sustained.
        probes = list(mres["scan_gbps"])
        for bres in mres["budgets"].values():
            for r in bres["runs"] + bres.get("calibration", []):
                e = r.get("expert_cache", {})
                probes += [e.get("disk_read_gbps_before", 0), e.get("disk_read_gbps_after", 0)]
        best = max(probes)
        for b, bres in mres["budgets"].items():
            by = {}
            for r in bres["runs"]:
                by.setdefault(r["label"], []).append(r)
            mmap = median([r["tg_tokens_per_s"] for r in by.get("mmap", []) if "error" not in r]
                          or [float("nan")])
            for label, rs in by.items():
                ok = [r for r in rs if "error" not in r]
                if not ok:
                    rows.append({"model": model, "budget": b, "config": label, "error": rs[0]["error"]})
                    continue
                tps = median([r["tg_tokens_per_s"] for r in ok])
                row = {"model": model, "budget": b, "config": label, "runs": len(ok),
                       "tokens_per_s": tps, "over_mmap": tps / mmap if mmap == mmap else None,
                       "of_all_resident": tps / base,
                       "peak_rss_gb": max(r["peak_rss_bytes"] for r in ok) / 1e9,
                       "rss_bound_gb": bres["rss_bound_bytes"] / 1e9,
                       "storage_gb_per_token": median([r["storage_read_bytes_per_token"] for r in ok]) / 1e9,
                       "repeated_pick_share": median([r.get("decode_repeated_pick_share", 0) for r in ok])}
                row["achieved_read_gbps"] = tps * row["storage_gb_per_token"]
                ec = [r["expert_cache"] for r in ok if "expert_cache" in r]
                if ec:
                    m = lambda k: median([e.get(k, 0) for e in ec])
                    row.update({"hit_rate": m("hit_rate"), "gb_read_per_token": m("bytes_read_per_token") / 1e9,
                                "stall_ms_per_token": m("stall_ms_per_token"),
                                "stall_share": m("stall_ms_per_token") / 1e3 * tps,
                                "disk_gbps": m("disk_read_gbps"),
                                "frac_of_disk_roofline": m("frac_of_disk_roofline"),
                                "scan_gbps": scan,
                                "best_disk_gbps": best,
                                "frac_of_best_disk_roofline": tps * m("bytes_read_per_token") / (best * 1e9),
                                "frac_of_scan_roofline": tps * m("bytes_read_per_token") / (scan * 1e9),
                                "prediction_precision": m("prediction_precision"),
                                "prediction_recall": m("prediction_recall"),
                                "peak_rss_over_bound": max(e.get("peak_rss_over_bound", 0) for e in ec)})
                    sc = [e["substitution_check"] for e in ec if "substitution_check" in e]
                    if sc:
                        row.update({k: median([s[k] for s in sc]) for k in
                                    ("substitutions_per_token", "logit_max_rel_error", "top1_agreement")})
                rows.append(row)
    return rows


def plot(rows, out):
    try:
        import matplotlib
    except ImportError:
        # The CSV and the JSON are the result; --replot redraws from the JSON later.
        print("matplotlib not found: plots skipped (any Python with it redraws them: --replot JSON)",
              file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for model in sorted({r["model"] for r in rows}):
        mr = [r for r in rows if r["model"] == model and "error" not in r]
        budgets = sorted({r["budget"] for r in mr}, key=lambda b: float(b.rstrip("%")))
        configs = [c for c in dict.fromkeys(r["config"] for r in mr)]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        colors = {c: f"C{i}" for i, c in enumerate(configs)}  # one colour per config everywhere
        for c in configs:
            xs = [float(b.rstrip("%")) for b in budgets]
            get = lambda k: [next((r.get(k) for r in mr if r["budget"] == b and r["config"] == c), None)
                             for b in budgets]
            axes[0].plot(xs, get("tokens_per_s"), marker="o", label=c, color=colors[c])
            if c != "mmap":
                axes[1].plot(xs, [100 * (v or 0) for v in get("hit_rate")], marker="o", label=c,
                             color=colors[c])
                axes[2].plot(xs, [100 * (v or 0) for v in get("stall_share")], marker="o", label=c,
                             color=colors[c])
        axes[0].set_ylabel("decode tokens/s")
        axes[1].set_ylabel("hit rate (%)")
        axes[2].set_ylabel("stall share of decode time (%)")
        for ax in axes:
            ax.set_xlabel("expert cache budget (% of the experts' bytes)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Experts beyond RAM: {model} model (memory limit = budget + resident + 10%)")
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"offload-{model}.png"), dpi=110)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deltamoe", default=os.path.join(ROOT, "build", "deltamoe"))
    ap.add_argument("--work", required=True, help="directory for the two ~10 GB models")
    ap.add_argument("--out", required=True, help="directory for plots and the CSV")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--budgets", default="25%,50%")
    ap.add_argument("--tokens", type=int, default=16, help="decode tokens per run (after as many warm-up)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of each configuration (A B A B)")
    ap.add_argument("--skip-skewed", action="store_true")
    ap.add_argument("--skip-uniform", action="store_true",
                    help="only the skewed model (all its configurations)")
    ap.add_argument("--quick", action="store_true",
                    help="only mmap, router and router --no-prefetch on the uniform model")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the plots and CSV from a results file")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.replot:
        with open(a.replot) as f:
            rows = summarise(json.load(f))
        plot(rows, a.out)
        return
    uniform = os.path.join(a.work, "mixtral-9g-uniform")
    skewed = os.path.join(a.work, "mixtral-9g-skewed")
    if a.skip_uniform and (a.skip_skewed or a.quick):
        sys.exit("offload_study: --skip-uniform leaves nothing to run with --skip-skewed or --quick")
    if not a.skip_uniform:
        ensure_model(a.deltamoe, uniform, ["--embed-std", "1"])
    if not a.skip_skewed:
        ensure_model(a.deltamoe, skewed, [])
    budgets = a.budgets.split(",")
    cg = MemCgroup(f"deltamoe-offload-{os.getpid()}")
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    res = {"cpu": next((l.split(":", 1)[1].strip() for l in lscpu.splitlines()
                        if l.startswith("Model name")), "?"),
           "disk": subprocess.run(["lsblk", "-d", "-o", "NAME,ROTA,SIZE,MODEL"],
                                  capture_output=True, text=True).stdout.strip(),
           "tokens": a.tokens, "models": {}}
    cache = lambda pol, *x: ["--expert-cache", "{B}", "--expert-policy", pol, *x]
    full = [("mmap", []),
            ("cache lru", cache("lru")),
            ("cache lfu", cache("lfu")),
            ("cache router", cache("router")),
            ("cache router, no prefetch", cache("router", "--no-prefetch")),
            ("cache router, substitute", cache("router", "--substitute"))]
    if a.quick:
        full = [full[0], full[3], full[4]]
    try:
        if not a.skip_uniform:
            log("uniform model")
            res["models"]["uniform"] = study_model(a.deltamoe, uniform, budgets, a.tokens, full,
                                                   cg, a.reps)
        if not a.skip_skewed and not a.quick:
            log("skewed model")
            res["models"]["skewed"] = study_model(a.deltamoe, skewed, budgets, a.tokens,
                                                  full[:5], cg, 1)
    finally:
        cg.remove()
    rows = summarise(res)
    res["summary"] = rows
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(res, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    import csv
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(a.out, "offload.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    plot(rows, a.out)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
