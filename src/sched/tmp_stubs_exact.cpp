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

// TEMPORARY: a minimal reader for local experiments (the real one is sched-base's).
#include <zlib.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>

namespace deltamoe::sched {
Graph read_memgraph(const std::string& path) {
  std::string text;
  {
    gzFile f = gzopen(path.c_str(), "rb");
    DELTAMOE_CHECK(f, "memgraph", "cannot open ", path);
    char buf[1 << 16];
    int k;
    while ((k = gzread(f, buf, sizeof buf)) > 0) text.append(buf, k);
    gzclose(f);
  }
  const auto j = nlohmann::json::parse(text);
  Graph g;
  g.name = j.value("name", "");
  std::unordered_map<int64_t, int32_t> idx;
  for (const auto& jn : j["nodes"]) idx[jn["id"].get<int64_t>()] = static_cast<int32_t>(idx.size());
  for (const auto& jn : j["nodes"]) {
    Node nd;
    nd.id = jn["id"];
    nd.name = jn.value("name", "");
    nd.op = jn.value("op", "");
    for (const auto& i : jn["inputs"]) nd.inputs.push_back(idx.at(i.get<int64_t>()));
    nd.size = jn.value("size", uint64_t{0});
    nd.workspace = jn.value("workspace", uint64_t{0});
    if (jn.contains("view_of") && !jn["view_of"].is_null()) nd.view_of = idx.at(jn["view_of"].get<int64_t>());
    g.nodes.push_back(nd);
  }
  g.is_output.assign(g.nodes.size(), 0);
  g.is_persistent.assign(g.nodes.size(), 0);
  for (const auto& i : j["outputs"]) g.is_output[idx.at(i.get<int64_t>())] = 1;
  for (const auto& i : j["persistent"]) g.is_persistent[idx.at(i.get<int64_t>())] = 1;
  g.finalize();
  return g;
}
}  // namespace deltamoe::sched
