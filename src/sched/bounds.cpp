// Cheap lower bounds on the optimum peak (graph_format.md, "Lower bounds worth reporting").
// Each holds for every order:
//  - initial-live: freeable inputs are all live before the first step;
//  - node-working-set: at v's step every buffer v reads is still live (v has not run), plus
//    own(v) and workspace(v) (a freeable input's own buffer is live at its step);
//  - outputs: after the last step every output buffer is live, and the last step's need is
//    at least what stays live after it.
#include <algorithm>

#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

LowerBound simple_lower_bound(const Graph& g) {
  const int32_t n = g.size();
  uint64_t initial = 0, outputs = 0, working = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1) continue;
    if (g.is_free_input(b)) initial += g.buffer_bytes(b);
    if (g.buffer_output[b]) outputs += g.buffer_bytes(b);
  }
  for (int32_t v = 0; v < n; ++v) {
    uint64_t w = g.nodes[v].workspace + (g.is_free_input(v) ? g.buffer_bytes(v) : g.own(v));
    for (int32_t b : g.input_buffers[v]) w += g.buffer_bytes(b);
    if (w > working) working = w;
  }
  LowerBound lb{initial, "initial-live"};
  if (working > lb.bytes) lb = {working, "node-working-set"};
  if (outputs > lb.bytes) lb = {outputs, "outputs"};
  return lb;
}

}  // namespace deltamoe::sched

namespace deltamoe::sched {

LowerBound must_live_lower_bound(const Graph& g, int32_t max_nodes) {
  LowerBound best = simple_lower_bound(g);
  const int32_t n = g.size();
  if (n == 0 || n > max_nodes) return best;
  const size_t words = (static_cast<size_t>(n) + 63) / 64;
  // anc[v]: strict ancestors of v (program order is topological, so one forward pass).
  std::vector<uint64_t> anc(static_cast<size_t>(n) * words, 0);
  auto row = [&](int32_t v) { return anc.data() + static_cast<size_t>(v) * words; };
  for (int32_t v = 0; v < n; ++v) {
    uint64_t* r = row(v);
    for (int32_t u : g.nodes[v].inputs) {
      const uint64_t* ru = row(u);
      for (size_t w = 0; w < words; ++w) r[w] |= ru[w];
      r[u >> 6] |= uint64_t{1} << (u & 63);
    }
  }
  // desc[v]: strict descendants of v (one backward pass).
  std::vector<uint64_t> desc(static_cast<size_t>(n) * words, 0);
  auto drow = [&](int32_t v) { return desc.data() + static_cast<size_t>(v) * words; };
  for (int32_t v = n - 1; v >= 0; --v) {
    uint64_t* r = drow(v);
    for (int32_t s : g.users[v]) {
      const uint64_t* rs = drow(s);
      for (size_t w = 0; w < words; ++w) r[w] |= rs[w];
      r[s >> 6] |= uint64_t{1} << (s & 63);
    }
  }
  std::vector<uint64_t> live(n, 0);  // bytes necessarily live at each node's step
  std::vector<uint64_t> set(words);
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1) continue;
    const uint64_t bytes = g.buffer_bytes(b);
    if (bytes == 0) continue;
    const bool free_input = g.is_free_input(b);
    // Steps where b is necessarily live: after b in every order (descendants of b; every
    // step for a freeable input) and, unless b is an output, at or before one of its readers
    // (a reader or one of its ancestors).
    const uint64_t* after = drow(b);
    if (g.buffer_output[b]) {
      if (free_input) {
        for (int32_t v = 0; v < n; ++v) live[v] += bytes;
      } else {
        for (size_t w = 0; w < words; ++w) set[w] = after[w];
      }
    } else {
      std::fill(set.begin(), set.end(), 0);
      for (int32_t r : g.buffer_readers[b]) {
        const uint64_t* rr = row(r);
        for (size_t w = 0; w < words; ++w) set[w] |= rr[w];
        set[r >> 6] |= uint64_t{1} << (r & 63);
      }
      if (!free_input)
        for (size_t w = 0; w < words; ++w) set[w] &= after[w];
    }
    if (g.buffer_output[b] && free_input) continue;
    for (size_t w = 0; w < words; ++w) {
      for (uint64_t bits = set[w]; bits; bits &= bits - 1)
        live[w * 64 + static_cast<size_t>(__builtin_ctzll(bits))] += bytes;
    }
  }
  for (int32_t v = 0; v < n; ++v) {
    const uint64_t need = live[v] + g.own(v) + g.nodes[v].workspace;
    if (need > best.bytes) best = {need, "must-live"};
  }
  return best;
}

}  // namespace deltamoe::sched
