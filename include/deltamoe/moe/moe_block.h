// The MoE block: one implementation of the sparse expert FFN for every model (the MoE
// classifier, its server, the language models), the way one build_moe_ffn serves every MoE
// model in llama.cpp. Four stages, each callable on its own:
//
//   route    router logits z = x·W_gᵀ → softmax p (f32) → RoutingPolicy → per-token experts S(x)
//   dispatch stable counting sort of the (token, expert) pairs by expert
//   experts  one grouped GEMM per expert over its rows (SwiGLU, GELU-MLP or ReLU-MLP)
//   combine  y[t] = Σ_{e ∈ S(t)} w_e · E_e(x[t]), summed in expert-index order (the order of
//            Hugging Face's MixtralSparseMoeBlock and of our training graph, so results agree
//            to the last bit where the arithmetic does), plus an optional shared expert
//            scaled by sigmoid(x·w_sg) (Qwen2-MoE, DeepSpeed-MoE's residual expert).
//
// Dropless: every routed pair is computed. Routing may give each token any number of experts,
// including none (delta-MoE). Per-expert queues (serve/) call expert_st() on batches they form
// themselves; everything else calls forward() or route() + apply().
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/moe/routing.h"

namespace deltamoe::moe {

/// Expert architecture.
enum class ExpertKind {
  swiglu,    // Mixtral, Qwen-MoE, OLMoE: w2(silu(w1 x) * w3 x), no biases
  gelu_mlp,  // fc2(gelu(fc1 x + b1)) + b2 (biases optional; exact erf GELU)
  relu_mlp,  // fc2(relu(fc1 x + b1)) + b2 (biases optional)
};

/// Weights in PyTorch layout (Linear: [out, in]); any dtype (converted when packed).
struct MoeWeights {
  ExpertKind kind = ExpertKind::swiglu;
  Tensor router;           // [E + M, H] (M = null experts of the policy, if any)
  std::vector<Tensor> w1;  // E × [I, H]   (MLP: fc1)
  std::vector<Tensor> w2;  // E × [H, I]   (MLP: fc2)
  std::vector<Tensor> w3;  // E × [I, H]   (swiglu only)
  std::vector<Tensor> b1;  // E × [I]      (MLP only, optional: empty = no bias)
  std::vector<Tensor> b2;  // E × [H]      (MLP only, optional)
  // Optional shared expert (SwiGLU, width Is, run on every token), undefined = none.
  Tensor shared_w1;    // [Is, H] gate
  Tensor shared_w3;    // [Is, H] up
  Tensor shared_w2;    // [H, Is] down
  Tensor shared_gate;  // [1, H]: output scaled by sigmoid(x·w); undefined = scale 1

  int64_t experts() const { return static_cast<int64_t>(w1.size()); }
  int64_t hidden() const { return w1.empty() ? 0 : w1[0].size(1); }
  int64_t inter() const { return w1.empty() ? 0 : w1[0].size(0); }
  bool has_shared() const { return shared_w1.defined(); }
  /// Throws Error("moe") naming the first tensor with a wrong shape.
  void validate() const;
  /// Random weights (uniform ±1/sqrt(fan_in), like nn.Linear), deterministic in `seed`.
  /// `shared_inter` > 0 adds a gated shared expert of that width.
  static MoeWeights random(ExpertKind kind, int64_t experts, int64_t hidden, int64_t inter,
                           uint64_t seed, int64_t extra_router_outputs = 0, bool biases = false,
                           int64_t shared_inter = 0);
};

/// One routed expert's matrices kept outside its block (an expert cache's slot), row-major in
/// the block's dtype: w1 (gate) [I, H], w3 (up) [I, H], w2 (down) [H, I]. Not owned.
struct ExpertMatrices {
  const kernels::PackedLinear* w1 = nullptr;
  const kernels::PackedLinear* w3 = nullptr;
  const kernels::PackedLinear* w2 = nullptr;
};

/// Statistics of one forward pass.
struct MoeStats {
  RoutingResult routing;                   // per token: experts and weights
  std::vector<int64_t> tokens_per_expert;  // E entries
  double mean_experts() const { return routing.mean_experts(); }
};

/// A ready-to-run MoE block: weights packed once (f32 or bf16) for the grouped FFN; the
/// router and the shared expert's gate stay f32.
/// Thread-safety: every method is const. forward(), route() and apply() use up to
/// num_threads() OpenMP threads and per-calling-thread scratch, so concurrent calls from
/// different threads are safe. expert_st() is single-threaded and safe to call concurrently.
class MoeBlock {
 public:
  /// Prepares `weights` (validated first) in `dtype` (f32, bf16 or int8; int8 always gets the
  /// row-major layout, a quantised copy, and layout() says so). `layout` packed copies
  /// them into our panel layout (the [w1; w3] pair fused into one matrix); row_major uses
  /// each matrix as it is, without a copy where it already has `dtype` (a mapped checkpoint
  /// stays mapped; the tensors' storage is kept alive). `held`: which routed experts the
  /// block holds (experts() entries; empty = all); the others are neither converted, packed
  /// nor viewed, and no routing may choose them (expert parallelism: another rank's
  /// experts). Throws Error("moe").
  MoeBlock(const MoeWeights& weights, DType dtype,
           kernels::WeightLayout layout = kernels::WeightLayout::packed,
           const std::vector<bool>& held = {});

  /// y[T, H] = MoE(x[T, H]) with `policy` (route + apply); fills `stats` when not null.
  Tensor forward(const Tensor& x, const RoutingPolicy& policy, MoeStats* stats = nullptr) const;

  /// Stage 1: router logits and softmax of x[tokens, H] (row-major f32), routed by `policy`
  /// into `out`. When `probs` is not null it receives the softmax [tokens, router_outputs()].
  void route(const float* x, int64_t tokens, const RoutingPolicy& policy, RoutingResult& out,
             std::vector<float>* probs = nullptr) const;

  /// Stages 2-4: y[tokens, H] = Σ_j w_j · E_{e_j}(x) (+ gated shared expert) for a given
  /// routing. `weights`, when not null, replaces routing.weights (same CSR positions), e.g.
  /// gate weights a training graph computed. y is overwritten; x and y must not overlap.
  /// Fills tokens_per_expert (E entries) when not null.
  void apply(const float* x, int64_t tokens, const RoutingResult& routing, float* y,
             const float* weights = nullptr,
             std::vector<int64_t>* tokens_per_expert = nullptr) const;

  /// apply() with each routed expert e's matrices taken from matrices[e] (experts() entries;
  /// those of the experts `routing` uses must be set) instead of the block's own, which are
  /// then never read (a block over an unread mapping, its experts in a cache). Row-major
  /// swiglu blocks only (Error("moe") otherwise); the same arithmetic as apply().
  void apply_external(const float* x, int64_t tokens, const RoutingResult& routing, float* y,
                      const ExpertMatrices* matrices) const;

  /// out[r, H] = E_{experts[r]}(x[r, H]) for each of `rows` rows: one expert per row, no gate
  /// weight, no shared expert (rows an LM's per-expert queues collected across steps; the
  /// caller combines them). Multi-threaded like apply().
  void run_rows(const float* x, int64_t rows, const int32_t* experts, float* out) const;
  /// y[tokens, H] += the gated shared expert of x (no-op without one): the part of apply()
  /// that run_rows() leaves out.
  void add_shared(const float* x, int64_t tokens, float* y) const;

  /// out[m, H] = expert e applied to rows[m, H], single-threaded (per-expert queues).
  void expert_st(int64_t e, const float* rows, int64_t m, float* out) const;

  int64_t experts() const { return experts_; }
  int64_t hidden() const { return hidden_; }
  int64_t inter() const { return inter_; }
  int64_t router_outputs() const { return router_outputs_; }
  bool has_shared() const { return shared_inter_ > 0; }
  ExpertKind kind() const { return kind_; }
  DType dtype() const { return dtype_; }
  kernels::WeightLayout layout() const { return layout_; }
  /// Whether routed expert e's matrices are held (see the constructor's `held`).
  bool holds(int64_t e) const;
  /// How many routed experts are held.
  int64_t held_experts() const;
  /// Holds exactly the routed experts with held[e] (experts() entries): those newly held are
  /// prepared from `weights` (the block's own source, still alive: a mapped checkpoint's
  /// tensors), the others let go: a copy's memory is freed, an in-place view's mapped pages
  /// released. The held copies end up in one new allocation per kind of matrix (no memory of
  /// an expert let go stays behind a kept one). Returns the bytes let go. Not thread-safe
  /// with a concurrent use of the block. Throws Error("moe") on a mismatched `weights`.
  size_t set_held(const MoeWeights& weights, const std::vector<bool>& held);
  /// Bytes of one routed expert's packed weights (for roofline estimates).
  size_t expert_weight_bytes() const;
  /// Bytes of weight matrices used in place (row-major layout, source dtype = dtype()).
  size_t in_place_weight_bytes() const;
  /// Bytes read by every token whatever its routing: router, shared expert and its gate.
  size_t dense_weight_bytes() const;
  /// FLOPs of the routed expert FFNs for `routed` token-expert pairs (2·m·n·k per GEMM).
  double expert_flops(int64_t routed) const;

 private:
  void run_shared(const float* x, int64_t tokens, float* y) const;
  // apply() without the shared expert.
  // `external`: ExpertMatrices per expert replacing w13_ / w3_ / w2_ (null: the block's own).
  void apply_routed(const float* x, int64_t tokens, const RoutingResult& routing, float* y,
                    const float* weights, std::vector<int64_t>* tokens_per_expert,
                    const ExpertMatrices* external = nullptr) const;

  // Prepares routed experts `ids` (ascending, not held yet) from `weights` into their slots
  // of w13_ / w3_ / w2_, each kind in one new allocation.
  void build_experts(const MoeWeights& weights, const std::vector<int64_t>& ids);

  ExpertKind kind_;
  DType dtype_;
  kernels::WeightLayout layout_;
  int64_t experts_, hidden_, inter_, router_outputs_, shared_inter_ = 0;
  // [E+M, H] f32, packed for our own kernel: OpenBLAS would run a prefill-sized router GEMM
  // on its own pthreads, which then spin beside the OpenMP workers of the expert phase.
  std::unique_ptr<kernels::PackedLinear> router_;
  // Packed swiglu: [2I, H] rows interleaved by panel. Row-major swiglu: w1 [I, H] alone, with
  // w3 in w3_. MLP: fc1 [I, H].
  std::vector<kernels::PackedLinear> w13_;
  std::vector<kernels::PackedLinear> w3_;  // row-major swiglu only: [I, H]
  std::vector<kernels::PackedLinear> w2_;  // [H, I]
  // A held expert (-1: none), whose matrices give every expert's shape, bytes and alignment.
  int64_t ref_ = -1;
  std::vector<Tensor> b1_, b2_;
  // Shared expert: like w13_ / w3_ (shared3_ row-major only), down [H, Is]; gate [1, H] f32.
  kernels::PackedLinear shared13_, shared3_, shared2_;
  std::vector<float> shared_gate_;
};

/// y[H] += Σ_j weights[j] · row(j) over one token's k routed experts, summed in expert-index
/// order (deterministic; the order of Hugging Face's expert loop and of the training graph's
/// scatter-add). `experts` and `weights` are the token's k entries; row(j) gives expert
/// experts[j]'s output row. The one combine of MoeBlock::apply and of outputs gathered
/// elsewhere (an LM's per-expert queues across steps). `order` is scratch.
template <class RowOf>
void combine_in_expert_order(const int32_t* experts, const float* weights, int32_t k, RowOf row,
                             float* y, int64_t h, std::vector<int32_t>& order) {
  order.resize(static_cast<size_t>(k));
  for (int32_t a = 0; a < k; ++a) order[static_cast<size_t>(a)] = a;
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t c) { return experts[a] < experts[c]; });
  for (int32_t a : order) kernels::axpy_st(weights[a], row(a), y, h);
}

/// The naive reference (the Hugging Face MixtralSparseMoeBlock loop, per token and expert,
/// f32 throughout, plain loops, shared expert included): used by tests and as the benchmark's
/// baseline.
Tensor moe_forward_naive(const MoeWeights& weights, const Tensor& x, const RoutingPolicy& policy,
                         MoeStats* stats = nullptr);

}  // namespace deltamoe::moe
