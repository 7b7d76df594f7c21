// The golden language models of tests/golden/llm (python/make_golden_llm.py): where they are
// and how their token tensors read; and tiny configs for tests that make their own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/io/hf_model.h"

namespace deltamoe::test {

/// tests/golden/llm/<name> in the source tree.
inline std::string golden_dir(const std::string& name) {
  return std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/" + name;
}

/// The ids of an int32 tensor (a golden prompt).
inline std::vector<int32_t> ids_of(const Tensor& t) {
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

/// A tiny Mixtral config (2 layers, 4 experts top-2, head_dim = hidden / heads), parsed so
/// that its derived fields are those of a loaded config.
inline io::HfConfig tiny_mixtral(int64_t vocab, int64_t hidden, int64_t heads, int64_t kv_heads,
                                 int64_t inter, bool tied = false) {
  io::HfConfig c;
  c.arch = io::HfArch::mixtral;
  c.architecture = "MixtralForCausalLM";
  c.model_type = "mixtral";
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = inter;
  c.intermediate_size = inter;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = tied;
  c.dtype = "float32";
  return io::HfConfig::parse(io::hf_config_to_json(c), "tiny");
}

/// `c` with Qwen2-MoE's parts: q/k/v biases, a shared expert of `shared_inter` with its
/// sigmoid gate in MoE layer 1, layer 0 dense (mlp_only_layers), raw top-k weights.
inline io::HfConfig as_qwen2_moe(io::HfConfig c, int64_t shared_inter) {
  c.arch = io::HfArch::qwen2_moe;
  c.architecture = "Qwen2MoeForCausalLM";
  c.model_type = "qwen2_moe";
  c.attention_bias = true;
  c.shared_expert_intermediate_size = shared_inter;
  c.mlp_only_layers = {0};
  c.norm_topk_prob = false;
  return io::HfConfig::parse(io::hf_config_to_json(c), "tiny");
}

}  // namespace deltamoe::test
