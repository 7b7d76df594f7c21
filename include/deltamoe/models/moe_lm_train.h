// A Mixtral-style MoE language model whose forward is a graph::Graph tape, so it trains with
// the engine's autodiff and optimizer (issue 15: delta-MoE language models trained in C++).
//
// The architecture and the parameter names are Hugging Face Mixtral's (MixtralForCausalLM):
// token embedding; per layer RMSNorm, q/k/v projections, RoPE, causal grouped-query attention,
// o projection, residual, RMSNorm, router, routed SwiGLU experts (w1 gate, w3 up, w2 down),
// residual; final RMSNorm and the LM head (tied to the embedding when the config says so).
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
#include "deltamoe/moe/routing.h"
#include "deltamoe/nn/nn.h"

namespace deltamoe::models {

/// Options of one forward pass.
struct LmTrainForwardOptions {
  /// Weight of the Switch balance loss per MoE layer (Mixtral's router_aux_loss_coef); 0: none.
  double balance_alpha = 0.0;
};

/// What one forward pass built on the tape.
struct LmTrainForward {
  graph::Var logits;    // [B·T, vocab]
  graph::Var aux_loss;  // sum of the layers' auxiliary losses; undefined when there are none
  std::vector<moe::RoutingResult> routing;  // per layer, one entry list per token
};

class TrainableMoeLm {
 public:
  /// Random weights: every matrix and the embedding normal(0, 0.02) (transformers'
  /// initializer_range), norms 1, drawn from `seed` in parameter order. Throws Error("lm-train")
  /// for a config this class cannot train (only MixtralForCausalLM: no attention biases, no
  /// q/k norms, every layer MoE, no shared expert, no clip_qkv).
  TrainableMoeLm(const io::HfConfig& config, uint64_t seed);
  /// The weights of a checkpoint (any float dtype), copied to f32 parameters.
  TrainableMoeLm(const io::HfConfig& config, const io::HfModelWeights& weights);

  /// The routing of every MoE layer (default: the config's top-k, renormalised as its
  /// norm_topk_prob says). Null-expert policies are refused (their router needs extra outputs).
  void set_policy(std::shared_ptr<moe::RoutingPolicy> policy);
  const moe::RoutingPolicy& policy() const { return *policy_; }

  /// Builds the forward of B = tokens.size() / seq_len sequences of `seq_len` tokens each
  /// (row b·T + i is token i of sequence b) on `g`. Token ids must be in [0, vocab).
  LmTrainForward forward(graph::Graph& g, const std::vector<int32_t>& tokens, int64_t seq_len,
                         const LmTrainForwardOptions& opt = {});
  /// Mean next-token cross-entropy over every position but each sequence's last (position i
  /// predicts token i + 1), plus `fwd.aux_loss` when defined: the training loss, a scalar.
  graph::Var loss(graph::Graph& g, const LmTrainForward& fwd, const std::vector<int32_t>& tokens,
                  int64_t seq_len);

  const io::HfConfig& config() const { return cfg_; }
  nn::ParameterSet& params() { return params_; }
  const nn::ParameterSet& params() const { return params_; }

 private:
  void check_config() const;
  void add_params();
  std::string layer_prefix(int64_t l) const;

  io::HfConfig cfg_;
  nn::ParameterSet params_;
  std::shared_ptr<moe::RoutingPolicy> policy_;
};

}  // namespace deltamoe::models
