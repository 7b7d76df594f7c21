// The MoE block on a graph::Graph tape, shared by the models trained through it (the
// classifier, the language model): dispatch the routed rows of each expert, run the expert on
// them, combine with the gate weights; and the Switch balance loss. Internal to models/.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "deltamoe/graph/graph.h"
#include "deltamoe/moe/routing.h"

namespace deltamoe::models::detail {

/// y[t] = Σ over t's routing entries j of w[j] · expert(e_j, u rows routed to e_j)[t's row]:
/// each expert with rows sees them gathered in token order, and the sum is accumulated in
/// place (no copy per expert). `w` holds one gate weight per routing entry (gate_weights).
/// Every expert runs, one that got no tokens on zero rows, so that the tape's structure does
/// not depend on the routing (one memory plan fits every step: graph/memory_plan.h).
graph::Var combine_experts(
    graph::Graph& g, graph::Var u, graph::Var w, const moe::RoutingResult& routing, int64_t tokens,
    int64_t experts, const std::function<graph::Var(int64_t expert, graph::Var rows)>& expert);

/// Switch Transformer's balance loss, alpha · outputs · Σ_c f_c · mean_t p[t, c], with f_c the
/// share of all assignments (null experts' too, `null_cols`) that went to router output c, a
/// constant; `p` is the router's softmax [tokens, outputs].
graph::Var switch_balance_loss(graph::Graph& g, graph::Var p, const moe::RoutingResult& routing,
                               const std::vector<int32_t>& null_cols, int64_t outputs,
                               double alpha);

/// The shuffled-K control's routing of one layer: token t takes its top ks[t] real experts
/// (moe::PerTokenKRouting, weights renormalised when `renormalize`). `zp` and `pp` are the
/// router's logits and softmax [tokens, outputs]; outputs > experts for a null-expert router,
/// whose null columns the forced budgets ignore.
void route_forced(const std::vector<int32_t>& ks, bool renormalize, const float* zp,
                  const float* pp, int64_t tokens, int64_t experts, int64_t outputs,
                  moe::RoutingResult& out);

/// The budget loss of dynamic routing (Huang et al. 2024, "Harder Tasks Need More Experts":
/// their "dynamic loss"): beta · the mean over tokens of the router distribution's entropy,
/// −Σ_c p[t, c] log p[t, c]. A peaked distribution reaches top-p's mass with fewer experts, so
/// the loss buys a smaller per-token budget with the router's confidence; `log_p` is the
/// router's log-softmax and `p` its softmax, both [tokens, outputs].
graph::Var router_entropy_loss(graph::Graph& g, graph::Var p, graph::Var log_p, double beta);

}  // namespace deltamoe::models::detail
