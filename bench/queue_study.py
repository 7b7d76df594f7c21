#!/usr/bin/env python3
"""Per-expert queue study (issue 5): drives `deltamoe loadgen --in-process` and `deltamoe serve`
over a reduced grid and writes CSVs + latency samples for python/plot_queues.py.

Models: a trained checkpoint (--model; trained for one epoch with top-2 when missing), and a
wide one (--wide-model: hidden 512, experts 512->2048->512, 8 MB of f32 weights per expert,
trained for 3 epochs when missing, ~3 min) whose experts stream from DRAM at B = 1.
Sweeps (per routing policy, fixed top-k and delta top-p):
  closed       closed-loop max throughput, per-expert and whole-model, B in {1,4,16,64,256},
               T = inf (every batch has exactly B samples: the pure effect of B), 2 workers
  closed-wide  the same on the wide model
  bt           open loop at 70% of that configuration's capacity, per-expert, B x T grid,
               --latency-workers workers (default 1: the in-process client, 0.2-0.3 of a core,
               gets the other core); p99 checked against T + 2 x the wave service time
  bt2          three of those with 2 workers (server and client share both cores)
  load         open loop at 10..90% of each method's capacity for six methods (B=1, whole-model x2,
               per-expert x2, adaptive), --latency-workers; latencies of the 70% runs kept for CDFs
  overload     HTTP on loopback at 2x the HTTP capacity for 30 s, server RSS sampled, then recovery

Capacity of a configuration (mode, B, T, policy, workers) = its own closed-loop throughput
(1024 requests of one image outstanding), measured just before its open-loop runs. Every
in-process run has a 0.25 s warm-up that is not counted.
Usage: python3 bench/queue_study.py --bin build/deltamoe --out docs/experiments/expert-queues
       (a part: --sweeps load --methods adaptive,"per-expert B=64" --skip-wide --skip-overload --out DIR)
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

from queue_common import loadgen as common_loadgen, stall_probe, start_server

# top-p:0.6 on the top-2-trained model: a varying number of experts per sample and layer.
POLICIES = ["top-k:2", "top-p:0.6"]
ALL_B = [1, 4, 16, 64, 256]
BT_B = [1, 2, 4, 8, 16, 32, 64, 128, 256]  # the full B x T grid at 70 % load
BT_T = [0, 50, 200, 1000, -1]
LOADS = [0.1, 0.3, 0.5, 0.7, 0.9]
BT2 = [(16, 200), (64, 200), (64, 1000)]
METHODS = [  # name, mode, B, T, adaptive
    ("no-batching B=1", "whole-model", 1, 0, False),
    ("whole-model B=16 T=200", "whole-model", 16, 200, False),
    ("whole-model B=64 T=1000", "whole-model", 64, 1000, False),
    ("per-expert B=16 T=200", "per-expert", 16, 200, False),
    ("per-expert B=64 T=1000", "per-expert", 64, 1000, False),
    ("per-expert adaptive B<=256 T=1000", "per-expert", 256, 1000, True),
]


def loadgen(args, extra, timeout=120, workers=2, model=None):
    return common_loadgen(args.bin, extra, model or args.model, workers, args.images_idx, timeout)


def runtime_args(mode, b, t, adaptive, policy):
    a = ["--in-process", "--routing", policy, "--mode", mode, "--queue-size", str(b), "--queue-timeout-us", str(t)]
    if adaptive:
        a += ["--adaptive", "--latency-target-us", "5000"]
    return a


def write_csv(path, rows):
    if not rows:
        return
    keys = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()})
    os.replace(tmp, path)


def row(sweep, policy, method, mode, b, t, adaptive, load, j):
    r = {"sweep": sweep, "policy": policy, "method": method, "mode": mode, "B": b, "T_us": t,
         "adaptive": adaptive, "load": load}
    for k in ["offered_rps", "throughput_rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms",
              "slo_attainment", "requests_sent", "requests_ok", "requests_error", "mean_batch_stem",
              "mean_batch_expert", "timeout_flush_share", "mean_queue_ms", "mean_compute_ms",
              "mean_stem_service_ms", "mean_expert_service_ms", "final_batch_limit", "mean_experts",
              "mean_expert_rows_per_call", "workers", "wave_service_ms", "server_p50_ms", "server_p99_ms",
              "tail_queue_ms", "tail_compute_ms", "send_lag_p99_ms", "sender_cpu_share", "worker_busy_share",
              "split_flush_share"]:
        r[k] = j.get(k, "")
    if sweep.startswith("bt") and j.get("wave_service_ms") is not None:
        # The latency target: p99 <= T + 2 x the batch service time (for this multi-stage
        # pipeline, the wave service time: a stem batch through every stage).
        bound = float("inf") if t < 0 else t / 1000.0 + 2 * j["wave_service_ms"]
        r["bound_ms"] = "inf" if t < 0 else round(bound, 4)
        r["meets_bound"] = j["p99_ms"] <= bound
    return r


def in_process(args):
    out = subprocess.run([args.bin, "loadgen", "--model-curve", "--model", args.model], capture_output=True,
                         text=True, timeout=300)
    curve = json.loads(out.stdout)
    write_csv(os.path.join(args.out, "model_curve.csv"), curve["curve"])
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump({"model": curve["model"], "layers": curve.get("layers", 1), "path": args.model,
                   "latency_workers": args.latency_workers}, f, indent=1)
    closed, opened = [], []
    os.makedirs(os.path.join(args.out, "latencies"), exist_ok=True)
    d = str(args.duration)
    lw = args.latency_workers
    capacity = {}

    def cap_of(policy, mode, b, t, adaptive=False, workers=2):
        return loadgen(args, runtime_args(mode, b, t, adaptive, policy) +
                       ["--closed-loop", "--concurrency", "1024", "--duration", d], workers=workers)

    def bt_run(sweep, policy, b, t, workers):
        c = cap_of(policy, "per-expert", b, t, workers=workers)["throughput_rps"]
        if c < 1.0:
            # T = inf with B past what 1024 outstanding samples can fill: some queue never
            # fills, every outstanding sample ends up waiting in one, and nothing completes
            # until the drain. There is no capacity to take 70 % of.
            print(f"{sweep} {policy} B={b} T={t} workers={workers}: no closed-loop capacity (queues never fill)",
                  file=sys.stderr)
            return {"sweep": sweep, "policy": policy, "method": f"per-expert B={b} T={t}", "mode": "per-expert",
                    "B": b, "T_us": t, "adaptive": False, "load": 0.7, "capacity_rps": 0.0, "workers": workers,
                    "note": "no closed-loop capacity: with T = inf some queue never fills"}
        j = loadgen(args, runtime_args("per-expert", b, t, False, policy) +
                    ["--rate", f"{0.7 * c:.1f}", "--duration", d], workers=workers)
        r = row(sweep, policy, f"per-expert B={b} T={t}", "per-expert", b, t, False, 0.7, j)
        r["capacity_rps"] = c
        print(f"{sweep} {policy} B={b} T={t} workers={workers}: capacity {c:.0f}/s, p99 {j['p99_ms']:.2f} ms "
              f"(bound {r.get('bound_ms')})", file=sys.stderr)
        return r

    for policy in POLICIES:
        best = 0.0
        for mode in ["per-expert", "whole-model"] if "closed" in args.sweeps else []:
            for b in ALL_B:
                j = cap_of(policy, mode, b, -1)
                closed.append(row("closed", policy, f"{mode} B={b}", mode, b, -1, False, "", j))
                best = max(best, j["throughput_rps"])
                print(f"closed {policy} {mode} B={b}: {j['throughput_rps']:.0f}/s", file=sys.stderr)
        capacity[policy] = {"best_closed_loop_rps": best} if best > 0 else {}
        write_csv(os.path.join(args.out, "closed_loop.csv"), closed)
        # Latency sweeps: `lw` workers (default 1, so that the in-process client, which costs
        # 0.2-0.3 of a core, has the other core of a 2-core machine to itself).
        for b in BT_B if "bt" in args.sweeps else []:
            for t in BT_T:
                opened.append(bt_run("bt", policy, b, t, lw))
        if policy == POLICIES[0] and lw != 2 and "bt" in args.sweeps:
            for b, t in BT2:  # the same check with 2 workers sharing both cores with the client
                opened.append(bt_run("bt2", policy, b, t, 2))
        for name, mode, b, t, adaptive in METHODS if "load" in args.sweeps else []:
            if args.methods and not any(m in name for m in args.methods.split(",")):
                continue
            c = cap_of(policy, mode, b, t, adaptive, workers=lw)["throughput_rps"]
            capacity[policy][name] = c
            for load in LOADS:
                extra = ["--rate", f"{load * c:.1f}", "--duration", d]
                if abs(load - 0.7) < 1e-9:
                    safe = name.replace(" ", "_").replace("<=", "le").replace("=", "")
                    extra += ["--latencies-out",
                              os.path.join(args.out, "latencies", f"{policy.replace(':', '')}_{safe}.txt")]
                j = loadgen(args, runtime_args(mode, b, t, adaptive, policy) + extra, workers=lw)
                r = row("load", policy, name, mode, b, t, adaptive, load, j)
                r["capacity_rps"] = c
                opened.append(r)
                print(f"load {policy} {name} {load:.0%}: {j['throughput_rps']:.0f}/s p99 {j['p99_ms']:.2f} ms",
                      file=sys.stderr)
            write_csv(os.path.join(args.out, "open_loop.csv"), opened)
    with open(os.path.join(args.out, "capacity.json"), "w") as f:
        json.dump(capacity, f, indent=1)


def wide(args):
    """Closed-loop throughput vs B on the wide model, whose experts (8 MB of f32 weights each)
    do not fit in the cache: at B = 1 every expert call streams its weights from DRAM."""
    if not os.path.exists(args.wide_model):
        os.makedirs(os.path.dirname(args.wide_model) or ".", exist_ok=True)
        print("training the wide model (hidden 512, inter 2048, 3 epochs) ...", file=sys.stderr)
        subprocess.run([args.bin, "train", "--routing", "top-k", "--k", "2", "--epochs", "3", "--lr", "1e-3",
                        "--hidden", "512", "--inter", "2048", "--threads", "2", "--no-progress",
                        "--out", args.wide_model], check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([args.bin, "loadgen", "--model-curve", "--model", args.wide_model], capture_output=True,
                         text=True, timeout=600)
    write_csv(os.path.join(args.out, "model_curve_wide.csv"), json.loads(out.stdout)["curve"])
    rows = []
    for policy in POLICIES:
        for mode in ["per-expert", "whole-model"]:
            for b in ALL_B:
                j = loadgen(args, runtime_args(mode, b, -1, False, policy) +
                            ["--closed-loop", "--concurrency", "1024", "--duration", str(args.duration)],
                            model=args.wide_model, timeout=300)
                rows.append(row("closed-wide", policy, f"{mode} B={b}", mode, b, -1, False, "", j))
                print(f"wide {policy} {mode} B={b}: {j['throughput_rps']:.0f}/s", file=sys.stderr)
    write_csv(os.path.join(args.out, "closed_loop_wide.csv"), rows)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def overload(args):
    server, url, _ = start_server(args.bin, ["--model", args.model, "--routing", "top-k:2", "--queue-size", "16",
                                             "--queue-timeout-us", "200", "--max-inflight", "128",
                                             "--http-threads", "320"])
    try:
        cap = json.loads(subprocess.run([args.bin, "loadgen", "--url", url, "--closed-loop", "--concurrency", "64",
                                         "--duration", "5", "--json"], capture_output=True, text=True,
                                        timeout=120).stdout)
        samples, stop = [], threading.Event()

        def sample():
            t0 = time.time()
            while not stop.is_set():
                samples.append((time.time() - t0, rss_kib(server.pid)))
                time.sleep(0.5)

        th = threading.Thread(target=sample)
        th.start()
        rate = 2.0 * cap["throughput_rps"]
        heavy = json.loads(subprocess.run([args.bin, "loadgen", "--url", url, "--rate", f"{rate:.0f}",
                                           "--duration", str(args.overload_s), "--concurrency", "256", "--json"],
                                          capture_output=True, text=True, timeout=600).stdout)
        light = json.loads(subprocess.run([args.bin, "loadgen", "--url", url, "--rate",
                                           f"{0.3 * cap['throughput_rps']:.0f}", "--duration", "5",
                                           "--concurrency", "64", "--json"],
                                          capture_output=True, text=True, timeout=120).stdout)
        stop.set()
        th.join()
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=120)
        result = {"http_capacity_rps": cap["throughput_rps"], "capacity_run": cap, "overload_rate_rps": rate,
                  "overload": heavy, "recovery": light, "server_exit_code": rc,
                  "rss_kib_max": max(r for _, r in samples), "rss_kib_first": samples[0][1],
                  "rss_kib_last": samples[-1][1]}
        with open(os.path.join(args.out, "overload.json"), "w") as f:
            json.dump(result, f, indent=1)
        write_csv(os.path.join(args.out, "overload_rss.csv"), [{"t_s": t, "rss_kib": r} for t, r in samples])
        print(f"overload: {json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)})}",
              file=sys.stderr)
    finally:
        if server.poll() is None:
            server.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/deltamoe")
    ap.add_argument("--model", default="out/queue-study/top2.safetensors",
                    help="checkpoint to serve; trained (top-2, 1 epoch) when missing")
    ap.add_argument("--out", default="docs/experiments/expert-queues")
    ap.add_argument("--duration", type=float, default=1.5, help="seconds per in-process run")
    ap.add_argument("--overload-s", type=float, default=30.0)
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--latency-workers", type=int, default=1,
                    help="workers in the open-loop latency sweeps (1: the in-process client gets the other core)")
    ap.add_argument("--wide-model", default="out/queue-study/wide-top2.safetensors",
                    help="wide checkpoint (8 MB experts) for the B=1 vs B=64 throughput; trained when missing")
    ap.add_argument("--skip-wide", action="store_true")
    ap.add_argument("--only-overload", action="store_true")
    ap.add_argument("--images-idx", default="/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
                    help="images to send (IDX); '' for synthetic ones")
    ap.add_argument("--quick", action="store_true", help="tiny grid, for a smoke test of the pipeline")
    ap.add_argument("--sweeps", default="closed,bt,load",
                    help="in-process sweeps to run, comma-separated among closed, bt, load (default: all)")
    ap.add_argument("--methods", default="",
                    help="load sweep: only the methods whose name contains one of these comma-separated strings")
    args = ap.parse_args()
    bad = set(args.sweeps.split(",")) - {"closed", "bt", "load"}
    if bad:
        sys.exit(f"queue_study: unknown --sweeps {','.join(sorted(bad))} (closed, bt, load)")
    if args.quick:
        global ALL_B, BT_B, BT_T, LOADS, METHODS
        global BT2
        ALL_B, BT_B, BT_T, LOADS, BT2 = [1, 64], [1, 64], [0, -1], [0.3, 0.7], [(64, 200)]
        METHODS = METHODS[:2] + METHODS[4:]
        args.duration = min(args.duration, 0.3)
        args.overload_s = min(args.overload_s, 3.0)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if not os.path.exists(args.model):
        os.makedirs(os.path.dirname(args.model) or ".", exist_ok=True)
        subprocess.run([args.bin, "train", "--routing", "top-k", "--k", "2", "--epochs", "1", "--threads", "2",
                        "--no-progress", "--out", args.model], check=True, stdout=subprocess.DEVNULL)
    def probe(tag):
        j = stall_probe(args.bin)
        print(f"stall probe ({tag}): {j}", file=sys.stderr)
        return j

    stalls = {"before": probe("before")}
    if not args.only_overload:
        in_process(args)
        if not args.skip_wide:
            wide(args)
    stalls["after"] = probe("after")
    with open(os.path.join(args.out, "stall_probe.json"), "w") as f:
        json.dump(stalls, f, indent=1)
    if not args.skip_overload:
        overload(args)
    print(f"study done in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
