// `deltamoe schedule`: order memgraph-v1 graphs for least peak memory.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/units.h"
#include "deltamoe/io/output.h"
#include "deltamoe/sched/fusion.h"
#include "deltamoe/sched/schedule.h"
#include "deltamoe/sched/swap.h"

namespace {

using nlohmann::ordered_json;
using namespace deltamoe::sched;

const char* kAlgoHelp =
    "Algorithm (default auto):\n"
    "  auto     every baseline, then the SP-optimal order when the graph is series-parallel;\n"
    "           otherwise the SP-ized order, the ILP (<= 300 nodes, unless --no-ilp), exact\n"
    "           best-first search and local search within --time-limit; never worse than\n"
    "           the best baseline\n"
    "  sp       SP-optimal order (Kayaaslan et al. 2018); SP-ized order if not SP\n"
    "  ilp      exact ILP on COIN-OR CBC (when built), warm-started from the best baseline\n"
    "  exact    best-first search over down-sets with a proven lower bound\n"
    "  lpmf     PyTorch Inductor's least-peak-memory-first greedy\n"
    "  bfs      Inductor's BFS: Kahn, earliest-executed predecessors first\n"
    "  dfs      Inductor's DFS: post-order, smallest (output + input bytes) first\n"
    "  xla      XLA's list scheduler: most (bytes freed - bytes defined) first\n"
    "  program  the order of the file";

ordered_json fusion_json(const Graph& g, const FusionReport& rep) {
  uint64_t saved_all = 0, saved_safe = 0;
  int64_t raise = 0, lower = 0;
  for (const auto& c : rep.candidates) {
    saved_all += c.traffic_saved_bytes;
    if (c.peak_delta > 0)
      ++raise;
    else
      saved_safe += c.traffic_saved_bytes;
    if (c.peak_delta < 0) ++lower;
  }
  std::vector<FusionCandidate> top = rep.candidates;
  std::stable_sort(top.begin(), top.end(), [](const FusionCandidate& a, const FusionCandidate& b) {
    return a.traffic_saved_bytes > b.traffic_saved_bytes;
  });
  if (top.size() > 20) top.resize(20);
  ordered_json pairs = ordered_json::array();
  for (const auto& c : top) {
    pairs.push_back({{"producer", g.nodes[c.producer].id},
                     {"producer_name", g.nodes[c.producer].name},
                     {"consumer", g.nodes[c.consumer].id},
                     {"consumer_name", g.nodes[c.consumer].name},
                     {"traffic_saved_bytes", c.traffic_saved_bytes},
                     {"fused_peak_bytes", c.fused_peak},
                     {"peak_delta_bytes", c.peak_delta}});
  }
  return {{"candidates", rep.candidates.size()},
          {"raise_peak", raise},
          {"lower_peak", lower},
          {"traffic_saved_bytes_all", saved_all},
          {"traffic_saved_bytes_not_raising_peak", saved_safe},
          {"top_by_traffic", pairs}};
}

void print_swap_human(std::ostream& os, const SwapPlan& p, const SwapOptions& opt) {
  const double pct = p.order_peak_bytes ? 100.0 * static_cast<double>(p.budget_bytes) /
                                              static_cast<double>(p.order_peak_bytes)
                                        : 0.0;
  std::ostringstream s;
  s << std::fixed << std::setprecision(1);
  s << "  swap plan         budget " << deltamoe::format_bytes(p.budget_bytes) << " (" << pct
    << " % of the peak)";
  if (!p.feasible) {
    s << ": no plan fits; the least budget is " << deltamoe::format_bytes(p.min_budget_bytes)
      << "\n";
  } else if (p.method == "none") {
    s << ": fits without swapping\n";
  } else {
    s << ", " << p.swaps.size() << " swaps, " << deltamoe::format_bytes(p.bytes_moved())
      << " moved (" << deltamoe::format_bytes(p.bytes_to_host) << " out, "
      << deltamoe::format_bytes(p.bytes_from_host) << " back), " << std::setprecision(2)
      << static_cast<double>(p.bytes_moved()) / (opt.bandwidth_gb_s * 1e6) << " ms at "
      << opt.bandwidth_gb_s << " GB/s, by " << p.method
      << (p.proven_optimal ? " (proven optimal)" : "") << "; peak "
      << deltamoe::format_bytes(p.peak_bytes) << "\n";
    if (p.ilp_ran)
      s << "                    greedy " << deltamoe::format_bytes(p.greedy_bytes_moved) << ", ILP "
        << (p.ilp_has_plan ? deltamoe::format_bytes(p.ilp_bytes_moved) : std::string("none"))
        << " (bound " << deltamoe::format_bytes(p.ilp_lower_bound_bytes) << "): " << p.ilp_status
        << "\n";
  }
  os << s.str();
}

void print_human(std::ostream& os, const std::string& path, const Graph& g, const ScheduleResult& r,
                 const FusionReport* fus) {
  os << path << (g.name.empty() ? "" : "  (" + g.name + ")") << ": " << g.size() << " nodes\n";
  auto row = [&](const std::string& k, const std::string& v) {
    os << "  " << std::left << std::setw(18) << k << v << "\n";
  };
  auto bytes = [](uint64_t b) {
    return deltamoe::format_bytes(b) + "  (" + std::to_string(b) + " B)";
  };
  row("algorithm", r.algorithm);
  row("peak", bytes(r.peak));
  row("lower bound", bytes(r.lower_bound.bytes) + "  [" + r.lower_bound.kind + "]");
  std::ostringstream gap;
  if (std::isfinite(r.gap))
    gap << std::fixed << std::setprecision(2) << 100.0 * r.gap << " %";
  else
    gap << "n/a";
  row("gap", gap.str() + (r.proven_optimal ? "  (proven optimal)" : ""));
  std::ostringstream sp;
  sp << (r.sp.is_series_parallel ? "yes" : "no") << ", SP fraction " << std::fixed
     << std::setprecision(3) << r.sp.sp_fraction;
  row("series-parallel", sp.str());
  std::ostringstream ar;
  ar << deltamoe::format_bytes(r.placement.arena_bytes) << ", fragmentation " << std::fixed
     << std::setprecision(2) << 100.0 * r.placement.fragmentation << " %";
  row("arena", ar.str());
  std::ostringstream sec;
  sec << std::fixed << std::setprecision(3) << r.seconds << " s";
  if (const std::string passed = r.time_limit_passed_in(); !passed.empty())
    sec << "  (past the " << r.time_limit_s << " s limit, during " << passed << ")";
  row("time", sec.str());
  for (const auto& [name, peak] : r.baseline_peaks) {
    std::ostringstream v;
    v << bytes(peak);
    if (r.peak)
      v << "  x" << std::fixed << std::setprecision(3)
        << static_cast<double>(peak) / static_cast<double>(r.peak);
    row("  " + name, v.str());
  }
  if (!r.notes.empty()) row("notes", r.notes);
  if (fus) {
    const ordered_json fj = fusion_json(g, *fus);
    os << "  fusion: " << fj["candidates"].get<size_t>() << " candidate pairs, "
       << fj["raise_peak"].get<int64_t>() << " raise the peak, " << fj["lower_peak"].get<int64_t>()
       << " lower it; traffic saved "
       << deltamoe::format_bytes(fj["traffic_saved_bytes_all"].get<uint64_t>()) << " ("
       << deltamoe::format_bytes(fj["traffic_saved_bytes_not_raising_peak"].get<uint64_t>())
       << " without raising the peak)\n";
    for (const auto& p : fj["top_by_traffic"]) {
      if (&p - &fj["top_by_traffic"][0] >= 10) break;
      os << "    " << p["producer_name"].get<std::string>() << " -> "
         << p["consumer_name"].get<std::string>() << ": saves "
         << deltamoe::format_bytes(p["traffic_saved_bytes"].get<uint64_t>()) << ", peak "
         << (p["peak_delta_bytes"].get<int64_t>() >= 0 ? "+" : "-")
         << deltamoe::format_bytes(
                static_cast<uint64_t>(std::llabs(p["peak_delta_bytes"].get<int64_t>())))
         << "\n";
    }
  }
}

deltamoe::cli::CommandRegistrar reg(
    "schedule", "Order computation graphs (memgraph-v1) for least peak memory",
    [](CLI::App& app) -> deltamoe::cli::Action {
      struct Opts {
        std::vector<std::string> graphs;
        std::string algo = "auto";
        double time_limit = 10.0;
        bool no_ilp = false, json = false, fusion = false;
        std::string order_out;
        std::string swap_budget;
        SwapOptions swap;
      };
      auto o = std::make_shared<Opts>();
      app.add_option("graphs", o->graphs, "memgraph-v1 files (.json or .json.gz)")->required();
      app.add_option("--algo", o->algo, kAlgoHelp)
          ->check(CLI::IsMember(
              {"auto", "sp", "ilp", "exact", "lpmf", "bfs", "dfs", "xla", "program"}));
      app.add_option("--time-limit", o->time_limit,
                     "Seconds per graph for the whole run: reading, baselines, search, placement\n"
                     "(default 10); search stops early enough to end within it")
          ->check(CLI::Range(0.0, 1e9));
      app.add_flag("--no-ilp", o->no_ilp, "Never use the ILP in auto");
      app.add_flag("--json", o->json,
                   "Print one JSON object on stdout (a \"graphs\" array for several)");
      app.add_option("--order-out", o->order_out,
                     "Write the order as JSON {\"order\": [node ids]} (one graph only)");
      app.add_flag("--fusion-report", o->fusion,
                   "Score producer->consumer fusions: peak change and traffic saved");
      app.add_option("--swap-budget", o->swap_budget,
                     "Plan swaps to host memory so the order fits SIZE (4GiB, 500MB) or PCT of\n"
                     "its peak (80%): fewest bytes moved (docs/sched.md, \"Swap plans\")");
      app.add_option("--swap-overlap-steps", o->swap.overlap_steps,
                     "Steps a transfer overlaps on each side of a swapped gap")
          ->check(CLI::Range(0, 1000000))
          ->capture_default_str();
      app.add_flag("--swap-outputs-to-host", o->swap.outputs_to_host,
                   "Outputs may end on the host after their last use");
      app.add_option("--swap-method", o->swap.method,
                     "auto: greedy, then the exact ILP (CBC, when built) within\n"
                     "--swap-time-limit; greedy; ilp")
          ->check(CLI::IsMember({"auto", "greedy", "ilp"}))
          ->capture_default_str();
      app.add_option("--swap-time-limit", o->swap.time_limit_s,
                     "Seconds for the swap ILP per graph")
          ->check(CLI::Range(0.0, 1e9))
          ->capture_default_str();
      app.add_option("--swap-bandwidth", o->swap.bandwidth_gb_s,
                     "Host<->device GB/s, to state the plan's transfer time")
          ->check(CLI::Range(1e-6, 1e9))
          ->capture_default_str();
      return [o]() -> int {
        std::optional<deltamoe::ByteBudget> swap_budget;
        if (!o->swap_budget.empty())
          swap_budget = deltamoe::parse_byte_budget(o->swap_budget, "schedule", "--swap-budget");
        DELTAMOE_CHECK(o->swap.method != "ilp" || ilp_available(), "schedule",
                       "--swap-method ilp: ILP solver not built (install coinor-libcbc-dev and "
                       "reconfigure)");
        DELTAMOE_CHECK(o->order_out.empty() || o->graphs.size() == 1, "schedule",
                       "--order-out takes exactly one graph, got ", o->graphs.size());
        ScheduleOptions opt;
        opt.algo = o->algo;
        opt.time_limit_s = o->time_limit;
        opt.use_ilp = !o->no_ilp;
        if (!o->order_out.empty()) deltamoe::io::check_writable(o->order_out, "schedule");
        ordered_json all = ordered_json::array();
        // One bad graph among several does not hide the others' results: it is reported in its
        // place ({"path", "error"}) and on stderr, and the exit status is 1. A single graph
        // fails as every command does (one line, nothing on stdout).
        std::vector<std::string> failures;
        for (const std::string& path : o->graphs) {
          try {
            // --time-limit covers reading the file too (ScheduleOptions::read_s).
            const auto t_read = std::chrono::steady_clock::now();
            const Graph g = read_memgraph(path);
            const double read_s =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t_read).count();
            ScheduleOptions gopt = opt;
            gopt.read_s = read_s;
            ScheduleResult r = schedule(g, gopt);
            std::optional<FusionReport> fus;
            if (o->fusion) fus = fusion_report(g, r.order);
            std::optional<SwapPlan> plan;
            if (swap_budget) {
              SwapOptions so = o->swap;
              so.budget_bytes = swap_budget->bytes;
              so.budget_fraction = swap_budget->fraction;
              plan = plan_swaps(g, r.order, so);
              // No plan within the budget: the graph fails, saying the least budget that works.
              if (plan && !plan->feasible)
                throw deltamoe::Error("sched", path + ": no swap plan of this order fits " +
                                                   deltamoe::format_bytes(plan->budget_bytes) +
                                                   "; the least budget is " +
                                                   deltamoe::format_bytes(plan->min_budget_bytes) +
                                                   " (" + std::to_string(plan->min_budget_bytes) +
                                                   " B)");
            }
            if (!o->order_out.empty()) {
              std::string text = "{\"order\": [";
              for (size_t i = 0; i < r.order.size(); ++i) {
                if (i) text += ", ";
                text += std::to_string(g.nodes[r.order[i]].id);
              }
              text += "]}\n";
              deltamoe::cli::write_file_atomic(o->order_out, text);
            }
            if (o->json) {
              ordered_json j = schedule_report_json(g, r, false, path);
              if (fus) j["fusion"] = fusion_json(g, *fus);
              if (plan) j["swap"] = swap_report_json(g, r.order, *plan, o->swap);
              all.push_back(std::move(j));
            } else {
              print_human(std::cout, path, g, r, fus ? &*fus : nullptr);
              if (plan) print_swap_human(std::cout, *plan, o->swap);
            }
          } catch (const deltamoe::Error& e) {
            if (o->graphs.size() == 1) throw;
            failures.push_back(e.what());
            if (o->json)
              all.push_back(ordered_json{{"path", path}, {"error", e.what()}});
            else
              std::cout << path << ": error: " << e.what() << "\n";
          }
        }
        if (o->json) {
          if (all.size() == 1)
            std::cout << all[0].dump(2) << "\n";
          else
            std::cout << ordered_json{{"graphs", all}}.dump(2) << "\n";
        }
        for (const std::string& f : failures) std::cerr << "deltamoe: error: " << f << "\n";
        return failures.empty() ? 0 : 1;
      };
    });

}  // namespace
