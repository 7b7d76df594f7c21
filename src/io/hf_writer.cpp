// Writing Hugging Face model directories: config.json text and the tensor list of a
// checkpoint (see deltamoe/io/hf_model.h). `deltamoe make-model` fills the tensors.
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"
#include "deltamoe/io/hf_model.h"

namespace deltamoe::io {

using json = nlohmann::json;

std::string hf_config_to_json(const HfConfig& c) {
  json j;
  j["architectures"] = {hf_arch_name(c.arch)};
  const char* model_type = c.arch == HfArch::mixtral     ? "mixtral"
                           : c.arch == HfArch::qwen2_moe ? "qwen2_moe"
                           : c.arch == HfArch::qwen3_moe ? "qwen3_moe"
                                                         : "olmoe";
  j["model_type"] = model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  // Published Qwen3-MoE configs always state head_dim; the others only when it is not the
  // default (OLMoE cannot have another).
  if (c.arch == HfArch::qwen3_moe || c.head_dim * c.num_attention_heads != c.hidden_size)
    j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id >= 0 ? json(c.bos_token_id) : json(nullptr);
  if (c.eos_token_ids.empty())
    j["eos_token_id"] = nullptr;
  else if (c.eos_token_ids.size() == 1)
    j["eos_token_id"] = c.eos_token_ids[0];
  else
    j["eos_token_id"] = c.eos_token_ids;
  j["torch_dtype"] = c.dtype.empty() ? "float32" : c.dtype;
  j["initializer_range"] = 0.02;
  j["attention_dropout"] = 0.0;
  j["use_cache"] = true;
  j["output_router_logits"] = false;
  j["router_aux_loss_coef"] = c.router_aux_loss_coef;
  if (!c.deltamoe_routing_json.empty())
    j["deltamoe_routing"] = decltype(j)::parse(c.deltamoe_routing_json);
  if (!c.layer_experts.empty()) j["deltamoe_layer_experts"] = c.layer_experts;
  if (c.null_experts > 0) j["deltamoe_null_experts"] = c.null_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  switch (c.arch) {
    case HfArch::mixtral:
      j["num_local_experts"] = c.num_experts;
      j["intermediate_size"] = c.moe_intermediate_size;
      j["sliding_window"] = nullptr;
      j["router_jitter_noise"] = 0.0;
      break;
    case HfArch::qwen2_moe:
    case HfArch::qwen3_moe:
      j["num_experts"] = c.num_experts;
      j["moe_intermediate_size"] = c.moe_intermediate_size;
      j["intermediate_size"] = c.intermediate_size;
      j["norm_topk_prob"] = c.norm_topk_prob;
      j["decoder_sparse_step"] = c.decoder_sparse_step;
      j["mlp_only_layers"] = c.mlp_only_layers;
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      j["max_window_layers"] = c.num_hidden_layers;
      if (c.arch == HfArch::qwen2_moe) {
        j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
        // 4.x had no such field (q/k/v always had biases); written only when false.
        if (!c.attention_bias) j["qkv_bias"] = false;
      } else {
        j["attention_bias"] = c.attention_bias;
      }
      break;
    case HfArch::olmoe:
      j["num_experts"] = c.num_experts;
      j["intermediate_size"] = c.moe_intermediate_size;
      j["norm_topk_prob"] = c.norm_topk_prob;
      j["attention_bias"] = c.attention_bias;
      j["clip_qkv"] = c.clip_qkv ? json(*c.clip_qkv) : json(nullptr);
      break;
  }
  return j.dump(2) + "\n";
}

std::vector<SafetensorsTensorSpec> hf_tensor_specs(const HfConfig& c, DType dtype,
                                                   HfExpertLayout layout) {
  std::vector<SafetensorsTensorSpec> out;
  auto add = [&](std::string name, Shape shape) {
    out.push_back({std::move(name), dtype, std::move(shape)});
  };
  const int64_t H = c.hidden_size, q_dim = c.num_attention_heads * c.head_dim,
                kv_dim = c.num_key_value_heads * c.head_dim;
  auto ffn = [&](const std::string& p, int64_t inter) {
    add(p + "gate_proj.weight", {inter, H});
    add(p + "up_proj.weight", {inter, H});
    add(p + "down_proj.weight", {H, inter});
  };
  add("model.embed_tokens.weight", {c.vocab_size, H});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H});
    const std::string a = p + "self_attn.";
    add(a + "q_proj.weight", {q_dim, H});
    if (c.attention_bias) add(a + "q_proj.bias", {q_dim});
    add(a + "k_proj.weight", {kv_dim, H});
    if (c.attention_bias) add(a + "k_proj.bias", {kv_dim});
    add(a + "v_proj.weight", {kv_dim, H});
    if (c.attention_bias) add(a + "v_proj.bias", {kv_dim});
    add(a + "o_proj.weight", {H, q_dim});
    if (c.o_proj_bias) add(a + "o_proj.bias", {H});
    if (c.qk_norm == HfConfig::QkNorm::per_head) {
      add(a + "q_norm.weight", {c.head_dim});
      add(a + "k_norm.weight", {c.head_dim});
    } else if (c.qk_norm == HfConfig::QkNorm::full) {
      add(a + "q_norm.weight", {q_dim});
      add(a + "k_norm.weight", {kv_dim});
    }
    add(p + "post_attention_layernorm.weight", {H});
    if (!c.is_moe_layer(l)) {
      ffn(p + "mlp.", c.intermediate_size);
      continue;
    }
    const bool stacked = layout == HfExpertLayout::stacked;
    const bool classic_mixtral = c.arch == HfArch::mixtral && !stacked;
    const std::string m = p + (classic_mixtral ? "block_sparse_moe." : "mlp.");
    const int64_t E = c.experts_in_layer(l), I = c.moe_intermediate_size;
    add(m + "gate.weight", {c.router_outputs(l), H});
    if (stacked) {
      add(m + "experts.gate_up_proj", {E, 2 * I, H});
      add(m + "experts.down_proj", {E, H, I});
    } else {
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = m + "experts." + std::to_string(e) + ".";
        if (classic_mixtral) {
          add(x + "w1.weight", {I, H});
          add(x + "w2.weight", {H, I});
          add(x + "w3.weight", {I, H});
        } else {
          ffn(x, I);
        }
      }
    }
    if (c.shared_expert_intermediate_size > 0) {
      ffn(m + "shared_expert.", c.shared_expert_intermediate_size);
      add(m + "shared_expert_gate.weight", {1, H});
    }
  }
  add("model.norm.weight", {H});
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, H});
  return out;
}

}  // namespace deltamoe::io
