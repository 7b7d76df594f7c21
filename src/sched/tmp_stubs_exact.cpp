// TEMPORARY minimal memgraph functions so branch sched-exact links alone (the real ones are in
// branch sched-base's memgraph.cpp). Deleted in this branch's final commit.
#include <algorithm>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched {

void Graph::finalize() {
  const int32_t n = size();
  is_output.resize(n, 0);
  is_persistent.resize(n, 0);
  base.assign(n, -1);
  users.assign(n, {});
  for (int32_t v = 0; v < n; ++v) {
    Node& nd = nodes[v];
    if (nd.view_of != -1 && std::find(nd.inputs.begin(), nd.inputs.end(), nd.view_of) == nd.inputs.end())
      nd.inputs.push_back(nd.view_of);
    std::vector<int32_t> in;
    for (int32_t u : nd.inputs) {
      DELTAMOE_CHECK(u >= 0 && u < v, "memgraph", "bad input");
      if (std::find(in.begin(), in.end(), u) == in.end()) in.push_back(u);
    }
    nd.inputs = in;
    base[v] = nd.view_of == -1 ? v : base[nd.view_of];
    for (int32_t u : in) users[u].push_back(v);
  }
}

bool Graph::is_free_input(int32_t v) const {
  bool pers = false;
  for (int32_t u = 0; u < size(); ++u) pers = pers || (base[u] == base[v] && is_persistent[u]);
  return nodes[v].op == "input" && nodes[v].inputs.empty() && !pers;
}

uint64_t Graph::own(int32_t v) const {
  bool pers = false;
  for (int32_t u = 0; u < size(); ++u) pers = pers || (base[u] == base[v] && is_persistent[u]);
  if (nodes[v].view_of != -1 || pers || is_free_input(v)) return 0;
  return nodes[v].size;
}

Order program_order(const Graph& g) {
  Order o(g.size());
  for (int32_t i = 0; i < g.size(); ++i) o[i] = i;
  return o;
}

void check_order(const Graph& g, const Order& order) {
  const int32_t n = g.size();
  DELTAMOE_CHECK(order.size() == static_cast<size_t>(n), "memgraph", "order size");
  std::vector<int32_t> pos(n, -1);
  for (int32_t t = 0; t < n; ++t) {
    DELTAMOE_CHECK(order[t] >= 0 && order[t] < n && pos[order[t]] == -1, "memgraph", "bad order");
    pos[order[t]] = t;
  }
  for (int32_t v = 0; v < n; ++v)
    for (int32_t u : g.nodes[v].inputs) DELTAMOE_CHECK(pos[u] < pos[v], "memgraph", "not topological");
}

}  // namespace deltamoe::sched
