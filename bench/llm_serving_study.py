#!/usr/bin/env python3
"""The LLM serving load study (docs/experiments/llm-serving.md).

Starts `deltamoe serve --model MODEL` in each configuration, drives it with
`deltamoe loadgen --openai` and writes one CSV row per run, then plots.

  scaling   closed loop at 1, 2, 4, 8, 16 concurrent streams: output tokens/s and TPOT
  rates     open-loop Poisson at several rates, continuous batching (--max-running 64)
            against no batching (--max-running 1, one sequence at a time): TTFT, TPOT,
            end-to-end percentiles, throughput, goodput under the SLOs
  overload  2x the batched capacity for --overload-s with a small admission queue, then half
            capacity for 20 s in the same run: every request answered 200 or 503 (none
            lost), server RSS before/after, seconds until requests meet the SLOs again
  queues    per-expert queues across steps (an expert runs at B rows or after T) against plain
            continuous batching, under dynamic per-token k (--queue-routing, top-p): closed
            loop at --queue-streams and open-loop Poisson at --queue-rate; from /metrics,
            rows per expert batch (weights read once per batch) and held token-steps

Usage (after a build; the reference model of docs/benchmarks.md):
  python3 bench/llm_serving_study.py --model /path/ref-mixtral --out docs/experiments/llm-serving
Only the Python standard library and Debian's python3-matplotlib.
"""
import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def rss_kb(pid, key="RssAnon"):
    """Resident memory of the server: RssAnon (its own allocations: KV cache, buffers), not
    the mapped checkpoint's page-cache pages that VmRSS also counts."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Server:
    def __init__(self, binary, model, extra):
        self.dir = tempfile.mkdtemp()
        port_file = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen([binary, "serve", "--model", model, "--port", "0",
                                      "--port-file", port_file] + extra,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(600):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            if self.proc.poll() is not None:
                sys.exit(f"server exited: {open(self.log.name).read()}")
            time.sleep(0.1)
        self.port = int(open(port_file).read())
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=600)
        self.log.close()
        return code


def metrics(url):
    """The server's /metrics as {name: value} (unlabelled series only)."""
    import urllib.request
    out = {}
    for line in urllib.request.urlopen(url + "/metrics", timeout=60).read().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            if "{" in name:  # labelled series are summed under NAME{}
                name = name.split("{")[0] + "{}"
                out[name] = out.get(name, 0.0) + float(value)
            else:
                out[name] = float(value)
    return out


def loadgen(binary, url, args):
    out = subprocess.run([binary, "loadgen", "--openai", "--url", url, "--json"] + args,
                         capture_output=True, text=True, timeout=1800)
    if not out.stdout.strip():
        sys.exit(f"loadgen failed: {out.stderr}")
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--binary", default="build/deltamoe")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default="docs/experiments/llm-serving")
    ap.add_argument("--prompt-tokens", default="32:64")
    ap.add_argument("--output-tokens", default="32")
    ap.add_argument("--prompt-ids", default="10:249",
                    help="prompt token ids MIN:MAX (loadgen --prompt-ids; the default is byte "
                         "tokens in make-model's tokenizer)")
    ap.add_argument("--duration", type=float, default=40)
    ap.add_argument("--rates", default="0.1,0.25,0.5,0.75,1.0")
    ap.add_argument("--streams", default="1,2,4,8,16")
    ap.add_argument("--overload-s", type=float, default=30)
    ap.add_argument("--slo-ttft-ms", type=float, default=5000)
    ap.add_argument("--slo-tpot-ms", type=float, default=500)
    ap.add_argument("--parts", default="scaling,rates,overload")
    ap.add_argument("--configs", default="continuous,none", help="rates: which servers")
    ap.add_argument("--capacity", type=float, default=0,
                    help="overload: requests/s the server sustains (default: from scaling)")
    ap.add_argument("--append", action="store_true", help="add to an existing CSV")
    ap.add_argument("--overload-waiting", default="16,4",
                    help="overload: the --max-waiting values to run")
    ap.add_argument("--queue-routing", default="top-p:0.3",
                    help="queues: routing with a per-token number of experts")
    ap.add_argument("--queue-configs", default="continuous,2:1,4:300",
                    help="queues: continuous and B:T_ms pairs of per-expert queues")
    ap.add_argument("--queue-streams", type=int, default=16)
    ap.add_argument("--queue-rate", type=float, default=0.5)
    ap.add_argument("--queue-loads", default="closed,poisson",
                    help="queues: closed (--queue-streams) and/or poisson (--queue-rate)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    parts = a.parts.split(",")
    lengths = ["--prompt-tokens", a.prompt_tokens, "--output-tokens", a.output_tokens,
               "--prompt-ids", a.prompt_ids,
               "--slo-ttft-ms", str(a.slo_ttft_ms), "--slo-tpot-ms", str(a.slo_tpot_ms)]
    rows = []

    def record(part, config, x, r, **extra):
        row = {"part": part, "config": config, "x": x, **extra}
        for k in ("sent", "ok", "not_sent", "output_tokens_per_s", "achieved_rps", "goodput_rps",
                  "slo_attainment", "ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "tpot_p50_ms",
                  "tpot_p90_ms", "tpot_p99_ms", "e2e_p50_ms", "e2e_p99_ms"):
            row[k] = r.get(k)
        row["errors"] = json.dumps(r.get("errors", {}))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    if "scaling" in parts:
        s = Server(a.binary, a.model, [])
        for n in [int(x) for x in a.streams.split(",")]:
            r = loadgen(a.binary, s.url, ["--closed-loop", "--concurrency", str(n),
                                          "--duration", str(a.duration)] + lengths)
            record("scaling", "continuous", n, r)
        s.stop()
    if "rates" in parts:
        for config, extra in (("continuous", []), ("none", ["--max-running", "1"])):
            if config not in a.configs.split(","):
                continue
            s = Server(a.binary, a.model, extra)
            for rate in a.rates.split(","):
                r = loadgen(a.binary, s.url, ["--rate", rate, "--duration", str(a.duration),
                                              "--concurrency", "256"] + lengths)
                record("rates", config, float(rate), r)
            s.stop()
    if "overload" in parts:
        # Capacity from the scaling part (16 streams), else --capacity. One run per admission
        # queue bound: 2x capacity for --overload-s, then half capacity for 20 s in the same
        # run; recovery_s = from the end of the overload until every later request met the SLOs.
        cap = a.capacity or max(
            [row["achieved_rps"] for row in rows if row["part"] == "scaling"] or [1.0])
        for waiting in a.overload_waiting.split(","):
            s = Server(a.binary, a.model, ["--max-running", "16", "--max-waiting", waiting])
            rss0 = rss_kb(s.proc.pid)
            timeline = os.path.join(a.out, f"llm-serving-overload-w{waiting}.csv")
            r = loadgen(a.binary, s.url, ["--rate", f"{2 * cap:.3f}", "--duration",
                                          str(a.overload_s), "--then-rate", f"{0.5 * cap:.3f}",
                                          "--then-duration", "20", "--concurrency", "512",
                                          "--grace", "600", "--timeline-out", timeline] + lengths)
            record("overload", f"max-waiting {waiting}", 2 * cap, r, rss_before_kb=rss0,
                   rss_after_kb=rss_kb(s.proc.pid), recovery_s=r.get("recovery_s"))
            code = s.stop()
            print(f"overload server exit {code}", file=sys.stderr)

    if "queues" in parts:
        for config in a.queue_configs.split(","):
            extra = ["--routing", a.queue_routing]
            if config != "continuous":
                b, t_ms = config.split(":")
                extra += ["--mode", "per-expert", "--queue-size", b,
                          "--queue-timeout-us", str(int(float(t_ms) * 1000))]
                config = f"B={b} T={t_ms}ms"
            for load in a.queue_loads.split(","):
                s = Server(a.binary, a.model, extra)
                args = (["--closed-loop", "--concurrency", str(a.queue_streams)] if load == "closed"
                        else ["--rate", str(a.queue_rate), "--concurrency", "256"])
                r = loadgen(a.binary, s.url, args + ["--duration", str(a.duration)] + lengths)
                m = metrics(s.url)
                runs = m.get("deltamoe_llm_expert_runs_total", 0)
                rows_run = m.get("deltamoe_llm_expert_tokens_total{}", 0)
                x = a.queue_streams if load == "closed" else a.queue_rate
                record("queues", config, x, r, load=load,
                       mean_experts=m.get("deltamoe_llm_mean_experts_per_token"),
                       rows_per_expert_run=rows_run / runs if runs else None,
                       held_token_steps=m.get("deltamoe_llm_held_token_steps_total"),
                       steps=m.get("deltamoe_llm_steps_total"))
                s.stop()

    path = os.path.join(a.out, "llm-serving.csv")
    if a.append and os.path.exists(path):
        with open(path) as f:
            old = list(csv.DictReader(f))
        for row in old:
            for k in row:
                if k in ("x", "recovery_s", "mean_experts", "rows_per_expert_run",
                         "held_token_steps", "steps") or k.endswith(
                        ("_ms", "_rps", "_per_s", "_kb", "attainment")) or k in (
                        "sent", "ok", "not_sent"):
                    row[k] = float(row[k]) if row[k] not in ("", None) else None
        # A new run of a (part, config, x) replaces the old one.
        # A new run replaces the old rows of its part (of its server config, for rates).
        def key(r):
            return (r["part"], r["config"] if r["part"] in ("rates", "queues") else None)
        new_keys = {key(r) for r in rows}
        rows = [r for r in old if key(r) not in new_keys] + rows
    keys = sorted({k for row in rows for k in row})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(path)
    plot(rows, a.out)


def plot(rows, out):
    try:
        import matplotlib
    except ImportError:
        # The CSV is the result; the plots are a convenience.
        print("matplotlib not found: plots skipped (the CSV has every figure)", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sc = [r for r in rows if r["part"] == "scaling"]
    if sc:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        x = [r["x"] for r in sc]
        ax[0].plot(x, [r["output_tokens_per_s"] for r in sc], "o-")
        ax[0].set_xlabel("concurrent streams (closed loop)")
        ax[0].set_ylabel("output tokens/s")
        ax[0].set_xscale("log", base=2)
        ax[1].plot(x, [r["tpot_p50_ms"] for r in sc], "o-", label="p50")
        ax[1].plot(x, [r["tpot_p99_ms"] for r in sc], "s--", label="p99")
        ax[1].set_xlabel("concurrent streams (closed loop)")
        ax[1].set_ylabel("time per output token (ms)")
        ax[1].set_xscale("log", base=2)
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "llm-serving-scaling.png"), dpi=110)
    rt = [r for r in rows if r["part"] == "rates"]
    if rt:
        fig, ax = plt.subplots(1, 3, figsize=(14, 4))
        for config, style in (("continuous", "o-"), ("none", "s--")):
            rr = sorted([r for r in rt if r["config"] == config], key=lambda r: r["x"])
            x = [r["x"] for r in rr]
            label = "continuous batching" if config == "continuous" else "no batching"
            ax[0].plot(x, [r["ttft_p50_ms"] / 1e3 for r in rr], style, label=label + " p50")
            ax[0].plot(x, [r["ttft_p99_ms"] / 1e3 for r in rr], style, alpha=0.5,
                       label=label + " p99")
            ax[1].plot(x, [r["tpot_p99_ms"] for r in rr], style, label=label)
            ax[2].plot(x, [r["goodput_rps"] for r in rr], style, label=label)
        ax[0].set_ylabel("time to first token (s)")
        ax[0].set_yscale("log")
        ax[1].set_ylabel("p99 time per output token (ms)")
        ax[2].set_ylabel("goodput (requests/s within the SLOs)")
        for a_ in ax:
            a_.set_xlabel("offered load (requests/s, Poisson)")
            a_.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "llm-serving-rates.png"), dpi=110)
    qu = [r for r in rows if r["part"] == "queues" and r.get("load") == "closed"]
    if qu:
        fig, ax = plt.subplots(1, 3, figsize=(14, 4))
        names = [r["config"] for r in qu]
        pos = list(range(len(qu)))
        ax[0].bar(pos, [r["output_tokens_per_s"] for r in qu])
        ax[0].set_ylabel("output tokens/s")
        ax[1].bar([p - 0.2 for p in pos], [r["tpot_p50_ms"] for r in qu], 0.4, label="p50")
        ax[1].bar([p + 0.2 for p in pos], [r["tpot_p99_ms"] for r in qu], 0.4, label="p99")
        ax[1].set_ylabel("time per output token (ms)")
        ax[1].set_yscale("log")
        ax[1].legend()
        ax[2].bar(pos, [r["rows_per_expert_run"] for r in qu])
        ax[2].set_ylabel("rows per expert batch (weights read once)")
        for a_ in ax:
            a_.set_xticks(pos)
            a_.set_xticklabels(names, fontsize=8)
        fig.suptitle("per-expert queues across steps vs continuous batching "
                     "(closed loop, dynamic k)")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "llm-serving-queues.png"), dpi=110)


if __name__ == "__main__":
    main()
