// The schedule() driver: runs every baseline (the floor), then the chosen or automatically
// picked algorithm, keeps the best order, attaches the strongest proven lower bound and places
// the buffers. See docs/sched.md for what `auto` does and why.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

bool is_baseline(const std::string& a) {
  return a == "program" || a == "bfs" || a == "dfs" || a == "lpmf" || a == "xla";
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
  DELTAMOE_CHECK(algo == "auto" || algo == "sp" || algo == "ilp" || algo == "exact" || is_baseline(algo),
                 "sched", "unknown algorithm '", algo, "' (auto|sp|ilp|exact|lpmf|bfs|dfs|xla|program)");
  DELTAMOE_CHECK(opt.time_limit_s >= 0 && std::isfinite(opt.time_limit_s), "sched",
                 "time limit must be a finite number of seconds >= 0, got ", opt.time_limit_s);
  ScheduleResult r;
  std::ostringstream notes;
  const int32_t n = g.size();

  std::vector<Candidate> baselines;
  baselines.push_back({"program", program_order(g), 0});
  baselines.push_back({"bfs", bfs_order(g), 0});
  baselines.push_back({"dfs", dfs_order(g), 0});
  baselines.push_back({"lpmf", lpmf_order(g), 0});
  baselines.push_back({"xla", xla_list_order(g), 0});
  size_t best_base = 0;
  for (size_t i = 0; i < baselines.size(); ++i) {
    baselines[i].peak = simulate(g, baselines[i].order).peak;
    r.baseline_peaks.emplace_back(baselines[i].name, baselines[i].peak);
    if (baselines[i].peak < baselines[best_base].peak) best_base = i;
  }
  const Candidate& floor = baselines[best_base];
  r.lower_bound = simple_lower_bound(g);
  r.sp = analyze_sp(g);

  Candidate best{"", {}, ~uint64_t{0}};
  bool sp_exact = false;         // best came from sp_optimal_order on an SP graph
  bool search_proven = false;    // an exact method proved its order optimal
  auto consider = [&](const std::string& name, Order order) -> bool {
    const uint64_t peak = simulate(g, order).peak;  // validates the order too
    if (peak < best.peak) {
      best = {name, std::move(order), peak};
      return true;
    }
    return false;
  };
  auto take_bound = [&](const ExactResult& e, const std::string& kind) {
    if (e.lower_bound > r.lower_bound.bytes) r.lower_bound = {e.lower_bound, kind};
  };
  // Seconds left for search, keeping a margin for placement and reporting.
  auto budget = [&](double share) {
    const double left = opt.time_limit_s - since(t0);
    return std::max(0.0, left * share - 0.01);
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
    search_proven = e.proven_optimal;
    notes << "ilp: " << e.status;
  } else if (algo == "exact") {
    ExactResult e = exact_search(g, budget(1.0), &floor.order);
    if (e.order) consider("exact", std::move(*e.order));
    take_bound(e, "exact");
    search_proven = e.proven_optimal;
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
      notes << "not series-parallel (SP fraction " << r.sp.sp_fraction << "); ";
      guarded("sp-ized", [&] {
        if (budget(1.0) > 0) consider("sp-ized", sp_ized_order(g));
      });
      const bool ilp_ok = opt.use_ilp && n <= 300 && ilp_available();
      if (ilp_ok && budget(1.0) > 0) {
        guarded("ilp", [&] {
          const Order& inc = best.peak < floor.peak ? best.order : floor.order;
          ExactResult e = ilp_schedule(g, budget(0.5), &inc);
          if (e.order) consider("ilp", std::move(*e.order));
          take_bound(e, "ilp");
          search_proven = search_proven || (e.proven_optimal && e.order);
          notes << "ilp: " << e.status << "; ";
        });
      } else if (!opt.use_ilp) {
        notes << "ilp off; ";
      } else if (n > 300) {
        notes << "ilp skipped (" << n << " nodes > 300); ";
      } else if (!ilp_available()) {
        notes << "ilp not built; ";
      }
      if (!search_proven && budget(1.0) > 0) {
        guarded("exact search", [&] {
          const Order& inc = best.peak < floor.peak ? best.order : floor.order;
          ExactResult e = exact_search(g, budget(0.6), &inc);
          if (e.order) consider("exact", std::move(*e.order));
          take_bound(e, "exact");
          search_proven = search_proven || (e.proven_optimal && e.order);
          notes << "exact search: " << e.status << "; ";
        });
      }
      if (!search_proven && budget(1.0) > 0) {
        guarded("local search", [&] {
          const Order& start = best.peak < floor.peak ? best.order : floor.order;
          const uint64_t before = std::min(best.peak, floor.peak);
          if (consider("local-search", local_search(g, start, budget(0.9))))
            notes << "local search improved " << before << " -> " << best.peak << " bytes; ";
        });
      }
    }
  }
  // The floor: nothing the driver returns is worse than the best baseline (except when a
  // specific baseline was asked for).
  if (!is_baseline(algo) && floor.peak <= best.peak) {
    if (best.peak != ~uint64_t{0} && floor.peak < best.peak) {
      notes << "best baseline (" << floor.name << ", " << floor.peak << " bytes) beats "
            << best.name << " (" << best.peak << " bytes): kept the baseline; ";
      if (sp_exact) notes << "the SP-optimal order was not optimal here, the SP mapping is inexact; ";
      sp_exact = false;
      search_proven = false;
    }
    if (best.peak == ~uint64_t{0} || floor.peak < best.peak) best = floor;
  }
  r.order = std::move(best.order);
  r.peak = best.peak;
  r.algorithm = best.name;
  if (sp_exact && r.algorithm == "sp" && r.peak > r.lower_bound.bytes)
    r.lower_bound = {r.peak, "sp-optimal"};
  if (search_proven && r.peak > r.lower_bound.bytes) {
    // The exact method proved optimality of an order with this peak.
    r.lower_bound = {r.peak, algo == "ilp" || r.algorithm == "ilp" ? "ilp" : "exact"};
  }
  DELTAMOE_ASSERT(r.lower_bound.bytes <= r.peak, "lower bound ", r.lower_bound.bytes, " (",
                  r.lower_bound.kind, ") above the peak ", r.peak, " of ", r.algorithm);
  r.proven_optimal = r.peak == r.lower_bound.bytes;
  r.gap = r.lower_bound.bytes ? static_cast<double>(r.peak) / static_cast<double>(r.lower_bound.bytes) - 1.0
                              : (r.peak ? INFINITY : 0.0);
  r.placement = place_buffers(g, r.order);
  std::string s = notes.str();
  while (!s.empty() && (s.back() == ' ' || s.back() == ';')) s.pop_back();
  r.notes = s;
  r.seconds = since(t0);
  return r;
}

}  // namespace deltamoe::sched
