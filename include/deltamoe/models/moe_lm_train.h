// A Mixtral-style MoE language model whose forward is a graph::Graph tape, so it trains with
// the engine's autodiff and optimizer (issue 15: delta-MoE language models trained in C++).
//
// The architecture and the parameter names are Hugging Face Mixtral's (MixtralForCausalLM):
// token embedding; per layer RMSNorm, q/k/v projections, RoPE, causal grouped-query attention,
// o projection, residual, RMSNorm, router, routed SwiGLU experts (w1 gate, w3 up, w2 down),
// residual; final RMSNorm and the LM head (tied to the embedding when the config says so).
// Qwen2MoeForCausalLM trains too (its mlp.* names, q/k/v biases, a shared expert added to the
// routed ones with a sigmoid gate, and dense layers): PR-MoE's residual design in an HF family.
// Every op is the inference path's kernel (kernels/llm.h) or its exact formula, so a model
// trained here computes what `deltamoe generate` computes on the same weights, and the
// parameters are named and shaped as io::hf_tensor_specs lists them for a checkpoint.
//
// Thread-safety: one trainer thread; the ops parallelise internally.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/graph/graph.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/moe/routing.h"
#include "deltamoe/nn/nn.h"

namespace deltamoe::models {

/// Options of one forward pass.
struct LmTrainForwardOptions {
  /// Weight of the Switch balance loss per MoE layer (Mixtral's router_aux_loss_coef); 0: none.
  double balance_alpha = 0.0;
  /// Weight of the budget loss per MoE layer: the mean entropy of the router's distribution
  /// (the "dynamic loss" of top-p routing, Huang et al. 2024), which makes routers confident
  /// so that top-p needs fewer experts; 0: none.
  double budget_beta = 0.0;
  /// The shuffled-K control of the delta-MoE study: when set, token t of layer l routes to
  /// its top (*forced_ks)[l][t] experts (one entry per layer, each as long as the tokens)
  /// instead of the model's policy, weights renormalised as the policy says. Not owned.
  const std::vector<std::vector<int32_t>>* forced_ks = nullptr;
};

/// What one forward pass built on the tape.
struct LmTrainForward {
  graph::Var logits;    // [B·T, vocab]
  graph::Var aux_loss;  // sum of the layers' auxiliary losses; undefined when there are none
  std::vector<moe::RoutingResult> routing;  // per layer (a dense layer's is empty: no offsets)
};

class TrainableMoeLm {
 public:
  /// Random weights: every matrix and the embedding normal(0, 0.02) (transformers'
  /// initializer_range), norms 1, biases 0, drawn from `seed` in parameter order. Throws
  /// Error("lm-train") for a config this class cannot train: MixtralForCausalLM (every layer
  /// MoE) and Qwen2MoeForCausalLM (q/k/v biases, a shared expert with its sigmoid gate, dense
  /// layers by decoder_sparse_step / mlp_only_layers: DeepSpeed's PR-MoE residual) train; no
  /// q/k norms, o_proj bias or clip_qkv.
  TrainableMoeLm(const io::HfConfig& config, uint64_t seed);
  /// The weights of a checkpoint (any float dtype), copied to f32 parameters.
  TrainableMoeLm(const io::HfConfig& config, const io::HfModelWeights& weights);

  /// Routing is per MoE layer: each layer has its own policy object, so an adaptive policy
  /// (top-p's controller, threshold's quantiles) adapts to its layer's router alone, and a
  /// layer's policy is built for that layer's expert count (pyramid MoE). Default: the
  /// config's top-k, renormalised as its norm_topk_prob says.
  ///
  /// Sets one shared policy object for every MoE layer (its adaptive state, if any, then sees
  /// every layer). A policy's null experts (extra_logits()) must be the config's null_experts
  /// (the router's extra outputs): null-experts:K:M needs a model built with M, others none.
  void set_policy(std::shared_ptr<moe::RoutingPolicy> policy);
  /// Builds one policy per MoE layer from `spec` (moe::make_policy with the layer's expert
  /// count; a null-experts spec without M takes the config's null_experts). Throws Error("routing")
  /// / Error("lm-train") as make_policy and set_policy do.
  void set_policy(const moe::PolicySpec& spec);
  /// Sets the policy of each layer: `policies[l]` for MoE layer l (entries of dense layers are
  /// ignored and may be null). Throws Error("lm-train") for a wrong count or a null entry of an
  /// MoE layer.
  void set_layer_policies(std::vector<std::shared_ptr<moe::RoutingPolicy>> policies);
  /// The first MoE layer's policy (for names and single-policy use).
  const moe::RoutingPolicy& policy() const;
  /// Layer l's policy; null for a dense layer.
  const moe::RoutingPolicy* layer_policy(int64_t l) const {
    return policies_.at(static_cast<size_t>(l)).get();
  }
  /// The routing's name: the policy's, or each MoE layer's joined by " | " when they differ.
  std::string routing_name() const;
  /// The policy objects of all layers (null for dense ones), to set back later with
  /// set_layer_policies.
  const std::vector<std::shared_ptr<moe::RoutingPolicy>>& layer_policies() const {
    return policies_;
  }

  /// Builds the forward of B = tokens.size() / seq_len sequences of `seq_len` tokens each
  /// (row b·T + i is token i of sequence b) on `g`. Token ids must be in [0, vocab).
  LmTrainForward forward(graph::Graph& g, const std::vector<int32_t>& tokens, int64_t seq_len,
                         const LmTrainForwardOptions& opt = {});
  /// Mean next-token cross-entropy over every position but each sequence's last (position i
  /// predicts token i + 1), plus `fwd.aux_loss` when defined: the training loss, a scalar.
  /// Distillation (Mixture-of-Students): with `teacher_probs` (a teacher's next-token
  /// distribution on those same positions, row-major [positions, vocab]; see
  /// teacher_distribution), the loss is (1 − w)·CE + w·H(teacher, this) + aux, w =
  /// `distill_weight`, H the mean cross-entropy of this model's softmax against the teacher's.
  /// With `token_nats`, appends each predicted token's cross-entropy (nats) in row order.
  graph::Var loss(graph::Graph& g, const LmTrainForward& fwd, const std::vector<int32_t>& tokens,
                  int64_t seq_len, const std::vector<float>* teacher_probs = nullptr,
                  double distill_weight = 0.0, std::vector<float>* token_nats = nullptr);
  /// This model's next-token distribution (softmax of the logits) at every position but each
  /// sequence's last, as loss() takes it for distillation: [B·(T − 1), vocab] row-major.
  /// Grad-free; uses the model's policy.
  std::vector<float> teacher_distribution(const std::vector<int32_t>& tokens, int64_t seq_len);

  const io::HfConfig& config() const { return cfg_; }
  nn::ParameterSet& params() { return params_; }
  const nn::ParameterSet& params() const { return params_; }

 private:
  // Parameter names of layer l's MoE block (prefix ending in ".") and of its SwiGLU FFNs.
  struct Names {
    std::string moe, gate, up, down;
  };
  void check_config() const;
  void add_params();
  std::string layer_prefix(int64_t l) const;
  Names names(int64_t l) const;

  io::HfConfig cfg_;
  nn::ParameterSet params_;
  std::vector<std::shared_ptr<moe::RoutingPolicy>> policies_;  // per layer; null when dense
};

}  // namespace deltamoe::models
