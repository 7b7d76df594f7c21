// The step-cut lower bound (schedule.h): at the step of node v, the nodes that ran before v
// form a down-set D with every ancestor of v in it and v and its descendants out. Which
// buffers are live then depends only on D: a buffer whose producer is in D (a freeable input:
// always) and that is an output or has a reader outside D. The least such memory over every D
// is a minimum closure problem, solved as a minimum s-t cut (Picard's construction): source
// side = D. Per buffer b with its producer p:
//   - p in D forced (an ancestor of v, or b a freeable input), b forced live (an output, or a
//     reader that is v or a descendant): a constant (the must-live bound's part);
//   - p free (incomparable to v), b forced live: arc p -> t of b's bytes (paid when p in D);
//   - otherwise, a node z_b ("every reader has run") with arc p -> z_b of b's bytes (s -> z_b
//     when p is forced) and z_b -> r of infinite capacity for each free reader r (z_b can be on
//     the source side only with all of them).
// Closure: for each free node w and each input u of w, w -> u of infinite capacity (w in D
// needs u in D). Ancestors of v are the source, v and descendants the sink.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <vector>

// GCC 12 sees maybe-uninitialized optionals inside Boost.Graph's edge iterators (a known
// false positive of its optimiser on boost::optional); the code is Boost's.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <boost/graph/adjacency_list.hpp>
#include <boost/graph/boykov_kolmogorov_max_flow.hpp>
#pragma GCC diagnostic pop

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

namespace {

using Traits = boost::adjacency_list_traits<boost::vecS, boost::vecS, boost::directedS>;
using FlowGraph = boost::adjacency_list<
    boost::vecS, boost::vecS, boost::directedS,
    boost::property<boost::vertex_index_t, int64_t,
                    boost::property<boost::vertex_color_t, boost::default_color_type,
                                    boost::property<boost::vertex_distance_t, int64_t,
                                                    boost::property<boost::vertex_predecessor_t,
                                                                    Traits::edge_descriptor>>>>,
    boost::property<
        boost::edge_capacity_t, int64_t,
        boost::property<boost::edge_residual_capacity_t, int64_t,
                        boost::property<boost::edge_reverse_t, Traits::edge_descriptor>>>>;

/// A flow network built arc by arc (each with its zero-capacity reverse, as BK needs).
class Network {
 public:
  explicit Network(size_t vertices) : g_(vertices) {}
  void arc(size_t from, size_t to, int64_t cap) {
    auto capm = boost::get(boost::edge_capacity, g_);
    auto rev = boost::get(boost::edge_reverse, g_);
    const auto e = boost::add_edge(from, to, g_).first;
    const auto r = boost::add_edge(to, from, g_).first;
    capm[e] = cap;
    capm[r] = 0;
    rev[e] = r;
    rev[r] = e;
  }
  int64_t max_flow(size_t s, size_t t) { return boost::boykov_kolmogorov_max_flow(g_, s, t); }
  /// After max_flow: the vertices reachable from `s` in the residual network (a minimum cut's
  /// source side).
  std::vector<char> source_side(size_t s) const {
    auto res = boost::get(boost::edge_residual_capacity, g_);
    std::vector<char> seen(boost::num_vertices(g_), 0);
    std::vector<size_t> stack = {s};
    seen[s] = 1;
    while (!stack.empty()) {
      const size_t x = stack.back();
      stack.pop_back();
      for (auto [e, end] = boost::out_edges(x, g_); e != end; ++e) {
        const size_t y = boost::target(*e, g_);
        if (!seen[y] && res[*e] > 0) {
          seen[y] = 1;
          stack.push_back(y);
        }
      }
    }
    return seen;
  }

 private:
  FlowGraph g_;
};

enum Side : uint8_t { kFree = 0, kBefore = 1, kAfter = 2 };

}  // namespace

namespace {

uint64_t step_cut(const Graph& g, int32_t v, const std::vector<int32_t>& also_before,
                  std::vector<char>* before) {
  const int32_t n = g.size();
  DELTAMOE_CHECK(v >= 0 && v < n, "memgraph", "step-cut bound: node ", v, " outside [0, ", n, ")");
  // Sides: ancestors of v before, v and its descendants after, the rest free.
  std::vector<uint8_t> side(static_cast<size_t>(n), kFree);
  std::vector<int32_t> stack = {v};
  side[static_cast<size_t>(v)] = kAfter;
  while (!stack.empty()) {
    const int32_t x = stack.back();
    stack.pop_back();
    for (const int32_t u : g.users[static_cast<size_t>(x)])
      if (side[static_cast<size_t>(u)] == kFree) {
        side[static_cast<size_t>(u)] = kAfter;
        stack.push_back(u);
      }
  }
  stack = {v};
  for (const int32_t x : also_before) {
    DELTAMOE_ASSERT(side[static_cast<size_t>(x)] != kAfter, "node ", x, " forced before ", v,
                    " is ", v, " or after it");
    if (side[static_cast<size_t>(x)] == kFree) {
      side[static_cast<size_t>(x)] = kBefore;
      stack.push_back(x);
    }
  }
  while (!stack.empty()) {
    const int32_t x = stack.back();
    stack.pop_back();
    for (const int32_t u : g.nodes[static_cast<size_t>(x)].inputs)
      if (side[static_cast<size_t>(u)] == kFree) {
        side[static_cast<size_t>(u)] = kBefore;
        stack.push_back(u);
      }
  }
  // Vertex ids: free nodes first, then z nodes as needed, then s and t.
  std::vector<int64_t> vid(static_cast<size_t>(n), -1);
  int64_t next = 0;
  for (int32_t x = 0; x < n; ++x)
    if (side[static_cast<size_t>(x)] == kFree) vid[static_cast<size_t>(x)] = next++;
  struct Arc {
    int64_t from, to, cap;
  };
  std::vector<Arc> arcs;
  constexpr int64_t kSource = -1, kSink = -2;
  uint64_t constant = 0, total = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[static_cast<size_t>(b)].view_of != -1 || b == v) continue;
    const uint64_t bytes = g.buffer_bytes(b);
    if (bytes == 0) continue;
    const bool free_input = g.is_free_input(b);
    if (free_input && g.buffer_readers[static_cast<size_t>(b)].empty() &&
        !g.buffer_output[static_cast<size_t>(b)]) {
      // A freeable input nothing reads lives until its own step: paid when b is not in D.
      if (side[static_cast<size_t>(b)] == kFree) {
        total += bytes;
        arcs.push_back({kSource, vid[static_cast<size_t>(b)], static_cast<int64_t>(bytes)});
      }
      continue;
    }
    const uint8_t ps = free_input ? static_cast<uint8_t>(kBefore) : side[static_cast<size_t>(b)];
    if (ps == kAfter) continue;  // made at or after v's step: not live at it
    bool forced_live = g.buffer_output[static_cast<size_t>(b)] != 0, any_free_reader = false;
    for (const int32_t r : g.buffer_readers[static_cast<size_t>(b)]) {
      if (side[static_cast<size_t>(r)] == kAfter) forced_live = true;
      if (side[static_cast<size_t>(r)] == kFree) any_free_reader = true;
    }
    total += bytes;
    const int64_t from = ps == kBefore ? kSource : vid[static_cast<size_t>(b)];
    if (forced_live) {
      if (ps == kBefore)
        constant += bytes;
      else
        arcs.push_back({from, kSink, static_cast<int64_t>(bytes)});
      continue;
    }
    if (!any_free_reader) continue;  // every reader is an ancestor: consumed before v
    const int64_t z = next++;
    arcs.push_back({from, z, static_cast<int64_t>(bytes)});
    for (const int32_t r : g.buffer_readers[static_cast<size_t>(b)])
      if (side[static_cast<size_t>(r)] == kFree)
        arcs.push_back({z, vid[static_cast<size_t>(r)], -1});
  }
  for (int32_t w = 0; w < n; ++w) {
    if (side[static_cast<size_t>(w)] != kFree) continue;
    for (const int32_t u : g.nodes[static_cast<size_t>(w)].inputs)
      if (side[static_cast<size_t>(u)] == kFree)
        arcs.push_back({vid[static_cast<size_t>(w)], vid[static_cast<size_t>(u)], -1});
  }
  const uint64_t own = g.own(v) + g.nodes[static_cast<size_t>(v)].workspace;
  if (before) {
    before->assign(static_cast<size_t>(n), 0);
    for (int32_t x = 0; x < n; ++x)
      (*before)[static_cast<size_t>(x)] = side[static_cast<size_t>(x)] == kBefore;
  }
  if (arcs.empty()) return constant + own;
  const int64_t inf = static_cast<int64_t>(total) + 1;
  const int64_t s = next, t = next + 1;
  Network net(static_cast<size_t>(next + 2));
  for (const Arc& a : arcs)
    net.arc(static_cast<size_t>(a.from == kSource ? s : a.from),
            static_cast<size_t>(a.to == kSink ? t : a.to), a.cap < 0 ? inf : a.cap);
  const int64_t cut = net.max_flow(static_cast<size_t>(s), static_cast<size_t>(t));
  if (before) {
    const std::vector<char> src = net.source_side(static_cast<size_t>(s));
    for (int32_t x = 0; x < n; ++x)
      if (side[static_cast<size_t>(x)] == kFree &&
          src[static_cast<size_t>(vid[static_cast<size_t>(x)])])
        (*before)[static_cast<size_t>(x)] = 1;
  }
  return constant + static_cast<uint64_t>(cut) + own;
}

}  // namespace

uint64_t step_cut_bound(const Graph& g, int32_t v, std::vector<char>* before) {
  return step_cut(g, v, {}, before);
}

uint64_t last_output_bound(const Graph& g, double time_limit_s) {
  // Some output's producer runs last among them: every other producer (and its ancestors)
  // has run at its step. A producer with another producer among its descendants cannot be
  // that one.
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const int32_t n = g.size();
  std::vector<int32_t> producers;
  for (int32_t b = 0; b < n; ++b)
    if (g.nodes[static_cast<size_t>(b)].view_of == -1 && g.buffer_output[static_cast<size_t>(b)] &&
        g.buffer_bytes(b) > 0 && !g.is_free_input(b))
      producers.push_back(b);
  if (producers.empty()) return 0;
  // reach[x]: some producer is x or a descendant of x (one reverse pass over program order).
  std::vector<char> is_prod(static_cast<size_t>(n), 0), below(static_cast<size_t>(n), 0);
  for (const int32_t p : producers) is_prod[static_cast<size_t>(p)] = 1;
  std::vector<char> maximal(static_cast<size_t>(n), 0);
  for (int32_t x = n - 1; x >= 0; --x) {
    bool any = false;  // a producer strictly below x
    for (const int32_t u : g.users[static_cast<size_t>(x)])
      any = any || below[static_cast<size_t>(u)] || is_prod[static_cast<size_t>(u)];
    below[static_cast<size_t>(x)] = any;
    maximal[static_cast<size_t>(x)] = is_prod[static_cast<size_t>(x)] && !any;
  }
  uint64_t best = ~uint64_t{0};
  for (const int32_t u : producers) {
    if (!maximal[static_cast<size_t>(u)]) continue;
    if (std::chrono::duration<double>(Clock::now() - t0).count() > time_limit_s) return 0;
    std::vector<int32_t> others;
    for (const int32_t p : producers)
      if (p != u) others.push_back(p);
    best = std::min(best, step_cut(g, u, others, nullptr));
  }
  return best == ~uint64_t{0} ? 0 : best;
}

uint64_t last_step_bound(const Graph& g) {
  // Some node with no users runs last, after every other node: the memory at its step is then
  // fixed (outputs, its own inputs' buffers, a freeable input nothing reads if it is that one).
  const int32_t n = g.size();
  uint64_t outputs = 0;
  std::vector<char> is_out(static_cast<size_t>(n), 0);
  for (int32_t b = 0; b < n; ++b)
    if (g.nodes[static_cast<size_t>(b)].view_of == -1 && g.buffer_output[static_cast<size_t>(b)]) {
      outputs += g.buffer_bytes(b);
      is_out[static_cast<size_t>(b)] = 1;
    }
  uint64_t best = ~uint64_t{0};
  for (int32_t v = 0; v < n; ++v) {
    if (!g.users[static_cast<size_t>(v)].empty()) continue;
    uint64_t need = outputs + g.nodes[static_cast<size_t>(v)].workspace;
    if (g.is_free_input(v)) {
      if (!is_out[static_cast<size_t>(v)]) need += g.buffer_bytes(v);
    } else if (!is_out[static_cast<size_t>(g.base[static_cast<size_t>(v)])]) {
      need += g.own(v);
    }
    for (const int32_t b : g.input_buffers[static_cast<size_t>(v)])
      if (!is_out[static_cast<size_t>(b)]) need += g.buffer_bytes(b);
    best = std::min(best, need);
  }
  return best == ~uint64_t{0} ? 0 : best;
}

LowerBound step_cut_lower_bound(const Graph& g, const Order& order, LowerBound start,
                                uint64_t stop_at, double time_limit_s) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const std::vector<uint64_t> need = memory_profile(g, order);
  // Only a step whose need in `order` is above the bound so far can raise it (its cut is at
  // most that need): the neediest first.
  std::vector<int32_t> steps(order.size());
  std::iota(steps.begin(), steps.end(), 0);
  std::sort(steps.begin(), steps.end(), [&](int32_t a, int32_t b) {
    return need[static_cast<size_t>(a)] > need[static_cast<size_t>(b)];
  });
  LowerBound best = start;
  const uint64_t last = last_step_bound(g);
  if (last > best.bytes) best = {last, "last-step"};
  if (best.bytes < stop_at) {
    const uint64_t lo = last_output_bound(g, time_limit_s / 2);
    if (lo > best.bytes) best = {lo, "last-output"};
  }
  for (const int32_t t : steps) {
    if (need[static_cast<size_t>(t)] <= best.bytes || best.bytes >= stop_at) break;
    if (std::chrono::duration<double>(Clock::now() - t0).count() > time_limit_s) break;
    const int32_t v = order[static_cast<size_t>(t)];
    if (g.is_free_input(v)) continue;  // its buffer is live from the start: no step of its own
    const uint64_t b = step_cut_bound(g, v);
    if (b > best.bytes) best = {b, "step-cut"};
  }
  return best;
}

Order step_cut_improve(const Graph& g, const Order& start, double time_limit_s) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  Order order = start;
  // (peak, steps at the peak) of a profile: lower is better.
  auto score = [](const std::vector<uint64_t>& need) {
    const uint64_t peak = need.empty() ? 0 : *std::max_element(need.begin(), need.end());
    int64_t at_peak = 0;
    for (const uint64_t x : need) at_peak += x == peak;
    return std::make_pair(peak, at_peak);
  };
  std::vector<uint64_t> need = memory_profile(g, order);
  auto best = score(need);
  std::vector<char> before;
  for (bool moved = true; moved;) {
    moved = false;
    for (size_t t = 0; t < order.size(); ++t) {
      if (need[t] != best.first) continue;
      if (std::chrono::duration<double>(Clock::now() - t0).count() > time_limit_s) return order;
      const int32_t v = order[t];
      if (g.is_free_input(v) || step_cut_bound(g, v, &before) >= best.first) continue;
      // Run the cut's source side first (in the current relative order), then v, then the
      // rest: v's step then holds exactly the cut's live set.
      Order cand;
      cand.reserve(order.size());
      for (const int32_t x : order)
        if (before[static_cast<size_t>(x)]) cand.push_back(x);
      cand.push_back(v);
      for (const int32_t x : order)
        if (!before[static_cast<size_t>(x)] && x != v) cand.push_back(x);
      std::vector<uint64_t> cand_need = memory_profile(g, cand);
      const auto s2 = score(cand_need);
      if (s2 < best) {
        best = s2;
        order = std::move(cand);
        need = std::move(cand_need);
        moved = true;
        break;
      }
    }
  }
  return order;
}

}  // namespace deltamoe::sched
