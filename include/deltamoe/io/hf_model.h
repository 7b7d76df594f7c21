// Hugging Face MoE language-model directories: config.json and safetensors checkpoints.
//
// A model directory holds config.json and either model.safetensors or shards listed in
// model.safetensors.index.json ({"weight_map": {tensor: shard file}}). Supported
// architectures: MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM,
// OlmoeForCausalLM, in the config forms of transformers 4.x (top-level rope_theta,
// torch_dtype) and 5.x (rope_parameters, dtype), with experts stored per expert
// (`experts.3.w1.weight`, `experts.3.gate_proj.weight`) or stacked as transformers 5 writes
// them (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj` [E, H, I]). docs/llm.md lists
// every field and name.
//
// Errors are deltamoe::Error("hf") with one line naming the file and the thing at fault:
//   [hf] /m/model-00002-of-00003.safetensors: tensor 'model.layers.3...w2.weight' has shape
//   [64, 32], expected [32, 64]
// Weights are never copied when the file allows it: tensors are read-only views into the
// memory-mapped shards (see SafetensorsFile for the lifetime rules).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/io/safetensors.h"

namespace deltamoe::io {

/// The model families deltamoe runs.
enum class HfArch { mixtral, qwen2_moe, qwen3_moe, olmoe };

/// The `architectures` name of `arch` ("MixtralForCausalLM", ...).
const char* hf_arch_name(HfArch arch);

/// A parsed, validated config.json. Plain value; thread-safe to read.
struct HfConfig {
  /// How q and k are normalised before RoPE: Qwen3-MoE per head (weights [head_dim]),
  /// OLMoE over the whole projection (weights [heads*head_dim] and [kv_heads*head_dim]).
  enum class QkNorm { none, per_head, full };

  HfArch arch = HfArch::mixtral;
  std::string architecture;  // "MixtralForCausalLM", ...
  std::string model_type;    // "mixtral", "qwen2_moe", "qwen3_moe", "olmoe"
  int64_t vocab_size = 0, hidden_size = 0, num_hidden_layers = 0, num_attention_heads = 0,
          num_key_value_heads = 0;
  int64_t head_dim = 0;  // explicit head_dim, else hidden_size / num_attention_heads
  int64_t num_experts = 0, num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;  // expert width (Mixtral, OLMoE: intermediate_size)
  int64_t intermediate_size = 0;      // dense MLP width (Qwen dense layers); Mixtral/OLMoE:
                                      // equal to the expert width
  int64_t shared_expert_intermediate_size = 0;  // Qwen2-MoE shared expert (0 = none)
  bool norm_topk_prob = true;  // renormalise the top-k probabilities (Mixtral: always)
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;  // layers with a dense MLP instead of experts
  bool attention_bias = false;           // q/k/v projections have biases (Qwen2-MoE: true)
  bool o_proj_bias = false;              // o_proj has a bias (Qwen3-MoE, OLMoE: = attention_bias)
  QkNorm qk_norm = QkNorm::none;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = -1;           // -1 when null or absent
  std::vector<int32_t> eos_token_ids;  // eos_token_id as int or list; empty when null
  std::string dtype;                   // "float32" | "bfloat16" | "float16" (torch_dtype or dtype)
  std::optional<double> clip_qkv;      // OLMoE: clamp q/k/v projections to ±clip_qkv
  double router_aux_loss_coef = 0.0;   // training only; kept for round trips
  /// deltamoe's own config field "deltamoe_routing" (a JSON object, kept as its text; empty
  /// when absent): how a model trained by `train-lm` routes (docs/llm-training.md).
  std::string deltamoe_routing_json;
  /// deltamoe's own config field "deltamoe_layer_experts" (empty when absent): the expert
  /// count of each layer, for DeepSpeed's pyramid MoE (more experts in later layers). One
  /// entry per layer, each in [num_experts_per_tok, num_experts] with the largest equal to
  /// num_experts; a dense layer's entry is ignored. Hugging Face has no per-layer count
  /// (transformers builds num_experts everywhere), so such a checkpoint runs in deltamoe only;
  /// HF's nearest forms are mlp_only_layers (0 experts) and Qwen2-MoE's shared expert.
  std::vector<int64_t> layer_experts;
  /// deltamoe's own config field "deltamoe_null_experts" (0 when absent): AdaMoE null experts,
  /// M extra router outputs per MoE layer that select "no expert" (the router is
  /// [experts + M, hidden]; routing must be null-experts:K:M). A model trained with
  /// `train-lm --routing null-experts:K:M`; transformers cannot load it (router shape).
  int64_t null_experts = 0;
  int config_generation = 4;  // 4: top-level rope_theta/torch_dtype; 5: rope_parameters/dtype

  /// Whether decoder layer `layer` (0-based) routes to experts (false: dense MLP). Qwen:
  /// not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0; others: always.
  bool is_moe_layer(int64_t layer) const;
  /// The number of routed experts of MoE layer `layer`: layer_experts[layer] when given,
  /// else num_experts.
  int64_t experts_in_layer(int64_t layer) const;
  /// Rows of MoE layer `layer`'s router: experts_in_layer(layer) + null_experts.
  int64_t router_outputs(int64_t layer) const { return experts_in_layer(layer) + null_experts; }

  /// Parses config.json text. Throws Error("hf") naming `path_for_errors` and the field on
  /// anything unsupported or inconsistent: an architecture other than the four (the message
  /// lists them), hidden_act other than silu, rope scaling other than the default, sliding-
  /// window attention that would change results within max_position_embeddings, missing or
  /// non-positive sizes, heads not divisible by KV heads, top-k above the expert count.
  static HfConfig parse(const std::string& json_text, const std::string& path_for_errors);
  /// Reads and parses `model_dir`/config.json.
  static HfConfig load(const std::string& model_dir);
};

/// Parses model.safetensors.index.json text into tensor name → shard file name. Shard names
/// must be plain file names (no '/', not "." or ".."). Throws Error("hf") naming the path.
std::map<std::string, std::string> parse_hf_index(const std::string& json_text,
                                                  const std::string& path_for_errors);

/// A byte range of a file.
struct FileExtent {
  std::string path;
  uint64_t offset = 0;  // from the start of the file
  uint64_t bytes = 0;
};

/// The tensors of a model directory: model.safetensors, or the shards named by
/// model.safetensors.index.json (preferred when both exist), all memory-mapped.
///
/// open() checks that every shard exists and is a valid safetensors file and that every
/// tensor the index names is in its shard. Copies share the mappings; tensors returned by
/// get() keep their shard mapped after the HfCheckpoint is gone. Thread-safety: const
/// methods are safe to call concurrently.
class HfCheckpoint {
 public:
  /// Opens the checkpoint in `model_dir`. Throws Error("hf") (or Error("safetensors") for a
  /// damaged shard, naming it) on any problem.
  static HfCheckpoint open(const std::string& model_dir);

  /// The directory given to open().
  const std::string& dir() const { return dir_; }
  /// Whether the checkpoint has a tensor called `name`.
  bool has(const std::string& name) const;
  /// Tensor names, sorted.
  std::vector<std::string> names() const;
  /// The tensor `name` with its file dtype and shape: a read-only zero-copy view into the
  /// mapping (a copy only for data misaligned in the file). Throws Error("hf") if absent.
  Tensor get(const std::string& name) const;
  /// get(name) after checking that its shape is `shape` and its dtype is a float type (f32,
  /// bf16, f16). The error names the file, the tensor and both shapes.
  Tensor expect(const std::string& name, const Shape& shape) const;
  /// The full path of the shard holding `name`. Throws Error("hf") if absent.
  std::string file_of(const std::string& name) const;
  /// The header entry (dtype, shape) of `name`. Throws Error("hf") if absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  /// Sum of the tensors' data sizes in bytes.
  uint64_t total_bytes() const;
  /// Where `t`'s bytes lie in the checkpoint's files, for readers that bypass the mapping
  /// (an expert cache's pread). `t` must be a contiguous view that get() or
  /// load_hf_weights() returned (a row range of a stacked tensor is one). Throws
  /// Error("hf") when it is not inside one of the mappings (e.g. a copy made because the
  /// file's data was misaligned).
  FileExtent locate(const Tensor& t) const;
  /// Number of shard files (1 for a single model.safetensors).
  size_t num_files() const { return files_.size(); }

 private:
  std::string dir_;
  std::string source_;  // model.safetensors or the index: named when a tensor is missing
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> where_;  // tensor name → index into files_
};

/// One SwiGLU FFN: down(silu(gate x) * up x). Shapes [I, H], [I, H], [H, I]; views.
struct HfFfnWeights {
  Tensor gate, up, down;
};

/// One decoder layer's weights (views into the checkpoint; undefined Tensor() when absent).
struct HfLayerWeights {
  Tensor input_norm, post_attn_norm;  // [H]
  Tensor q, k, v, o;                  // [heads*hd, H], [kv*hd, H], [kv*hd, H], [H, heads*hd]
  Tensor q_bias, k_bias, v_bias;      // [heads*hd], [kv*hd], [kv*hd] when attention_bias
  Tensor o_bias;                      // [H] when o_proj_bias
  Tensor q_norm, k_norm;              // [hd] (per_head) or [heads*hd] / [kv*hd] (full)
  bool moe = true;                    // false: dense MLP layer (use `dense`)
  Tensor router;                      // [E, H]
  std::vector<HfFfnWeights> experts;  // E experts, each [I, H], [I, H], [H, I]
  HfFfnWeights shared;                // Qwen2-MoE shared expert [Is, H], [Is, H], [H, Is]
  Tensor shared_gate;                 // [1, H]
  HfFfnWeights dense;                 // [I_dense, H], ... when !moe
};

/// All weights of a model. `lm_head` is the same tensor as `embed` when tied.
struct HfModelWeights {
  Tensor embed;  // [V, H]
  std::vector<HfLayerWeights> layers;
  Tensor final_norm;  // [H]
  Tensor lm_head;     // [V, H]
};

/// Collects every tensor `cfg` needs from `ckpt`, checking each name, shape and float dtype
/// BEFORE returning; the first missing or misshaped tensor is named with its file. Experts
/// are read per expert or from stacked tensors, whichever the checkpoint has (views either
/// way; stacked gate/up are row ranges of gate_up_proj). The result shares the mappings.
HfModelWeights load_hf_weights(const HfConfig& cfg, const HfCheckpoint& ckpt);

/// config.json text for `cfg` in the transformers 4.x form of published checkpoints
/// (top-level rope_theta, rope_scaling null, torch_dtype), with the field names of its
/// family; HfConfig::parse reads it back to an equal config, and transformers loads it.
std::string hf_config_to_json(const HfConfig& cfg);

/// How expert weights are named when writing a checkpoint.
enum class HfExpertLayout {
  per_expert,  // published checkpoints: experts.3.w1.weight (Mixtral), experts.3.gate_proj...
  stacked,     // transformers 5 in memory: experts.gate_up_proj [E, 2I, H], down_proj [E, H, I]
};

/// Names, shapes and dtype of every tensor a checkpoint of `cfg` holds, in the order
/// transformers lists them (embedding, layers, final norm, lm_head unless tied), all in
/// `dtype`. load_hf_weights accepts exactly these tensors.
std::vector<SafetensorsTensorSpec> hf_tensor_specs(
    const HfConfig& cfg, DType dtype, HfExpertLayout layout = HfExpertLayout::per_expert);

}  // namespace deltamoe::io
