// Routing policies: which experts each token uses, and with what gate weights.
//
// The MoE layer computes router logits z = x·W_gᵀ over E (+ M null) experts and their
// softmax p, then asks a RoutingPolicy for each token's expert set S(x) and weights. A policy
// may give each token a different number of experts (delta-MoE); dispatch/combine never
// assume a fixed k. Null experts (AdaMoE) are router outputs with index ≥ E: a policy may pick
// them, but they are never returned in RoutingResult (they cost nothing and output zero).
// Thread-safety: route() is const and must be safe to call concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace deltamoe::moe {

/// Routing of T tokens in CSR form: token t uses experts expert_ids[offsets[t] .. offsets[t+1])
/// with gate weights weights[same range]. Expert ids are in [0, E), distinct per token, in
/// descending score order. offsets has T+1 entries.
struct RoutingResult {
  std::vector<int32_t> offsets;
  std::vector<int32_t> expert_ids;
  std::vector<float> weights;
  /// Per-token count of null experts chosen (AdaMoE); empty when the policy has none.
  std::vector<int32_t> null_chosen;

  int64_t tokens() const { return offsets.empty() ? 0 : static_cast<int64_t>(offsets.size()) - 1; }
  int32_t experts_of(int64_t t) const { return offsets[t + 1] - offsets[t]; }
  /// Mean number of real experts per token.
  double mean_experts() const;
  void clear() { offsets.assign(1, 0); expert_ids.clear(); weights.clear(); null_chosen.clear(); }
};

class RoutingPolicy {
 public:
  virtual ~RoutingPolicy() = default;
  /// Short name with parameters, e.g. "top-k(k=2, renorm)".
  virtual std::string name() const = 0;
  /// Extra router outputs this policy needs beyond the E real experts (null experts).
  virtual int64_t extra_logits() const { return 0; }
  /// Whether the chosen weights are p_e renormalised over S (true) or p_e as is (false).
  virtual bool renormalize() const = 0;
  /// Routes `tokens` rows. `logits` and `probs` are [tokens, experts + extra_logits()]
  /// row-major; probs is the softmax of logits over all router outputs. Appends nothing:
  /// `out` is overwritten.
  virtual void route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
                     RoutingResult& out) const = 0;
};

/// Fixed top-k (Shazeer 2017, Mixtral): the k largest p, weights renormalised over them when
/// `renormalize` (Mixtral) or p as is. Ties go to the lower expert index.
class TopKRouting : public RoutingPolicy {
 public:
  TopKRouting(int64_t k, bool renormalize);
  std::string name() const override;
  bool renormalize() const override { return renormalize_; }
  int64_t k() const { return k_; }
  void route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
             RoutingResult& out) const override;

 private:
  int64_t k_;
  bool renormalize_;
};

/// Fills out.weights for the already chosen out.expert_ids from probs (row stride `stride`),
/// renormalising over each token's set when asked. Shared by policies.
void assign_weights(const float* probs, int64_t stride, bool renormalize, RoutingResult& out);

}  // namespace deltamoe::moe
