#!/usr/bin/env python3
"""Swap plans on the exported training graphs (issue 17, item 3; dev-only, standard library
plus the built deltamoe_sched package).

For each graph of bench/graphs: the least-peak order deltamoe finds (deltamoe_sched.order,
--order-time-limit seconds), then at each budget (a share of that order's peak) the swap plan
two ways: outputs kept on the device as the memory model says (feasible or not, the least
budget, the greedy's bytes) and outputs allowed to end on the host after their last use
(greedy, then the exact ILP on CBC within --ilp-time-limit, --ilp-time-limit-80 at 80%). Every
plan is re-checked by python/memgraph_sim.py's check_swaps, an independent implementation of
the rules: memory never exceeds the budget and the bytes moved are what the plan says.

    PYTHONPATH=build/python python3 bench/swap_study.py --out bench/results/swap_study.json

prints one JSON object (also written to --out); progress goes to stderr.
"""
import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# After PYTHONPATH: python/ holds the package's sources without the compiled _core.
sys.path.append(os.path.join(HERE, "..", "python"))
import memgraph_sim  # noqa: E402
import peer_common  # noqa: E402  (bench/, beside this script)
import deltamoe_sched  # noqa: E402


def study_graph(path, budgets, order_limit, ilp_limit, ilp_limit_80, overlap):
    t0 = time.time()
    g = memgraph_sim.load(path)
    r = deltamoe_sched.order(path, time_limit=order_limit)
    order = r["order"]
    row = {"graph": os.path.basename(path).replace(".json.gz", ""), "nodes": r["nodes"],
           "order_peak_bytes": r["peak_bytes"], "order_proven_optimal": r["proven_optimal"],
           "order_algorithm": r["algorithm"], "budgets": []}
    for frac in budgets:
        b = {"fraction": frac}
        for to_host in (False, True):
            limit = ilp_limit_80 if abs(frac - 0.8) < 1e-9 else ilp_limit
            p = deltamoe_sched.swap_plan(path, order, float(frac), overlap_steps=overlap,
                                         outputs_to_host=to_host,
                                         method="auto" if to_host else "greedy",
                                         time_limit=limit)
            e = {k: p[k] for k in ("budget_bytes", "feasible", "min_budget_bytes", "method",
                                   "bytes_moved", "bytes_to_host", "bytes_from_host",
                                   "greedy_bytes_moved", "peak_bytes", "proven_optimal",
                                   "steps_over_budget", "candidates", "seconds")}
            e["swaps"] = len(p["swaps"])
            e["ilp"] = p["ilp"]
            if p["feasible"]:
                peak, out, back = memgraph_sim.check_swaps(g, order, p)
                assert peak <= p["budget_bytes"], (path, frac, peak, p["budget_bytes"])
                assert out == p["bytes_to_host"] and back == p["bytes_from_host"], (path, frac)
                e["checked_peak_bytes"] = peak
            b["outputs_to_host" if to_host else "outputs_on_device"] = e
        row["budgets"].append(b)
    row["seconds"] = time.time() - t0
    return row


def summarise(rows, budgets):
    s = {}
    for frac in budgets:
        key = f"{int(round(frac * 100))}%"
        dev = feas_dev = feas = ilp_done = 0
        ratios, bound_ratios, moved_share = [], [], []
        for row in rows:
            b = next(x for x in row["budgets"] if abs(x["fraction"] - frac) < 1e-9)
            dev += 1
            feas_dev += b["outputs_on_device"]["feasible"]
            h = b["outputs_to_host"]
            if not h["feasible"]:
                continue
            feas += 1
            moved_share.append(h["bytes_moved"] / row["order_peak_bytes"])
            ilp = h["ilp"]
            if ilp and ilp["bytes_moved"] is not None and ilp["status"].startswith("optimal"):
                ilp_done += 1
                if ilp["bytes_moved"] > 0:
                    ratios.append(h["greedy_bytes_moved"] / ilp["bytes_moved"])
            if ilp and ilp["lower_bound_bytes"] > 0:
                bound_ratios.append(h["greedy_bytes_moved"] / ilp["lower_bound_bytes"])
        s[key] = {
            "graphs": dev,
            "feasible_outputs_on_device": feas_dev,
            "feasible_outputs_to_host": feas,
            "ilp_optimal": ilp_done,
            "greedy_over_ilp_max": max(ratios) if ratios else None,
            "greedy_over_ilp_mean": sum(ratios) / len(ratios) if ratios else None,
            "greedy_at_ilp_optimum": sum(1 for x in ratios if x <= 1 + 1e-12),
            "greedy_over_lower_bound_max": max(bound_ratios) if bound_ratios else None,
            "bytes_moved_over_peak_median": sorted(moved_share)[len(moved_share) // 2]
            if moved_share else None,
        }
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", default=os.path.join(HERE, "graphs", "*.json.gz"))
    ap.add_argument("--budgets", default="0.9,0.8,0.7,0.6,0.5",
                    help="shares of the order's peak (default 0.9,0.8,0.7,0.6,0.5)")
    ap.add_argument("--order-time-limit", type=float, default=10.0)
    ap.add_argument("--ilp-time-limit", type=float, default=10.0)
    ap.add_argument("--ilp-time-limit-80", type=float, default=30.0)
    ap.add_argument("--overlap-steps", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="graphs studied at once (default 2)")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    budgets = [float(x) for x in a.budgets.split(",")]
    paths = sorted(glob.glob(a.graphs))
    if not paths:
        sys.exit(f"swap_study: no graph matches {a.graphs}")
    if not deltamoe_sched.ilp_available():
        print("swap_study: the ILP (CBC) is not built: greedy only", file=sys.stderr)
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as ex:
        futs = {ex.submit(study_graph, p, budgets, a.order_time_limit, a.ilp_time_limit,
                          a.ilp_time_limit_80, a.overlap_steps): p for p in paths}
        for f in concurrent.futures.as_completed(futs):
            row = f.result()
            rows.append(row)
            b80 = next((x for x in row["budgets"] if abs(x["fraction"] - 0.8) < 1e-9), None)
            msg = ""
            if b80:
                h = b80["outputs_to_host"]
                msg = (f" 80%: feasible {h['feasible']}, greedy {h['greedy_bytes_moved']}, "
                       f"ilp {h['ilp'] and h['ilp']['bytes_moved']}")
            print(f"[{len(rows)}/{len(paths)}] {row['graph']}: {row['seconds']:.1f} s{msg}",
                  file=sys.stderr)
    rows.sort(key=lambda r: r["graph"])
    out = {
        "study": "swap plans on the exported training graphs",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": peer_common.cpu_info(),
        "command": " ".join(["python3"] + sys.argv),
        "overlap_steps": a.overlap_steps,
        "budgets": budgets,
        "summary": summarise(rows, budgets),
        "graphs": rows,
    }
    text = json.dumps(out, indent=1)
    if a.out:
        peer_common.write_json_atomic(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
