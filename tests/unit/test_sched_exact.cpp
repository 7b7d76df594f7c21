// Exact peak-memory scheduling: exact_search and the ILP against brute force over all
// topological orders of small random graphs; local_search never worse than its start.
// The reference simulator here is written from graph_format.md's rules alone (it rescans every
// buffer after each step), independent of the model the algorithms use.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {
namespace {

struct RefSim {
  const Graph& g;
  int32_t n;
  std::vector<int32_t> base;
  std::vector<char> pers, outp, freed, done;
  std::vector<std::vector<int32_t>> readers;
  uint64_t live = 0, peak = 0;

  explicit RefSim(const Graph& graph) : g(graph), n(graph.size()) {
    base.resize(n);
    pers.assign(n, 0);
    outp.assign(n, 0);
    readers.assign(n, {});
    for (int32_t v = 0; v < n; ++v) {
      int32_t b = v;
      while (g.nodes[b].view_of != -1) b = g.nodes[b].view_of;
      base[v] = b;
    }
    for (int32_t v = 0; v < n; ++v) {
      if (g.is_persistent[v]) pers[base[v]] = 1;
      if (g.is_output[v]) outp[base[v]] = 1;
      std::vector<int32_t> in = g.nodes[v].inputs;
      if (g.nodes[v].view_of != -1) in.push_back(g.nodes[v].view_of);
      for (int32_t u : in) {
        auto& r = readers[base[u]];
        if (std::find(r.begin(), r.end(), v) == r.end()) r.push_back(v);
      }
    }
    reset();
  }
  bool free_input(int32_t v) const {
    return g.nodes[v].op == "input" && g.nodes[v].inputs.empty() && !pers[base[v]];
  }
  void reset() {
    freed.assign(n, 0);
    done.assign(n, 0);
    live = 0;
    for (int32_t v = 0; v < n; ++v)
      if (free_input(v)) live += g.nodes[v].size;
    peak = live;
  }
  uint64_t own(int32_t v) const {
    if (g.nodes[v].view_of != -1 || pers[base[v]] || free_input(v)) return 0;
    return g.nodes[v].size;
  }
  // Runs v; returns what is needed to undo it.
  std::vector<int32_t> step(int32_t v, uint64_t& need) {
    need = live + own(v) + g.nodes[v].workspace;
    peak = std::max(peak, need);
    live += own(v);
    done[v] = 1;
    std::vector<int32_t> newly;
    for (int32_t b = 0; b < n; ++b) {
      if (base[b] != b || pers[b] || outp[b] || freed[b]) continue;
      if (!done[b] && !free_input(b)) continue;
      bool all = true;
      if (readers[b].empty())
        all = done[b];
      else
        for (int32_t r : readers[b]) all = all && done[r];
      if (!all) continue;
      freed[b] = 1;
      live -= g.nodes[b].size;
      newly.push_back(b);
    }
    return newly;
  }
  void undo(int32_t v, const std::vector<int32_t>& newly) {
    for (int32_t b : newly) {
      freed[b] = 0;
      live += g.nodes[b].size;
    }
    done[v] = 0;
    live -= own(v);
  }
  uint64_t run(const Order& order) {
    reset();
    uint64_t need = 0;
    for (int32_t v : order) step(v, need);
    return peak;
  }
};

bool is_topological(const Graph& g, const Order& o) {
  if (o.size() != g.nodes.size()) return false;
  std::vector<int32_t> pos(g.size(), -1);
  for (size_t t = 0; t < o.size(); ++t) {
    if (o[t] < 0 || o[t] >= g.size() || pos[o[t]] != -1) return false;
    pos[o[t]] = static_cast<int32_t>(t);
  }
  for (int32_t v = 0; v < g.size(); ++v)
    for (int32_t u : g.nodes[v].inputs)
      if (pos[u] >= pos[v]) return false;
  return true;
}

// Minimum peak over all topological orders: depth-first enumeration, cut only where the
// running peak already reaches the best complete order (which cannot change the minimum).
uint64_t brute_force(const Graph& g) {
  RefSim sim(g);
  const int32_t n = g.size();
  uint64_t best = UINT64_MAX;
  std::vector<char> placed(n, 0);
  std::function<void(int32_t, uint64_t)> rec = [&](int32_t k, uint64_t peak) {
    if (peak >= best) return;
    if (k == n) {
      best = peak;
      return;
    }
    for (int32_t v = 0; v < n; ++v) {
      if (placed[v]) continue;
      bool ready = true;
      for (int32_t u : g.nodes[v].inputs) ready = ready && placed[u];
      if (!ready) continue;
      uint64_t need = 0;
      const uint64_t saved_live = sim.live;
      auto newly = sim.step(v, need);
      placed[v] = 1;
      rec(k + 1, std::max(peak, need));
      placed[v] = 0;
      sim.undo(v, newly);
      EXPECT_EQ(sim.live, saved_live);
    }
  };
  sim.reset();
  rec(0, sim.live);
  return best;
}

Graph random_graph(std::mt19937& rng, int32_t n, bool sparse_sizes = false) {
  Graph g;
  g.name = "random";
  std::uniform_int_distribution<int> pct(0, 99);
  auto size = [&]() -> uint64_t {
    if (pct(rng) < 10) return 0;
    return sparse_sizes ? uint64_t{1} << (pct(rng) % 12) : 4 * uint64_t(1 + pct(rng) % 12);
  };
  for (int32_t v = 0; v < n; ++v) {
    Node nd;
    nd.id = v;
    nd.name = "n" + std::to_string(v);
    const int kind = pct(rng);
    if (v == 0 || kind < 12) {
      nd.op = "input";
      nd.size = size();
    } else if (kind < 20) {
      nd.op = "param";
      nd.size = size();
    } else if (kind < 32) {
      nd.op = "aten.view";
      nd.view_of = static_cast<int32_t>(rng() % v);
      nd.inputs.push_back(nd.view_of);
    } else {
      nd.op = "aten.op";
      const int k = 1 + static_cast<int>(rng() % 3);
      for (int i = 0; i < k; ++i) nd.inputs.push_back(static_cast<int32_t>(rng() % v));
      nd.size = size();
      if (pct(rng) < 20) nd.workspace = 4 * (1 + rng() % 6);
    }
    g.nodes.push_back(nd);
  }
  g.is_output.assign(n, 0);
  g.is_persistent.assign(n, 0);
  for (int32_t v = 0; v < n; ++v) {
    if (g.nodes[v].op == "param")
      g.is_persistent[v] = 1;
    else if (pct(rng) < 3)
      g.is_persistent[v] = 1;
    if (pct(rng) < 15) g.is_output[v] = 1;
  }
  g.finalize();
  return g;
}

Order random_topo(const Graph& g, std::mt19937& rng) {
  const int32_t n = g.size();
  std::vector<int32_t> indeg(n, 0), ready, order;
  for (int32_t v = 0; v < n; ++v) indeg[v] = static_cast<int32_t>(g.nodes[v].inputs.size());
  std::vector<std::vector<int32_t>> users(n);
  for (int32_t v = 0; v < n; ++v)
    for (int32_t u : g.nodes[v].inputs) users[u].push_back(v);
  for (int32_t v = 0; v < n; ++v)
    if (indeg[v] == 0) ready.push_back(v);
  while (!ready.empty()) {
    const size_t i = rng() % ready.size();
    const int32_t v = ready[i];
    ready.erase(ready.begin() + static_cast<std::ptrdiff_t>(i));
    order.push_back(v);
    for (int32_t w : users[v])
      if (--indeg[w] == 0) ready.push_back(w);
  }
  return order;
}

TEST(SchedExact, ReferenceSimulatorPinsHandGraph) {
  // x (input 10) -> a (20, ws 5) -> view va -> b (8) reads va and x; b output; p param.
  Graph g;
  auto add = [&](const std::string& op, std::vector<int32_t> in, uint64_t size, int32_t view = -1,
                 uint64_t ws = 0) {
    Node nd;
    nd.id = static_cast<int64_t>(g.nodes.size());
    nd.op = op;
    nd.inputs = std::move(in);
    nd.size = size;
    nd.view_of = view;
    nd.workspace = ws;
    g.nodes.push_back(nd);
  };
  add("input", {}, 10);
  add("param", {}, 100);
  add("aten.mm", {0, 1}, 20, -1, 5);
  add("aten.view", {2}, 0, 2);
  add("aten.add", {3, 0}, 8);
  g.is_output = {0, 0, 0, 0, 1};
  g.is_persistent = {0, 1, 0, 0, 0};
  g.finalize();
  RefSim sim(g);
  // initial 10; mm needs 10+20+5 = 35; view 30; add 30+8 = 38, then x and a freed -> 8.
  EXPECT_EQ(sim.run(program_order(g)), 38u);
  EXPECT_EQ(sim.live, 8u);
  const ExactResult r = exact_search(g, 5.0, nullptr);
  ASSERT_TRUE(r.order);
  EXPECT_TRUE(r.proven_optimal);
  EXPECT_EQ(r.lower_bound, 38u);
}

TEST(SchedExact, ExactSearchEqualsBruteForce) {
  std::mt19937 rng(1234);
  int proven = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    const int32_t n = 1 + static_cast<int32_t>(rng() % 9);
    const Graph g = random_graph(rng, n, iter % 2 == 1);
    const uint64_t opt = brute_force(g);
    const Order inc = random_topo(g, rng);
    const ExactResult r = exact_search(g, 10.0, iter % 3 == 0 ? nullptr : &inc);
    ASSERT_TRUE(r.order) << "iter " << iter;
    ASSERT_TRUE(is_topological(g, *r.order)) << "iter " << iter;
    RefSim sim(g);
    ASSERT_EQ(sim.run(*r.order), opt) << "iter " << iter << " n " << n << " " << r.status;
    ASSERT_TRUE(r.proven_optimal) << "iter " << iter;
    ASSERT_EQ(r.lower_bound, opt) << "iter " << iter;
    proven += r.proven_optimal;
  }
  EXPECT_EQ(proven, 3000);
}

TEST(SchedExact, ExactSearchOnSeriesOfBlocks) {
  // Random blocks joined by single nodes: exercises the split into segments, where nodes
  // that allocate nothing straddle the joints.
  std::mt19937 rng(77);
  for (int iter = 0; iter < 300; ++iter) {
    const int32_t blocks = 2 + static_cast<int32_t>(rng() % 2);
    Graph g;
    int32_t joint = -1;
    for (int32_t k = 0; k < blocks; ++k) {
      const int32_t m = 3 + static_cast<int32_t>(rng() % 2);
      const int32_t first = g.size();
      for (int32_t i = 0; i < m; ++i) {
        Node nd;
        nd.id = g.size();
        nd.op = (i == 0 && joint < 0) ? "input" : "aten.op";
        if (i > 0 || joint >= 0) {
          const int32_t lo = i == 0 ? joint : first;
          nd.inputs.push_back(i == 0 ? joint : lo + static_cast<int32_t>(rng() % (g.size() - lo)));
          if (i > 0 && rng() % 2) nd.inputs.push_back(joint >= 0 ? joint : first);
        }
        if (rng() % 4 == 0 && !nd.inputs.empty()) {
          nd.op = "aten.view";
          nd.view_of = nd.inputs[0];
        } else {
          nd.size = 4 * (1 + rng() % 9);
        }
        g.nodes.push_back(nd);
      }
      Node j;
      j.id = g.size();
      j.op = "aten.join";
      for (int32_t v = first; v < g.size(); ++v) j.inputs.push_back(v);
      j.size = 4 * (1 + rng() % 9);
      g.nodes.push_back(j);
      joint = j.id;
    }
    const int32_t n = g.size();
    g.is_output.assign(n, 0);
    g.is_persistent.assign(n, 0);
    g.is_output[n - 1] = 1;
    g.finalize();
    const uint64_t opt = brute_force(g);
    const ExactResult r = exact_search(g, 10.0, nullptr);
    ASSERT_TRUE(r.order);
    ASSERT_TRUE(is_topological(g, *r.order));
    RefSim sim(g);
    ASSERT_EQ(sim.run(*r.order), opt) << "iter " << iter;
    ASSERT_TRUE(r.proven_optimal);
  }
}

TEST(SchedExact, IlpEqualsBruteForce) {
  if (!ilp_available()) {
    const Graph g = [] {
      std::mt19937 rng(1);
      return random_graph(rng, 3);
    }();
    EXPECT_THROW(ilp_schedule(g, 1.0, nullptr), Error);
    GTEST_SKIP() << "CBC not built";
  }
  std::mt19937 rng(4321);
  for (int iter = 0; iter < 300; ++iter) {
    const int32_t n = 1 + static_cast<int32_t>(rng() % 9);
    const Graph g = random_graph(rng, n, iter % 2 == 1);
    const uint64_t opt = brute_force(g);
    const Order inc = random_topo(g, rng);
    const ExactResult r = ilp_schedule(g, 30.0, iter % 2 ? &inc : nullptr);
    ASSERT_TRUE(r.order) << "iter " << iter << " " << r.status;
    ASSERT_TRUE(is_topological(g, *r.order));
    RefSim sim(g);
    ASSERT_EQ(sim.run(*r.order), opt) << "iter " << iter << " n " << n << " " << r.status;
    ASSERT_TRUE(r.proven_optimal) << r.status;
    ASSERT_EQ(r.lower_bound, opt);
  }
}

TEST(SchedExact, IlpAgreesWithExactSearchOnMediumGraphs) {
  if (!ilp_available()) GTEST_SKIP() << "CBC not built";
  std::mt19937 rng(99);
  for (int iter = 0; iter < 8; ++iter) {
    const Graph g = random_graph(rng, 10 + static_cast<int32_t>(rng() % 4));
    const ExactResult a = exact_search(g, 30.0, nullptr);
    const ExactResult b = ilp_schedule(g, 60.0, nullptr);
    ASSERT_TRUE(a.proven_optimal && b.proven_optimal);
    RefSim sim(g);
    EXPECT_EQ(sim.run(*a.order), sim.run(*b.order)) << "iter " << iter;
  }
}

TEST(SchedExact, LocalSearchNeverWorseAndValid) {
  std::mt19937 rng(555);
  for (int iter = 0; iter < 40; ++iter) {
    const Graph g = random_graph(rng, 20 + static_cast<int32_t>(rng() % 100));
    const Order start = random_topo(g, rng);
    const Order out = local_search(g, start, 0.2);
    ASSERT_TRUE(is_topological(g, out));
    RefSim sim(g);
    const uint64_t before = sim.run(start);
    EXPECT_LE(sim.run(out), before) << "iter " << iter;
  }
}

TEST(SchedExact, LargerGraphsNeverWorseThanIncumbentAndBoundHolds) {
  std::mt19937 rng(31);
  for (int iter = 0; iter < 20; ++iter) {
    const Graph g = random_graph(rng, 40 + static_cast<int32_t>(rng() % 200));
    const Order inc = random_topo(g, rng);
    const ExactResult r = exact_search(g, 0.2, &inc);
    ASSERT_TRUE(r.order);
    ASSERT_TRUE(is_topological(g, *r.order));
    RefSim sim(g);
    const uint64_t peak = sim.run(*r.order);
    EXPECT_LE(peak, sim.run(inc));
    EXPECT_LE(r.lower_bound, peak);
    EXPECT_EQ(r.proven_optimal, r.lower_bound == peak);
  }
}

TEST(SchedExact, RejectsInvalidIncumbent) {
  std::mt19937 rng(3);
  const Graph g = random_graph(rng, 5);
  Order bad = {0, 1, 2};
  EXPECT_THROW(exact_search(g, 1.0, &bad), Error);
  EXPECT_THROW(local_search(g, bad, 1.0), Error);
}

}  // namespace
}  // namespace deltamoe::sched
