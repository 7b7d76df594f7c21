#include "deltamoe/moe/routing.h"

#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/kernels/cpu.h"

namespace deltamoe::moe {

double RoutingResult::mean_experts() const {
  const int64_t t = tokens();
  return t == 0 ? 0.0 : static_cast<double>(expert_ids.size()) / static_cast<double>(t);
}

void assign_weights(const float* probs, int64_t stride, bool renormalize, RoutingResult& out) {
  const int64_t tokens = out.tokens();
  out.weights.resize(out.expert_ids.size());
  for (int64_t t = 0; t < tokens; ++t) {
    const float* p = probs + t * stride;
    const int32_t b = out.offsets[t], e = out.offsets[t + 1];
    float sum = 0.0f;
    for (int32_t j = b; j < e; ++j) sum += p[out.expert_ids[j]];
    // A token whose chosen experts all have probability 0 (underflow) would divide by zero;
    // it then gets uniform weights, which is what the limit of renormalisation gives.
    const bool uniform = renormalize && !(sum > 0.0f);
    for (int32_t j = b; j < e; ++j) {
      const float pe = p[out.expert_ids[j]];
      out.weights[j] = !renormalize ? pe : uniform ? 1.0f / static_cast<float>(e - b) : pe / sum;
    }
  }
}

TopKRouting::TopKRouting(int64_t k, bool renormalize) : k_(k), renormalize_(renormalize) {
  DELTAMOE_CHECK(k >= 1, "routing", "top-k needs k >= 1, got ", k);
}

std::string TopKRouting::name() const {
  return "top-k(k=" + std::to_string(k_) + (renormalize_ ? ", renorm)" : ")");
}

void TopKRouting::route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
                        RoutingResult& out) const {
  DELTAMOE_CHECK(k_ <= experts, "routing", "top-k with k=", k_, " but only ", experts, " experts");
  out.clear();
  out.offsets.resize(static_cast<size_t>(tokens) + 1);
  out.expert_ids.resize(static_cast<size_t>(tokens * k_));
  std::vector<float> vals(static_cast<size_t>(k_));
  for (int64_t t = 0; t < tokens; ++t) {
    // Select on logits: the same order as probabilities (softmax is monotonic), and exact
    // where probabilities tie after rounding.
    kernels::topk_st(logits + t * experts, experts, k_, out.expert_ids.data() + t * k_, vals.data());
    out.offsets[t + 1] = static_cast<int32_t>((t + 1) * k_);
  }
  assign_weights(probs, experts, renormalize_, out);
}

}  // namespace deltamoe::moe
