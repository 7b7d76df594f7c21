// The MoE layer forward pass (inference): router → softmax → RoutingPolicy → dispatch →
// grouped expert FFN → combine. Dropless: every routed token is computed.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/moe/routing.h"

namespace deltamoe::moe {

/// Expert architecture.
enum class ExpertKind {
  swiglu,    // Mixtral: w2(silu(w1 x) * w3 x), no biases
  gelu_mlp,  // fc2(gelu(fc1 x + b1)) + b2 (biases optional)
};

/// Weights in PyTorch layout (Linear: [out, in]); f32 (or any dtype: converted when packed).
struct MoeWeights {
  ExpertKind kind = ExpertKind::swiglu;
  Tensor router;            // [E + M, H] (M = null experts of the policy, if any)
  std::vector<Tensor> w1;   // E × [I, H]   (gelu: fc1)
  std::vector<Tensor> w2;   // E × [H, I]   (gelu: fc2)
  std::vector<Tensor> w3;   // E × [I, H]   (swiglu only)
  std::vector<Tensor> b1;   // E × [I]      (gelu only, optional: empty = no bias)
  std::vector<Tensor> b2;   // E × [H]      (gelu only, optional)

  int64_t experts() const { return static_cast<int64_t>(w1.size()); }
  int64_t hidden() const { return w1.empty() ? 0 : w1[0].size(1); }
  int64_t inter() const { return w1.empty() ? 0 : w1[0].size(0); }
  /// Throws Error("moe") naming the first tensor with a wrong shape.
  void validate() const;
  /// Random weights (uniform ±1/sqrt(fan_in), like nn.Linear), deterministic in `seed`.
  static MoeWeights random(ExpertKind kind, int64_t experts, int64_t hidden, int64_t inter,
                           uint64_t seed, int64_t extra_router_outputs = 0, bool biases = false);
};

/// Statistics of one forward pass.
struct MoeStats {
  RoutingResult routing;                 // per token: experts and weights
  std::vector<int64_t> tokens_per_expert;  // E entries
  double mean_experts() const { return routing.mean_experts(); }
};

/// A ready-to-run MoE layer: weights packed once (f32 or bf16) for the grouped FFN.
/// forward() is const and thread-compatible (one call at a time per layer object, since it
/// reuses internal scratch); use one layer per serving thread or guard it.
class MoeLayer {
 public:
  /// Packs `weights` to `dtype` (f32 or bf16) for the expert GEMMs. The router stays f32.
  MoeLayer(const MoeWeights& weights, DType dtype);

  /// y[T, H] = MoE(x[T, H]) with `policy`; fills `stats` when not null.
  Tensor forward(const Tensor& x, const RoutingPolicy& policy, MoeStats* stats = nullptr) const;

  int64_t experts() const { return experts_; }
  int64_t hidden() const { return hidden_; }
  int64_t inter() const { return inter_; }
  ExpertKind kind() const { return kind_; }
  DType dtype() const { return dtype_; }
  /// Bytes of one expert's packed weights (for roofline estimates).
  size_t expert_weight_bytes() const;
  /// FLOPs of the expert FFNs for `routed` token-expert pairs (2·m·n·k per GEMM).
  double expert_flops(int64_t routed) const;

 private:
  ExpertKind kind_;
  DType dtype_;
  int64_t experts_, hidden_, inter_, router_outputs_;
  // [E+M, H] f32, packed for our own kernel: OpenBLAS would run a prefill-sized router GEMM
  // on its own pthreads, which then spin beside the OpenMP workers of the expert phase.
  std::unique_ptr<kernels::PackedLinear> router_;
  std::vector<kernels::PackedLinear> w13_;  // swiglu: [2I, H] rows interleaved by panel; gelu: [I, H]
  std::vector<kernels::PackedLinear> w2_;   // [H, I]
  std::vector<Tensor> b1_, b2_;
};

/// The naive reference (the Hugging Face MixtralSparseMoeBlock loop, per token and expert,
/// f32 throughout, plain loops): used by tests and as the benchmark's baseline.
Tensor moe_forward_naive(const MoeWeights& weights, const Tensor& x, const RoutingPolicy& policy,
                         MoeStats* stats = nullptr);

}  // namespace deltamoe::moe
