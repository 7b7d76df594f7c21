// The ILP honours its time limit: CBC's root LP on a large model cannot finish in a second, so
// the solve must be cut at the deadline and the call must still return a valid order (never
// worse than the warm start) with a bound below its peak and say "time limit"; a model too big
// to build in time is skipped and says so. Wall-clock bounds here are generous (30 s against a
// 1 s limit): they catch the old behaviour (minutes), not scheduling noise.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "deltamoe/sched/schedule.h"
#include "unit/sched_test_util.h"

using namespace deltamoe;
using namespace deltamoe::sched;

namespace {

// `width` independent chains of `len` nodes joined by a final sum: every chain node can run at
// almost any step, so the ILP's windows span the whole order (≈ n² binaries).
Graph wide_graph(int32_t width, int32_t len) {
  Graph g;
  g.name = "wide";
  int32_t id = 0;
  std::vector<int32_t> ends;
  for (int32_t c = 0; c < width; ++c) {
    for (int32_t k = 0; k < len; ++k) {
      Node nd;
      nd.id = id;
      nd.name = "c" + std::to_string(c) + "_" + std::to_string(k);
      nd.op = k == 0 ? "input" : "op";
      if (k) nd.inputs.push_back(id - 1);
      nd.size = static_cast<uint64_t>(64 * (1 + (c * 7 + k * 3) % 11));
      g.nodes.push_back(nd);
      ++id;
    }
    ends.push_back(id - 1);
  }
  Node sum;
  sum.id = id;
  sum.name = "sum";
  sum.op = "op";
  sum.inputs = ends;
  sum.size = 64;
  g.nodes.push_back(sum);
  g.is_output.assign(g.nodes.size(), 0);
  g.is_output.back() = 1;
  g.is_persistent.assign(g.nodes.size(), 0);
  g.finalize("<wide>");
  return g;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

TEST(SchedIlpLimit, LargeModelStopsAtTheTimeLimitWithAValidOrder) {
  if (!ilp_available()) GTEST_SKIP() << "CBC not built";
  const Graph g = wide_graph(16, 12);  // 193 nodes, tens of thousands of binaries
  const Order warm = program_order(g);
  const auto t0 = std::chrono::steady_clock::now();
  const ExactResult e = ilp_schedule(g, 1.0, &warm);
  const double took = seconds_since(t0);
  EXPECT_LT(took, 30.0);
  ASSERT_TRUE(e.order) << e.status;
  ASSERT_TRUE(test::is_topological(g, *e.order));
  const uint64_t peak = simulate(g, *e.order).peak;
  EXPECT_LE(peak, simulate(g, warm).peak);
  EXPECT_LE(e.lower_bound, peak);
  EXPECT_FALSE(e.proven_optimal) << e.status;
  EXPECT_EQ(e.status.rfind("time limit", 0), 0u) << e.status;
}

TEST(SchedIlpLimit, DriverWithIlpHonoursTheLimit) {
  if (!ilp_available()) GTEST_SKIP() << "CBC not built";
  const Graph g = wide_graph(16, 12);
  for (const char* algo : {"ilp", "auto"}) {
    ScheduleOptions opt;
    opt.algo = algo;
    opt.time_limit_s = 1.0;
    const auto t0 = std::chrono::steady_clock::now();
    const ScheduleResult r = schedule(g, opt);
    EXPECT_LT(seconds_since(t0), 30.0) << algo;
    ASSERT_TRUE(test::is_topological(g, r.order)) << algo;
    EXPECT_EQ(r.peak, simulate(g, r.order).peak) << algo;
    EXPECT_LE(r.lower_bound.bytes, r.peak) << algo;
    for (const auto& [name, peak] : r.baseline_peaks)
      EXPECT_LE(r.peak, peak) << algo << " vs " << name;
    if (std::string(algo) == "ilp") {
      EXPECT_NE(r.notes.find("ilp: time limit"), std::string::npos) << r.notes;
    }
  }
}

TEST(SchedIlpLimit, ModelTooBigToBuildInTimeIsSkipped) {
  if (!ilp_available()) GTEST_SKIP() << "CBC not built";
  const Graph g = wide_graph(100, 30);  // 3001 nodes: millions of binaries
  const Order warm = program_order(g);
  const auto t0 = std::chrono::steady_clock::now();
  ScheduleOptions opt;
  opt.algo = "ilp";
  opt.time_limit_s = 1.0;
  const ScheduleResult r = schedule(g, opt);
  EXPECT_LT(seconds_since(t0), 30.0);
  EXPECT_NE(r.notes.find("ilp skipped: "), std::string::npos) << r.notes;
  EXPECT_NE(r.notes.find(" binaries"), std::string::npos) << r.notes;
  ASSERT_TRUE(test::is_topological(g, r.order));
  EXPECT_LE(r.peak, simulate(g, warm).peak);
  EXPECT_LE(r.lower_bound.bytes, r.peak);
}

TEST(SchedIlpLimit, SmallModelsStillSolveToOptimality) {
  if (!ilp_available()) GTEST_SKIP() << "CBC not built";
  // The deadline machinery (a forked solve) returns CBC's answer intact.
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    const Graph g = test::random_graph(3 + static_cast<int32_t>(seed % 7), seed + 7700);
    const ExactResult e = ilp_schedule(g, 20.0, nullptr);
    ASSERT_TRUE(e.order) << e.status;
    EXPECT_TRUE(e.proven_optimal) << e.status;
    EXPECT_EQ(simulate(g, *e.order).peak, test::Reference(g).optimum()) << "seed " << seed;
    EXPECT_EQ(e.lower_bound, test::Reference(g).optimum()) << "seed " << seed;
  }
}
