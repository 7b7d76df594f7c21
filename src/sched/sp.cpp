// The memgraph -> series-parallel mapping and the SP entry points of schedule.h.
// Model and proofs: docs/sched.md, section "Series-parallel"; summary in sp.h.
#include <algorithm>
#include <sstream>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "deltamoe/sched/sp.h"

namespace deltamoe::sched {
namespace sp {

namespace {

constexpr const char* kComp = "sched";

// The memory model's per-buffer facts, computed here from the nodes alone (same rules as
// graph_format.md and simulate(): views read their base, outputs/persistent mark the base).
struct BufferFacts {
  std::vector<int32_t> base;
  std::vector<char> held, persistent;
  std::vector<std::vector<int32_t>> readers;  // per base: distinct reader nodes
  std::vector<std::vector<int32_t>> preds;    // per node: distinct input nodes (incl. view_of)
  std::vector<uint64_t> own, bytes;
  std::vector<char> free_input;
};

BufferFacts buffer_facts(const Graph& g) {
  const int32_t n = g.size();
  BufferFacts f;
  f.base.assign(n, -1);
  f.held.assign(n, 0);
  f.persistent.assign(n, 0);
  f.readers.assign(n, {});
  f.preds.assign(n, {});
  f.own.assign(n, 0);
  f.bytes.assign(n, 0);
  f.free_input.assign(n, 0);
  for (int32_t v = 0; v < n; ++v) {
    const int32_t w = g.nodes[v].view_of;
    DELTAMOE_CHECK(w < v, kComp, "node id ", g.nodes[v].id, " is a view of a later node (graph not finalized?)");
    f.base[v] = w < 0 ? v : f.base[w];
  }
  std::vector<int32_t> stamp(n, -1), bstamp(n, -1);
  for (int32_t v = 0; v < n; ++v) {
    auto add = [&](int32_t x) {
      DELTAMOE_CHECK(x >= 0 && x < v, kComp, "node id ", g.nodes[v].id, " reads a node that is not earlier");
      if (stamp[x] != v) {
        stamp[x] = v;
        f.preds[v].push_back(x);
      }
      const int32_t b = f.base[x];
      if (bstamp[b] != v) {
        bstamp[b] = v;
        f.readers[b].push_back(v);
      }
    };
    for (int32_t x : g.nodes[v].inputs) add(x);
    if (g.nodes[v].view_of >= 0) add(g.nodes[v].view_of);
    if (v < static_cast<int32_t>(g.is_output.size()) && g.is_output[v]) f.held[f.base[v]] = 1;
    if (v < static_cast<int32_t>(g.is_persistent.size()) && g.is_persistent[v]) f.persistent[f.base[v]] = 1;
  }
  for (int32_t v = 0; v < n; ++v) {
    const Node& nd = g.nodes[v];
    const bool view = nd.view_of >= 0;
    f.free_input[v] = nd.op == "input" && nd.inputs.empty() && !view && !f.persistent[v];
    f.own[v] = (view || f.persistent[v] || f.free_input[v]) ? 0 : nd.size;
    f.bytes[v] = (view || f.persistent[v]) ? 0 : nd.size;
  }
  return f;
}

// Sinks of a subtree (leaves without a successor inside it) or its sources.
void ends(const SpTree& t, int32_t root, bool sinks, std::vector<int32_t>* out) {
  out->clear();
  std::vector<int32_t> st{root};
  while (!st.empty()) {
    const int32_t x = st.back();
    st.pop_back();
    const auto& nd = t.nodes[x];
    if (nd.kind == SpTree::Kind::kLeaf) {
      out->push_back(nd.item);
    } else if (nd.kind == SpTree::Kind::kSeries) {
      st.push_back(sinks ? nd.right : nd.left);
    } else {
      st.push_back(nd.left);
      st.push_back(nd.right);
    }
  }
}

// The memory model of graph_format.md, step by step (same rules as simulate()).
uint64_t true_peak(const Graph& g, const BufferFacts& f, const Order& order) {
  const int32_t n = g.size();
  std::vector<int32_t> remaining(n, 0), stamp(n, -1);
  uint64_t live = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (f.base[b] != b) continue;
    remaining[b] = static_cast<int32_t>(f.readers[b].size());
    if (f.free_input[b]) live += f.bytes[b];
  }
  uint64_t peak = live;
  for (int32_t v : order) {
    peak = std::max(peak, live + f.own[v] + g.nodes[v].workspace);
    live += f.own[v];
    for (int32_t x : f.preds[v]) {
      const int32_t b = f.base[x];
      if (stamp[b] == v) continue;
      stamp[b] = v;
      if (--remaining[b] == 0 && !f.held[b]) live -= f.bytes[b];
    }
    if (f.base[v] == v && f.readers[v].empty() && !f.held[v]) live -= f.bytes[v];
  }
  return peak;
}

// `d` with vertices renumbered in a topological order (Kahn); old_of_new[k] is the old id
// of new vertex k. False when `d` has a cycle.
bool renumber_topologically(const Dag& d, Dag* out, std::vector<int32_t>* old_of_new) {
  std::vector<int32_t> indeg(d.n, 0), new_of_old(d.n, -1);
  for (int32_t u = 0; u < d.n; ++u)
    for (int32_t v : d.succ[u]) ++indeg[v];
  old_of_new->clear();
  std::vector<int32_t> ready;
  for (int32_t u = d.n - 1; u >= 0; --u)
    if (indeg[u] == 0) ready.push_back(u);
  while (!ready.empty()) {
    const int32_t u = ready.back();
    ready.pop_back();
    new_of_old[u] = static_cast<int32_t>(old_of_new->size());
    old_of_new->push_back(u);
    for (int32_t v : d.succ[u])
      if (--indeg[v] == 0) ready.push_back(v);
  }
  if (static_cast<int32_t>(old_of_new->size()) != d.n) return false;
  out->n = d.n;
  out->succ.assign(d.n, {});
  for (int32_t u = 0; u < d.n; ++u)
    for (int32_t v : d.succ[u]) out->succ[new_of_old[u]].push_back(new_of_old[v]);
  return true;
}

}  // namespace

SpDetail analyze(const Graph& g) {
  const int32_t n = g.size();
  SpDetail r;
  const BufferFacts f = buffer_facts(g);
  {
    constexpr uint64_t kLimit = uint64_t{1} << 62;
    uint64_t total = 0;
    for (int32_t v = 0; v < n; ++v) {
      const uint64_t add = g.nodes[v].size + std::min<uint64_t>(g.nodes[v].workspace, kLimit);
      DELTAMOE_CHECK(g.nodes[v].size < kLimit && add < kLimit - total, kComp, "graph '", g.name,
                     "': sizes and workspaces total 2^62 bytes or more (node id ", g.nodes[v].id, ")");
      total += add;
    }
  }

  // 1. Glue nodes that need no memory to run and have at most one representative predecessor.
  std::vector<int32_t> rep(n, -1), node_of;  // rep: structure vertex or -1 (the start)
  std::vector<int64_t> p;                    // per structure vertex: own + workspace
  Dag h;
  std::vector<int32_t> reps;
  for (int32_t v = 0; v < n; ++v) {
    reps.clear();
    for (int32_t x : f.preds[v])
      if (rep[x] >= 0) reps.push_back(rep[x]);
    std::sort(reps.begin(), reps.end());
    reps.erase(std::unique(reps.begin(), reps.end()), reps.end());
    const uint64_t need = f.own[v] + g.nodes[v].workspace;
    if (need == 0 && reps.size() <= 1) {
      rep[v] = reps.empty() ? -1 : reps[0];
      continue;
    }
    rep[v] = h.n++;
    node_of.push_back(v);
    p.push_back(static_cast<int64_t>(need));
    h.succ.emplace_back();
    for (int32_t u : reps) h.succ[u].push_back(rep[v]);
  }
  r.structure_nodes = h.n;
  r.glued_nodes = n - h.n;

  // 2. Recognise the structure.
  Recognition rec1 = recognize(h);
  int64_t initial = 0, start_release = 0;  // freeable inputs; released before any event

  // Glued nodes run right after their representative (or first, in program order).
  std::vector<std::vector<int32_t>> glued_after(h.n);
  std::vector<int32_t> glued_first;
  for (int32_t v = 0; v < n; ++v) {
    if (rep[v] < 0) glued_first.push_back(v);
    else if (node_of[rep[v]] != v) glued_after[rep[v]].push_back(v);
  }
  auto expand = [&](const std::vector<int32_t>& items, const std::vector<int32_t>& item_vertex) {
    Order o = glued_first;
    o.reserve(n);
    for (int32_t it : items) {
      const int32_t hv = item_vertex.empty() ? it : item_vertex[it];
      if (hv < 0) continue;
      o.push_back(node_of[hv]);
      for (int32_t v : glued_after[hv]) o.push_back(v);
    }
    DELTAMOE_ASSERT(static_cast<int32_t>(o.size()) == n, "SP order lost nodes");
    return o;
  };
  auto vertex_cost = [&](const std::vector<int64_t>& rel, int32_t v) {
    return ItemCost{p[v], -rel[v] - static_cast<int64_t>(g.nodes[node_of[v]].workspace)};
  };
  auto model_peak = [&](int64_t max_prefix) {
    return static_cast<uint64_t>(std::max(initial, initial - start_release + max_prefix));
  };
  uint64_t best_peak = UINT64_MAX, lower = 0;
  bool exact = false;
  int32_t sync = rec1.sync_vertices_added;
  struct OrBuffer {
    int64_t bytes;
    std::vector<int32_t> readers;  // maximal reader vertices
  };
  auto consider = [&](Order o) {
    const uint64_t pk = true_peak(g, f, o);
    if (pk < best_peak) {
      best_peak = pk;
      r.order = std::move(o);
    }
  };

  // The structure's tree (two SP-izations when it is not SP); every candidate order is
  // simulated exactly and the best is kept.
  const int32_t default_root = rec1.tree.root;
  for (int sp_variant = 0; sp_variant < 2; ++sp_variant) {
    if (sp_variant == 1 && rec1.alt_root < 0) break;
    const int32_t root = sp_variant == 0 ? default_root : rec1.alt_root;
    rec1.tree.root = root;
    std::vector<int32_t> pos1, pos2;
    linear_extensions(rec1.tree, &pos1, &pos2);

    // 3. Where each buffer is released.
    initial = 0;
    start_release = 0;
    std::vector<int64_t> release(h.n, 0);
    std::vector<OrBuffer> ors;
    std::vector<int32_t> rr;
    for (int32_t b = 0; b < n; ++b) {
      if (f.base[b] != b) continue;
      if (f.free_input[b]) initial += static_cast<int64_t>(f.bytes[b]);
      if (f.held[b] || f.bytes[b] == 0) continue;
      const int64_t bytes = static_cast<int64_t>(f.bytes[b]);
      rr.clear();
      if (f.readers[b].empty()) {
        if (rep[b] >= 0) rr.push_back(rep[b]);
      } else {
        for (int32_t x : f.readers[b])
          if (rep[x] >= 0) rr.push_back(rep[x]);
      }
      std::sort(rr.begin(), rr.end());
      rr.erase(std::unique(rr.begin(), rr.end()), rr.end());
      if (rr.empty()) {
        start_release += bytes;
        continue;
      }
      if (rr.size() > 1) {
        // Maximal elements: scan by decreasing pos1; an element is maximal iff no kept
        // element (all later in pos1) is also later in pos2.
        std::sort(rr.begin(), rr.end(), [&](int32_t x, int32_t y) { return pos1[x] > pos1[y]; });
        std::vector<int32_t> maximal;
        int32_t best2 = -1;
        for (int32_t x : rr)
          if (pos2[x] > best2) {
            maximal.push_back(x);
            best2 = pos2[x];
          }
        rr.swap(maximal);
      }
      if (rr.size() == 1) {
        release[rr[0]] += bytes;
      } else {
        ors.push_back({bytes, rr});
      }
    }
    r.or_buffers = static_cast<int32_t>(ors.size());



    if (ors.empty()) {
      // Every release has a fixed place: the event model is exact for the (SP-ized) poset.
      std::vector<ItemCost> cost(h.n);
      for (int32_t v = 0; v < h.n; ++v) cost[v] = vertex_cost(release, v);
      int64_t mp = 0;
      const std::vector<int32_t> items = sp_sequence(rec1.tree, cost, &mp);
      consider(expand(items, {}));
      DELTAMOE_ASSERT(best_peak <= model_peak(mp), "SP event model under-counts");
      exact = rec1.is_sp;
      lower = exact ? model_peak(mp) : 0;
    } else {
      // (a) Release items: DAG of the tree's poset (leaves in pos1 order, a zero-cost vertex
      // between the sinks of each series node's first part and the sources of its second
      // part) plus one item per OR buffer after its maximal readers. Exact when still SP.
      Dag d;
      std::vector<int32_t> dag_of_vertex(h.n, -1), item_vertex;
      std::vector<ItemCost> cost;
      std::vector<std::pair<int32_t, int32_t>> series_junction;  // (tree node, dag vertex)
      std::vector<std::pair<int32_t, int32_t>> st{{rec1.tree.root, 0}};
      while (!st.empty()) {
        auto [x, state] = st.back();
        st.pop_back();
        const auto& nd = rec1.tree.nodes[x];
        if (nd.kind == SpTree::Kind::kLeaf) {
          dag_of_vertex[nd.item] = d.n++;
          item_vertex.push_back(nd.item);
          cost.push_back(vertex_cost(release, nd.item));
        } else if (state == 0) {
          st.push_back({x, 1});
          st.push_back({nd.left, 0});
        } else {
          if (nd.kind == SpTree::Kind::kSeries) {
            series_junction.push_back({x, d.n++});
            item_vertex.push_back(-1);
            cost.push_back({0, 0});
          }
          st.push_back({nd.right, 0});
        }
      }
      d.succ.assign(d.n + ors.size(), {});
      std::vector<int32_t> buf;
      for (auto [x, z] : series_junction) {
        ends(rec1.tree, rec1.tree.nodes[x].left, true, &buf);
        for (int32_t v : buf) d.succ[dag_of_vertex[v]].push_back(z);
        ends(rec1.tree, rec1.tree.nodes[x].right, false, &buf);
        for (int32_t v : buf) d.succ[z].push_back(dag_of_vertex[v]);
      }
      for (const OrBuffer& o : ors) {
        const int32_t item = d.n++;
        for (int32_t v : o.readers) d.succ[dag_of_vertex[v]].push_back(item);
        item_vertex.push_back(-1);
        cost.push_back({-o.bytes, 0});
      }
      Recognition rec2 = recognize(d, /*reduced=*/true);
      if (sp_variant == 0) sync += rec2.sync_vertices_added;
      int64_t mp = 0;
      const int32_t root2 = rec2.tree.root;
      for (int variant2 = 0; variant2 < 2; ++variant2) {
        if (variant2 == 1 && rec2.alt_root < 0) break;
        rec2.tree.root = variant2 == 0 ? root2 : rec2.alt_root;
        consider(expand(sp_sequence(rec2.tree, cost, &mp), item_vertex));
      }
      if (rec1.is_sp && rec2.is_sp) {
        exact = true;
        lower = model_peak(mp);
      } else {
        // (a') Barrier variants: each release item also precedes its readers' successors
        // ("all readers, then the release, then the rest"): fewer orders, often SP (a fork
        // into branch heads becomes heads ; release ; branches). With every barrier the DAG
        // may get a cycle (two forks feeding each other's branches); the second variant keeps
        // only barriers to vertices after all the item's readers in the DAG's numbering (a
        // linear extension), which is acyclic by construction.
        const int32_t base_n = d.n - static_cast<int32_t>(ors.size());
        // The second variant only when the first has a cycle or the graph is small (each
        // costs a transitive reduction).
        bool first_ok = false;
        for (int variant = 0; variant < 2; ++variant) {
          if (variant == 1 && first_ok && h.n > 20000) break;
          Dag b = d;
          for (int32_t i = 0; i < static_cast<int32_t>(ors.size()); ++i) {
            const int32_t item = base_n + i;
            int32_t last = -1;
            for (int32_t v : ors[i].readers) last = std::max(last, dag_of_vertex[v]);
            for (int32_t v : ors[i].readers)
              for (int32_t sv : d.succ[dag_of_vertex[v]])
                if (sv < base_n && (variant == 0 || sv > last)) b.succ[item].push_back(sv);
          }
          std::vector<int32_t> old_of_new;
          Dag bt;
          if (!renumber_topologically(b, &bt, &old_of_new)) continue;
          first_ok = first_ok || variant == 0;
          std::vector<ItemCost> bcost(bt.n);
          std::vector<int32_t> bvertex(bt.n);
          for (int32_t k = 0; k < bt.n; ++k) {
            bcost[k] = cost[old_of_new[k]];
            bvertex[k] = item_vertex[old_of_new[k]];
          }
          const Recognition rec3 = recognize(bt);
          int64_t bmp = 0;
          consider(expand(sp_sequence(rec3.tree, bcost, &bmp), bvertex));
        }
      }
      // (b) Relaxations: release each OR buffer at one chosen maximal reader. Buffers are then
      // never freed later than in reality, so each optimum is a lower bound of the true
      // optimum (of the SP-ized poset when the structure is not SP); its order is valid, and
      // when its true peak meets the bound it is optimal.
      if (!exact) {
        std::vector<ItemCost> rcost(h.n);
        // Strategies: the reader last in pos1, first in pos1, last in pos2, then (a few
        // rounds) the reader that runs last in the best order so far.
        std::vector<int32_t> at(n, 0);
        for (int strategy = 0; strategy < 8 && !(rec1.is_sp && best_peak == lower); ++strategy) {
          if (strategy >= 3)
            for (int32_t t = 0; t < n; ++t) at[r.order[t]] = t;
          std::vector<int64_t> rel = release;
          for (const OrBuffer& o : ors) {
            int32_t pick = o.readers[0];
            for (int32_t v : o.readers) {
              const bool better = strategy == 0   ? pos1[v] > pos1[pick]
                                  : strategy == 1 ? pos1[v] < pos1[pick]
                                  : strategy == 2 ? pos2[v] > pos2[pick]
                                                  : at[node_of[v]] > at[node_of[pick]];
              if (better) pick = v;
            }
            rel[pick] += o.bytes;
          }
          for (int32_t v = 0; v < h.n; ++v) rcost[v] = vertex_cost(rel, v);
          int64_t rmp = 0;
          const std::vector<int32_t> ritems = sp_sequence(rec1.tree, rcost, &rmp);
          lower = std::max(lower, model_peak(rmp));
          consider(expand(ritems, {}));
        }
        // (c) Few OR buffers: enumerate which maximal reader runs last for each. Every
        // order has one such choice; under it the buffer is released at that reader, which
        // must follow the others (extra edges). The true optimum is the minimum over the
        // feasible choices of their optima, so the minimum of their exact optima (or of
        // their relaxation bounds where the constrained poset is not SP) is a lower bound.
        // Budget: combinations x structure nodes <= 160,000 (32 at 5,000 nodes).
        const uint64_t max_combos = std::min<uint64_t>(1024, 160000 / std::max(1, h.n));
        uint64_t combos = 1;
        for (const OrBuffer& o : ors) {
          combos *= o.readers.size();
          if (combos > max_combos) break;
        }
        if (rec1.is_sp && best_peak != lower && combos <= max_combos) {
          uint64_t enum_lower = UINT64_MAX;
          for (uint64_t c = 0; c < combos; ++c) {
            Dag q = h;
            std::vector<int64_t> rel = release;
            uint64_t rest = c;
            for (const OrBuffer& o : ors) {
              const int32_t j = o.readers[rest % o.readers.size()];
              rest /= o.readers.size();
              for (int32_t v : o.readers)
                if (v != j) q.succ[v].push_back(j);
              rel[j] += o.bytes;
            }
            Dag qt;
            std::vector<int32_t> old_of_new;
            if (!renumber_topologically(q, &qt, &old_of_new)) continue;  // no order has it
            std::vector<ItemCost> qcost(qt.n);
            for (int32_t k = 0; k < qt.n; ++k) qcost[k] = vertex_cost(rel, old_of_new[k]);
            const Recognition rq = recognize(qt);
            int64_t qmp = 0;
            consider(expand(sp_sequence(rq.tree, qcost, &qmp), old_of_new));
            if (!rq.is_sp) {  // bound: the same release without the extra edges
              for (int32_t v = 0; v < h.n; ++v) rcost[v] = vertex_cost(rel, v);
              sp_sequence(rec1.tree, rcost, &qmp);
            }
            enum_lower = std::min(enum_lower, model_peak(qmp));
          }
          if (enum_lower != UINT64_MAX) lower = std::max(lower, enum_lower);
        }
        exact = rec1.is_sp && best_peak == lower;
        if (!rec1.is_sp) lower = 0;  // bounds of the SP-ized poset only
      }
    }
  }
  rec1.tree.root = default_root;
  r.peak = best_peak;
  r.lower_bound = lower;

  // Summary.
  int64_t in_sp = 0;
  for (int32_t v = 0; v < n; ++v)
    if (rep[v] < 0 || rec1.is_sp || rec1.piece_size[rep[v]] >= 2) ++in_sp;
  r.structure_sp = rec1.is_sp;
  r.exact = exact;
  r.summary.is_series_parallel = rec1.is_sp;
  r.summary.sp_fraction = n == 0 ? 1.0 : static_cast<double>(in_sp) / n;
  r.summary.sync_vertices_added = sync;
  r.summary.lower_bound = lower;
  r.summary.proven_optimal = exact;
  std::ostringstream os;
  os << "structure " << h.n << " of " << n << " nodes (" << r.glued_nodes << " glued), "
     << (rec1.is_sp ? "series-parallel" : "not series-parallel") << ", " << r.or_buffers
     << " buffers with several last readers; ";
  if (exact) {
    os << "SP order proven optimal";
  } else if (rec1.is_sp) {
    os << "SP lower bound " << lower << " below the best SP order's peak " << best_peak;
  } else {
    os << "order optimal only for the SP-ized poset";
  }
  r.summary.notes = os.str();
  return r;
}

}  // namespace sp

namespace {

// The three entry points below are usually called back to back on one graph (the driver
// asks for the analysis, then an order); one analysis per thread is remembered, keyed by
// the graph's address and a fingerprint of everything analyze() reads.
uint64_t fingerprint(const Graph& g) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](uint64_t x) {
    h ^= x;
    h *= 1099511628211ull;
  };
  mix(static_cast<uint64_t>(g.size()));
  for (int32_t v = 0; v < g.size(); ++v) {
    const Node& nd = g.nodes[v];
    mix(nd.size);
    mix(nd.workspace);
    mix(static_cast<uint64_t>(static_cast<int64_t>(nd.view_of)));
    mix(nd.op == "input" ? 1 : 0);
    mix((v < static_cast<int32_t>(g.is_output.size()) && g.is_output[v] ? 2 : 0) |
        (v < static_cast<int32_t>(g.is_persistent.size()) && g.is_persistent[v] ? 4 : 0));
    mix(nd.inputs.size());
    for (int32_t x : nd.inputs) mix(static_cast<uint64_t>(x));
  }
  return h;
}

const sp::SpDetail& cached_analysis(const Graph& g) {
  thread_local const Graph* last_graph = nullptr;
  thread_local uint64_t last_print = 0;
  thread_local sp::SpDetail last;
  const uint64_t print = fingerprint(g);
  if (last_graph != &g || last_print != print) {
    last_graph = nullptr;  // stays invalid if analyze throws
    last = sp::analyze(g);
    last_graph = &g;
    last_print = print;
  }
  return last;
}

}  // namespace

SpAnalysis analyze_sp(const Graph& g) { return cached_analysis(g).summary; }

std::optional<Order> sp_optimal_order(const Graph& g) {
  const sp::SpDetail& d = cached_analysis(g);
  if (!d.exact) return std::nullopt;
  return d.order;
}

Order sp_ized_order(const Graph& g) { return cached_analysis(g).order; }

}  // namespace deltamoe::sched
