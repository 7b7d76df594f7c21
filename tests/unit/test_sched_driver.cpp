// The schedule() driver's choices: the SP-ized order always runs in auto, the SP pipeline's
// lower bound is used when it is the strongest, notes tell SP from non-SP truthfully, and
// `exact` / `ilp` run by name. Checked against the brute-force optimum of sched_test_util.h.
#include <gtest/gtest.h>

#include <string>

#include "deltamoe/sched/schedule.h"
#include "unit/sched_test_util.h"

using namespace deltamoe;
using namespace deltamoe::sched;

TEST(ScheduleDriver, AutoWithNoBudgetStillTakesTheSpIzedOrder) {
  int beat = 0;
  for (uint64_t seed = 1; seed <= 80; ++seed) {
    const Graph g = test::random_graph(4 + static_cast<int32_t>(seed % 9), seed + 9100);
    ScheduleOptions opt;
    opt.time_limit_s = 0.0;
    const ScheduleResult r = schedule(g, opt);
    const uint64_t spized = simulate(g, sp_ized_order(g)).peak;
    EXPECT_LE(r.peak, spized) << "seed " << seed;
    for (const auto& [name, peak] : r.baseline_peaks) EXPECT_LE(r.peak, peak) << name;
    uint64_t best_base = UINT64_MAX;
    for (const auto& [name, peak] : r.baseline_peaks) best_base = std::min(best_base, peak);
    if (spized < best_base) ++beat;
  }
  // The property above is only informative if the SP-ized order sometimes wins.
  EXPECT_GT(beat, 0);
}

// The result says which phase a call ran past its limit in: none within a generous limit,
// the first phase under a zero limit (the fixed phases are never cut short), and the phase a
// caller's own time pushes it past (schedule --time-limit covers reading the file).
TEST(ScheduleDriver, SaysWhichPhaseRanPastTheTimeLimit) {
  const Graph g = test::random_graph(300, 11);
  ScheduleOptions opt;
  opt.algo = "lpmf";  // no search: milliseconds against the limit
  opt.time_limit_s = 60;
  ScheduleResult r = schedule(g, opt);
  EXPECT_EQ(r.time_limit_s, 60);
  EXPECT_EQ(r.time_limit_passed_in(), "");
  EXPECT_TRUE(schedule_report_json(g, r)["time_limit_passed_in"].is_null());
  opt.algo = "auto";
  opt.time_limit_s = 1;  // reading took it all (0 would mean "no search")
  opt.read_s = 2;
  opt.sp_min_seconds = 0;  // the analysis starts past its deadline: it stops at once
  const Graph g2 = test::random_graph(300, 12);  // not analysed yet (analyses are cached)
  r = schedule(g2, opt);
  ASSERT_FALSE(r.phase_seconds.empty());
  EXPECT_EQ(r.time_limit_passed_in(), r.phase_seconds.front().first);
  EXPECT_EQ(schedule_report_json(g2, r)["time_limit_passed_in"], r.phase_seconds.front().first);
  // Under auto the SP analysis stops at the limit instead of running on: its methods are
  // skipped and the best baseline comes back, as valid as ever.
  EXPECT_EQ(r.sp.notes, "stopped at the time limit");
  ASSERT_EQ(r.baseline_peaks.size(), 1u);  // the program order; the others skipped, and said
  EXPECT_EQ(r.baseline_peaks[0].first, "program");
  EXPECT_NE(r.notes.find("baselines bfs, dfs, lpmf, xla skipped"), std::string::npos) << r.notes;
  EXPECT_NE(r.notes.find("SP analysis stopped at the time limit"), std::string::npos) << r.notes;
  EXPECT_EQ(r.peak, simulate(g2, r.order).peak);
  opt.algo = "sp";  // asked for by name, it runs whatever the limit
  EXPECT_NE(schedule(g2, opt).sp.notes, "stopped at the time limit");
  opt.algo = "auto";
  opt.time_limit_s = 0;  // no search: every baseline and the whole SP analysis
  const Graph g3 = test::random_graph(300, 13);
  const ScheduleResult full = schedule(g3, opt);
  EXPECT_EQ(full.baseline_peaks.size(), 5u);
  EXPECT_NE(full.sp.notes, "stopped at the time limit");
  r.phase_seconds.insert(r.phase_seconds.begin(), {"read", 5.0});
  r.time_limit_s = 1.0;
  EXPECT_EQ(r.time_limit_passed_in(), "read");
}

TEST(ScheduleDriver, BoundIsTheStrongestProvenOneAndNeverAboveTheOptimum) {
  for (uint64_t seed = 1; seed <= 80; ++seed) {
    const Graph g = test::random_graph(3 + static_cast<int32_t>(seed % 9), seed + 9300);
    const uint64_t opt_peak = test::Reference(g).optimum();
    const SpAnalysis sp = analyze_sp(g);
    ASSERT_LE(sp.lower_bound, opt_peak) << "seed " << seed;
    for (const double tl : {0.0, 0.3}) {
      ScheduleOptions opt;
      opt.time_limit_s = tl;
      opt.use_ilp = false;
      const ScheduleResult r = schedule(g, opt);
      EXPECT_GE(r.lower_bound.bytes, sp.lower_bound) << "seed " << seed;
      EXPECT_GE(r.lower_bound.bytes, must_live_lower_bound(g).bytes) << "seed " << seed;
      EXPECT_LE(r.lower_bound.bytes, opt_peak) << "seed " << seed << " " << r.lower_bound.kind;
      if (sp.lower_bound > must_live_lower_bound(g).bytes && !r.proven_optimal && tl == 0.0) {
        EXPECT_EQ(r.lower_bound.kind, "sp") << "seed " << seed;
      }
      if (r.proven_optimal) {
        EXPECT_EQ(r.peak, opt_peak) << "seed " << seed;
      }
    }
  }
}

TEST(ScheduleDriver, NotesCallAnSpGraphSeriesParallel) {
  int sp_graphs = 0;
  for (uint64_t seed = 1; seed <= 120; ++seed) {
    const Graph g = test::random_graph(3 + static_cast<int32_t>(seed % 8), seed + 9500);
    ScheduleOptions opt;
    opt.time_limit_s = 0.0;
    const ScheduleResult r = schedule(g, opt);
    if (r.sp.is_series_parallel) {
      ++sp_graphs;
      EXPECT_EQ(r.notes.find("not series-parallel"), std::string::npos) << r.notes;
    } else {
      EXPECT_NE(r.notes.find("not series-parallel"), std::string::npos) << r.notes;
    }
  }
  EXPECT_GT(sp_graphs, 0);
}

TEST(ScheduleDriver, ExactAndIlpByNameAreOptimalOnSmallGraphs) {
  for (uint64_t seed = 1; seed <= 25; ++seed) {
    const Graph g = test::random_graph(3 + static_cast<int32_t>(seed % 7), seed + 9700);
    const uint64_t opt_peak = test::Reference(g).optimum();
    for (const char* algo : {"exact", "ilp"}) {
      if (std::string(algo) == "ilp" && !ilp_available()) continue;
      ScheduleOptions opt;
      opt.algo = algo;
      opt.time_limit_s = 20.0;  // never reached on 3-9 nodes; only a safety net
      const ScheduleResult r = schedule(g, opt);
      ASSERT_TRUE(test::is_topological(g, r.order)) << algo;
      EXPECT_EQ(r.peak, opt_peak) << algo << " seed " << seed;
      EXPECT_TRUE(r.proven_optimal) << algo << " seed " << seed << ": " << r.notes;
      for (const auto& [name, peak] : r.baseline_peaks) EXPECT_LE(r.peak, peak) << name;
    }
  }
}
