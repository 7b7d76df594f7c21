#!/usr/bin/env python3
"""Expert parallelism on this machine, measured, and a model of it at 8-64 ranks.

Runs `deltamoe bench model` on one model in one process (2 threads) and under
`mpirun -np N ... --parallel ep` with each expert placement, alternating the configurations
round by round (A B C A B C ...) because the machine is noisy, and writes every run's JSON and
the medians (bench/results/parallel_study.json). Then it fits a cost model of expert
parallelism to those runs (compute rate from the one-process run, the all-to-all's latency and
bandwidth from the probe each parallel run makes), checks its np = 2 and 4 predictions against
the measurements, and evaluates it, with tensor and expert slicing beside it, at 8-64 ranks on
stated networks (docs/experiments/parallel.md).

  python3 bench/parallel_study.py --model /work/peer/models/ref-mixtral --rounds 3
  python3 bench/parallel_study.py --replot   # the model and tables again from the saved runs
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
# (name, ranks, extra flags)
CONFIGS = [("np1", 1, []),
           ("np2_balanced", 2, ["--parallel", "ep", "--ep-placement", "balanced"]),
           ("np2_dynamic", 2, ["--parallel", "ep", "--ep-placement", "dynamic"]),
           ("np2_contiguous", 2, ["--parallel", "ep", "--ep-placement", "contiguous"]),
           ("np4_balanced", 4, ["--parallel", "ep", "--ep-placement", "balanced"]),
           ("np2_es", 2, ["--parallel", "es"]),
           ("np2_tp", 2, ["--parallel", "tp"]),
           ("np4_tp", 4, ["--parallel", "tp"]),
           ("np2_auto", 2, ["--parallel", "auto"]),
           ("np4_auto", 4, ["--parallel", "auto"]),
           ("np4_auto_top1", 4, ["--parallel", "auto", "--routing", "top-k:1"]),
           ("np4_tp_top1", 4, ["--parallel", "tp", "--routing", "top-k:1"])]
# Networks of the scaling model: (name, bandwidth GB/s per rank, latency s per message).
NETWORKS = [("25 GbE", 25e9 / 8 / 1e9, 5e-6), ("100 GbE", 100e9 / 8 / 1e9, 3e-6),
            ("200 Gb InfiniBand", 200e9 / 8 / 1e9, 1.5e-6)]


def lscpu():
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = {}
    for line in out.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("Model name", "Flags", "CPU(s)"):
            info[k.strip()] = v.strip()
    return info


def run_one(binary, model, ranks, flags, prompt, gen, reps):
    cmd = [binary, "bench", "model", "--model", model, "-p", str(prompt), "-n", str(gen),
           "-r", str(reps), "--json"] + flags
    env = dict(os.environ)
    if ranks > 1:
        cmd = ["mpirun", "-np", str(ranks), "--oversubscribe"] + cmd
        env.update(MPI_ENV)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"parallel_study: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    d = json.loads(p.stdout)
    d["wall_s"] = time.time() - t0
    return d


def summarise(runs):
    by = {}  # configurations in the order they ran
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    base = {r["round"]: r["result"] for r in runs if r["config"] == "np1"}
    out = {}
    for name, rs in by.items():
        pp = [r["result"]["pp_tokens_per_s"] for r in rs]
        tg = [r["result"]["tg_tokens_per_s"] for r in rs]
        s = {"runs": len(rs), "pp_tokens_per_s_median": statistics.median(pp),
             "tg_tokens_per_s_median": statistics.median(tg), "pp_tokens_per_s": pp,
             "tg_tokens_per_s": tg}
        if name != "np1":
            s["pp_ratio_to_np1_same_round"] = [r["result"]["pp_tokens_per_s"] / base[r["round"]]["pp_tokens_per_s"]
                                               for r in rs if r["round"] in base]
            s["tg_ratio_to_np1_same_round"] = [r["result"]["tg_tokens_per_s"] / base[r["round"]]["tg_tokens_per_s"]
                                               for r in rs if r["round"] in base]
            s["pp_ratio_median"] = statistics.median(s["pp_ratio_to_np1_same_round"])
            s["tg_ratio_median"] = statistics.median(s["tg_ratio_to_np1_same_round"])
            par = [r["result"]["parallel"] for r in rs]
            for phase in ("pp", "tg"):
                s[f"{phase}_bytes_per_token_per_moe_layer"] = statistics.median(
                    p[phase]["bytes_per_token_per_moe_layer"] for p in par)
                # --parallel auto has no single traffic model: its per-layer choices instead.
                if all("bytes_over_predicted" in p[phase] for p in par):
                    s[f"{phase}_bytes_over_predicted"] = statistics.median(
                        p[phase]["bytes_over_predicted"] for p in par)
                if "ffn_choices" in par[0][phase]:
                    s[f"{phase}_ffn_ep_layers"] = [p[phase]["ffn_choices"]["ep_layers"] for p in par]
                    s[f"{phase}_ffn_es_layers"] = [p[phase]["ffn_choices"]["es_layers"] for p in par]
                s[f"{phase}_comm_time_share"] = statistics.median(p[phase]["comm_time_share"] for p in par)
            s["a2a_latency_us"] = statistics.median(p["all_to_all_probe"]["latency_us"] for p in par)
            s["a2a_bandwidth_gbps"] = statistics.median(p["all_to_all_probe"]["bandwidth_gbps"] for p in par)
        out[name] = s
    return out


def layer_model(cfg, tokens, ranks, layout, compute_s_per_token_layer, att_share, bw_gbps, lat_s,
                k):
    """Seconds per decoder layer for `tokens` rows over `ranks` ranks in one layout.

    compute_s_per_token_layer: one rank's compute per token and layer (all of it: attention
    and experts), att_share: the part of it that is attention, norms, router (per token).
    """
    h, kv, p = cfg["hidden"], cfg["kv"], ranks
    c = compute_s_per_token_layer * tokens
    if p == 1:
        return c, 0.0
    msg = lambda nbytes, msgs: msgs * lat_s + nbytes / (bw_gbps * 1e9)
    if layout == "ep":  # rows split; all-to-all out and back; K/V all-gather
        rows = tokens / p
        a2a = rows * k * (p - 1) / p * (4 * h + 4)
        comm = 2 * msg(a2a, p - 1) + msg(rows * 8 * kv * (p - 1), p - 1) + msg(8 * (p - 1), p - 1)
        return c / p, comm
    if layout == "tp":  # heads and expert columns sliced: two all-reduces of [T, H] per layer
        ar = 2 * (p - 1) / p * tokens * 4 * h
        return c / p, 2 * msg(ar, 2 * (p - 1))
    if layout == "es":  # attention replicated, each expert's intermediate split: one all-reduce
        ar = 2 * (p - 1) / p * tokens * 4 * h
        return c * att_share + c * (1 - att_share) / p, msg(ar, 2 * (p - 1))
    raise ValueError(layout)


def scaling(summary, runs, cfg):
    np1 = summary["np1"]
    layers = cfg["layers"]
    # One rank = this 2-core machine: the one-process run's time per token and layer.
    pp_s = 1.0 / np1["pp_tokens_per_s_median"] / layers
    tg_s = 1.0 / np1["tg_tokens_per_s_median"] / layers
    att = cfg["attention_share"]
    k = cfg["experts_per_token"]
    out = {"check": [], "grid": []}
    # Check: np = 2 and 4 here, one core per rank (a rank has half this machine's compute at
    # np = 2 and a quarter at np = 4, time-sliced), the probe's shared-memory latency and bandwidth.
    for name, ranks, layout in (("np2_balanced", 2, "ep"), ("np4_balanced", 4, "ep"),
                                ("np2_es", 2, "es"), ("np2_tp", 2, "tp"), ("np4_tp", 4, "tp")):
        if name not in summary:
            continue
        s = summary[name]
        comp, comm = layer_model(cfg, 512, ranks, layout, pp_s * 2, att, s["a2a_bandwidth_gbps"],
                                 s["a2a_latency_us"] * 1e-6, k)
        comp *= max(1.0, ranks / 2.0)  # more ranks than the 2 cores: time-sliced
        pred_tps = 512 / (layers * (comp + comm))
        meas = s["pp_tokens_per_s_median"]
        out["check"].append({"config": name, "layout": layout, "predicted_pp_tokens_per_s": pred_tps,
                             "measured_pp_tokens_per_s": meas, "measured_over_predicted": meas / pred_tps,
                             "predicted_comm_ms_per_layer": 1e3 * comm,
                             "measured_comm_ms_per_layer": 1e3 * s["pp_comm_time_share"] * 512 / meas / layers})
    for net, bw, lat in NETWORKS:
        for ranks in (1, 2, 4, 8, 16, 32, 64):
            for phase, tokens, per_tok in (("prefill_512", 512, pp_s), ("decode_batch_32", 32, tg_s),
                                           ("decode_batch_1", 1, tg_s)):
                row = {"network": net, "ranks": ranks, "phase": phase}
                for layout in ("ep", "tp", "es"):
                    comp, comm = layer_model(cfg, tokens, ranks, layout, per_tok, att, bw, lat, k)
                    row[f"{layout}_ms_per_layer"] = 1e3 * (comp + comm)
                    row[f"{layout}_comm_share"] = comm / (comp + comm) if comp + comm > 0 else 0
                row["best"] = min(("ep", "tp", "es"), key=lambda l: row[f"{l}_ms_per_layer"])
                out["grid"].append(row)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/work/peer/models/ref-mixtral")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "deltamoe"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--configs", default=",".join(c[0] for c in CONFIGS))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "parallel_study.json"))
    ap.add_argument("--replot", action="store_true", help="recompute summary and model from --out")
    a = ap.parse_args()
    if a.replot:
        data = json.load(open(a.out))
        runs = data["runs"]
    else:
        wanted = a.configs.split(",")
        runs = []
        for rnd in range(a.rounds):
            for name, ranks, flags in CONFIGS:
                if name not in wanted:
                    continue
                print(f"round {rnd + 1}/{a.rounds}: {name}", file=sys.stderr, flush=True)
                d = run_one(a.bin, a.model, ranks, flags, a.prompt, a.gen, a.reps)
                runs.append({"round": rnd, "config": name, "ranks": ranks, "result": d})
                print(f"  pp {d['pp_tokens_per_s']:.1f} tg {d['tg_tokens_per_s']:.2f} tokens/s",
                      file=sys.stderr, flush=True)
        data = {"model": a.model, "cpu": lscpu(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                "command": " ".join(sys.argv), "runs": runs}
    cfg_json = json.load(open(os.path.join(data["model"], "config.json")))
    h = cfg_json["hidden_size"]
    heads = cfg_json["num_attention_heads"]
    kvh = cfg_json.get("num_key_value_heads", heads)
    d = cfg_json.get("head_dim") or h // heads
    inter = cfg_json.get("intermediate_size") or cfg_json.get("moe_intermediate_size")
    k = cfg_json.get("num_experts_per_tok", 2)
    # Attention's share of a token's FLOPs at 512 tokens: projections + causal scores.
    att_flops = 2 * h * (heads * d + 2 * kvh * d) + 2 * heads * d * h + 2 * 2 * heads * d * 256
    exp_flops = k * 3 * 2 * h * inter
    cfg = {"layers": cfg_json["num_hidden_layers"], "hidden": h, "kv": kvh * d,
           "experts_per_token": k, "attention_share": att_flops / (att_flops + exp_flops)}
    data["summary"] = summarise(data["runs"])
    data["model_config"] = cfg
    data["scaling_model"] = scaling(data["summary"], data["runs"], cfg)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, a.out)
    s = data["summary"]
    print(f"{'config':16} {'pp512 tok/s':>12} {'x np1':>6} {'tg tok/s':>9} {'x np1':>6} {'B/tok/layer pp':>15} {'vs model':>8} {'comm share pp':>13}")
    for name, v in s.items():
        print(f"{name:16} {v['pp_tokens_per_s_median']:12.1f} {v.get('pp_ratio_median', 1):6.2f} "
              f"{v['tg_tokens_per_s_median']:9.2f} {v.get('tg_ratio_median', 1):6.2f} "
              f"{v.get('pp_bytes_per_token_per_moe_layer', 0):15.0f} {v.get('pp_bytes_over_predicted', 0):8.3f} "
              f"{v.get('pp_comm_time_share', 0):13.2f}")
    for c in data["scaling_model"]["check"]:
        print(f"model check {c['config']}: predicted {c['predicted_pp_tokens_per_s']:.1f} pp tokens/s, "
              f"measured {c['measured_pp_tokens_per_s']:.1f} ({c['measured_over_predicted']:.2f}x); comm "
              f"{c['predicted_comm_ms_per_layer']:.2f} ms/layer predicted, {c['measured_comm_ms_per_layer']:.2f} measured")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
