// Baseline orders, each following its published description (RESEARCH.md §3):
// PyTorch Inductor's BFS, DFS and LPMF (torch/_inductor/memory.py) and XLA's list scheduler
// (hlo_memory_scheduler.cc). They are mapped onto the memgraph model: a node's "size" is
// own(v), a buffer is a base with its alias class, its readers are buffer_readers.
// All run in O((n + E) log n); Inductor's LPMF scans the whole ready set each step (O(n·width)),
// here a segment tree answers the same arg-min query.
#include <algorithm>
#include <queue>
#include <set>
#include <tuple>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

namespace {
__extension__ typedef __int128 i128;
}

// ---------------------------------------------------------------------------------- BFS
Order bfs_order(const Graph& g) {
  const int32_t n = g.size();
  std::vector<int32_t> indeg(n), exec_pos(n, -1);
  std::vector<std::vector<int32_t>> prio(n);  // sorted positions of the predecessors
  for (int32_t v = 0; v < n; ++v) indeg[v] = static_cast<int32_t>(g.nodes[v].inputs.size());
  // std::priority_queue is a max-heap: invert (lexicographically smaller priority first,
  // then the smaller program index, as Inductor's NodeWithPriority.__lt__).
  auto greater = [&](int32_t a, int32_t b) {
    if (prio[a] != prio[b]) return prio[b] < prio[a];
    return b < a;
  };
  std::priority_queue<int32_t, std::vector<int32_t>, decltype(greater)> heap(greater);
  for (int32_t v = 0; v < n; ++v)
    if (indeg[v] == 0) heap.push(v);
  Order order;
  order.reserve(n);
  while (!heap.empty()) {
    const int32_t v = heap.top();
    heap.pop();
    exec_pos[v] = static_cast<int32_t>(order.size());
    order.push_back(v);
    std::vector<int32_t>().swap(prio[v]);
    for (int32_t s : g.users[v]) {
      if (--indeg[s] == 0) {
        auto& p = prio[s];
        for (int32_t u : g.nodes[s].inputs) p.push_back(exec_pos[u]);
        std::sort(p.begin(), p.end());
        heap.push(s);
      }
    }
  }
  DELTAMOE_ASSERT(static_cast<int32_t>(order.size()) == n);
  return order;
}

// ---------------------------------------------------------------------------------- DFS
Order dfs_order(const Graph& g) {
  const int32_t n = g.size();
  std::vector<uint64_t> key(n);
  for (int32_t v = 0; v < n; ++v) {
    uint64_t k = g.own(v);
    for (int32_t b : g.input_buffers[v]) k += g.buffer_bytes(b);
    key[v] = k;
  }
  auto less = [&](int32_t a, int32_t b) { return key[a] != key[b] ? key[a] < key[b] : a < b; };
  std::vector<int32_t> roots(n);
  for (int32_t v = 0; v < n; ++v) roots[v] = v;
  std::sort(roots.begin(), roots.end(), less);
  std::vector<char> seen(n, 0);
  Order order;
  order.reserve(n);
  // Explicit stack: (node, its inputs sorted by key, next input to visit).
  struct Frame {
    int32_t v;
    std::vector<int32_t> deps;
    size_t next;
  };
  std::vector<Frame> stack;
  for (int32_t r : roots) {
    if (seen[r]) continue;
    seen[r] = 1;
    stack.push_back({r, g.nodes[r].inputs, 0});
    std::sort(stack.back().deps.begin(), stack.back().deps.end(), less);
    while (!stack.empty()) {
      Frame& f = stack.back();
      if (f.next < f.deps.size()) {
        const int32_t u = f.deps[f.next++];
        if (seen[u]) continue;
        seen[u] = 1;
        Frame nf{u, g.nodes[u].inputs, 0};
        std::sort(nf.deps.begin(), nf.deps.end(), less);
        stack.push_back(std::move(nf));
      } else {
        order.push_back(f.v);
        stack.pop_back();
      }
    }
  }
  DELTAMOE_ASSERT(static_cast<int32_t>(order.size()) == n);
  return order;
}

// ---------------------------------------------------------------------------------- LPMF
namespace {

// Arg-min segment tree over nodes sorted by (size, index). Each tree node keeps two winners:
// `fit` by (size - to_free, index) and `big` by (size, size - to_free, index).
class LpmfTree {
 public:
  LpmfTree(const std::vector<uint64_t>& size, const std::vector<i128>& to_free,
           const std::vector<int32_t>& node_at)
      : size_(size), to_free_(to_free), node_at_(node_at) {
    n_ = 1;
    while (n_ < static_cast<int32_t>(node_at.size())) n_ *= 2;
    fit_.assign(2 * n_, -1);
    big_.assign(2 * n_, -1);
  }
  void set(int32_t pos, bool active) {
    int32_t i = pos + n_;
    fit_[i] = big_[i] = active ? node_at_[pos] : -1;
    for (i /= 2; i >= 1; i /= 2) pull(i);
  }
  // Winners over positions [l, r).
  int32_t query_fit(int32_t l, int32_t r) const { return query(l, r, true); }
  int32_t query_big(int32_t l, int32_t r) const { return query(l, r, false); }

 private:
  i128 net(int32_t v) const { return static_cast<i128>(size_[v]) - to_free_[v]; }
  int32_t better_fit(int32_t a, int32_t b) const {
    if (a < 0) return b;
    if (b < 0) return a;
    const i128 na = net(a), nb = net(b);
    if (na != nb) return na < nb ? a : b;
    return a < b ? a : b;
  }
  int32_t better_big(int32_t a, int32_t b) const {
    if (a < 0) return b;
    if (b < 0) return a;
    if (size_[a] != size_[b]) return size_[a] < size_[b] ? a : b;
    return better_fit(a, b);
  }
  void pull(int32_t i) {
    fit_[i] = better_fit(fit_[2 * i], fit_[2 * i + 1]);
    big_[i] = better_big(big_[2 * i], big_[2 * i + 1]);
  }
  int32_t query(int32_t l, int32_t r, bool fit) const {
    int32_t best = -1;
    for (l += n_, r += n_; l < r; l /= 2, r /= 2) {
      if (l & 1) {
        best = fit ? better_fit(best, fit_[l]) : better_big(best, big_[l]);
        ++l;
      }
      if (r & 1) {
        --r;
        best = fit ? better_fit(best, fit_[r]) : better_big(best, big_[r]);
      }
    }
    return best;
  }
  const std::vector<uint64_t>& size_;
  const std::vector<i128>& to_free_;
  const std::vector<int32_t>& node_at_;
  int32_t n_ = 1;
  std::vector<int32_t> fit_, big_;
};

}  // namespace

Order lpmf_order(const Graph& g) {
  const int32_t n = g.size();
  std::vector<uint64_t> size(n);
  std::vector<i128> to_free(n, 0);
  std::vector<int64_t> outdeg(n, 0);
  for (int32_t v = 0; v < n; ++v) size[v] = g.own(v);
  i128 live = 0, out_mem = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1 || g.buffer_persistent[b]) continue;
    outdeg[b] = static_cast<int64_t>(g.buffer_readers[b].size()) + (g.buffer_output[b] ? 1 : 0);
    if (g.is_free_input(b)) live += g.buffer_bytes(b);
    if (g.buffer_output[b]) out_mem += g.buffer_bytes(b);
  }
  i128 max_mem = std::max(live, out_mem);
  for (int32_t v = 0; v < n; ++v) {
    for (int32_t b : g.input_buffers[v])
      if (!g.buffer_persistent[b] && outdeg[b] == 1) to_free[v] += g.buffer_bytes(b);
    if (g.nodes[v].view_of == -1 && !g.buffer_persistent[v] && outdeg[v] == 0)
      to_free[v] += g.buffer_bytes(v);
  }
  std::vector<int32_t> node_at(n), pos_of(n);
  for (int32_t v = 0; v < n; ++v) node_at[v] = v;
  std::sort(node_at.begin(), node_at.end(),
            [&](int32_t a, int32_t b) { return size[a] != size[b] ? size[a] < size[b] : a < b; });
  std::vector<uint64_t> sorted_size(n);
  for (int32_t p = 0; p < n; ++p) {
    pos_of[node_at[p]] = p;
    sorted_size[p] = size[node_at[p]];
  }
  LpmfTree tree(size, to_free, node_at);
  std::vector<int32_t> indeg(n);
  std::vector<char> ready(n, 0);
  for (int32_t v = 0; v < n; ++v) {
    indeg[v] = static_cast<int32_t>(g.nodes[v].inputs.size());
    if (indeg[v] == 0) {
      ready[v] = 1;
      tree.set(pos_of[v], true);
    }
  }
  Order order;
  order.reserve(n);
  for (int32_t step = 0; step < n; ++step) {
    const i128 gap = max_mem - live;
    // Nodes whose size fits under the high-water mark: positions [0, k).
    const uint64_t gap_u = gap >= static_cast<i128>(UINT64_MAX) ? UINT64_MAX : static_cast<uint64_t>(gap);
    const int32_t k = static_cast<int32_t>(
        std::upper_bound(sorted_size.begin(), sorted_size.end(), gap_u) - sorted_size.begin());
    int32_t v = tree.query_fit(0, k);
    if (v < 0) v = tree.query_big(k, n);
    DELTAMOE_ASSERT(v >= 0, "lpmf: no ready node at step ", step);
    ready[v] = 0;
    tree.set(pos_of[v], false);
    order.push_back(v);
    live += size[v];
    max_mem = std::max(max_mem, live);
    live -= to_free[v];
    for (int32_t s : g.users[v]) {
      if (--indeg[s] == 0) {
        ready[s] = 1;
        tree.set(pos_of[s], true);
      }
    }
    for (int32_t b : g.input_buffers[v]) {
      if (g.buffer_persistent[b]) continue;
      if (--outdeg[b] == 1) {
        for (int32_t r : g.buffer_readers[b]) {
          to_free[r] += g.buffer_bytes(b);
          if (ready[r]) tree.set(pos_of[r], true);
        }
      }
    }
  }
  return order;
}

// ---------------------------------------------------------------------------------- XLA
Order xla_list_order(const Graph& g) {
  const int32_t n = g.size();
  // Unscheduled uses per buffer; outputs carry one implicit use at the end (never freed).
  std::vector<int64_t> uses(n, 0);
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1 || g.buffer_persistent[b]) continue;
    uses[b] = static_cast<int64_t>(g.buffer_readers[b].size()) + (g.buffer_output[b] ? 1 : 0);
  }
  std::vector<i128> freed(n, 0);
  auto compute_freed = [&](int32_t v) {
    i128 f = 0;
    for (int32_t b : g.input_buffers[v])
      if (!g.buffer_persistent[b] && uses[b] == 1) f += g.buffer_bytes(b);
    freed[v] = f;
  };
  // Ready queue ordered by (freed - defined, user count, insertion sequence); the scheduler
  // takes the largest, so among equal priorities the latest inserted wins, as with XLA's
  // std::multimap and --end().
  using Key = std::tuple<i128, int64_t, int64_t, int32_t>;
  std::set<Key> queue;
  std::vector<Key> key_of(n);
  std::vector<char> ready(n, 0);
  int64_t seq = 0;
  auto make_key = [&](int32_t v) {
    return Key{freed[v] - static_cast<i128>(g.own(v)), static_cast<int64_t>(g.users[v].size()), seq++, v};
  };
  auto add = [&](int32_t v) {
    compute_freed(v);
    key_of[v] = make_key(v);
    queue.insert(key_of[v]);
    ready[v] = 1;
  };
  std::vector<int32_t> indeg(n);
  for (int32_t v = 0; v < n; ++v) {
    indeg[v] = static_cast<int32_t>(g.nodes[v].inputs.size());
    if (indeg[v] == 0) add(v);
  }
  Order order;
  order.reserve(n);
  while (!queue.empty()) {
    auto it = std::prev(queue.end());
    const int32_t v = std::get<3>(*it);
    queue.erase(it);
    ready[v] = 0;
    order.push_back(v);
    std::vector<int32_t> became_one;
    for (int32_t b : g.input_buffers[v]) {
      if (g.buffer_persistent[b]) continue;
      if (--uses[b] == 1) became_one.push_back(b);
    }
    for (int32_t s : g.users[v])
      if (--indeg[s] == 0) add(s);
    for (int32_t b : became_one) {
      for (int32_t r : g.buffer_readers[b]) {
        if (!ready[r]) continue;
        const i128 old = std::get<0>(key_of[r]);
        compute_freed(r);
        if (freed[r] - static_cast<i128>(g.own(r)) == old) continue;
        queue.erase(key_of[r]);
        key_of[r] = make_key(r);
        queue.insert(key_of[r]);
      }
    }
  }
  DELTAMOE_ASSERT(static_cast<int32_t>(order.size()) == n);
  return order;
}

}  // namespace deltamoe::sched
