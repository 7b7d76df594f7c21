// The ordering model shared by the exact methods; see exact_model.h.
#include "sched/exact_model.h"

#include <algorithm>
#include <bit>
#include <queue>

#include "deltamoe/core/error.h"

namespace deltamoe::sched::detail {

Model build_model(const Graph& g) {
  const int32_t n = g.size();
  Model m;
  m.n = n;
  m.preds.assign(n, {});
  m.succs.assign(n, {});
  m.alloc.assign(n, 0);
  m.ws.assign(n, 0);
  m.reads.assign(n, {});
  m.orig.resize(n);
  // Buffer owner, written here from view_of rather than taken from Graph::base so the model
  // depends on nothing but the file's fields.
  std::vector<int32_t> base(n);
  for (int32_t v = 0; v < n; ++v) {
    m.orig[v] = v;
    const int32_t w = g.nodes[v].view_of;
    DELTAMOE_ASSERT(w < v || w == -1, "view before its base in program order");
    base[v] = w == -1 ? v : base[w];
  }
  std::vector<char> out(n, 0), pers(n, 0);
  for (int32_t v = 0; v < n; ++v) {
    if (v < static_cast<int32_t>(g.is_output.size()) && g.is_output[v]) out[base[v]] = 1;
    if (v < static_cast<int32_t>(g.is_persistent.size()) && g.is_persistent[v]) pers[base[v]] = 1;
  }
  std::vector<std::vector<int32_t>> readers(n);
  std::vector<int32_t> stamp_node(n, -1), stamp_buf(n, -1);
  for (int32_t v = 0; v < n; ++v) {
    const Node& nd = g.nodes[v];
    auto add_input = [&](int32_t u) {
      if (stamp_node[u] != v) {
        stamp_node[u] = v;
        m.preds[v].push_back(u);
        m.succs[u].push_back(v);
      }
      const int32_t b = base[u];
      if (stamp_buf[b] != v) {
        stamp_buf[b] = v;
        readers[b].push_back(v);
      }
    };
    for (int32_t u : nd.inputs) add_input(u);
    if (nd.view_of != -1) add_input(nd.view_of);
    m.ws[v] = nd.workspace;
  }
  std::vector<int32_t> buf_of(n, -1);
  for (int32_t b = 0; b < n; ++b) {
    const Node& nd = g.nodes[b];
    if (nd.view_of != -1 || pers[b] || nd.size == 0) continue;
    ModelBuffer buf;
    buf.bytes = nd.size;
    const bool free_input = nd.op == "input" && nd.inputs.empty();
    buf.alloc = free_input ? -1 : b;
    buf.never_freed = out[b] != 0;
    buf.readers = readers[b].empty() ? std::vector<int32_t>{b} : readers[b];
    if (free_input)
      m.initial += buf.bytes;
    else
      m.alloc[b] = buf.bytes;
    const int32_t id = static_cast<int32_t>(m.buffers.size());
    if (!buf.never_freed)
      for (int32_t r : buf.readers) m.reads[r].push_back(id);
    buf_of[b] = id;
    m.buffers.push_back(std::move(buf));
  }
  return m;
}

void model_profile(const Model& m, const std::vector<int32_t>& order, std::vector<uint64_t>& need) {
  std::vector<int32_t> rem(m.buffers.size());
  for (size_t b = 0; b < m.buffers.size(); ++b) rem[b] = static_cast<int32_t>(m.buffers[b].readers.size());
  uint64_t live = m.initial;
  need.resize(order.size());
  for (size_t t = 0; t < order.size(); ++t) {
    const int32_t v = order[t];
    need[t] = live + m.alloc[v] + m.ws[v];
    live += m.alloc[v];
    for (int32_t b : m.reads[v])
      if (--rem[b] == 0) live -= m.buffers[b].bytes;
  }
}

uint64_t model_peak(const Model& m, const std::vector<int32_t>& order) {
  std::vector<uint64_t> need;
  model_profile(m, order, need);
  uint64_t peak = m.initial;
  for (uint64_t x : need) peak = std::max(peak, x);
  return peak;
}

Model sub_model(const Model& m, const std::vector<int32_t>& nodes, const std::vector<char>& done) {
  const int32_t q = static_cast<int32_t>(nodes.size());
  std::vector<int32_t> local(m.n, -1);
  for (int32_t i = 0; i < q; ++i) local[nodes[i]] = i;
  Model s;
  s.n = q;
  s.preds.assign(q, {});
  s.succs.assign(q, {});
  s.alloc.assign(q, 0);
  s.ws.assign(q, 0);
  s.reads.assign(q, {});
  s.orig = nodes;
  for (int32_t i = 0; i < q; ++i) {
    const int32_t v = nodes[i];
    s.ws[i] = m.ws[v];
    for (int32_t u : m.preds[v]) {
      if (local[u] >= 0) {
        s.preds[i].push_back(local[u]);
        s.succs[local[u]].push_back(i);
      } else {
        DELTAMOE_ASSERT(done[u], "sub_model: a predecessor is neither done nor inside");
      }
    }
  }
  for (const ModelBuffer& b : m.buffers) {
    const bool before = b.alloc == -1 || done[b.alloc];
    const bool inside = b.alloc >= 0 && local[b.alloc] >= 0;
    if (!before && !inside) continue;
    std::vector<int32_t> rq;
    bool later = false;  // a reader runs after the sub-model
    bool all_done = true;
    for (int32_t r : b.readers) {
      if (local[r] >= 0) {
        rq.push_back(local[r]);
        all_done = false;
      } else if (!done[r]) {
        later = true;
        all_done = false;
      }
    }
    if (before && !b.never_freed && all_done) continue;  // freed before the sub-model starts
    const bool stays = b.never_freed || later || rq.empty();
    if (before) {
      s.initial += b.bytes;
      if (stays) continue;  // live throughout: a constant part of every step
    }
    ModelBuffer nb;
    nb.bytes = b.bytes;
    nb.alloc = before ? -1 : local[b.alloc];
    nb.never_freed = stays;
    nb.readers = std::move(rq);
    if (nb.readers.empty()) nb.readers.push_back(nb.alloc);
    if (!before) s.alloc[nb.alloc] += nb.bytes;
    const int32_t id = static_cast<int32_t>(s.buffers.size());
    if (!nb.never_freed)
      for (int32_t r : nb.readers) s.reads[r].push_back(id);
    s.buffers.push_back(std::move(nb));
  }
  return s;
}

std::vector<int32_t> topo_order(const Model& m) {
  std::vector<int32_t> indeg(m.n), order;
  order.reserve(m.n);
  std::priority_queue<int32_t, std::vector<int32_t>, std::greater<>> ready;
  for (int32_t v = 0; v < m.n; ++v) {
    indeg[v] = static_cast<int32_t>(m.preds[v].size());
    if (indeg[v] == 0) ready.push(v);
  }
  while (!ready.empty()) {
    const int32_t v = ready.top();
    ready.pop();
    order.push_back(v);
    for (int32_t w : m.succs[v])
      if (--indeg[w] == 0) ready.push(w);
  }
  DELTAMOE_ASSERT(static_cast<int32_t>(order.size()) == m.n, "model has a cycle");
  return order;
}

void count_relatives(const Model& m, const std::vector<char>& mask, std::vector<int32_t>& anc,
                     std::vector<int32_t>& desc) {
  const int32_t n = m.n;
  const std::vector<int32_t> topo = topo_order(m);
  std::vector<int32_t> col(n, -1);  // column of each masked node
  int32_t cols = 0;
  for (int32_t v : topo)
    if (mask.empty() || mask[v]) col[v] = cols++;
  anc.assign(n, 0);
  desc.assign(n, 0);
  constexpr int32_t kWords = 64;  // 4096 columns per pass
  std::vector<uint64_t> bits(static_cast<size_t>(n) * kWords);
  std::vector<int32_t> tpos(n), col_pos;  // topological position of each node / column
  for (int32_t k = 0; k < n; ++k) tpos[topo[k]] = k;
  for (int32_t v : topo)
    if (col[v] >= 0) col_pos.push_back(tpos[v]);
  for (int32_t c0 = 0; c0 < cols; c0 += 64 * kWords) {
    const int32_t words = std::min(kWords, (cols - c0 + 63) / 64);
    const int32_t c1 = std::min(cols, c0 + 64 * words) - 1;
    auto row = [&](int32_t v) { return bits.data() + static_cast<size_t>(v) * kWords; };
    // Ancestors in this block exist only at or after the block's first column in topological
    // order, descendants only at or before its last: rows outside stay zero and are skipped.
    for (int pass = 0; pass < 2; ++pass) {
      const int32_t lo = pass == 0 ? col_pos[c0] : 0, hi = pass == 0 ? n - 1 : col_pos[c1];
      for (int32_t k = pass == 0 ? lo : hi; pass == 0 ? k <= hi : k >= lo; k += pass == 0 ? 1 : -1) {
        const int32_t v = topo[k];
        uint64_t* rv = row(v);
        std::fill(rv, rv + words, 0);
        for (int32_t u : pass == 0 ? m.preds[v] : m.succs[v]) {
          if (tpos[u] < lo || tpos[u] > hi) continue;
          const uint64_t* ru = row(u);
          for (int32_t w = 0; w < words; ++w) rv[w] |= ru[w];
          const int32_t c = col[u] - c0;
          if (col[u] >= 0 && c >= 0 && c < words * 64) rv[c >> 6] |= uint64_t{1} << (c & 63);
        }
        int32_t cnt = 0;
        for (int32_t w = 0; w < words; ++w) cnt += std::popcount(rv[w]);
        (pass == 0 ? anc : desc)[v] += cnt;
      }
    }
  }
}

std::vector<uint64_t> node_bounds(const Model& m, int32_t max_n, std::vector<uint64_t>* nf_part) {
  const int32_t n = m.n;
  std::vector<uint64_t> lb(n, 0);
  std::vector<uint64_t> nfp_local;
  std::vector<uint64_t>& nfp = nf_part ? *nf_part : nfp_local;
  nfp.assign(n, 0);
  uint64_t nf_initial = m.initial;
  for (const ModelBuffer& b : m.buffers)
    if (b.alloc == -1 && !b.never_freed) nf_initial -= b.bytes;
  for (int32_t v = 0; v < n; ++v) {
    lb[v] = nf_initial + m.alloc[v] + m.ws[v];
    nfp[v] = nf_initial;
  }
  if (n > max_n) {
    for (int32_t v = 0; v < n; ++v)
      for (int32_t b : m.reads[v])
        if (m.buffers[b].alloc != v) lb[v] += m.buffers[b].bytes;
    return lb;
  }
  const size_t words = (static_cast<size_t>(n) + 63) / 64;
  std::vector<uint64_t> anc(n * words, 0), desc(n * words, 0);
  const std::vector<int32_t> topo = topo_order(m);
  auto set = [&](std::vector<uint64_t>& bs, int32_t row, int32_t col) {
    bs[row * words + (col >> 6)] |= uint64_t{1} << (col & 63);
  };
  for (int32_t v : topo)
    for (int32_t u : m.preds[v]) {
      for (size_t w = 0; w < words; ++w) anc[v * words + w] |= anc[u * words + w];
      set(anc, v, u);
    }
  for (int32_t k = n - 1; k >= 0; --k) {
    const int32_t v = topo[k];
    for (int32_t s : m.succs[v]) {
      for (size_t w = 0; w < words; ++w) desc[v * words + w] |= desc[s * words + w];
      set(desc, v, s);
    }
  }
  std::vector<uint64_t> r(words);
  for (const ModelBuffer& b : m.buffers) {
    if (b.never_freed) {
      std::fill(r.begin(), r.end(), ~uint64_t{0});
    } else {
      std::fill(r.begin(), r.end(), 0);
      for (int32_t x : b.readers) {
        for (size_t w = 0; w < words; ++w) r[w] |= anc[x * words + w];
        r[x >> 6] |= uint64_t{1} << (x & 63);
      }
    }
    if (b.alloc >= 0)
      for (size_t w = 0; w < words; ++w) r[w] &= desc[b.alloc * words + w];
    for (size_t w = 0; w < words; ++w) {
      uint64_t bits = r[w];
      while (bits) {
        const int32_t v = static_cast<int32_t>(w * 64 + std::countr_zero(bits));
        bits &= bits - 1;
        if (v < n && !(b.never_freed && b.alloc == -1)) {
          lb[v] += b.bytes;
          if (b.never_freed) nfp[v] += b.bytes;
        }
      }
    }
  }
  return lb;
}

std::vector<std::vector<int32_t>> split_segments(const Model& m) {
  const int32_t n = m.n;
  std::vector<char> heavy(n);
  int32_t nh = 0;
  for (int32_t v = 0; v < n; ++v) {
    heavy[v] = m.alloc[v] + m.ws[v] > 0;
    nh += heavy[v];
  }
  std::vector<int32_t> anc, desc;
  count_relatives(m, heavy, anc, desc);
  // seg(v) = number of cut nodes strictly before v; cuts form a chain, so it is the max over
  // predecessors. A node that allocates nothing joins the segment of its latest predecessor:
  // an optimal order runs it as soon as it is ready (see exact.cpp), i.e. inside that stretch.
  const std::vector<int32_t> topo = topo_order(m);
  std::vector<int32_t> seg(n, 0);
  int32_t nseg = 1;
  for (int32_t v : topo) {
    int32_t s = 0;
    for (int32_t u : m.preds[v]) {
      const bool cut_u = heavy[u] && anc[u] + desc[u] == nh - 1;
      s = std::max(s, seg[u] + (cut_u ? 1 : 0));
    }
    seg[v] = s;
    nseg = std::max(nseg, s + 1);
  }
  std::vector<std::vector<int32_t>> out(nseg);
  for (int32_t v : topo) out[seg[v]].push_back(v);
  out.erase(std::remove_if(out.begin(), out.end(), [](const auto& x) { return x.empty(); }), out.end());
  return out;
}

}  // namespace deltamoe::sched::detail
