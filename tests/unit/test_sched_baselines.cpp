// Baseline orders, lower bounds and the schedule() driver.
#include <gtest/gtest.h>

#include <map>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "unit/sched_test_util.h"

using namespace deltamoe;
using namespace deltamoe::sched;

namespace {

Graph from_nodes(const std::string& nodes, const std::string& outputs = "[]",
                 const std::string& persistent = "[]") {
  return parse_memgraph(R"({"format": "memgraph-v1", "name": "t", "nodes": [)" + nodes +
                        R"(], "outputs": )" + outputs + R"(, "persistent": )" + persistent + "}");
}

std::map<std::string, Order> all_baselines(const Graph& g) {
  return {{"program", program_order(g)},
          {"bfs", bfs_order(g)},
          {"dfs", dfs_order(g)},
          {"lpmf", lpmf_order(g)},
          {"xla", xla_list_order(g)}};
}

// The XLA list-scheduler counterexample of hlo_memory_scheduler.cc's comment:
// A feeds B, D, E; B (2) -> C (1) -> G; D, E (1 each) -> F (2) -> G. With A of size 2 the
// greedy defers B (it defines more than it frees) and keeps A alive across D, E, B: 6,
// while A B C D E F G needs 5.
Graph xla_counterexample() {
  return from_nodes(R"({"id": 0, "name": "A", "op": "src", "inputs": [], "size": 2},
                       {"id": 1, "name": "B", "op": "f", "inputs": [0], "size": 2},
                       {"id": 2, "name": "C", "op": "f", "inputs": [1], "size": 1},
                       {"id": 3, "name": "D", "op": "f", "inputs": [0], "size": 1},
                       {"id": 4, "name": "E", "op": "f", "inputs": [0], "size": 1},
                       {"id": 5, "name": "F", "op": "f", "inputs": [3, 4], "size": 2},
                       {"id": 6, "name": "G", "op": "f", "inputs": [2, 5], "size": 1})",
                    "[6]");
}

}  // namespace

TEST(Baselines, EveryOrderIsTopologicalOnRandomGraphs) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    const Graph g = test::random_graph(1 + static_cast<int32_t>(seed % 40), seed);
    for (const auto& [name, o] : all_baselines(g)) {
      ASSERT_TRUE(test::is_topological(g, o)) << name << " seed " << seed;
      EXPECT_NO_THROW(check_order(g, o));
    }
  }
}

TEST(Baselines, NeverBelowTheBruteForceOptimumAndBoundsNeverAbove) {
  int tight = 0, stronger = 0;
  for (uint64_t seed = 1; seed <= 400; ++seed) {
    const Graph g = test::random_graph(2 + static_cast<int32_t>(seed % 11), seed + 1000);
    const test::Reference ref(g);
    const uint64_t opt = ref.optimum();
    const LowerBound lb = simple_lower_bound(g);
    EXPECT_LE(lb.bytes, opt) << "seed " << seed << " kind " << lb.kind;
    const LowerBound ml = must_live_lower_bound(g);
    EXPECT_LE(ml.bytes, opt) << "seed " << seed << " must-live";
    EXPECT_GE(ml.bytes, lb.bytes);
    tight += ml.bytes == opt;
    stronger += ml.bytes > lb.bytes;
    for (const auto& [name, o] : all_baselines(g)) {
      const uint64_t peak = simulate(g, o).peak;
      EXPECT_GE(peak, opt) << name << " seed " << seed;
      EXPECT_EQ(peak, ref.peak(o)) << name << " seed " << seed;
    }
  }
  EXPECT_GT(stronger, 0);  // must-live beats the simple bounds on some graphs
  EXPECT_GT(tight, 0);
}

// step_cut_bound(v) is exactly the least memory at v's step over every set of nodes that can
// have run before v (checked by enumerating them on small random graphs), so the step-cut
// bound is never above the optimum, never below must-live, and sometimes above it.
TEST(Bounds, StepCutIsTheExactMinimumAtEachStep) {
  int stronger = 0, tight = 0;
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    const Graph g = test::random_graph(2 + static_cast<int32_t>(seed % 12), seed + 5000);
    const test::Reference ref(g);
    const int32_t n = g.size();
    std::vector<uint32_t> pred(static_cast<size_t>(n), 0);
    for (int32_t v = 0; v < n; ++v)
      for (const int32_t u : g.nodes[v].inputs) pred[v] |= 1u << u;
    for (int32_t v = 0; v < n; ++v) {
      if (g.is_free_input(v)) continue;
      uint64_t best = ~uint64_t{0};
      for (uint32_t d = 0; d < (1u << n); ++d) {
        bool ok = !(d >> v & 1u);
        for (int32_t x = 0; x < n && ok; ++x)
          if (d >> x & 1u) ok = (pred[x] & ~d) == 0;  // closed under dependencies
        // ... and holding every ancestor of v, none of its descendants.
        ok = ok && (pred[v] & ~d) == 0;
        if (!ok) continue;
        std::vector<char> done(static_cast<size_t>(n), 0);
        for (int32_t x = 0; x < n; ++x) done[x] = d >> x & 1u;
        best = std::min(best, ref.live(done) + ref.own(v) + g.nodes[v].workspace);
      }
      EXPECT_EQ(step_cut_bound(g, v), best) << "seed " << seed << " node " << v;
    }
    const uint64_t opt = ref.optimum();
    const LowerBound ml = must_live_lower_bound(g);
    const LowerBound sc =
        step_cut_lower_bound(g, test::random_order(g, seed), ml, ~uint64_t{0}, 60.0);
    EXPECT_LE(sc.bytes, opt) << "seed " << seed;
    EXPECT_GE(sc.bytes, ml.bytes) << "seed " << seed;
    EXPECT_LE(last_step_bound(g), opt) << "seed " << seed;
    EXPECT_LE(last_output_bound(g, 60.0), opt) << "seed " << seed;
    stronger += sc.bytes > ml.bytes;
    tight += sc.bytes == opt;
  }
  EXPECT_GT(stronger, 0);
  EXPECT_GT(tight, 0);
}

// Cut repair returns a valid order never worse than its start, and reaches the optimum where
// the step-cut bound proves it.
TEST(Bounds, CutRepairNeverWorsens) {
  int improved = 0;
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    const Graph g = test::random_graph(3 + static_cast<int32_t>(seed % 11), seed + 9000);
    const Order start = test::random_order(g, seed);
    const Order o = step_cut_improve(g, start, 60.0);
    ASSERT_TRUE(test::is_topological(g, o)) << "seed " << seed;
    const uint64_t before = simulate(g, start).peak, after = simulate(g, o).peak;
    EXPECT_LE(after, before) << "seed " << seed;
    EXPECT_GE(after, test::Reference(g).optimum()) << "seed " << seed;
    improved += after < before;
  }
  EXPECT_GT(improved, 0);
}

TEST(Baselines, LpmfOnAHandTracedExample) {
  // x (input 10) -> a (100) -> c (5, output); x -> b (1) -> d (1, output).
  // LPMF: x; then nothing fits under the high-water mark (gap 0), smallest allocation b, then
  // d; then a (x now has one reader left, so a frees it), then c (fits under 111).
  const Graph g = from_nodes(R"({"id": 0, "name": "x", "op": "input", "inputs": [], "size": 10},
                                {"id": 1, "name": "a", "op": "f", "inputs": [0], "size": 100},
                                {"id": 2, "name": "b", "op": "f", "inputs": [0], "size": 1},
                                {"id": 3, "name": "c", "op": "f", "inputs": [1], "size": 5},
                                {"id": 4, "name": "d", "op": "f", "inputs": [2], "size": 1})",
                             "[3, 4]");
  EXPECT_EQ(lpmf_order(g), (Order{0, 2, 4, 1, 3}));
  EXPECT_EQ(simulate(g, lpmf_order(g)).peak, 111u);
  EXPECT_EQ(test::Reference(g).optimum(), 111u);
  // Program order runs a then b while a is live: x + a + b = 111 too, but c before b: 115.
  EXPECT_EQ(simulate(g, {0, 1, 3, 2, 4}).peak, 115u);
}

TEST(Baselines, XlaListSchedulerCounterexampleIsSixVersusFive) {
  const Graph g = xla_counterexample();
  const Order xla = xla_list_order(g);
  EXPECT_EQ(simulate(g, xla).peak, 6u);
  EXPECT_EQ(test::Reference(g).optimum(), 5u);
  EXPECT_EQ(simulate(g, program_order(g)).peak, 5u);  // A B C D E F G
  // The greedy defers B until after D and E.
  auto pos = [&](int32_t v) { return std::find(xla.begin(), xla.end(), v) - xla.begin(); };
  EXPECT_GT(pos(1), pos(3));
  EXPECT_GT(pos(1), pos(4));
}

TEST(Baselines, BfsAndDfsFollowInductorsKeys) {
  // Two independent chains from one input: BFS interleaves them (earliest predecessors first),
  // DFS finishes the cheaper chain first.
  const Graph g = from_nodes(R"({"id": 0, "op": "input", "inputs": [], "size": 1},
                                {"id": 1, "op": "f", "inputs": [0], "size": 50},
                                {"id": 2, "op": "f", "inputs": [1], "size": 50},
                                {"id": 3, "op": "f", "inputs": [0], "size": 2},
                                {"id": 4, "op": "f", "inputs": [3], "size": 2})",
                             "[2, 4]");
  EXPECT_EQ(bfs_order(g), (Order{0, 1, 3, 2, 4}));
  // DFS keys (own + input bytes): 0:0 1:51 2:100 3:3 4:4; roots in key order 0,3,4,1,2.
  EXPECT_EQ(dfs_order(g), (Order{0, 3, 4, 1, 2}));
}

TEST(Baselines, HandleLargeGraphs) {
  // 1e5-node random layered-ish graph: every baseline finishes and is valid (no timing asserted).
  const int32_t n = 100000;
  Graph g;
  g.nodes.resize(n);
  uint64_t s = 12345;
  auto rnd = [&]() { return (s = s * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  for (int32_t i = 0; i < n; ++i) {
    Node& nd = g.nodes[i];
    nd.size = rnd() % 1000;
    if (i < 100) {
      nd.op = "input";
      continue;
    }
    for (int k = 0; k < 2; ++k)
      nd.inputs.push_back(std::max(0, i - 1 - static_cast<int32_t>(rnd() % 300)));
  }
  g.finalize();
  for (const auto& [name, o] : all_baselines(g)) EXPECT_TRUE(test::is_topological(g, o)) << name;
}

TEST(Bounds, PinnedOnSmallGraphs) {
  // Working set of c: a + b + c + workspace = 3 + 4 + 5 + 6.
  const Graph g = from_nodes(R"({"id": 0, "op": "input", "inputs": [], "size": 2},
                                {"id": 1, "op": "f", "inputs": [0], "size": 3},
                                {"id": 2, "op": "f", "inputs": [0], "size": 4},
                                {"id": 3, "op": "f", "inputs": [1, 2], "size": 5, "workspace": 6})",
                             "[3]");
  LowerBound lb = simple_lower_bound(g);
  EXPECT_EQ(lb.bytes, 18u);
  EXPECT_EQ(lb.kind, "node-working-set");
  const Graph h = from_nodes(R"({"id": 0, "op": "input", "inputs": [], "size": 40},
                                {"id": 1, "op": "input", "inputs": [], "size": 30},
                                {"id": 2, "op": "f", "inputs": [0], "size": 1})",
                             "[2]");
  lb = simple_lower_bound(h);
  EXPECT_EQ(lb.bytes, 70u);
  EXPECT_EQ(lb.kind, "initial-live");
  const Graph k = from_nodes(R"({"id": 0, "op": "f", "inputs": [], "size": 40},
                                {"id": 1, "op": "f", "inputs": [], "size": 30})",
                             "[0, 1]");
  lb = simple_lower_bound(k);
  EXPECT_EQ(lb.bytes, 70u);
  EXPECT_EQ(lb.kind, "outputs");
}

TEST(Bounds, MustLiveCountsBuffersNeededAcrossANode) {
  // x -> a (10) -> b (10) -> c (1) -> d (1, output), and d also reads a (like a backward
  // node reading a saved activation). At c's step a must be live (its reader d comes after
  // c) and so must b: 10 + 10 + 1 = 21, the optimum. The simple bounds give 20.
  const Graph g = from_nodes(R"({"id": 0, "op": "input", "inputs": [], "size": 1},
                                {"id": 1, "op": "f", "inputs": [0], "size": 10},
                                {"id": 2, "op": "f", "inputs": [1], "size": 10},
                                {"id": 3, "op": "f", "inputs": [2], "size": 1},
                                {"id": 4, "op": "f", "inputs": [3, 1], "size": 1})",
                             "[4]");
  EXPECT_EQ(simple_lower_bound(g).bytes, 20u);
  const LowerBound ml = must_live_lower_bound(g);
  EXPECT_EQ(ml.bytes, 21u);
  EXPECT_EQ(ml.kind, "must-live");
  EXPECT_EQ(test::Reference(g).optimum(), 21u);
  EXPECT_EQ(must_live_lower_bound(g, 3).bytes, 20u);  // above max_nodes: the simple bound
  const ScheduleResult r = schedule(g, {});
  EXPECT_TRUE(r.proven_optimal);
  EXPECT_EQ(r.lower_bound.kind, "must-live");
}

TEST(Schedule, NeverWorseThanAnyBaselineAndBoundHolds) {
  for (uint64_t seed = 1; seed <= 60; ++seed) {
    const Graph g = test::random_graph(2 + static_cast<int32_t>(seed % 11), seed + 5000);
    const uint64_t opt = test::Reference(g).optimum();
    for (const char* algo : {"auto", "lpmf", "program", "xla"}) {
      ScheduleOptions opt_s;
      opt_s.algo = algo;
      opt_s.time_limit_s = 0.5;
      opt_s.use_ilp = false;
      const ScheduleResult r = schedule(g, opt_s);
      ASSERT_TRUE(test::is_topological(g, r.order)) << algo;
      EXPECT_EQ(r.peak, simulate(g, r.order).peak);
      EXPECT_GE(r.peak, opt);
      EXPECT_LE(r.lower_bound.bytes, opt) << r.lower_bound.kind;
      EXPECT_EQ(r.baseline_peaks.size(), 5u);
      if (std::string(algo) == "auto") {
        for (const auto& [name, peak] : r.baseline_peaks) EXPECT_LE(r.peak, peak) << name;
      } else {
        EXPECT_EQ(r.algorithm, algo);
      }
      if (r.proven_optimal) {
        EXPECT_EQ(r.peak, opt) << "seed " << seed;
      }
      EXPECT_GE(r.placement.arena_bytes, r.peak);
    }
  }
}

TEST(Schedule, ProvenOptimalWhenPeakMeetsTheBound) {
  // A chain: program order meets the working-set bound.
  const Graph g = from_nodes(R"({"id": 0, "op": "input", "inputs": [], "size": 2},
                                {"id": 1, "op": "f", "inputs": [0], "size": 3},
                                {"id": 2, "op": "f", "inputs": [1], "size": 4})",
                             "[2]");
  const ScheduleResult r = schedule(g, {});
  EXPECT_EQ(r.peak, 7u);
  EXPECT_TRUE(r.proven_optimal);
  EXPECT_EQ(r.gap, 0.0);
  EXPECT_FALSE(r.notes.empty());
  ScheduleOptions bad;
  bad.algo = "magic";
  EXPECT_THROW(schedule(g, bad), Error);
}
