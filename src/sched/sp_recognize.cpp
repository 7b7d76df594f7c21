// Vertex series-parallel recognition and SP-ization (see sp.h and docs/sched.md).
//
// A DAG is vertex series-parallel (VSP) iff its transitive reduction is the line digraph of
// a two-terminal series-parallel multigraph (Valdes, Tarjan & Lawler 1982). We build that
// multigraph directly: every vertex v becomes an edge in(v) -> out(v), and every reduced
// edge u -> v identifies out(u) with in(v) (union-find). A group of identified endpoints is
// a proper junction only if it is "complete" (every vertex ending there precedes every vertex
// starting there); otherwise the DAG contains an N and the group is kept split, with one
// empty edge per reduced edge, so the multigraph's reachability is always exactly the DAG's.
// Series and parallel reductions then either collapse it to one source->sink edge (the
// decomposition tree) or stop at the maximal SP pieces.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <unordered_map>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/sp.h"

namespace deltamoe::sched::sp {

namespace {
thread_local std::optional<std::chrono::steady_clock::time_point> tl_deadline;
thread_local uint32_t tl_polls = 0;
}  // namespace

Deadline::Deadline(std::chrono::steady_clock::time_point at) : previous_(tl_deadline) {
  tl_deadline = at;
}

Deadline::~Deadline() {
  tl_deadline = previous_;
}

void poll_deadline() {
  if (!tl_deadline || (++tl_polls & 63) != 0) return;
  if (std::chrono::steady_clock::now() > *tl_deadline) throw TimeUp{};
}

int32_t SpTree::leaf(int32_t item) {
  nodes.push_back({Kind::kLeaf, item, -1, -1});
  return static_cast<int32_t>(nodes.size()) - 1;
}

int32_t SpTree::join(Kind kind, int32_t a, int32_t b) {
  if (a < 0) return b;
  if (b < 0) return a;
  nodes.push_back({kind, -1, a, b});
  return static_cast<int32_t>(nodes.size()) - 1;
}

namespace {

std::vector<std::vector<int32_t>> sorted_unique(const Dag& dag) {
  std::vector<std::vector<int32_t>> s(dag.n);
  for (int32_t u = 0; u < dag.n; ++u) {
    s[u] = dag.succ[u];
    std::sort(s[u].begin(), s[u].end());
    s[u].erase(std::unique(s[u].begin(), s[u].end()), s[u].end());
    for (int32_t v : s[u]) DELTAMOE_ASSERT(v > u && v < dag.n, "Dag not topologically numbered");
  }
  return s;
}

struct UnionFind {
  std::vector<int32_t> parent;
  explicit UnionFind(int32_t n) : parent(n) { std::iota(parent.begin(), parent.end(), 0); }
  int32_t find(int32_t x) {
    while (parent[x] != x) {
      parent[x] = parent[parent[x]];
      x = parent[x];
    }
    return x;
  }
  void unite(int32_t a, int32_t b) {
    a = find(a);
    b = find(b);
    if (a != b) parent[std::max(a, b)] = std::min(a, b);
  }
};

// The two-terminal multigraph under series/parallel reduction.
class Reducer {
 public:
  Reducer(int32_t n_junctions, int32_t src, int32_t snk, SpTree* tree, size_t edge_hint)
      : in_(n_junctions),
        out_(n_junctions),
        indeg_(n_junctions, 0),
        outdeg_(n_junctions, 0),
        src_(src),
        snk_(snk),
        nj_(n_junctions),
        tree_(tree) {
    edges_.reserve(edge_hint);
    parallel_.reserve(edge_hint);
  }

  void add_edge(int32_t from, int32_t to, int32_t subtree) {
    const uint64_t key = static_cast<uint64_t>(from) * static_cast<uint64_t>(nj_) + to;
    auto it = parallel_.find(key);
    if (it != parallel_.end()) {
      // An empty edge next to another path adds no constraint (both mean from < to).
      Edge& e = edges_[it->second];
      e.tree = tree_->join(SpTree::Kind::kParallel, e.tree, subtree);
      work_.push_back(from);
      work_.push_back(to);
      return;
    }
    const int32_t id = static_cast<int32_t>(edges_.size());
    edges_.push_back({from, to, subtree, true});
    parallel_.emplace(key, id);
    out_[from].push_back(id);
    in_[to].push_back(id);
    ++outdeg_[from];
    ++indeg_[to];
  }

  void reduce() {
    for (int32_t j = 0; j < nj_; ++j) work_.push_back(j);
    while (!work_.empty()) {
      const int32_t j = work_.back();
      work_.pop_back();
      if (j == src_ || j == snk_ || indeg_[j] != 1 || outdeg_[j] != 1) continue;
      const int32_t e1 = first_alive(in_[j]);
      const int32_t e2 = first_alive(out_[j]);
      kill(e1);
      kill(e2);
      const int32_t x = edges_[e1].from, y = edges_[e2].to;
      add_edge(x, y, tree_->join(SpTree::Kind::kSeries, edges_[e1].tree, edges_[e2].tree));
      work_.push_back(x);
      work_.push_back(y);
    }
  }

  std::vector<int32_t> alive_edges() const {
    std::vector<int32_t> r;
    for (int32_t e = 0; e < static_cast<int32_t>(edges_.size()); ++e)
      if (edges_[e].alive) r.push_back(e);
    return r;
  }

  struct Edge {
    int32_t from, to, tree;
    bool alive;
  };
  const Edge& edge(int32_t e) const { return edges_[e]; }
  int32_t num_junctions() const { return nj_; }

 private:
  int32_t first_alive(std::vector<int32_t>& list) {
    // Lazy deletion: dead entries are dropped as they are met.
    while (!edges_[list.back()].alive) list.pop_back();
    for (int32_t e : list)
      if (edges_[e].alive) return e;
    DELTAMOE_ASSERT(false, "no alive edge at a junction with degree 1");
    return -1;
  }
  void kill(int32_t e) {
    Edge& ed = edges_[e];
    ed.alive = false;
    parallel_.erase(static_cast<uint64_t>(ed.from) * static_cast<uint64_t>(nj_) + ed.to);
    --outdeg_[ed.from];
    --indeg_[ed.to];
  }

  std::vector<Edge> edges_;
  std::vector<std::vector<int32_t>> in_, out_;
  std::vector<int32_t> indeg_, outdeg_;
  std::unordered_map<uint64_t, int32_t> parallel_;
  std::vector<int32_t> work_;
  int32_t src_, snk_, nj_;
  SpTree* tree_;
};

int32_t count_leaves(const SpTree& t, int32_t root) {
  if (root < 0) return 0;
  int32_t c = 0;
  std::vector<int32_t> st{root};
  while (!st.empty()) {
    const int32_t x = st.back();
    st.pop_back();
    const auto& nd = t.nodes[x];
    if (nd.kind == SpTree::Kind::kLeaf) {
      ++c;
    } else {
      st.push_back(nd.left);
      st.push_back(nd.right);
    }
  }
  return c;
}

void mark_leaves(const SpTree& t, int32_t root, int32_t value, std::vector<int32_t>* out) {
  if (root < 0) return;
  std::vector<int32_t> st{root};
  while (!st.empty()) {
    const int32_t x = st.back();
    st.pop_back();
    const auto& nd = t.nodes[x];
    if (nd.kind == SpTree::Kind::kLeaf) {
      (*out)[nd.item] = value;
    } else {
      st.push_back(nd.left);
      st.push_back(nd.right);
    }
  }
}

}  // namespace

std::vector<std::vector<int32_t>> transitive_reduction(const Dag& dag, size_t memory_bytes) {
  const int32_t n = dag.n;
  std::vector<std::vector<int32_t>> s = sorted_unique(dag);
  if (n == 0) return s;
  // Reachability restricted to a chunk of 64*W target vertices at a time; an edge u -> w
  // is transitive iff w is reachable from a smaller successor of u (successors are
  // processed in ascending, i.e. topological, order).
  const size_t max_words = (static_cast<size_t>(n) + 63) / 64;
  size_t words = memory_bytes / (8 * static_cast<size_t>(n));
  words = std::clamp<size_t>(words, 1, max_words);
  const int64_t chunk = static_cast<int64_t>(words) * 64;
  std::vector<uint64_t> reach(static_cast<size_t>(n) * words);
  std::vector<size_t> first_edge(static_cast<size_t>(n) + 1, 0);
  for (int32_t u = 0; u < n; ++u) first_edge[u + 1] = first_edge[u] + s[u].size();
  std::vector<char> transitive(first_edge[n], 0);
  for (int64_t c0 = 0; c0 < n; c0 += chunk) {
    const int64_t c1 = std::min<int64_t>(n, c0 + chunk);
    for (int64_t u = c1 - 1; u >= 0; --u) {
      poll_deadline();
      uint64_t* acc = &reach[static_cast<size_t>(u) * words];
      std::memset(acc, 0, words * sizeof(uint64_t));
      const auto& su = s[u];
      for (size_t k = 0; k < su.size(); ++k) {
        const int64_t w = su[k];
        if (w >= c1) break;
        if (w >= c0) {
          const int64_t bit = w - c0;
          if ((acc[bit >> 6] >> (bit & 63)) & 1) transitive[first_edge[u] + k] = 1;
        }
        const uint64_t* rw = &reach[static_cast<size_t>(w) * words];
        for (size_t i = 0; i < words; ++i) acc[i] |= rw[i];
        if (w >= c0) {
          const int64_t bit = w - c0;
          acc[bit >> 6] |= uint64_t{1} << (bit & 63);
        }
      }
    }
  }
  for (int32_t u = 0; u < n; ++u) {
    size_t w = 0;
    for (size_t k = 0; k < s[u].size(); ++k)
      if (!transitive[first_edge[u] + k]) s[u][w++] = s[u][k];
    s[u].resize(w);
  }
  return s;
}

Recognition recognize(const Dag& dag, bool reduced) {
  const int32_t n = dag.n;
  Recognition rec;
  rec.tree.n_items = n;
  if (n == 0) {
    rec.is_sp = true;
    return rec;
  }
  const std::vector<std::vector<int32_t>> tr =
      reduced ? sorted_unique(dag) : transitive_reduction(dag);

  // Endpoints: in(v) = 2v, out(v) = 2v+1, source 2n, sink 2n+1.
  const int32_t src_end = 2 * n, snk_end = 2 * n + 1;
  UnionFind uf(2 * n + 2);
  std::vector<char> has_pred(n, 0);
  for (int32_t u = 0; u < n; ++u)
    for (int32_t v : tr[u]) {
      uf.unite(2 * u + 1, 2 * v);
      has_pred[v] = 1;
    }
  for (int32_t v = 0; v < n; ++v) {
    if (!has_pred[v]) uf.unite(2 * v, src_end);
    if (tr[v].empty()) uf.unite(2 * v + 1, snk_end);
  }
  // Completeness of each group: reduced edges == (#vertices ending there) x (#starting there).
  std::vector<int64_t> g_edges(2 * n + 2, 0), g_ins(2 * n + 2, 0), g_outs(2 * n + 2, 0);
  for (int32_t u = 0; u < n; ++u) g_edges[uf.find(2 * u + 1)] += static_cast<int64_t>(tr[u].size());
  for (int32_t v = 0; v < n; ++v) {
    ++g_ins[uf.find(2 * v + 1)];
    ++g_outs[uf.find(2 * v)];
  }
  const int32_t src_g = uf.find(src_end), snk_g = uf.find(snk_end);
  std::vector<char> complete(2 * n + 2, 1);
  bool all_complete = true;
  for (int32_t e = 0; e < 2 * n + 2; ++e) {
    if (uf.find(e) != e || e == src_g || e == snk_g) continue;
    if (g_edges[e] != g_ins[e] * g_outs[e]) {
      complete[e] = 0;
      all_complete = false;
    }
  }
  // Junction ids: one per complete group, one per endpoint of an incomplete group.
  std::vector<int32_t> junction(2 * n + 2, -1), group_junction(2 * n + 2, -1);
  int32_t nj = 0;
  for (int32_t e = 0; e < 2 * n + 2; ++e) {
    const int32_t g = uf.find(e);
    if (complete[g]) {
      if (group_junction[g] < 0) group_junction[g] = nj++;
      junction[e] = group_junction[g];
    } else {
      junction[e] = nj++;
    }
  }
  size_t n_edges = static_cast<size_t>(n);
  for (int32_t u = 0; u < n; ++u) n_edges += tr[u].size();
  rec.tree.nodes.reserve(3 * static_cast<size_t>(n));
  Reducer red(nj, junction[src_end], junction[snk_end], &rec.tree, n_edges);
  for (int32_t v = 0; v < n; ++v)
    red.add_edge(junction[2 * v], junction[2 * v + 1], rec.tree.leaf(v));
  for (int32_t u = 0; u < n; ++u)
    for (int32_t v : tr[u])
      if (!complete[uf.find(2 * u + 1)]) red.add_edge(junction[2 * u + 1], junction[2 * v], -1);
  red.reduce();

  const std::vector<int32_t> alive = red.alive_edges();
  rec.piece_size.assign(n, n);
  if (all_complete && alive.size() == 1) {
    DELTAMOE_ASSERT(
        red.edge(alive[0]).from == junction[src_end] && red.edge(alive[0]).to == junction[snk_end],
        "SP reduction ended on a non-terminal edge");
    rec.is_sp = true;
    rec.tree.root = red.edge(alive[0]).tree;
    return rec;
  }
  for (int32_t e : alive) {
    const int32_t t = red.edge(e).tree;
    mark_leaves(rec.tree, t, count_leaves(rec.tree, t), &rec.piece_size);
  }

  // SP-ization: longest-path level of every junction of the residual multigraph; each
  // residual edge is put in the bundle of its tail's level, bundles run in series. An edge
  // x -> y keeps preceding every edge leaving y (level(y) > level(x)), so the tree's poset
  // contains the DAG's.
  std::vector<std::vector<int32_t>> out_edges(nj);
  std::vector<int32_t> indeg(nj, 0), level(nj, 0);
  for (int32_t e : alive) {
    out_edges[red.edge(e).from].push_back(e);
    ++indeg[red.edge(e).to];
  }
  std::vector<int32_t> queue;
  for (int32_t j = 0; j < nj; ++j)
    if (indeg[j] == 0) queue.push_back(j);
  int32_t max_level = 0;
  for (size_t qi = 0; qi < queue.size(); ++qi) {
    poll_deadline();
    const int32_t j = queue[qi];
    for (int32_t e : out_edges[j]) {
      const int32_t y = red.edge(e).to;
      level[y] = std::max(level[y], level[j] + 1);
      max_level = std::max(max_level, level[y]);
      if (--indeg[y] == 0) queue.push_back(y);
    }
  }
  DELTAMOE_ASSERT(queue.size() == static_cast<size_t>(nj), "junction multigraph has a cycle");
  // Two bundlings: ALAP (an edge runs in the bundle just before its head's level) and ASAP
  // (in its tail's level). ALAP tends to keep buffers shorter-lived; both are returned.
  for (int alap = 1; alap >= 0; --alap) {
    std::vector<int32_t> bundle(max_level + 1, -1);
    for (int32_t e : alive) {
      const int32_t l = alap ? level[red.edge(e).to] - 1 : level[red.edge(e).from];
      bundle[l] = rec.tree.join(SpTree::Kind::kParallel, bundle[l], red.edge(e).tree);
    }
    int32_t root = -1, nonempty = 0;
    for (int32_t l = 0; l <= max_level; ++l) {
      if (bundle[l] < 0) continue;
      ++nonempty;
      root = rec.tree.join(SpTree::Kind::kSeries, root, bundle[l]);
    }
    if (alap) {
      rec.tree.root = root;
      rec.sync_vertices_added = std::max(0, nonempty - 1);
    } else {
      rec.alt_root = root;
    }
  }
  return rec;
}

void linear_extensions(const SpTree& tree, std::vector<int32_t>* pos1, std::vector<int32_t>* pos2) {
  pos1->assign(tree.n_items, -1);
  pos2->assign(tree.n_items, -1);
  if (tree.root < 0) return;
  for (int pass = 0; pass < 2; ++pass) {
    std::vector<int32_t>& pos = pass == 0 ? *pos1 : *pos2;
    int32_t counter = 0;
    std::vector<int32_t> st{tree.root};
    while (!st.empty()) {
      const int32_t x = st.back();
      st.pop_back();
      const auto& nd = tree.nodes[x];
      if (nd.kind == SpTree::Kind::kLeaf) {
        pos[nd.item] = counter++;
      } else if (nd.kind == SpTree::Kind::kSeries || pass == 0) {
        st.push_back(nd.right);  // left is visited first
        st.push_back(nd.left);
      } else {
        st.push_back(nd.left);  // parallel on the second pass: right branch first
        st.push_back(nd.right);
      }
    }
  }
}

}  // namespace deltamoe::sched::sp
