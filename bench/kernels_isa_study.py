#!/usr/bin/env python3
"""The MoE layer on every kernel path this CPU has, in one run: `deltamoe bench moe-layer` per
dtype (f32, bf16, int8) with the kernels capped by DELTAMOE_ISA (default = the best path, e.g.
AMX; avx512; avx2), alternated round by round with a baseline binary (an older build, e.g. the
commit before a kernel change) on the same caps, so that "nothing got slower on the lower paths"
and "the new path is N times faster" come from the same minutes. The default path also times
oneDNN (--onednn: weights as stored and prepacked). Medians over rounds; one JSON object on stdout,
progress on stderr.

  python3 bench/kernels_isa_study.py --deltamoe build/deltamoe --baseline /work/old/build/deltamoe \\
      --rounds 3 > bench/results/kernels_isa_study.json
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_bench(binary, dtype, isa, tokens, onednn, extra):
    env = dict(os.environ)
    env.pop("DELTAMOE_ISA", None)
    if isa != "default":
        env["DELTAMOE_ISA"] = isa
    cmd = [binary, "bench", "moe-layer", "--dtype", dtype, "--tokens", *[str(t) for t in tokens],
           "--skip-naive", "--json", *extra]
    if onednn:
        cmd.append("--onednn")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"kernels_isa_study: {' '.join(cmd)} failed: "
                 f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deltamoe", default="build/deltamoe", help="binary under test (default build/deltamoe)")
    ap.add_argument("--baseline", help="older binary run on the same caps (default: none)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--dtypes", default="f32,bf16,int8", help="dtypes (default f32,bf16,int8)")
    ap.add_argument("--isas", default="default,avx512,avx2", help="DELTAMOE_ISA caps (default default,avx512,avx2)")
    ap.add_argument("--tokens", default="1,16,128,512", help="token counts (default 1,16,128,512)")
    ap.add_argument("--no-onednn", action="store_true", help="skip oneDNN on the default path")
    ap.add_argument("--min-seconds", default="0.3", help="bench --min-seconds (default 0.3)")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be >= 1")
    tokens = [int(t) for t in a.tokens.split(",")]
    dtypes, isas = a.dtypes.split(","), a.isas.split(",")
    extra = ["--min-seconds", a.min_seconds]
    binaries = [("new", a.deltamoe)] + ([("baseline", a.baseline)] if a.baseline else [])
    times = {}  # (which, dtype, isa, key) -> [ms per round]
    first = {}
    for rnd in range(a.rounds):
        for dtype in dtypes:
            for isa in isas:
                for which, binary in binaries:
                    onednn = which == "new" and isa == "default" and not a.no_onednn
                    d = run_bench(binary, dtype, isa, tokens, onednn, extra)
                    first.setdefault(f"{which}/{dtype}/{isa}", {k: v for k, v in d.items() if k != "results"})
                    for r in d["results"]:
                        t = r["tokens"]
                        for key in ("time_ms", "onednn_time_ms", "onednn_prepacked_time_ms",
                                    "frac_of_bandwidth_roofline", "frac_of_same_bytes_stream"):
                            if key in r:
                                times.setdefault(f"{which}/{dtype}/{isa}/{key}/{t}", []).append(r[key])
                    log(f"round {rnd + 1}/{a.rounds} {which} {dtype} {isa}: " + " ".join(
                        f"T={r['tokens']} {r['time_ms']:.3f} ms" for r in d["results"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    table = []
    for dtype in dtypes:
        for isa in isas:
            for t in tokens:
                row = {"dtype": dtype, "isa": isa, "tokens": t,
                       "kernel": first[f"new/{dtype}/{isa}"]["kernel"],
                       "time_ms": med[f"new/{dtype}/{isa}/time_ms/{t}"],
                       "runs_ms": times[f"new/{dtype}/{isa}/time_ms/{t}"]}
                if a.baseline:
                    b = med[f"baseline/{dtype}/{isa}/time_ms/{t}"]
                    row["baseline_time_ms"] = b
                    row["baseline_kernel"] = first[f"baseline/{dtype}/{isa}"]["kernel"]
                    row["speedup_vs_baseline"] = b / row["time_ms"]
                for key in ("onednn_time_ms", "onednn_prepacked_time_ms", "frac_of_bandwidth_roofline",
                            "frac_of_same_bytes_stream"):
                    k = f"new/{dtype}/{isa}/{key}/{t}"
                    if k in med:
                        row[key] = med[k]
                if "onednn_time_ms" in row:
                    row["speedup_vs_onednn"] = row["onednn_time_ms"] / row["time_ms"]
                if "onednn_prepacked_time_ms" in row:
                    row["speedup_vs_onednn_prepacked"] = row["onednn_prepacked_time_ms"] / row["time_ms"]
                f32 = f"new/f32/{isa}/time_ms/{t}"
                if dtype != "f32" and f32 in med:
                    row["speedup_vs_f32_same_isa"] = med[f32] / row["time_ms"]
                table.append(row)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((l.split(":", 1)[1].strip() for l in lscpu.splitlines() if l.startswith("Model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in lscpu.splitlines() if l.startswith("Flags")), [])
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))]
    json.dump({"benchmark": "kernels_isa_study", "time_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "cpu_model_name": model, "cpu_flags": keep, "rounds": a.rounds,
               "binaries": dict(binaries), "first_run": first, "results": table}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
