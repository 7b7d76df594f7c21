// Fusion scoring (see include/deltamoe/sched/fusion.h for the rule and the fused node's model).
// Incremental form of the fused peak, with P = pos(p), C = pos(c), need(t) the unfused profile:
//   t < P or t > C : unchanged;  t = P : the step disappears;
//   P < t <= C     : need(t) − size(p) + Σ bytes(b) over p's input buffers b whose last reader
//                    ran before t (they now live until F runs at C);
//   t = C          : additionally + max(ws(p), ws(c)) − ws(c).
// Range maxima come from a sparse table, so each candidate costs O(k log k), k = |inputs(p)|.
#include "deltamoe/sched/fusion.h"

#include <algorithm>

#include "deltamoe/core/error.h"

namespace deltamoe::sched {

namespace {

__extension__ typedef __int128 i128;

class SparseMax {
 public:
  explicit SparseMax(const std::vector<uint64_t>& a) {
    const size_t n = a.size();
    table_.push_back(a);
    for (size_t k = 1; (size_t{1} << k) <= n; ++k) {
      const std::vector<uint64_t>& prev = table_.back();
      std::vector<uint64_t> cur(n - (size_t{1} << k) + 1);
      for (size_t i = 0; i < cur.size(); ++i) cur[i] = std::max(prev[i], prev[i + (size_t{1} << (k - 1))]);
      table_.push_back(std::move(cur));
    }
  }
  // Max over [l, r] inclusive, l <= r.
  uint64_t max(int32_t l, int32_t r) const {
    const int k = 31 - __builtin_clz(static_cast<unsigned>(r - l + 1));
    return std::max(table_[k][l], table_[k][r - (1 << k) + 1]);
  }

 private:
  std::vector<std::vector<uint64_t>> table_;
};

}  // namespace

bool can_fuse(const Graph& g, int32_t p, int32_t c) {
  if (p < 0 || c < 0 || p >= g.size() || c >= g.size() || p == c) return false;
  const Node& np = g.nodes[p];
  if (np.view_of != -1 || np.op == "input" || np.op == "param" || np.size == 0) return false;
  if (g.buffer_persistent[p] || g.buffer_output[p] || g.is_free_input(p)) return false;
  if (g.nodes[c].view_of != -1) return false;
  return g.buffer_readers[p].size() == 1 && g.buffer_readers[p][0] == c;
}

FusionReport fusion_report(const Graph& g, const Order& order) {
  const std::vector<uint64_t> need = memory_profile(g, order);
  const int32_t n = g.size();
  FusionReport rep;
  const SimResult sim = simulate(g, order);
  rep.peak = sim.peak;
  if (n == 0) return rep;
  std::vector<int32_t> pos(n);
  for (int32_t t = 0; t < n; ++t) pos[order[t]] = t;
  std::vector<int32_t> last(n, -1);  // last reader position per base (-1: none)
  for (int32_t b = 0; b < n; ++b)
    for (int32_t r : g.buffer_readers[b]) last[b] = std::max(last[b], pos[r]);
  std::vector<uint64_t> prefix(n), suffix(n);
  for (int32_t t = 0; t < n; ++t) prefix[t] = std::max(need[t], t ? prefix[t - 1] : 0);
  for (int32_t t = n - 1; t >= 0; --t) suffix[t] = std::max(need[t], t + 1 < n ? suffix[t + 1] : 0);
  const SparseMax rmq(need);
  std::vector<std::pair<int32_t, uint64_t>> steps;  // (last reader position, bytes)
  for (int32_t p = 0; p < n; ++p) {
    if (g.buffer_readers[p].size() != 1) continue;
    const int32_t c = g.buffer_readers[p][0];
    if (!can_fuse(g, p, c)) continue;
    const int32_t P = pos[p], C = pos[c];
    const i128 size_p = g.own(p);
    steps.clear();
    for (int32_t b : g.input_buffers[p]) {
      if (g.buffer_output[b] || g.buffer_bytes(b) == 0) continue;
      if (last[b] < C) steps.push_back({last[b], g.buffer_bytes(b)});
    }
    std::sort(steps.begin(), steps.end());
    i128 fused = sim.initial_live;
    if (P > 0) fused = std::max<i128>(fused, prefix[P - 1]);
    if (C + 1 < n) fused = std::max<i128>(fused, suffix[C + 1]);
    // Steps P+1 .. C-1, piecewise by the extra bytes kept alive.
    i128 extra = 0;
    size_t k = 0;
    int32_t t = P + 1;
    while (k < steps.size() && steps[k].first < t) extra += steps[k++].second;
    while (t <= C - 1) {
      const int32_t next = k < steps.size() ? std::min(steps[k].first, C - 1) : C - 1;  // piece end
      fused = std::max<i128>(fused, static_cast<i128>(rmq.max(t, next)) - size_p + extra);
      t = next + 1;
      while (k < steps.size() && steps[k].first < t) extra += steps[k++].second;
    }
    const uint64_t ws_c = g.nodes[c].workspace, ws_f = std::max(g.nodes[p].workspace, ws_c);
    fused = std::max<i128>(fused, static_cast<i128>(need[C]) - size_p + extra +
                                          static_cast<i128>(ws_f) - static_cast<i128>(ws_c));
    FusionCandidate fc;
    fc.producer = p;
    fc.consumer = c;
    fc.traffic_saved_bytes = 2 * g.nodes[p].size;
    fc.fused_peak = static_cast<uint64_t>(fused);
    fc.peak_delta = static_cast<int64_t>(fused - static_cast<i128>(sim.peak));
    rep.candidates.push_back(fc);
  }
  return rep;
}

Graph fuse_pair(const Graph& g, int32_t p, int32_t c) {
  DELTAMOE_CHECK(can_fuse(g, p, c), "sched", "nodes ", p, " and ", c, " are not a fusion candidate");
  Graph f;
  f.name = g.name;
  const int32_t n = g.size();
  auto remap = [&](int32_t v) { return v > p ? v - 1 : v; };
  for (int32_t v = 0; v < n; ++v) {
    if (v == p) continue;
    Node nd = g.nodes[v];
    nd.inputs.clear();
    for (int32_t u : g.nodes[v].inputs) {
      if (v == c && u == p) {
        for (int32_t w : g.nodes[p].inputs) nd.inputs.push_back(remap(w));
      } else {
        nd.inputs.push_back(remap(u));
      }
    }
    if (nd.view_of != -1) nd.view_of = remap(nd.view_of);
    if (v == c) {
      nd.workspace = std::max(g.nodes[p].workspace, g.nodes[c].workspace);
      nd.name = g.nodes[p].name + "+" + g.nodes[c].name;
      nd.op = "fused";
    }
    f.nodes.push_back(std::move(nd));
    f.is_output.push_back(g.is_output[v]);
    f.is_persistent.push_back(g.is_persistent[v]);
  }
  f.finalize("<fused>");
  return f;
}

Order fused_order(const Order& order, int32_t producer) {
  Order o;
  o.reserve(order.size());
  for (int32_t v : order)
    if (v != producer) o.push_back(v > producer ? v - 1 : v);
  return o;
}

}  // namespace deltamoe::sched
