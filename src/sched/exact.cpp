// exact_search: the minimum peak as a bottleneck path through the down-sets of the DAG.
//
// After a down-set S has run, the live bytes L(S) do not depend on the order S ran in (a
// buffer is live iff its allocating node is in S, or it is initially live, and not all its
// readers are in S, or it is never freed). The peak of an order is the largest step need
// L(S) + alloc(v) + ws(v) along its chain of down-sets, so the optimum is a minimax path
// from {} to V: Dijkstra/A* with path cost g = running max and f = max(g, h) for a lower
// bound h of what remains. Down-sets are hashed (Zobrist keys, full bitset compared).
//
// Reductions that keep optimality:
//  * Greedy closure. If a ready node u satisfies L + alloc(u) + ws(u) <= g (it fits under the
//    peak already paid) and alloc(u) <= freed(u, S) (it does not grow the live set), some
//    optimal completion from (S, g) runs u first. Exchange argument: take an optimal
//    completion that runs u later, at step j, and move u to the front. Its own step costs at
//    most g. Every buffer u frees now would have been freed by u at j or by another reader
//    no later than j; nothing else is allocated earlier than before, so every step between
//    has live bytes no larger (they drop by freed(u, S) − alloc(u) >= 0, or more), and from
//    j on the down-sets are the same. Nodes that allocate nothing and need no workspace
//    (views, parameters, freeable inputs, size-0 nodes) always qualify, since L <= g.
//  * Segments. A node that allocates is either before or after every other allocating node
//    in all orders when it is comparable with all of them; the live bytes at such a point are
//    fixed, so the graph splits there into segments solved independently (peak = max).
//    Non-allocating nodes join the segment of their latest predecessor (by the closure
//    above, an optimal order runs them right there). Segments whose incumbent peak is
//    already at most another segment's proven optimum are not searched at all.
//  * Incumbent. Only states with f < the best known peak are kept; when none is left, the
//    best known order is optimal.
// Lower bound h(S): the per-node cut bound of node_bounds() for not-yet-run nodes v, with its
// never-freed share raised to the never-freed bytes S already allocated (both sets are
// allocated by the time v runs, so the larger of the two is live then); the bytes that are never freed and already allocated, plus for some node
// v not in S (the largest few by this measure are tried) alloc(v) + ws(v) + its freeable
// input buffers, which all are live when v runs; and L(S) + the least alloc + ws over the
// ready nodes (the next step must run one of them); and all never-freed bytes (the last step
// needs them).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <queue>
#include <random>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "sched/exact_search.h"

namespace deltamoe::sched {
namespace detail {
namespace {

struct Entry {
  uint64_t f;
  int32_t depth;
  int32_t id;
  bool operator<(const Entry& o) const {  // priority_queue pops the largest: invert
    if (f != o.f) return f > o.f;
    return depth < o.depth;
  }
};

class Search {
 public:
  Search(const Model& m, const SearchLimits& lim) : m_(m), lim_(lim), words_((m.n + 63) / 64) {
    std::mt19937_64 rng(0x9e3779b97f4a7c15ULL);
    zob_.resize(m.n);
    for (auto& z : zob_) z = rng();
    cost_.resize(m.n);
    c_.resize(m.n);
    nf_alloc_.assign(m.n, 0);
    uint64_t freeable_initial = 0;
    for (const ModelBuffer& b : m.buffers) {
      if (b.alloc == -1 && !b.never_freed) freeable_initial += b.bytes;
      if (b.alloc >= 0 && b.never_freed) nf_alloc_[b.alloc] += b.bytes;
    }
    nf_initial_ = m.initial - freeable_initial;
    // The last step needs every never-freed byte (all are allocated by then).
    nf_total_ = nf_initial_;
    for (uint64_t x : nf_alloc_) nf_total_ += x;
    for (int32_t v = 0; v < m.n; ++v) {
      cost_[v] = m.alloc[v] + m.ws[v];
      c_[v] = cost_[v];
      for (int32_t b : m.reads[v])
        if (m.buffers[b].alloc != v) c_[v] += m.buffers[b].bytes;
    }
    by_c_.resize(m.n);
    for (int32_t v = 0; v < m.n; ++v) by_c_[v] = v;
    std::sort(by_c_.begin(), by_c_.end(), [&](int32_t a, int32_t b) { return c_[a] > c_[b]; });
    if (by_c_.size() > 48) by_c_.resize(48);
    lbv_ = node_bounds(m, 12000, &nfv_);
    by_lb_.resize(m.n);
    for (int32_t v = 0; v < m.n; ++v) by_lb_[v] = v;
    by_rest_ = by_lb_;
    std::sort(by_lb_.begin(), by_lb_.end(), [&](int32_t a, int32_t b) { return lbv_[a] > lbv_[b]; });
    if (by_lb_.size() > 48) by_lb_.resize(48);
    std::sort(by_rest_.begin(), by_rest_.end(),
              [&](int32_t a, int32_t b) { return lbv_[a] - nfv_[a] > lbv_[b] - nfv_[b]; });
    if (by_rest_.size() > 48) by_rest_.resize(48);
    table_.assign(1024, -1);
  }

  SearchOutcome run(const std::vector<int32_t>& incumbent) {
    SearchOutcome out;
    out.order = incumbent;
    out.peak = model_peak(m_, incumbent);
    ub_ = out.peak;
    best_ = incumbent;
    // Root state.
    std::vector<uint64_t> bits(words_, 0);
    std::vector<int32_t> ready, path;
    for (int32_t v = 0; v < m_.n; ++v)
      if (m_.preds[v].empty()) ready.push_back(v);
    uint64_t live = m_.initial, g = m_.initial, nf = nf_initial_, hash = 0;
    int32_t depth = 0;
    closure(bits, live, g, nf, hash, depth, ready, path);
    const uint64_t h0 = bound(bits, live, nf, ready);
    uint64_t root_lb = std::max(g, h0);
    if (depth == m_.n) {
      consider_goal(-1, path, g);
    } else if (root_lb < ub_) {
      add_state(bits, hash, g, live, nf, depth, -1, path, ready, std::max(g, h0));
    }
    uint64_t open_min = ub_;
    while (!pq_.empty()) {
      const Entry e = pq_.top();
      if (e.f >= ub_ || (lim_.stop_at && ub_ <= lim_.stop_at)) break;
      pq_.pop();
      State& s = states_[e.id];
      if (e.f != s.f || s.closed) continue;
      // The clock at every expansion (tens of ns): on 10^5-node models one expansion can take
      // milliseconds, and checking every 256 overran the deadline by seconds.
      ++out.expanded;
      if (std::chrono::steady_clock::now() > lim_.deadline ||
          ((out.expanded & 255) == 0 && memory() > lim_.max_bytes)) {
        out.limit_hit = true;
        open_min = e.f;
        break;
      }
      s.closed = true;
      expand(e.id);
      if (aborted_) {  // deadline inside the expansion: as if e had not been expanded
        out.limit_hit = true;
        open_min = e.f;
        break;
      }
    }
    if (!out.limit_hit) open_min = pq_.empty() ? ub_ : std::min(ub_, pq_.top().f);
    out.order = best_;
    out.peak = ub_;
    out.lower_bound = std::max(root_lb, std::min(open_min, ub_));
    out.lower_bound = std::min(out.lower_bound, ub_);
    out.exhausted = !out.limit_hit && out.lower_bound == ub_;
    return out;
  }

 private:
  struct State {
    uint64_t hash, g, live, nf, f;
    int32_t depth, parent;
    uint32_t path_off, path_len, ready_off, ready_len;
    bool closed;
  };

  bool has(const std::vector<uint64_t>& bits, int32_t v) const { return (bits[v >> 6] >> (v & 63)) & 1; }

  uint64_t freed(const std::vector<uint64_t>& bits, int32_t u) const {
    uint64_t fr = 0;
    for (int32_t b : m_.reads[u]) {
      bool last = true;
      for (int32_t r : m_.buffers[b].readers)
        if (r != u && !has(bits, r)) {
          last = false;
          break;
        }
      if (last) fr += m_.buffers[b].bytes;
    }
    return fr;
  }

  // Runs u from the state (bits, live, g...), updating everything in place.
  void take(std::vector<uint64_t>& bits, uint64_t& live, uint64_t& g, uint64_t& nf, uint64_t& hash,
            int32_t& depth, std::vector<int32_t>& ready, size_t ready_pos, std::vector<int32_t>& path,
            uint64_t fr) {
    const int32_t u = ready[ready_pos];
    g = std::max(g, live + cost_[u]);
    live = live + m_.alloc[u] - fr;
    nf += nf_alloc_[u];
    bits[u >> 6] |= uint64_t{1} << (u & 63);
    hash ^= zob_[u];
    ++depth;
    path.push_back(u);
    ready[ready_pos] = ready.back();
    ready.pop_back();
    for (int32_t w : m_.succs[u]) {
      bool ok = true;
      for (int32_t p : m_.preds[w])
        if (!has(bits, p)) {
          ok = false;
          break;
        }
      if (ok) ready.push_back(w);
    }
  }

  void closure(std::vector<uint64_t>& bits, uint64_t& live, uint64_t& g, uint64_t& nf,
               uint64_t& hash, int32_t& depth, std::vector<int32_t>& ready,
               std::vector<int32_t>& path) {
    bool changed = true;
    while (changed) {
      changed = false;
      for (size_t i = 0; i < ready.size(); ++i) {
        const int32_t u = ready[i];
        if (live + cost_[u] > g) continue;
        const uint64_t fr = freed(bits, u);
        if (cost_[u] != 0 && m_.alloc[u] > fr) continue;
        take(bits, live, g, nf, hash, depth, ready, i, path, fr);
        changed = true;
        break;
      }
    }
  }

  uint64_t bound(const std::vector<uint64_t>& bits, uint64_t live, uint64_t nf,
                 const std::vector<int32_t>& ready) const {
    uint64_t h = nf_total_;
    for (int32_t v : by_c_)
      if (!has(bits, v)) {
        h = std::max(h, nf + c_[v]);
        break;
      }
    for (int32_t v : by_lb_)
      if (!has(bits, v)) {
        h = std::max(h, lbv_[v] - nfv_[v] + std::max(nfv_[v], nf));
        break;
      }
    for (int32_t v : by_rest_)
      if (!has(bits, v)) {
        h = std::max(h, lbv_[v] - nfv_[v] + std::max(nfv_[v], nf));
        break;
      }
    if (!ready.empty()) {
      uint64_t least = UINT64_MAX;
      for (int32_t v : ready) least = std::min(least, cost_[v]);
      h = std::max(h, live + least);
    }
    return h;
  }

  size_t memory() const {
    return states_.size() * (sizeof(State) + words_ * 8 + 8) + arena_.size() * 4 + table_.size() * 4;
  }

  int32_t find(const std::vector<uint64_t>& bits, uint64_t hash) const {
    const size_t mask = table_.size() - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
      const int32_t id = table_[i];
      if (id < 0) return -1;
      if (states_[id].hash == hash &&
          std::memcmp(&bitsets_[static_cast<size_t>(id) * words_], bits.data(), words_ * 8) == 0)
        return id;
    }
  }

  void insert_table(int32_t id) {
    if ((states_.size() + 1) * 2 > table_.size()) {
      std::vector<int32_t> old(table_.size() * 2, -1);
      old.swap(table_);
      for (int32_t x : old)
        if (x >= 0) place(x);
    }
    place(id);
  }
  void place(int32_t id) {
    const size_t mask = table_.size() - 1;
    size_t i = states_[id].hash & mask;
    while (table_[i] >= 0) i = (i + 1) & mask;
    table_[i] = id;
  }

  void add_state(const std::vector<uint64_t>& bits, uint64_t hash, uint64_t g, uint64_t live,
                 uint64_t nf, int32_t depth, int32_t parent, const std::vector<int32_t>& path,
                 const std::vector<int32_t>& ready, uint64_t f) {
    State s{hash, g, live, nf, f, depth, parent, static_cast<uint32_t>(arena_.size()),
            static_cast<uint32_t>(path.size()), 0, static_cast<uint32_t>(ready.size()), false};
    arena_.insert(arena_.end(), path.begin(), path.end());
    s.ready_off = static_cast<uint32_t>(arena_.size());
    arena_.insert(arena_.end(), ready.begin(), ready.end());
    const int32_t id = static_cast<int32_t>(states_.size());
    states_.push_back(s);
    bitsets_.insert(bitsets_.end(), bits.begin(), bits.end());
    insert_table(id);
    pq_.push({f, depth, id});
  }

  void consider_goal(int32_t parent, const std::vector<int32_t>& path, uint64_t g) {
    if (g >= ub_) return;
    ub_ = g;
    std::vector<int32_t> rev(path.rbegin(), path.rend());
    for (int32_t p = parent; p >= 0; p = states_[p].parent) {
      const State& s = states_[p];
      for (uint32_t k = s.path_len; k-- > 0;) rev.push_back(arena_[s.path_off + k]);
    }
    best_.assign(rev.rbegin(), rev.rend());
  }

  void expand(int32_t id) {
    const State s = states_[id];
    std::vector<int32_t> ready0(arena_.begin() + s.ready_off, arena_.begin() + s.ready_off + s.ready_len);
    std::vector<uint64_t> bits0(bitsets_.begin() + static_cast<size_t>(id) * words_,
                                bitsets_.begin() + static_cast<size_t>(id + 1) * words_);
    for (size_t i = 0; i < ready0.size(); ++i) {
      // One expansion of a 10^5-node model can take a second (wide ready sets, long
      // closures): the deadline is checked per successor too.
      if (std::chrono::steady_clock::now() > lim_.deadline) {
        aborted_ = true;
        return;
      }
      std::vector<uint64_t> bits = bits0;
      std::vector<int32_t> ready = ready0, path;
      uint64_t live = s.live, g = s.g, nf = s.nf, hash = s.hash;
      int32_t depth = s.depth;
      if (live + cost_[ready[i]] >= ub_) continue;
      take(bits, live, g, nf, hash, depth, ready, i, path, freed(bits, ready[i]));
      closure(bits, live, g, nf, hash, depth, ready, path);
      if (depth == m_.n) {
        consider_goal(id, path, g);
        continue;
      }
      const uint64_t f = std::max(g, bound(bits, live, nf, ready));
      if (f >= ub_) continue;
      const int32_t old = find(bits, hash);
      if (old >= 0) {
        State& o = states_[old];
        if (o.g <= g) continue;
        // A cheaper way into a known down-set: re-point it (the closure from here took the
        // same set, so the stored ready list is still right).
        o.g = g;
        o.f = f;
        o.parent = id;
        o.path_off = static_cast<uint32_t>(arena_.size());
        o.path_len = static_cast<uint32_t>(path.size());
        arena_.insert(arena_.end(), path.begin(), path.end());
        o.closed = false;
        pq_.push({f, depth, old});
        continue;
      }
      add_state(bits, hash, g, live, nf, depth, id, path, ready, f);
    }
  }

  const Model& m_;
  SearchLimits lim_;
  bool aborted_ = false;  // an expansion stopped at the deadline
  size_t words_;
  std::vector<uint64_t> zob_, cost_, c_, nf_alloc_;
  uint64_t nf_initial_ = 0, nf_total_ = 0;
  std::vector<int32_t> by_c_, by_lb_, by_rest_;
  std::vector<uint64_t> nfv_;  // never-freed share of lbv_
  std::vector<uint64_t> lbv_;  // node_bounds(): need at v's step in every order
  std::vector<State> states_;
  std::vector<uint64_t> bitsets_;
  std::vector<int32_t> arena_, table_;
  std::priority_queue<Entry> pq_;
  uint64_t ub_ = 0;
  std::vector<int32_t> best_;
};

}  // namespace

SearchOutcome search_model(const Model& m, const std::vector<int32_t>& incumbent,
                           const SearchLimits& lim) {
  Search s(m, lim);
  return s.run(incumbent);
}

}  // namespace detail

ExactResult exact_search(const Graph& g, double time_limit_s, const Order* incumbent) {
  using namespace detail;
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, time_limit_s) * 1e6));
  Order inc = incumbent ? *incumbent : program_order(g);
  check_order(g, inc);
  const Model m = build_model(g);
  const std::vector<std::vector<int32_t>> segs = split_segments(m);
  std::vector<int32_t> seg_of(m.n, -1);
  for (size_t k = 0; k < segs.size(); ++k)
    for (int32_t v : segs[k]) seg_of[v] = static_cast<int32_t>(k);
  // The incumbent restricted to each segment (any topological order keeps the segments apart).
  std::vector<std::vector<int32_t>> seg_order(segs.size());
  std::vector<int32_t> local(m.n, -1);
  for (const auto& s : segs)
    for (size_t i = 0; i < s.size(); ++i) local[s[i]] = static_cast<int32_t>(i);
  for (int32_t v : inc) seg_order[seg_of[v]].push_back(local[v]);
  // Incumbent peak of each segment from one profile of the concatenated incumbent (sub-models
  // are built only for the segments that get searched: building all would cost
  // O(segments x buffers) on long chains).
  std::vector<uint64_t> ub(segs.size(), 0);
  {
    Order cat;
    cat.reserve(m.n);
    for (size_t k = 0; k < segs.size(); ++k)
      for (int32_t i : seg_order[k]) cat.push_back(segs[k][i]);
    std::vector<uint64_t> need;
    model_profile(m, cat, need);
    size_t t = 0;
    for (size_t k = 0; k < segs.size(); ++k)
      for (size_t i = 0; i < segs[k].size(); ++i, ++t) ub[k] = std::max(ub[k], need[t]);
  }
  std::vector<size_t> by_ub(segs.size());
  for (size_t k = 0; k < segs.size(); ++k) by_ub[k] = k;
  std::stable_sort(by_ub.begin(), by_ub.end(), [&](size_t a, size_t b) { return ub[a] > ub[b]; });
  uint64_t lb = m.initial;
  bool limit_hit = false;
  uint64_t expanded = 0;
  size_t searched = 0;
  for (size_t k : by_ub) {
    if (ub[k] <= lb) continue;  // cannot matter: another segment already needs lb
    SearchLimits lim;
    lim.deadline = deadline;
    lim.stop_at = lb;
    std::vector<char> done(m.n, 0);
    for (size_t j = 0; j < k; ++j)
      for (int32_t v : segs[j]) done[v] = 1;
    const Model sub = sub_model(m, segs[k], done);
    SearchOutcome o = search_model(sub, seg_order[k], lim);
    ++searched;
    expanded += o.expanded;
    DELTAMOE_ASSERT(o.peak <= ub[k], "search returned a worse order");
    seg_order[k] = o.order;
    ub[k] = o.peak;
    if (o.limit_hit) limit_hit = true;
    lb = std::max(lb, std::min(o.lower_bound, o.peak));
  }
  Order order;
  order.reserve(m.n);
  for (size_t k = 0; k < segs.size(); ++k)
    for (int32_t i : seg_order[k]) order.push_back(segs[k][i]);
  uint64_t peak = model_peak(m, order);
  const uint64_t inc_peak = model_peak(m, inc);
  if (peak > inc_peak) {  // cannot happen (see split_segments); keep the promise regardless
    order = inc;
    peak = inc_peak;
  }
  ExactResult r;
  r.order = order;
  r.lower_bound = std::min(lb, peak);
  r.proven_optimal = r.lower_bound == peak;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.status = std::string(r.proven_optimal ? "optimal" : (limit_hit ? "limit reached" : "feasible")) +
             ": " + std::to_string(segs.size()) + " segments, " + std::to_string(searched) +
             " searched, " + std::to_string(expanded) + " states expanded, " +
             std::to_string(secs).substr(0, 6) + " s";
  return r;
}

}  // namespace deltamoe::sched
