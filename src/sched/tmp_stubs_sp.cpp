// TEMPORARY (branch sched-sp only; removed before merge): a minimal Graph::finalize so this
// branch builds and tests alone while sched-base writes the real one in memgraph.cpp.
#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched {

void Graph::finalize() {
  const int32_t n = size();
  is_output.resize(n, 0);
  is_persistent.resize(n, 0);
  users.assign(n, {});
  base.assign(n, -1);
  for (int32_t v = 0; v < n; ++v) {
    Node& nd = nodes[v];
    if (nd.view_of >= 0) {
      bool found = false;
      for (int32_t x : nd.inputs) found = found || x == nd.view_of;
      if (!found) nd.inputs.push_back(nd.view_of);
    }
    base[v] = nd.view_of < 0 ? v : base[nd.view_of];
    for (int32_t x : nd.inputs) users[x].push_back(v);
  }
}

}  // namespace deltamoe::sched
