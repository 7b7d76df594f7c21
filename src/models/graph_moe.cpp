#include "models/graph_moe.h"

#include "deltamoe/moe/policies.h"

#include <algorithm>

namespace deltamoe::models::detail {

graph::Var combine_experts(graph::Graph& g, graph::Var u, graph::Var w,
                           const moe::RoutingResult& rr, int64_t tokens, int64_t experts,
                           const std::function<graph::Var(int64_t, graph::Var)>& expert) {
  // Dispatch: the (token, entry) pairs of each expert, in token order.
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(experts)),
      entries(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t)
    for (int32_t j = rr.offsets[t]; j < rr.offsets[t + 1]; ++j) {
      rows[static_cast<size_t>(rr.expert_ids[j])].push_back(static_cast<int32_t>(t));
      entries[static_cast<size_t>(rr.expert_ids[j])].push_back(j);
    }
  graph::Var y;
  for (int64_t e = 0; e < experts; ++e) {
    // An expert that got no tokens still runs (on zero rows; it adds nothing), so that every
    // step of a training run records the same tape and one memory plan fits them all.
    const auto& r = rows[static_cast<size_t>(e)];
    const graph::Var o = expert(e, g.gather_rows(u, r));
    // y is the running sum, read by nothing else: accumulate in place.
    y = g.scatter_add_rows(y, o, w, r, entries[static_cast<size_t>(e)], tokens,
                           /*reuse_base=*/true);
  }
  return y;
}

graph::Var switch_balance_loss(graph::Graph& g, graph::Var p, const moe::RoutingResult& rr,
                               const std::vector<int32_t>& null_cols, int64_t outputs,
                               double alpha) {
  std::vector<float> f(static_cast<size_t>(outputs), 0.0f);
  for (int32_t id : rr.expert_ids) f[static_cast<size_t>(id)] += 1.0f;
  for (int32_t id : null_cols) f[static_cast<size_t>(id)] += 1.0f;
  const float total = static_cast<float>(rr.expert_ids.size() + null_cols.size());
  if (total > 0)
    for (float& v : f) v /= total;
  return g.scale(g.dot_const(g.mean_cols(p), f),
                 static_cast<float>(alpha * static_cast<double>(outputs)));
}

void route_forced(const std::vector<int32_t>& ks, bool renormalize, const float* zp,
                  const float* pp, int64_t tokens, int64_t experts, int64_t outputs,
                  moe::RoutingResult& out) {
  moe::PerTokenKRouting forced(renormalize);
  forced.set_ks(ks);
  if (outputs == experts) {
    forced.route(zp, pp, tokens, experts, out);
    return;
  }
  std::vector<float> zr(static_cast<size_t>(tokens * experts)), pr(zr.size());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t e = 0; e < experts; ++e) {
      zr[static_cast<size_t>(t * experts + e)] = zp[t * outputs + e];
      pr[static_cast<size_t>(t * experts + e)] = pp[t * outputs + e];
    }
  forced.route(zr.data(), pr.data(), tokens, experts, out);
}

graph::Var router_entropy_loss(graph::Graph& g, graph::Var p, graph::Var log_p, double beta) {
  const int64_t tokens = g.value(p).shape()[0];
  return g.scale(g.sum(g.mul(p, log_p)),
                 static_cast<float>(-beta / static_cast<double>(std::max<int64_t>(1, tokens))));
}

}  // namespace deltamoe::models::detail
