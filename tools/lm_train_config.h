// The shape of a language model trained from scratch (train-lm, bench train-step): one place
// that turns the shape flags into a Hugging Face config.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "deltamoe/io/hf_model.h"

namespace deltamoe::cli {

struct LmShape {
  int64_t layers = 2, hidden = 128, heads = 4, kv_heads = 2, experts = 8, top_k = 2, inter = 256,
          shared_inter = 0, seq_len = 64;
  std::vector<int64_t> layer_experts;  // pyramid MoE: experts of each layer (empty: experts)
  int64_t null_experts = 0;            // AdaMoE's null experts: extra router outputs
  bool tie = false;
  bool norm_topk_prob = true;  // Qwen2-MoE (shared_inter > 0) only
  double balance_alpha = 0.01;
};

/// A MixtralForCausalLM config of `shape` and `vocab` tokens, or a Qwen2MoeForCausalLM one
/// with a shared expert when shape.shared_inter > 0 (PR-MoE's residual design). Validated
/// (HfConfig::parse); errors name `component`.
inline io::HfConfig lm_train_config(const LmShape& s, int64_t vocab, const char* component) {
  io::HfConfig c;
  if (s.shared_inter > 0) {
    c.arch = io::HfArch::qwen2_moe;
    c.architecture = "Qwen2MoeForCausalLM";
    c.model_type = "qwen2_moe";
    c.attention_bias = true;
    c.shared_expert_intermediate_size = s.shared_inter;
    c.norm_topk_prob = s.norm_topk_prob;
  } else {
    c.arch = io::HfArch::mixtral;
    c.architecture = "MixtralForCausalLM";
    c.model_type = "mixtral";
  }
  c.vocab_size = vocab;
  c.hidden_size = s.hidden;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.hidden / s.heads;
  c.num_experts = s.experts;
  if (!s.layer_experts.empty()) {
    c.layer_experts = s.layer_experts;
    c.num_experts = *std::max_element(s.layer_experts.begin(), s.layer_experts.end());
  }
  c.num_experts_per_tok = s.top_k;
  c.null_experts = s.null_experts;
  c.moe_intermediate_size = s.inter;
  c.intermediate_size = s.inter;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = std::max<int64_t>(s.seq_len, 256);
  c.tie_word_embeddings = s.tie;
  c.bos_token_id = 0;
  c.eos_token_ids = {0};
  c.dtype = "float32";
  c.router_aux_loss_coef = s.balance_alpha;
  return io::HfConfig::parse(io::hf_config_to_json(c), component);
}

}  // namespace deltamoe::cli
