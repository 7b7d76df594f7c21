#!/usr/bin/env python3
"""Per-expert queue study (issue 5): drives `deltamoe loadgen --in-process` and `deltamoe serve`
over a reduced grid and writes CSVs + latency samples for python/plot_queues.py.

Sweeps (per routing policy, fixed top-k and delta top-p):
  closed   closed-loop max throughput, per-expert and whole-model, B in 1..256, T = 0
  bt       open loop at 70% of capacity, per-expert, B in {1,4,16,64,256} x T in {0,50,200,1000,inf}
  load     open loop at 10..90% of capacity for six methods (B=1, whole-model x2, per-expert x2,
           adaptive); latencies of the 70% runs are kept for CDFs
  overload HTTP on loopback at 2x the HTTP capacity for 30 s, server RSS sampled, then recovery

Capacity = the best closed-loop throughput over every method and B for that policy.
Usage: python3 bench/queue_study.py --bin build/deltamoe --out docs/experiments/expert-queues
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

# top-p:0.3 uses 2.0 experts per sample on average on Fashion-MNIST test images with the
# random model (measured), the same mean compute as top-k:2, but varying per sample.
POLICIES = ["top-k:2", "top-p:0.3"]
ALL_B = [1, 2, 4, 8, 16, 32, 64, 128, 256]
BT_B = [1, 4, 16, 64, 256]
BT_T = [0, 50, 200, 1000, -1]
LOADS = [0.1, 0.3, 0.5, 0.7, 0.9]
METHODS = [  # name, mode, B, T, adaptive
    ("no-batching B=1", "whole-model", 1, 0, False),
    ("whole-model B=16 T=200", "whole-model", 16, 200, False),
    ("whole-model B=64 T=1000", "whole-model", 64, 1000, False),
    ("per-expert B=16 T=200", "per-expert", 16, 200, False),
    ("per-expert B=64 T=1000", "per-expert", 64, 1000, False),
    ("per-expert adaptive B<=256 T=1000", "per-expert", 256, 1000, True),
]


def loadgen(args, extra, timeout=120):
    cmd = [args.bin, "loadgen", "--json", "--workers", "2", "--max-inflight", "4096"] + extra
    if args.images_idx:
        cmd += ["--images-idx", args.images_idx]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


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
              "mean_stem_service_ms", "mean_expert_service_ms", "final_batch_limit", "mean_experts", "mean_expert_rows_per_call"]:
        r[k] = j.get(k, "")
    return r


def in_process(args):
    out = subprocess.run([args.bin, "loadgen", "--model-curve"], capture_output=True, text=True, timeout=300)
    curve = json.loads(out.stdout)
    write_csv(os.path.join(args.out, "model_curve.csv"), curve["curve"])
    closed, opened = [], []
    os.makedirs(os.path.join(args.out, "latencies"), exist_ok=True)
    d = str(args.duration)
    capacity = {}
    for policy in POLICIES:
        best = 0.0
        for mode in ["per-expert", "whole-model"]:
            for b in ALL_B:
                j = loadgen(args, runtime_args(mode, b, 0, False, policy) +
                            ["--closed-loop", "--concurrency", "1024", "--duration", d])
                closed.append(row("closed", policy, f"{mode} B={b}", mode, b, 0, False, "", j))
                best = max(best, j["throughput_rps"])
                print(f"closed {policy} {mode} B={b}: {j['throughput_rps']:.0f}/s", file=sys.stderr)
        capacity[policy] = best
        write_csv(os.path.join(args.out, "closed_loop.csv"), closed)
        rate70 = 0.7 * best
        for b in BT_B:
            for t in BT_T:
                j = loadgen(args, runtime_args("per-expert", b, t, False, policy) +
                            ["--rate", f"{rate70:.1f}", "--duration", d])
                opened.append(row("bt", policy, f"per-expert B={b} T={t}", "per-expert", b, t, False, 0.7, j))
                print(f"bt {policy} B={b} T={t}: p99 {j['p99_ms']:.2f} ms", file=sys.stderr)
        for name, mode, b, t, adaptive in METHODS:
            for load in LOADS:
                extra = ["--rate", f"{load * best:.1f}", "--duration", d]
                if abs(load - 0.7) < 1e-9:
                    safe = name.replace(" ", "_").replace("<=", "le").replace("=", "")
                    extra += ["--latencies-out",
                              os.path.join(args.out, "latencies", f"{policy.replace(':', '')}_{safe}.txt")]
                j = loadgen(args, runtime_args(mode, b, t, adaptive, policy) + extra)
                opened.append(row("load", policy, name, mode, b, t, adaptive, load, j))
                print(f"load {policy} {name} {load:.0%}: {j['throughput_rps']:.0f}/s p99 {j['p99_ms']:.2f} ms",
                      file=sys.stderr)
            write_csv(os.path.join(args.out, "open_loop.csv"), opened)
    with open(os.path.join(args.out, "capacity.json"), "w") as f:
        json.dump({p: c for p, c in capacity.items()}, f, indent=1)


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
    tmp = tempfile.mkdtemp()
    port_file = os.path.join(tmp, "port")
    server = subprocess.Popen([args.bin, "serve", "--random-model", "--port", "0", "--port-file", port_file,
                               "--routing", "top-k:2", "--queue-size", "16", "--queue-timeout-us", "200",
                               "--max-inflight", "128", "--http-threads", "320"],
                              stderr=open(os.path.join(tmp, "server.log"), "w"))
    try:
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            time.sleep(0.1)
        url = f"http://127.0.0.1:{open(port_file).read().strip()}"
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
    ap.add_argument("--out", default="docs/experiments/expert-queues")
    ap.add_argument("--duration", type=float, default=1.5, help="seconds per in-process run")
    ap.add_argument("--overload-s", type=float, default=30.0)
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--only-overload", action="store_true")
    ap.add_argument("--images-idx", default="/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
                    help="images to send (IDX); '' for synthetic ones")
    ap.add_argument("--quick", action="store_true", help="tiny grid, for a smoke test of the pipeline")
    args = ap.parse_args()
    if args.quick:
        global ALL_B, BT_B, BT_T, LOADS, METHODS
        ALL_B, BT_B, BT_T, LOADS = [1, 64], [1, 64], [0, -1], [0.3, 0.7]
        METHODS = METHODS[:2] + METHODS[4:]
        args.duration = min(args.duration, 0.3)
        args.overload_s = min(args.overload_s, 3.0)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if not args.only_overload:
        in_process(args)
    if not args.skip_overload:
        overload(args)
    print(f"study done in {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
