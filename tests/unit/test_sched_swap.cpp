// Swap plans (sched/swap): against a brute-force optimum over every subset of gaps, built here
// from the graph and the memory model's reference (sched_test_util.h) without the planner's
// code; and swapped_profile's refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "deltamoe/sched/swap.h"
#include "sched_test_util.h"

namespace deltamoe::sched {
namespace {

struct RefGap {
  int32_t buffer, first, last;  // off positions (first -1: initially)
  uint64_t bytes, fetch, write;
};

// Every gap of the model, from the node list alone.
std::vector<RefGap> reference_gaps(const Graph& g, const Order& order, int32_t k, bool to_host) {
  const int32_t n = g.size();
  std::vector<int32_t> pos(n), root(n);
  for (int32_t t = 0; t < n; ++t) pos[order[t]] = t;
  for (int32_t v = 0; v < n; ++v) {
    int32_t x = v;
    while (g.nodes[x].view_of != -1) x = g.nodes[x].view_of;
    root[v] = x;
  }
  std::vector<std::vector<int32_t>> uses(n);
  std::vector<char> output(n, 0), persistent(n, 0);
  for (int32_t v = 0; v < n; ++v) {
    for (int32_t u : g.nodes[v].inputs) uses[root[u]].push_back(pos[v]);
    if (g.is_output[v]) output[root[v]] = 1;
    if (g.is_persistent[v]) persistent[root[v]] = 1;
  }
  std::vector<RefGap> gaps;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1 || persistent[b] || g.nodes[b].size == 0) continue;
    const bool input = g.nodes[b].op == "input" && g.nodes[b].inputs.empty();
    std::vector<int32_t> u = uses[b];
    if (input && u.empty()) u.push_back(pos[b]);
    u.push_back(input ? -1 : pos[b]);
    std::sort(u.begin(), u.end());
    u.erase(std::unique(u.begin(), u.end()), u.end());
    const uint64_t size = g.nodes[b].size;
    for (size_t i = 0; i + 1 < u.size(); ++i) {
      const int32_t first = u[i] < 0 ? -1 : u[i] + 1 + k, last = u[i + 1] - 1 - k;
      if (first <= last) gaps.push_back({b, first, last, size, size, input ? 0 : size});
    }
    if (to_host && output[b] && u.back() + 1 + k <= n - 1)
      gaps.push_back({b, u.back() + 1 + k, n - 1, size, 0, input ? 0 : size});
  }
  return gaps;
}

// Need at the initial state (index 0) and at each step (index t + 1), from the reference.
std::vector<uint64_t> reference_needs(const Graph& g, const Order& order) {
  const test::Reference ref(g);
  std::vector<char> done(g.size(), 0);
  std::vector<uint64_t> need{ref.live(done)};
  for (int32_t v : order) {
    need.push_back(ref.live(done) + ref.own(v) + g.nodes[v].workspace);
    done[v] = 1;
  }
  return need;
}

// The least bytes moved over every subset of gaps that keeps each need within `budget`.
std::optional<uint64_t> brute_force(const std::vector<RefGap>& gaps,
                                    const std::vector<uint64_t>& need, uint64_t budget) {
  std::optional<uint64_t> best;
  for (uint32_t s = 0; s < (1u << gaps.size()); ++s) {
    std::vector<uint64_t> off(need.size(), 0);
    std::vector<int32_t> written;
    uint64_t cost = 0;
    for (size_t i = 0; i < gaps.size(); ++i) {
      if (!((s >> i) & 1)) continue;
      const RefGap& gp = gaps[i];
      for (int32_t t = gp.first; t <= gp.last; ++t) off[t + 1] += gp.bytes;
      cost += gp.fetch;
      if (std::find(written.begin(), written.end(), gp.buffer) == written.end()) {
        written.push_back(gp.buffer);
        cost += gp.write;
      }
    }
    bool fits = true;
    for (size_t a = 0; a < need.size() && fits; ++a) fits = need[a] - off[a] <= budget;
    if (fits && (!best || cost < *best)) best = cost;
  }
  return best;
}

TEST(SchedSwap, MatchesBruteForceOnRandomGraphs) {
  int checked = 0, planned = 0;
  for (uint64_t seed = 1; checked < 150 && seed < 4000; ++seed) {
    const Graph g = test::random_graph(6 + static_cast<int32_t>(seed % 7), seed * 31 + 5, 60);
    const Order order = test::random_order(g, seed);
    const int32_t k = static_cast<int32_t>(seed % 3);
    const bool to_host = seed % 2 == 0;
    const std::vector<RefGap> gaps = reference_gaps(g, order, k, to_host);
    if (gaps.empty() || gaps.size() > 14) continue;
    const std::vector<uint64_t> need = reference_needs(g, order);
    const uint64_t peak = *std::max_element(need.begin(), need.end());
    if (peak < 4) continue;
    ++checked;
    SwapOptions opt;
    opt.overlap_steps = k;
    opt.outputs_to_host = to_host;
    opt.budget_bytes = std::max<uint64_t>(1, peak * (40 + seed % 60) / 100);
    if (seed % 4 < 2) {  // between the least budget and the peak: always a plan
      opt.method = "greedy";
      const uint64_t least = plan_swaps(g, order, opt).min_budget_bytes;
      opt.budget_bytes = least + (peak - least) * (seed % 10) / 10;
    }
    const std::optional<uint64_t> best = brute_force(gaps, need, opt.budget_bytes);
    for (const std::string method : {"greedy", "ilp"}) {
      if (method == "ilp" && !ilp_available()) continue;
      opt.method = method;
      const SwapPlan p = plan_swaps(g, order, opt);
      SCOPED_TRACE("seed " + std::to_string(seed) + " " + method);
      EXPECT_EQ(p.order_peak_bytes, peak);
      ASSERT_EQ(p.feasible, best.has_value());
      if (!best) {
        EXPECT_GT(p.min_budget_bytes, opt.budget_bytes);
        EXPECT_TRUE(p.swaps.empty());
        continue;
      }
      EXPECT_LE(p.min_budget_bytes, opt.budget_bytes);
      EXPECT_LE(p.peak_bytes, opt.budget_bytes);
      EXPECT_GE(p.bytes_moved(), *best);
      if (method == "ilp") {
        EXPECT_EQ(p.bytes_moved(), *best) << p.ilp_status;
        EXPECT_LE(p.ilp_lower_bound_bytes, *best);
      }
      // The plan on the reference's terms: each swap is one of the reference's gaps.
      std::vector<uint64_t> off(need.size(), 0);
      for (const Swap& s : p.swaps) {
        const bool known = std::any_of(gaps.begin(), gaps.end(), [&](const RefGap& gp) {
          return gp.buffer == s.buffer && gp.first == s.off_first && gp.last == s.off_last;
        });
        EXPECT_TRUE(known) << "buffer " << s.buffer;
        for (int32_t t = s.off_first; t <= s.off_last; ++t) off[t + 1] += s.bytes;
      }
      for (size_t a = 0; a < need.size(); ++a) EXPECT_LE(need[a] - off[a], opt.budget_bytes) << a;
      if (!p.swaps.empty()) ++planned;
    }
    // The least budget is met, one byte less is not.
    opt.method = "greedy";
    const uint64_t least = plan_swaps(g, order, opt).min_budget_bytes;
    opt.budget_bytes = least;
    EXPECT_TRUE(plan_swaps(g, order, opt).feasible);
    EXPECT_TRUE(brute_force(gaps, need, least).has_value());
    if (least > 1) {
      opt.budget_bytes = least - 1;
      EXPECT_FALSE(plan_swaps(g, order, opt).feasible);
      EXPECT_FALSE(brute_force(gaps, need, least - 1).has_value());
    }
  }
  EXPECT_EQ(checked, 150);
  EXPECT_GT(planned, 80);  // the cases are not all trivial
}

// A chain whose first activation is read again at the end: the only way under the budget is
// to move it out after its producer and back before its last reader.
Graph long_lived() {
  Graph g;
  auto add = [&](const std::string& op, std::vector<int32_t> in, uint64_t size) {
    Node nd;
    nd.op = op;
    nd.name = op + std::to_string(g.nodes.size());
    nd.inputs = std::move(in);
    nd.size = size;
    g.nodes.push_back(nd);
  };
  add("input", {}, 10);  // 0
  add("op", {0}, 50);    // 1: read again by 5
  add("op", {1}, 40);    // 2
  add("op", {2}, 40);    // 3
  add("op", {3}, 40);    // 4
  add("op", {4, 1}, 5);  // 5
  g.is_output.assign(6, 0);
  g.is_output[5] = 1;
  g.finalize("<long_lived>");
  return g;
}

TEST(SchedSwap, MovesTheLongLivedActivation) {
  const Graph g = long_lived();
  const Order order = program_order(g);
  SwapOptions opt;
  opt.overlap_steps = 0;
  opt.method = "greedy";
  // Needs by step: 60, 90, 130, 130, 95. Only buffer 1 has a gap: after its reader 2, before
  // its reader 5 (steps 3..4).
  opt.budget_bytes = 95;
  const SwapPlan p = plan_swaps(g, order, opt);
  ASSERT_TRUE(p.feasible);
  ASSERT_EQ(p.swaps.size(), 1u);
  EXPECT_EQ(p.swaps[0].buffer, 1);
  EXPECT_EQ(p.swaps[0].evict_after, 2);
  EXPECT_EQ(p.swaps[0].fetch_before, 5);
  EXPECT_EQ(p.swaps[0].off_first, 3);
  EXPECT_EQ(p.swaps[0].off_last, 4);
  EXPECT_EQ(p.bytes_to_host, 50u);
  EXPECT_EQ(p.bytes_from_host, 50u);
  EXPECT_EQ(p.peak_bytes, 95u);
  EXPECT_EQ(p.min_budget_bytes, 95u);  // step 5 reads buffer 1 and 4: 50 + 40 + 5
  opt.budget_bytes = 94;
  EXPECT_FALSE(plan_swaps(g, order, opt).feasible);
  opt.budget_bytes = 130;
  EXPECT_EQ(plan_swaps(g, order, opt).method, "none");
  // With a transfer overlapping one step on each side, the gap is empty.
  opt.overlap_steps = 1;
  opt.budget_bytes = 95;
  EXPECT_FALSE(plan_swaps(g, order, opt).feasible);
  EXPECT_EQ(plan_swaps(g, order, opt).min_budget_bytes, 130u);
}

TEST(SchedSwap, RefusesBadSwapsAndOptions) {
  const Graph g = long_lived();
  const Order order = program_order(g);
  const Swap good{1, 2, 5, 3, 4, 50};
  EXPECT_NO_THROW(swapped_profile(g, order, {good}, 0, false));
  auto refused = [&](Swap s, const std::string& what, int32_t k = 0) {
    try {
      swapped_profile(g, order, {s}, k, false);
      ADD_FAILURE() << "accepted a swap that " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  Swap s = good;
  s.fetch_before = 4;
  refused(s, "not the next use");
  s = good;
  s.evict_after = 3;
  refused(s, "not a use");
  s = good;
  s.off_last = 3;
  refused(s, "off range");
  refused(good, "off range", 1);
  s = good;
  s.bytes = 49;
  refused(s, "bytes differ");
  s = good;
  s.evict_after = 5;
  s.fetch_before = 6;
  refused(s, "not an output allowed");
  try {
    swapped_profile(g, order, {good, good}, 0, false);
    ADD_FAILURE() << "accepted a gap swapped twice";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("twice"), std::string::npos) << e.what();
  }
  SwapOptions opt;
  opt.budget_bytes = 0;
  EXPECT_THROW(plan_swaps(g, order, opt), Error);
  opt.budget_bytes = 100;
  opt.overlap_steps = -1;
  EXPECT_THROW(plan_swaps(g, order, opt), Error);
  opt.overlap_steps = 0;
  opt.method = "best";
  EXPECT_THROW(plan_swaps(g, order, opt), Error);
}

}  // namespace
}  // namespace deltamoe::sched
