#!/usr/bin/env python3
"""Where the CPU goes when `deltamoe serve` is loaded over loopback HTTP: server vs client.

Starts one server (the small study model, per-expert B = 16, T = 200 us, default HTTP flags),
then for each (rate, connections) runs `deltamoe loadgen --url ... --rate R --concurrency C`
for --duration seconds and reads the CPU time both processes used meanwhile (the server's from
/proc/PID/stat, the client's from its rusage). On a 2-core machine the client shares the cores
with the server, so a goodput figure at overload is only meaningful beside these shares.

Prints one JSON object on stdout: {"rows": [{rate_rps, connections, server_cores, client_cores,
ok_per_s (200s that arrived inside the --duration window, over its length: the loadgen's
throughput_rps), rejected_503_per_s (over the loadgen's wall time, which runs past --duration
while the client works off a backlog), loadgen_wall_s, p50_ms, server_cpu_us_per_request}, ...], "server": {...}}.
Usage: python3 bench/http_cpu.py --bin build/deltamoe [--model M] [--rates 3000,10000,20000]
       [--connections 16,256] [--duration 5]
"""
import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

from queue_common import start_server

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime (fields 14, 15)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/deltamoe")
    ap.add_argument("--model", default="out/queue-study/top2.safetensors")
    ap.add_argument("--rates", default="3000,10000,20000", help="offered requests/s, comma-separated")
    ap.add_argument("--connections", default="16,256", help="client connections, comma-separated")
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    if not os.path.exists(args.model):
        sys.exit(f"http_cpu: {args.model} is missing (bench/queue_study.py trains it)")
    serve_args = ["--model", args.model, "--routing", "top-k:2", "--queue-size", "16", "--queue-timeout-us", "200"]
    server, url, _ = start_server(args.bin, serve_args)
    rows = []
    try:
        for conns in [int(c) for c in args.connections.split(",")]:
            for rate in [float(r) for r in args.rates.split(",")]:
                s0, t0 = proc_cpu_s(server.pid), time.monotonic()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = subprocess.run([args.bin, "loadgen", "--url", url, "--rate", f"{rate:.0f}", "--duration",
                                      str(args.duration), "--concurrency", str(conns), "--json"],
                                     capture_output=True, text=True, timeout=600)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                s1, t1 = proc_cpu_s(server.pid), time.monotonic()
                if out.returncode != 0:
                    sys.exit(f"http_cpu: loadgen failed: {out.stderr.strip()}")
                j = json.loads(out.stdout)
                wall = t1 - t0
                client_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                answered = j["requests_ok"] + sum(j.get("errors", {}).values())
                row = {"rate_rps": rate, "connections": conns, "server_cores": (s1 - s0) / wall,
                       "client_cores": client_s / wall, "ok_per_s": j["throughput_rps"],
                       "rejected_503_per_s": j.get("errors", {}).get("503", 0) / j["wall_s"],
                       "loadgen_wall_s": j["wall_s"],
                       "p50_ms": j.get("p50_ms"),
                       "server_cpu_us_per_request": (s1 - s0) * 1e6 / answered if answered else None}
                rows.append(row)
                print(f"http_cpu: {conns} connections, {rate:.0f} req/s: server {row['server_cores']:.2f} cores, "
                      f"client {row['client_cores']:.2f}, {row['ok_per_s']:.0f} answered 200 per s", file=sys.stderr)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    print(json.dumps({"server": {"command": "serve " + " ".join(serve_args)}, "duration_s": args.duration, "rows": rows}))


if __name__ == "__main__":
    main()
