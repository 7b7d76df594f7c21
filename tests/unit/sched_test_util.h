// Test helpers for sched/: random graphs, an independent reference of the memory model
// (written from graph_format.md, sharing no code with the simulator) and a brute-force optimum.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched::test {

/// A random valid graph of n nodes with freeable inputs, params, views (also views of views),
/// outputs, persistent buffers, workspaces and duplicate inputs.
inline Graph random_graph(int32_t n, uint64_t seed, uint64_t max_size = 50) {
  std::mt19937_64 rng(seed);
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto coin = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
  Graph g;
  g.name = "random-";
  g.name += std::to_string(seed);  // (not "a" + ...: GCC 12 -Wrestrict false positive)
  for (int32_t i = 0; i < n; ++i) {
    Node nd;
    nd.id = 10 * i + 3;  // non-dense ids
    nd.name = "n";
    nd.name += std::to_string(i);
    if (i == 0 || coin(0.2)) {
      nd.op = coin(0.3) ? "param" : "input";
      nd.size = static_cast<uint64_t>(uni(0, static_cast<int64_t>(max_size)));
    } else {
      const int64_t k = uni(1, std::min<int64_t>(3, i));
      for (int64_t j = 0; j < k; ++j) nd.inputs.push_back(static_cast<int32_t>(uni(0, i - 1)));
      if (coin(0.15)) nd.inputs.push_back(nd.inputs[0]);  // a duplicate
      if (coin(0.15)) {
        nd.op = "view";
        nd.view_of = nd.inputs[0];
      } else {
        nd.op = "op";
        nd.size = static_cast<uint64_t>(uni(0, static_cast<int64_t>(max_size)));
        if (coin(0.15)) nd.workspace = static_cast<uint64_t>(uni(1, static_cast<int64_t>(max_size)));
      }
    }
    g.nodes.push_back(nd);
  }
  g.is_output.assign(n, 0);
  g.is_persistent.assign(n, 0);
  for (int32_t i = 0; i < n; ++i) {
    if (coin(0.2)) g.is_output[i] = 1;
    if (g.nodes[i].op == "param" || (g.nodes[i].inputs.empty() && coin(0.1))) g.is_persistent[i] = 1;
  }
  g.finalize("<random>");
  return g;
}

/// A uniformly-ish random topological order.
inline Order random_order(const Graph& g, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int32_t n = g.size();
  std::vector<int32_t> indeg(n);
  std::vector<int32_t> ready;
  for (int32_t v = 0; v < n; ++v) {
    indeg[v] = static_cast<int32_t>(g.nodes[v].inputs.size());
    if (!indeg[v]) ready.push_back(v);
  }
  Order o;
  while (!ready.empty()) {
    const size_t k = std::uniform_int_distribution<size_t>(0, ready.size() - 1)(rng);
    const int32_t v = ready[k];
    ready.erase(ready.begin() + static_cast<std::ptrdiff_t>(k));
    o.push_back(v);
    for (int32_t s : g.users[v])
      if (--indeg[s] == 0) ready.push_back(s);
  }
  return o;
}

/// Independent reference: the memory model written directly from graph_format.md, evaluated
/// on the set of nodes that has run (the live set depends only on that set).
class Reference {
 public:
  explicit Reference(const Graph& g) : g_(g), n_(g.size()) {
    root_.resize(n_);
    for (int32_t v = 0; v < n_; ++v) {
      int32_t x = v;
      while (g.nodes[x].view_of != -1) x = g.nodes[x].view_of;
      root_[v] = x;
    }
    readers_.assign(n_, {});
    kept_.assign(n_, 0);
    pers_.assign(n_, 0);
    for (int32_t u = 0; u < n_; ++u) {
      for (int32_t in : g.nodes[u].inputs) {
        auto& r = readers_[root_[in]];
        if (std::find(r.begin(), r.end(), u) == r.end()) r.push_back(u);
      }
      if (g.is_output[u]) kept_[root_[u]] = 1;
      if (g.is_persistent[u]) pers_[root_[u]] = 1;
    }
  }
  bool free_input(int32_t v) const {
    return g_.nodes[v].op == "input" && g_.nodes[v].inputs.empty() && !pers_[root_[v]];
  }
  uint64_t own(int32_t v) const {
    if (g_.nodes[v].view_of != -1 || pers_[v] || free_input(v)) return 0;
    return g_.nodes[v].size;
  }
  /// Live bytes after exactly the nodes with done[v] have run.
  uint64_t live(const std::vector<char>& done) const {
    uint64_t s = 0;
    for (int32_t b = 0; b < n_; ++b) {
      if (g_.nodes[b].view_of != -1 || pers_[b]) continue;
      const bool made = done[b] || free_input(b);
      if (!made) continue;
      bool exists;
      if (kept_[b]) exists = true;
      else if (readers_[b].empty()) exists = free_input(b) && !done[b];
      else exists = std::any_of(readers_[b].begin(), readers_[b].end(), [&](int32_t r) { return !done[r]; });
      if (exists) s += g_.nodes[b].size;
    }
    return s;
  }
  uint64_t peak(const Order& order) const {
    std::vector<char> done(n_, 0);
    uint64_t p = live(done);
    for (int32_t v : order) {
      p = std::max(p, live(done) + own(v) + g_.nodes[v].workspace);
      done[v] = 1;
    }
    return p;
  }
  /// Minimum peak over all topological orders (n <= ~16): bottleneck DP over down-sets.
  uint64_t optimum() const {
    const uint32_t full = (1u << n_) - 1;
    std::vector<uint64_t> best(full + 1, ~uint64_t{0});
    std::vector<uint32_t> pred(n_, 0);
    for (int32_t v = 0; v < n_; ++v)
      for (int32_t u : g_.nodes[v].inputs) pred[v] |= 1u << u;
    std::vector<char> done(n_);
    {
      std::fill(done.begin(), done.end(), 0);
      best[0] = live(done);
    }
    for (uint32_t s = 0; s <= full; ++s) {
      if (best[s] == ~uint64_t{0}) continue;
      for (int32_t v = 0; v < n_; ++v) done[v] = (s >> v) & 1;
      const uint64_t l = live(done);
      for (int32_t v = 0; v < n_; ++v) {
        if ((s >> v) & 1 || (pred[v] & s) != pred[v]) continue;
        const uint64_t p = std::max(best[s], l + own(v) + g_.nodes[v].workspace);
        best[s | (1u << v)] = std::min(best[s | (1u << v)], p);
      }
    }
    return best[full];
  }

 private:
  const Graph& g_;
  int32_t n_;
  std::vector<int32_t> root_;
  std::vector<std::vector<int32_t>> readers_;
  std::vector<char> kept_, pers_;
};

inline bool is_topological(const Graph& g, const Order& o) {
  if (static_cast<int32_t>(o.size()) != g.size()) return false;
  std::vector<int32_t> pos(g.size(), -1);
  for (int32_t t = 0; t < g.size(); ++t) {
    if (o[t] < 0 || o[t] >= g.size() || pos[o[t]] != -1) return false;
    pos[o[t]] = t;
  }
  for (int32_t v = 0; v < g.size(); ++v)
    for (int32_t u : g.nodes[v].inputs)
      if (pos[u] >= pos[v]) return false;
  return true;
}

}  // namespace deltamoe::sched::test
