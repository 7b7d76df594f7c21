// The schedule() driver: runs every baseline (the floor), then the chosen or automatically
// picked algorithm, keeps the best order, attaches the strongest proven lower bound and places
// the buffers. See docs/sched.md for what `auto` does and why.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <sstream>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "deltamoe/sched/sp.h"

namespace deltamoe::sched {

namespace {

using Clock = std::chrono::steady_clock;

// Search ends by this share of --time-limit, minus the placement reserve: the rest is margin
// for the steps that cannot be interrupted (one window of local search, the final checks) and
// for timer noise, so the whole call ends within the limit (docs/sched.md, "Time limit").
constexpr double kSearchShare = 0.9;
// The final placement is reserved this many times the measured time of placing the best
// order before search (placement time depends on lifetimes, which search changes a little).
constexpr double kPlacementReserve = 1.5;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool is_baseline(const std::string& a) {
  return a == "program" || a == "bfs" || a == "dfs" || a == "lpmf" || a == "xla";
}

// "ilp: <status>", or the status alone when it already says "ilp skipped: ...".
std::string ilp_note(const std::string& status) {
  return status.rfind("ilp ", 0) == 0 ? status : "ilp: " + status;
}

struct Candidate {
  std::string name;
  Order order;
  uint64_t peak = 0;
};

}  // namespace

ScheduleResult schedule(const Graph& g, const ScheduleOptions& opt) {
  const auto t0 = Clock::now();
  const std::string& algo = opt.algo;
  DELTAMOE_CHECK(
      algo == "auto" || algo == "sp" || algo == "ilp" || algo == "exact" || is_baseline(algo),
      "sched", "unknown algorithm '", algo, "' (auto|sp|ilp|exact|lpmf|bfs|dfs|xla|program)");
  DELTAMOE_CHECK(opt.time_limit_s >= 0 && std::isfinite(opt.time_limit_s), "sched",
                 "time limit must be a finite number of seconds >= 0, got ", opt.time_limit_s);
  DELTAMOE_CHECK(opt.read_s >= 0 && std::isfinite(opt.read_s), "sched",
                 "reading time must be a finite number of seconds >= 0, got ", opt.read_s);
  const double limit = std::max(0.0, opt.time_limit_s - opt.read_s);  // what this call has
  ScheduleResult r;
  if (opt.read_s > 0) r.phase_seconds.emplace_back("read", opt.read_s);
  std::ostringstream notes;
  const int32_t n = g.size();

  auto phase_t = Clock::now();
  auto phase = [&](const char* name) {  // closes the phase that ran since the last call
    const auto now = Clock::now();
    r.phase_seconds.emplace_back(name, std::chrono::duration<double>(now - phase_t).count());
    phase_t = now;
  };
  // Under auto with a limit (0 means no search: the fixed phases run in full), the limit, at
  // least sp_min_seconds, holds for the fixed phases too: after the program order each
  // baseline runs only while time is left (about 0.5 s each at 10^6 nodes), and the SP
  // analysis stops at it.
  const bool cut_fixed = algo == "auto" && opt.time_limit_s > 0;
  const double fixed_limit = std::max(limit, opt.sp_min_seconds);
  std::vector<Candidate> baselines;
  std::string skipped;
  baselines.push_back({"program", program_order(g), 0});
  const std::pair<const char*, Order (*)(const Graph&)> others[] = {
      {"bfs", bfs_order}, {"dfs", dfs_order}, {"lpmf", lpmf_order}, {"xla", xla_list_order}};
  for (const auto& [name, make] : others) {
    if (cut_fixed && since(t0) > fixed_limit) {
      skipped += (skipped.empty() ? "" : ", ") + std::string(name);
      continue;
    }
    baselines.push_back({name, make(g), 0});
  }
  if (!skipped.empty()) notes << "baselines " << skipped << " skipped at the time limit; ";
  size_t best_base = 0;
  for (size_t i = 0; i < baselines.size(); ++i) {
    baselines[i].peak = simulate(g, baselines[i].order).peak;
    r.baseline_peaks.emplace_back(baselines[i].name, baselines[i].peak);
    if (baselines[i].peak < baselines[best_base].peak) best_base = i;
  }
  const Candidate& floor = baselines[best_base];
  phase("baselines");
  const LowerBound cheap_bound = must_live_lower_bound(g);  // holds for every order
  r.lower_bound = cheap_bound;
  phase("bound");
  // The SP analysis is superlinear (100 s on a 10^6-node layered graph): when it stops at
  // the limit the SP methods are skipped. Asked for by name, it runs in full.
  bool sp_stopped = false;
  try {
    std::optional<sp::Deadline> deadline;
    if (cut_fixed)
      deadline.emplace(t0 + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(fixed_limit)));
    r.sp = analyze_sp(g);
  } catch (const sp::TimeUp&) {
    sp_stopped = true;
    r.sp = {};
    r.sp.notes = "stopped at the time limit";
  }
  phase("sp-analysis");
  // The SP pipeline's bound (exact SP optimum or the best of its relaxations) is proven for
  // every order of g, and on SP-like graphs often well above the must-live bound.
  if (r.sp.lower_bound > r.lower_bound.bytes) r.lower_bound = {r.sp.lower_bound, "sp"};
  const LowerBound proven_bound = r.lower_bound;  // fallback if an external bound misbehaves

  // The best baseline is the incumbent; a method is credited only when strictly better.
  Candidate best = floor;
  bool sp_exact = false;       // sp_optimal_order ran on an SP graph
  uint64_t sp_peak = 0;        // ... and its order's peak
  bool search_proven = false;  // an exact method proved its order optimal
  uint64_t search_peak = 0;    // ... and its order's peak
  std::string search_kind;     // "ilp" or "exact"
  auto consider = [&](const std::string& name, Order order) -> bool {
    const uint64_t peak = simulate(g, order).peak;  // validates the order too
    if (name == "sp") sp_peak = peak;
    if (name == "ilp" || name == "exact") search_peak = peak;
    if (peak < best.peak) {
      best = {name, std::move(order), peak};
      return true;
    }
    return false;
  };
  auto take_bound = [&](const ExactResult& e, const std::string& kind) {
    if (e.lower_bound > r.lower_bound.bytes) r.lower_bound = {e.lower_bound, kind};
  };
  // Search must end early enough for the final placement and a safety margin: the fixed
  // phases above already ran, search stops at `search_end` seconds after t0. Before the first
  // search the current best order is placed (its time is the estimate for the final placement,
  // and when search does not improve the order that placement is the final one).
  double search_end = limit * kSearchShare;
  std::optional<Placement> early;
  Order early_order;
  auto reserve_placement = [&] {
    if (early) return;
    const auto tp = Clock::now();
    early = place_buffers(g, best.order);
    early_order = best.order;
    const double took = since(tp);
    phase("placement-estimate");
    search_end = std::min(search_end, limit * kSearchShare - kPlacementReserve * took - 0.005);
  };
  // Seconds left for search (a share of what remains until search_end).
  auto budget = [&](double share) {
    reserve_placement();
    const double left = search_end - since(t0);
    return std::max(0.0, left * share - 0.002);
  };

  if (is_baseline(algo)) {
    for (const Candidate& c : baselines)
      if (c.name == algo) best = c;
    notes << "baseline " << algo << " as requested";
  } else if (algo == "sp") {
    if (auto o = sp_optimal_order(g)) {
      consider("sp", std::move(*o));
      sp_exact = true;
      notes << "series-parallel graph: SP-optimal order";
    } else {
      consider("sp-ized", sp_ized_order(g));
      notes << "not series-parallel: order of the SP-ized graph";
    }
  } else if (algo == "ilp") {
    DELTAMOE_CHECK(ilp_available(), "sched", "the ILP solver (COIN-OR CBC) was not built in");
    ExactResult e = ilp_schedule(g, budget(1.0), &floor.order);
    if (e.order) consider("ilp", std::move(*e.order));
    take_bound(e, "ilp");
    search_proven = e.proven_optimal && e.order;
    search_kind = "ilp";
    notes << ilp_note(e.status);
  } else if (algo == "exact") {
    ExactResult e = exact_search(g, budget(1.0), &floor.order);
    if (e.order) consider("exact", std::move(*e.order));
    take_bound(e, "exact");
    search_proven = e.proven_optimal && e.order;
    search_kind = "exact";
    notes << "exact search: " << e.status;
  } else {  // auto
    // Each step is guarded: a failing optional method is reported, the floor still holds.
    auto guarded = [&](const char* what, auto&& fn) {
      try {
        fn();
      } catch (const std::exception& e) {
        notes << what << " failed (" << e.what() << "); ";
      }
    };
    if (sp_stopped) notes << "SP analysis stopped at the time limit: no SP methods; ";
    if (r.sp.is_series_parallel) {
      guarded("sp", [&] {
        if (auto o = sp_optimal_order(g)) {
          consider("sp", std::move(*o));
          sp_exact = true;
          notes << "series-parallel: SP-optimal order; ";
        }
      });
    }
    if (!sp_exact) {
      if (r.sp.is_series_parallel)
        notes << "series-parallel, but the SP order is not proven optimal (SP bound "
              << r.sp.lower_bound << " bytes); ";
      else if (!sp_stopped)
        notes << "not series-parallel (SP fraction " << r.sp.sp_fraction << "); ";
      // Cheap (the analysis above already built it) and much better than every baseline on
      // SP-like graphs, so it runs even with no search budget.
      if (!sp_stopped) {
        guarded("sp-ized", [&] {
          if (consider("sp-ized", sp_ized_order(g))) notes << "SP-ized order beats the baselines; ";
        });
      }
      phase("sp-ized");
      // The step-cut bound (a min cut at each of the best order's neediest steps) often meets
      // that order's peak, which proves it optimal before any search.
      if (best.peak > r.lower_bound.bytes && budget(1.0) > 0) {
        guarded("step-cut bound", [&] {
          const LowerBound sc =
              step_cut_lower_bound(g, best.order, r.lower_bound, best.peak, budget(0.4));
          if (sc.bytes > r.lower_bound.bytes) r.lower_bound = sc;
        });
        phase("step-cut");
      }
      // Cut repair: rearrange the order around a peak step as that step's minimum cut says.
      if (best.peak > r.lower_bound.bytes && budget(1.0) > 0) {
        guarded("cut repair", [&] {
          const uint64_t before = best.peak;
          if (consider("cut-repair", step_cut_improve(g, best.order, budget(0.3))))
            notes << "cut repair improved " << before << " -> " << best.peak << " bytes; ";
        });
        phase("cut-repair");
      }
      const bool ilp_ok = opt.use_ilp && n <= 300 && ilp_available();
      // The cheap bounds may already prove the best order so far optimal: no search then.
      const bool proven_already = best.peak == r.lower_bound.bytes;
      if (proven_already) {
        notes << "best order so far meets the " << r.lower_bound.kind << " bound: no search; ";
      } else if (ilp_ok && budget(1.0) > 0) {
        guarded("ilp", [&] {
          const Order inc = best.order;
          ExactResult e = ilp_schedule(g, budget(0.5), &inc);
          if (e.order) consider("ilp", std::move(*e.order));
          take_bound(e, "ilp");
          if (e.proven_optimal && e.order) search_proven = true, search_kind = "ilp";
          notes << ilp_note(e.status) << "; ";
        });
        phase("ilp");
      } else if (!opt.use_ilp) {
        notes << "ilp off; ";
      } else if (n > 300) {
        notes << "ilp skipped (" << n << " nodes > 300); ";
      } else if (!ilp_available()) {
        notes << "ilp not built; ";
      }
      if (!search_proven && !proven_already && budget(1.0) > 0) {
        guarded("exact search", [&] {
          const Order inc = best.order;
          ExactResult e = exact_search(g, budget(0.6), &inc);
          if (e.order) consider("exact", std::move(*e.order));
          take_bound(e, "exact");
          if (e.proven_optimal && e.order) search_proven = true, search_kind = "exact";
          notes << "exact search: " << e.status << "; ";
        });
        phase("exact");
      }
      if (!search_proven && !proven_already && budget(1.0) > 0) {
        guarded("local search", [&] {
          const Order start = best.order;
          const uint64_t before = best.peak;
          if (consider("local-search", local_search(g, start, budget(1.0))))
            notes << "local search improved " << before << " -> " << best.peak << " bytes; ";
        });
        phase("local-search");
      }
    }
  }
  // best started as the best baseline, so nothing returned is worse than it (a specific
  // baseline asked for is returned as is).
  if (sp_exact && sp_peak > best.peak) {
    notes << "; the SP-optimal order (" << sp_peak << " bytes) lost to " << best.name << " ("
          << best.peak << " bytes): the SP mapping is inexact here";
    sp_exact = false;
  }
  if (search_proven && search_peak != best.peak) search_proven = false;
  r.order = std::move(best.order);
  r.peak = best.peak;
  r.algorithm = best.name;
  // An SP-optimal order, or an order an exact method proved optimal, with this same peak
  // makes the peak itself a proven lower bound.
  if (sp_exact && r.peak > r.lower_bound.bytes) r.lower_bound = {r.peak, "sp-optimal"};
  if (search_proven && r.peak > r.lower_bound.bytes) r.lower_bound = {r.peak, search_kind};
  if (r.lower_bound.bytes > r.peak) {
    // Only an external method's bound can do this (the simple bounds hold for every order):
    // report it and fall back to the bound that is known to hold.
    notes << "; discarded the " << r.lower_bound.kind << " bound " << r.lower_bound.bytes
          << ": above the peak " << r.peak << " of a valid order";
    r.lower_bound = proven_bound.bytes <= r.peak ? proven_bound : cheap_bound;
  }
  DELTAMOE_ASSERT(r.lower_bound.bytes <= r.peak, "lower bound ", r.lower_bound.bytes, " (",
                  r.lower_bound.kind, ") above the peak ", r.peak, " of ", r.algorithm);
  r.proven_optimal = r.peak == r.lower_bound.bytes;
  r.gap = r.lower_bound.bytes
              ? static_cast<double>(r.peak) / static_cast<double>(r.lower_bound.bytes) - 1.0
              : (r.peak ? INFINITY : 0.0);
  if (algo != "auto") phase(algo.c_str());
  if (early && early_order == r.order) {
    r.placement = std::move(*early);
  } else {
    r.placement = place_buffers(g, r.order);
    phase("placement");
  }
  std::string s = notes.str();
  while (!s.empty() && (s.back() == ' ' || s.back() == ';')) s.pop_back();
  r.notes = s;
  r.seconds = since(t0);
  r.time_limit_s = opt.time_limit_s;
  return r;
}

std::string ScheduleResult::time_limit_passed_in() const {
  double t = 0;
  for (const auto& [name, s] : phase_seconds) {
    t += s;
    if (t > time_limit_s) return name;
  }
  return "";
}

nlohmann::ordered_json schedule_report_json(const Graph& g, const ScheduleResult& r,
                                            bool with_order, const std::string& file) {
  using nlohmann::ordered_json;
  ordered_json j;
  if (!file.empty()) j["file"] = file;
  j["name"] = g.name;
  j["nodes"] = g.size();
  j["algorithm"] = r.algorithm;
  j["peak_bytes"] = r.peak;
  j["lower_bound_bytes"] = r.lower_bound.bytes;
  j["lower_bound_kind"] = r.lower_bound.kind;
  j["gap"] = std::isfinite(r.gap) ? ordered_json(r.gap) : ordered_json(nullptr);
  j["proven_optimal"] = r.proven_optimal;
  j["is_series_parallel"] = r.sp.is_series_parallel;
  j["sp_fraction"] = r.sp.sp_fraction;
  j["arena_bytes"] = r.placement.arena_bytes;
  j["fragmentation"] = r.placement.fragmentation;
  j["seconds"] = r.seconds;
  j["time_limit_s"] = r.time_limit_s;
  const std::string passed = r.time_limit_passed_in();
  j["time_limit_passed_in"] = passed.empty() ? ordered_json(nullptr) : ordered_json(passed);
  ordered_json ph = ordered_json::object();
  for (const auto& [name, s] : r.phase_seconds) ph[name + "_s"] = s;
  j["phase_seconds"] = ph;
  for (const auto& [name, peak] : r.baseline_peaks) j[name + "_peak_bytes"] = peak;
  j["notes"] = r.notes;
  if (with_order) {
    ordered_json ids = ordered_json::array();
    for (int32_t v : r.order) ids.push_back(g.nodes[static_cast<size_t>(v)].id);
    j["order"] = std::move(ids);
  }
  return j;
}

}  // namespace deltamoe::sched
