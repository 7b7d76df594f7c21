// io/hf_model: config.json parsing (both transformers generations), single and sharded
// checkpoints, per-expert and stacked expert naming, and the one-line errors.
// The models are the golden ones written by transformers (python/make_golden_llm.py).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/safetensors.h"

using namespace deltamoe;
using namespace deltamoe::io;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kGolden = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/";

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("deltamoe_hf_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The error message of `fn`, or "" when it does not throw deltamoe::Error.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(stmt, needle)                                             \
  do {                                                                         \
    const std::string msg_ = error_of([&] { stmt; });                          \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: " << msg_;    \
    EXPECT_EQ(msg_.find('\n'), std::string::npos) << "not one line: " << msg_; \
  } while (0)

using Named = std::vector<std::pair<std::string, Tensor>>;

// Every tensor of a checkpoint, cloned (so the copies outlive edits of the files).
std::vector<std::pair<std::string, Tensor>> all_tensors(const HfCheckpoint& ck) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& n : ck.names()) out.emplace_back(n, ck.get(n).clone());
  return out;
}

// A single-file copy of golden model `name` in `dir`, with `edit` applied to the tensors
// and the config text.
void write_variant(const std::string& name, const std::string& dir,
                   const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit,
                   const std::function<void(json&)>& edit_config = nullptr) {
  auto tensors = all_tensors(HfCheckpoint::open(kGolden + name));
  if (edit) edit(tensors);
  write_safetensors(dir + "/model.safetensors", tensors);
  json cfg = json::parse(read_text(kGolden + name + "/config.json"));
  if (edit_config) edit_config(cfg);
  write_text(dir + "/config.json", cfg.dump(2));
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

std::string config_with(const std::string& name, const std::function<void(json&)>& edit) {
  json cfg = json::parse(read_text(kGolden + name + "/config.json"));
  edit(cfg);
  return cfg.dump();
}

}  // namespace

TEST(HfConfig, MixtralBothGenerations) {
  const HfConfig c = HfConfig::load(kGolden + "mixtral");
  EXPECT_EQ(c.arch, HfArch::mixtral);
  EXPECT_EQ(c.architecture, "MixtralForCausalLM");
  EXPECT_EQ(c.config_generation, 4);
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 8);  // "head_dim": null → hidden / heads
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.intermediate_size, 32);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.qk_norm, HfConfig::QkNorm::none);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 256);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c.dtype, "float32");
  EXPECT_FALSE(c.clip_qkv.has_value());
  EXPECT_TRUE(c.is_moe_layer(0) && c.is_moe_layer(1));

  const std::string v5_path = kGolden + "mixtral/config.v5.json";
  const HfConfig c5 = HfConfig::parse(read_text(v5_path), v5_path);
  EXPECT_EQ(c5.config_generation, 5);
  EXPECT_DOUBLE_EQ(c5.rope_theta, c.rope_theta);
  EXPECT_EQ(c5.dtype, c.dtype);
  EXPECT_EQ(c5.num_experts, c.num_experts);
  EXPECT_EQ(c5.head_dim, c.head_dim);
  EXPECT_EQ(c5.eos_token_ids, c.eos_token_ids);
}

TEST(HfConfig, Qwen2MoeSharedExpertDenseLayerTied) {
  const HfConfig c = HfConfig::load(kGolden + "qwen2_moe");
  EXPECT_EQ(c.arch, HfArch::qwen2_moe);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.intermediate_size, 64);
  EXPECT_EQ(c.shared_expert_intermediate_size, 48);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_EQ(c.mlp_only_layers, std::vector<int64_t>{1});
  EXPECT_TRUE(c.is_moe_layer(0));
  EXPECT_FALSE(c.is_moe_layer(1));
  EXPECT_TRUE(c.is_moe_layer(2));
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  // decoder_sparse_step = 2: layers 1, 3, ... are MoE.
  const HfConfig s = HfConfig::parse(config_with("qwen2_moe",
                                                 [](json& j) {
                                                   j["decoder_sparse_step"] = 2;
                                                   j["mlp_only_layers"] = json::array();
                                                 }),
                                     "x");
  EXPECT_FALSE(s.is_moe_layer(0));
  EXPECT_TRUE(s.is_moe_layer(1));
  EXPECT_FALSE(s.is_moe_layer(2));
}

TEST(HfConfig, Qwen3MoeAndOlmoe) {
  const HfConfig q = HfConfig::load(kGolden + "qwen3_moe");
  EXPECT_EQ(q.arch, HfArch::qwen3_moe);
  EXPECT_EQ(q.config_generation, 5);
  EXPECT_EQ(q.num_experts, 8);  // written as num_local_experts by transformers 5
  EXPECT_EQ(q.head_dim, 16);    // explicit, != hidden / heads = 8
  EXPECT_EQ(q.qk_norm, HfConfig::QkNorm::per_head);
  EXPECT_TRUE(q.norm_topk_prob);
  EXPECT_FALSE(q.attention_bias);
  EXPECT_DOUBLE_EQ(q.rope_theta, 1e6);

  const HfConfig o = HfConfig::load(kGolden + "olmoe");
  EXPECT_EQ(o.arch, HfArch::olmoe);
  EXPECT_EQ(o.qk_norm, HfConfig::QkNorm::full);
  EXPECT_FALSE(o.norm_topk_prob);
  EXPECT_EQ(o.moe_intermediate_size, 32);
  EXPECT_FALSE(o.clip_qkv.has_value());
  const HfConfig oc =
      HfConfig::parse(config_with("olmoe", [](json& j) { j["clip_qkv"] = 8.0; }), "x");
  EXPECT_DOUBLE_EQ(*oc.clip_qkv, 8.0);

  const HfConfig b = HfConfig::load(kGolden + "mixtral_bf16");
  EXPECT_EQ(b.dtype, "bfloat16");
  EXPECT_EQ(b.config_generation, 4);
}

TEST(HfConfig, FieldVariants) {
  // eos as a list, architectures absent (model_type decides), rope_scaling "default".
  const HfConfig c = HfConfig::parse(
      config_with("mixtral",
                  [](json& j) {
                    j["eos_token_id"] = {2, 5};
                    j.erase("architectures");
                    j["rope_scaling"] = {{"rope_type", "default"}};
                    j["bos_token_id"] = nullptr;
                    j["sliding_window"] = 4096;  // >= max_position_embeddings: never takes effect
                  }),
      "x");
  EXPECT_EQ(c.arch, HfArch::mixtral);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(c.bos_token_id, -1);
  // Qwen: a sliding window that is not in use is fine.
  HfConfig::parse(config_with("qwen2_moe", [](json& j) { j["sliding_window"] = 16; }), "x");
}

TEST(HfConfig, Errors) {
  auto with = [](const std::string& name, const std::function<void(json&)>& edit) {
    return [=] { HfConfig::parse(config_with(name, edit), "/m/config.json"); };
  };
  EXPECT_ERROR(with("mixtral", [](json& j) { j["architectures"] = {"LlamaForCausalLM"}; })(),
               "[hf] /m/config.json: architecture 'LlamaForCausalLM' is not supported (supported: "
               "MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM)");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["hidden_act"] = "gelu"; })(),
               "hidden_act 'gelu' is not supported (silu only)");
  EXPECT_ERROR(with("mixtral",
                    [](json& j) {
                      j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
                    })(),
               "rope_scaling {\"factor\":4.0,\"rope_type\":\"yarn\"} is not supported");
  EXPECT_ERROR(with("olmoe", [](json& j) { j["rope_parameters"]["rope_type"] = "linear"; })(),
               "rope_parameters.rope_type \"linear\" is not supported");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["sliding_window"] = 128; })(),
               "[hf] /m/config.json: sliding_window 128 is shorter than max_position_embeddings "
               "256; sliding-window attention is not supported");
  EXPECT_ERROR(with("qwen3_moe",
                    [](json& j) {
                      j["use_sliding_window"] = true;
                      j["sliding_window"] = 64;
                    })(),
               "sliding_window 64 is shorter");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["num_key_value_heads"] = 3; })(),
               "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["num_experts_per_tok"] = 9; })(),
               "num_experts_per_tok 9 exceeds the number of experts 8");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["hidden_size"] = 32.5; })(),
               "field 'hidden_size' is a JSON number, expected an integer");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["hidden_size"] = "32"; })(),
               "field 'hidden_size' is a JSON string, expected an integer");
  EXPECT_ERROR(with("mixtral", [](json& j) { j.erase("vocab_size"); })(),
               "[hf] /m/config.json: missing field 'vocab_size'");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["num_hidden_layers"] = 0; })(),
               "field 'num_hidden_layers' = 0 is out of range [1, 4096]");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["eos_token_id"] = 256; })(),
               "eos_token_id 256 is not below vocab_size 256");
  EXPECT_ERROR(with("qwen2_moe", [](json& j) { j["mlp_only_layers"] = {7}; })(),
               "mlp_only_layers names layer 7 of a 3-layer model");
  EXPECT_ERROR(with("qwen2_moe", [](json& j) { j.erase("moe_intermediate_size"); })(),
               "missing field 'moe_intermediate_size'");
  EXPECT_ERROR(with("olmoe", [](json& j) { j["head_dim"] = 16; })(),
               "must equal hidden_size 32 for OLMoE");
  EXPECT_ERROR(with("mixtral", [](json& j) { j["torch_dtype"] = "float64"; })(),
               "dtype 'float64' is not supported");
  // Pyramid MoE's per-layer expert counts (deltamoe's own field).
  const auto layers2 = [](json& j, json counts) {
    j["num_hidden_layers"] = 2;
    j["deltamoe_layer_experts"] = std::move(counts);
  };
  EXPECT_ERROR(with("mixtral",
                    [&](json& j) {
                      layers2(j, {4, 8, 8});
                    })(),
               "[hf] /m/config.json: deltamoe_layer_experts has 3 entries for 2 layers");
  EXPECT_ERROR(with("mixtral",
                    [&](json& j) {
                      layers2(j, {4, 6});
                    })(),
               "the largest of deltamoe_layer_experts (6) must equal the expert count 8");
  EXPECT_ERROR(with("mixtral",
                    [&](json& j) {
                      layers2(j, {1, 8});
                    })(),
               "deltamoe_layer_experts gives layer 0 1 experts, fewer than num_experts_per_tok 2");
  EXPECT_ERROR(with("mixtral",
                    [&](json& j) {
                      layers2(j, {0, 8});
                    })(),
               "field 'deltamoe_layer_experts' = 0 is out of range");
  EXPECT_ERROR(with("mixtral", [&](json& j) { layers2(j, 8); })(),
               "field 'deltamoe_layer_experts' must be a list of expert counts");
  EXPECT_ERROR(HfConfig::parse("{\"vocab_size\": 1,", "/m/config.json"),
               "[hf] /m/config.json: not valid JSON: ");
  EXPECT_ERROR(HfConfig::parse("[1, 2]", "/m/config.json"),
               "[hf] /m/config.json: a JSON array, not an object");
  EXPECT_ERROR(HfConfig::parse("{\"a\": 1, \"a\": 2}", "/m/config.json"), "duplicate key 'a'");
  EXPECT_ERROR(HfConfig::parse(std::string(40, '[') + std::string(40, ']'), "/m/config.json"),
               "nests deeper than");
  EXPECT_ERROR(HfConfig::parse("{\"model_type\": \"llama\"}", "/m/config.json"),
               "model_type 'llama' is not supported (supported architectures: Mixtral");
  TempDir dir;
  EXPECT_ERROR(HfConfig::load(dir.str()), "[hf] " + dir.str() + "/config.json: cannot open: ");
}

TEST(HfCheckpoint, ShardedMixtral) {
  const HfCheckpoint ck = HfCheckpoint::open(kGolden + "mixtral");
  EXPECT_EQ(ck.num_files(), 4u);
  // total_size of the index metadata, as transformers wrote it.
  const json index = json::parse(read_text(kGolden + "mixtral/model.safetensors.index.json"));
  EXPECT_EQ(ck.total_bytes(), index["metadata"]["total_size"].get<uint64_t>());
  const std::string w2 = "model.layers.1.block_sparse_moe.experts.7.w2.weight";
  EXPECT_EQ(ck.file_of(w2), kGolden + "mixtral/" + index["weight_map"][w2].get<std::string>());
  EXPECT_TRUE(ck.has(w2));
  EXPECT_FALSE(ck.has("model.layers.2.input_layernorm.weight"));

  const HfConfig c = HfConfig::load(kGolden + "mixtral");
  const HfModelWeights w = load_hf_weights(c, ck);
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.embed.shape(), (Shape{256, 32}));
  EXPECT_EQ(w.lm_head.shape(), (Shape{256, 32}));
  EXPECT_NE(w.lm_head.raw(), w.embed.raw());
  const HfLayerWeights& l = w.layers[1];
  EXPECT_TRUE(l.moe);
  EXPECT_EQ(l.router.shape(), (Shape{8, 32}));
  ASSERT_EQ(l.experts.size(), 8u);
  EXPECT_EQ(l.experts[7].down.shape(), (Shape{32, 32}));
  EXPECT_EQ(l.k.shape(), (Shape{16, 32}));
  EXPECT_EQ(l.o.shape(), (Shape{32, 32}));
  EXPECT_FALSE(l.q_bias.defined());
  EXPECT_FALSE(l.q_norm.defined());
  EXPECT_FALSE(l.shared_gate.defined());
  EXPECT_TRUE(same_bytes(l.experts[7].down, ck.get(w2)));
  EXPECT_EQ(l.experts[3].gate.dtype(), DType::f32);
}

TEST(HfCheckpoint, Qwen2MoeTiedDenseShared) {
  const HfConfig c = HfConfig::load(kGolden + "qwen2_moe");
  const HfCheckpoint ck = HfCheckpoint::open(kGolden + "qwen2_moe");
  EXPECT_EQ(ck.num_files(), 1u);
  EXPECT_FALSE(ck.has("lm_head.weight"));
  const HfModelWeights w = load_hf_weights(c, ck);
  EXPECT_EQ(w.lm_head.raw(), w.embed.raw());  // tied: the same tensor
  ASSERT_EQ(w.layers.size(), 3u);
  EXPECT_TRUE(w.layers[0].moe);
  EXPECT_FALSE(w.layers[1].moe);
  EXPECT_TRUE(w.layers[1].experts.empty());
  EXPECT_EQ(w.layers[1].dense.gate.shape(), (Shape{64, 32}));
  EXPECT_EQ(w.layers[1].dense.down.shape(), (Shape{32, 64}));
  EXPECT_EQ(w.layers[2].shared.up.shape(), (Shape{48, 32}));
  EXPECT_EQ(w.layers[2].shared_gate.shape(), (Shape{1, 32}));
  EXPECT_EQ(w.layers[2].experts.size(), 4u);
  EXPECT_EQ(w.layers[0].q_bias.shape(), (Shape{32}));
  EXPECT_EQ(w.layers[0].k_bias.shape(), (Shape{16}));
  EXPECT_FALSE(w.layers[0].o_bias.defined());
}

TEST(HfCheckpoint, StackedExpertsAreViewsEqualToPerExpert) {
  const HfConfig c = HfConfig::load(kGolden + "qwen3_moe");
  const HfCheckpoint ck = HfCheckpoint::open(kGolden + "qwen3_moe");
  ASSERT_TRUE(ck.has("model.layers.0.mlp.experts.gate_up_proj"));
  const HfModelWeights w = load_hf_weights(c, ck);
  const HfLayerWeights& l = w.layers[1];
  EXPECT_EQ(l.q.shape(), (Shape{64, 32}));
  EXPECT_EQ(l.o.shape(), (Shape{32, 64}));
  EXPECT_EQ(l.q_norm.shape(), (Shape{16}));
  ASSERT_EQ(l.experts.size(), 8u);
  // Zero-copy: every expert aliases the one stacked tensor.
  EXPECT_EQ(l.experts[0].gate.storage(), l.experts[7].up.storage());
  EXPECT_TRUE(l.experts[5].gate.is_contiguous());
  EXPECT_EQ(l.experts[5].up.shape(), (Shape{32, 32}));
  const Tensor gu = ck.get("model.layers.1.mlp.experts.gate_up_proj");
  EXPECT_EQ(l.experts[5].up.at({3, 4}), gu.at({5, 32 + 3, 4}));
  EXPECT_EQ(l.experts[5].gate.at({3, 4}), gu.at({5, 3, 4}));

  // The same model in per-expert naming (as published Qwen3-MoE checkpoints are) loads to
  // the same numbers.
  TempDir dir;
  write_variant("qwen3_moe", dir.str(), [&](Named& tensors) {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& [name, t] : tensors) {
      const auto pos = name.find("experts.gate_up_proj");
      const auto pos_d = name.find("experts.down_proj");
      if (pos == std::string::npos && pos_d == std::string::npos) {
        out.emplace_back(name, t);
        continue;
      }
      const std::string prefix =
          name.substr(0, pos != std::string::npos ? pos : pos_d) + "experts.";
      for (int64_t e = 0; e < 8; ++e) {
        const Tensor te = t.slice(e, e + 1).reshape({t.size(1), t.size(2)});
        const std::string p = prefix + std::to_string(e) + ".";
        if (pos != std::string::npos) {
          out.emplace_back(p + "gate_proj.weight", te.slice(0, 32).clone());
          out.emplace_back(p + "up_proj.weight", te.slice(32, 64).clone());
        } else {
          out.emplace_back(p + "down_proj.weight", te.clone());
        }
      }
    }
    tensors = out;
  });
  const HfModelWeights pe = load_hf_weights(c, HfCheckpoint::open(dir.str()));
  for (size_t li = 0; li < 2; ++li)
    for (size_t e = 0; e < 8; ++e) {
      EXPECT_TRUE(same_bytes(pe.layers[li].experts[e].gate, w.layers[li].experts[e].gate));
      EXPECT_TRUE(same_bytes(pe.layers[li].experts[e].up, w.layers[li].experts[e].up));
      EXPECT_TRUE(same_bytes(pe.layers[li].experts[e].down, w.layers[li].experts[e].down));
    }
}

TEST(HfCheckpoint, MixtralInTransformers5Naming) {
  // transformers 5 keeps Mixtral as mlp.gate + stacked mlp.experts.{gate_up,down}_proj.
  TempDir dir;
  write_variant("mixtral", dir.str(), [](Named& tensors) {
    std::vector<std::pair<std::string, Tensor>> out;
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Tensor gu({8, 64, 32}), dn({8, 32, 32});
      for (auto& [name, t] : tensors) {
        for (int e = 0; e < 8; ++e) {
          const std::string ep = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
          float* g = gu.data<float>() + e * 64 * 32;
          if (name == ep + "w1.weight") std::copy_n(t.data<float>(), 32 * 32, g);
          if (name == ep + "w3.weight") std::copy_n(t.data<float>(), 32 * 32, g + 32 * 32);
          if (name == ep + "w2.weight")
            std::copy_n(t.data<float>(), 32 * 32, dn.data<float>() + e * 32 * 32);
        }
      }
      out.emplace_back(p + "mlp.experts.gate_up_proj", gu);
      out.emplace_back(p + "mlp.experts.down_proj", dn);
    }
    for (auto& [name, t] : tensors) {
      if (name.find("block_sparse_moe.experts.") != std::string::npos) continue;
      std::string n = name;
      const auto pos = n.find("block_sparse_moe.gate");
      if (pos != std::string::npos) n.replace(pos, 16, "mlp");
      out.emplace_back(n, t);
    }
    tensors = out;
  });
  const HfConfig c = HfConfig::load(kGolden + "mixtral");
  const HfModelWeights a = load_hf_weights(c, HfCheckpoint::open(kGolden + "mixtral"));
  const HfModelWeights b = load_hf_weights(c, HfCheckpoint::open(dir.str()));
  for (size_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(same_bytes(a.layers[l].router, b.layers[l].router));
    for (size_t e = 0; e < 8; ++e) {
      EXPECT_TRUE(same_bytes(a.layers[l].experts[e].gate, b.layers[l].experts[e].gate));
      EXPECT_TRUE(same_bytes(a.layers[l].experts[e].up, b.layers[l].experts[e].up));
      EXPECT_TRUE(same_bytes(a.layers[l].experts[e].down, b.layers[l].experts[e].down));
    }
  }
}

TEST(HfCheckpoint, OlmoeAndBf16) {
  const HfConfig o = HfConfig::load(kGolden + "olmoe");
  const HfModelWeights w = load_hf_weights(o, HfCheckpoint::open(kGolden + "olmoe"));
  EXPECT_EQ(w.layers[0].q_norm.shape(), (Shape{32}));  // over heads * head_dim
  EXPECT_EQ(w.layers[0].k_norm.shape(), (Shape{16}));  // over kv_heads * head_dim
  EXPECT_EQ(w.layers[0].experts[2].up.shape(), (Shape{32, 32}));

  const HfConfig b = HfConfig::load(kGolden + "mixtral_bf16");
  const HfModelWeights wb = load_hf_weights(b, HfCheckpoint::open(kGolden + "mixtral_bf16"));
  EXPECT_EQ(wb.embed.dtype(), DType::bf16);
  EXPECT_EQ(wb.layers[1].experts[4].down.dtype(), DType::bf16);
  // The bf16 model is the f32 mixtral rounded (same seed): spot-check one weight.
  const HfModelWeights wf =
      load_hf_weights(HfConfig::load(kGolden + "mixtral"), HfCheckpoint::open(kGolden + "mixtral"));
  EXPECT_NEAR(wb.layers[1].experts[4].down.at({1, 2}), wf.layers[1].experts[4].down.at({1, 2}),
              std::abs(wf.layers[1].experts[4].down.at({1, 2})) / 128);

  // Golden outputs are readable and consistent with the configs.
  for (const char* name : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral_bf16"}) {
    const auto g = SafetensorsFile::open(kGolden + name + "/golden.safetensors");
    for (int i = 0; i < 3; ++i) {
      const Tensor p = g.get("prompt." + std::to_string(i));
      const Tensor lg = g.get("logits." + std::to_string(i));
      EXPECT_EQ(lg.shape(), (Shape{p.numel(), 256})) << name;
      EXPECT_EQ(g.get("greedy." + std::to_string(i)).numel(), 8) << name;
    }
  }
}

TEST(HfCheckpoint, Errors) {
  TempDir dir;
  const std::string d = dir.str();
  // Missing tensor: named with the file that should hold it.
  write_variant("mixtral", d, [](Named& tensors) {
    std::erase_if(tensors, [](const auto& p) {
      return p.first == "model.layers.1.block_sparse_moe.experts.7.w2.weight";
    });
  });
  EXPECT_ERROR(load_hf_weights(HfConfig::load(d), HfCheckpoint::open(d)),
               "[hf] " + d +
                   "/model.safetensors: no tensor "
                   "'model.layers.1.block_sparse_moe.experts.7.w2.weight'");
  // Misshaped tensor.
  write_variant("mixtral", d, [](Named& tensors) {
    for (auto& [name, t] : tensors)
      if (name == "model.layers.0.self_attn.k_proj.weight") t = t.reshape({32, 16});
  });
  EXPECT_ERROR(load_hf_weights(HfConfig::load(d), HfCheckpoint::open(d)),
               "[hf] " + d +
                   "/model.safetensors: tensor 'model.layers.0.self_attn.k_proj.weight' "
                   "has shape [32, 16], expected [16, 32]");
  // Integer weights.
  write_variant("mixtral", d, [](Named& tensors) {
    for (auto& [name, t] : tensors)
      if (name == "model.norm.weight") t = Tensor({32}, DType::i32);
  });
  EXPECT_ERROR(load_hf_weights(HfConfig::load(d), HfCheckpoint::open(d)),
               "tensor 'model.norm.weight' has dtype I32, expected F32, BF16 or F16");
  // No experts at all.
  write_variant("olmoe", d, [](Named& tensors) {
    std::erase_if(tensors,
                  [](const auto& p) { return p.first.find(".experts.") != std::string::npos; });
  });
  EXPECT_ERROR(load_hf_weights(HfConfig::load(d), HfCheckpoint::open(d)),
               "[hf] " + d + ": no experts under 'model.layers.0.mlp.experts.'");
  // Untied model without lm_head.
  write_variant("qwen2_moe", d, nullptr, [](json& j) { j["tie_word_embeddings"] = false; });
  EXPECT_ERROR(load_hf_weights(HfConfig::load(d), HfCheckpoint::open(d)),
               "no tensor 'lm_head.weight'");
  // No weights, .bin weights, not a directory.
  fs::remove(d + "/model.safetensors");
  EXPECT_ERROR(HfCheckpoint::open(d),
               "[hf] " + d + ": no model.safetensors or model.safetensors.index.json");
  write_text(d + "/pytorch_model.bin", "x");
  EXPECT_ERROR(HfCheckpoint::open(d), "only PyTorch .bin weights");
  EXPECT_ERROR(HfCheckpoint::open(d + "/nope"), "[hf] " + d + "/nope: not a directory");
}

TEST(HfCheckpoint, ShardErrors) {
  TempDir dir;
  const std::string d = dir.str();
  auto fresh = [&] {
    fs::remove_all(d);
    fs::copy(kGolden + "mixtral", d);
  };
  const json index = json::parse(read_text(kGolden + "mixtral/model.safetensors.index.json"));
  // Truncated shard: the safetensors reader names the shard.
  fresh();
  fs::resize_file(d + "/model-00002-of-00004.safetensors", 5000);
  EXPECT_ERROR(HfCheckpoint::open(d), "[safetensors] " + d + "/model-00002-of-00004.safetensors: ");
  // Missing shard file.
  fresh();
  fs::remove(d + "/model-00003-of-00004.safetensors");
  EXPECT_ERROR(HfCheckpoint::open(d), "[hf] " + d +
                                          "/model.safetensors.index.json: shard "
                                          "'model-00003-of-00004.safetensors' (holding tensor ");
  // The index names a tensor that its shard does not hold.
  fresh();
  json j = index;
  j["weight_map"]["model.extra.weight"] = "model-00001-of-00004.safetensors";
  write_text(d + "/model.safetensors.index.json", j.dump());
  EXPECT_ERROR(
      HfCheckpoint::open(d),
      "[hf] " + d +
          "/model-00001-of-00004.safetensors: tensor "
          "'model.extra.weight' is listed in model.safetensors.index.json but not in this shard");
  // A tensor missing from the index is missing from the checkpoint, named via the index.
  j = index;
  j["weight_map"].erase("model.norm.weight");
  write_text(d + "/model.safetensors.index.json", j.dump());
  EXPECT_ERROR(load_hf_weights(HfConfig::load(d), HfCheckpoint::open(d)),
               "[hf] " + d + "/model.safetensors.index.json: no tensor 'model.norm.weight'");
  // Bad index JSON and a path outside the directory.
  write_text(d + "/model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_ERROR(HfCheckpoint::open(d),
               "[hf] " + d + "/model.safetensors.index.json: not valid JSON");
  EXPECT_ERROR(parse_hf_index("{\"weight_map\": {\"a\": \"../model.safetensors\"}}", "/i.json"),
               "[hf] /i.json: tensor 'a' maps to '../model.safetensors', not a plain file name");
  EXPECT_ERROR(parse_hf_index("{\"weight_map\": {}}", "/i.json"), "'weight_map' is empty");
  EXPECT_ERROR(parse_hf_index("{\"weight_map\": {\"a\": 3}}", "/i.json"),
               "tensor 'a' maps to a JSON number, not a file name");
  EXPECT_ERROR(parse_hf_index("{}", "/i.json"), "no 'weight_map' object");
}

TEST(HfWriter, ConfigRoundTripAndTensorSpecsMatchTransformers) {
  const struct {
    const char* name;
    HfExpertLayout layout;
  } cases[] = {{"mixtral", HfExpertLayout::per_expert},
               {"qwen2_moe", HfExpertLayout::per_expert},
               {"qwen3_moe", HfExpertLayout::stacked},
               {"olmoe", HfExpertLayout::per_expert},
               {"mixtral_bf16", HfExpertLayout::per_expert}};
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.name);
    const HfConfig a = HfConfig::load(kGolden + tc.name);
    const HfConfig b = HfConfig::parse(hf_config_to_json(a), "round trip");
    EXPECT_EQ(b.config_generation, 4);
    EXPECT_EQ(b.arch, a.arch);
    EXPECT_EQ(b.vocab_size, a.vocab_size);
    EXPECT_EQ(b.hidden_size, a.hidden_size);
    EXPECT_EQ(b.num_hidden_layers, a.num_hidden_layers);
    EXPECT_EQ(b.num_attention_heads, a.num_attention_heads);
    EXPECT_EQ(b.num_key_value_heads, a.num_key_value_heads);
    EXPECT_EQ(b.head_dim, a.head_dim);
    EXPECT_EQ(b.num_experts, a.num_experts);
    EXPECT_EQ(b.num_experts_per_tok, a.num_experts_per_tok);
    EXPECT_EQ(b.moe_intermediate_size, a.moe_intermediate_size);
    EXPECT_EQ(b.intermediate_size, a.intermediate_size);
    EXPECT_EQ(b.shared_expert_intermediate_size, a.shared_expert_intermediate_size);
    EXPECT_EQ(b.norm_topk_prob, a.norm_topk_prob);
    EXPECT_EQ(b.decoder_sparse_step, a.decoder_sparse_step);
    EXPECT_EQ(b.mlp_only_layers, a.mlp_only_layers);
    EXPECT_EQ(b.attention_bias, a.attention_bias);
    EXPECT_EQ(b.o_proj_bias, a.o_proj_bias);
    EXPECT_EQ(b.qk_norm, a.qk_norm);
    EXPECT_EQ(b.rms_norm_eps, a.rms_norm_eps);
    EXPECT_EQ(b.rope_theta, a.rope_theta);
    EXPECT_EQ(b.max_position_embeddings, a.max_position_embeddings);
    EXPECT_EQ(b.tie_word_embeddings, a.tie_word_embeddings);
    EXPECT_EQ(b.bos_token_id, a.bos_token_id);
    EXPECT_EQ(b.eos_token_ids, a.eos_token_ids);
    EXPECT_EQ(b.dtype, a.dtype);
    EXPECT_EQ(b.clip_qkv, a.clip_qkv);

    // The tensor list is exactly what transformers wrote.
    const HfCheckpoint ck = HfCheckpoint::open(kGolden + tc.name);
    const DType dt = a.dtype == "bfloat16" ? DType::bf16 : DType::f32;
    const auto specs = hf_tensor_specs(a, dt, tc.layout);
    std::vector<std::string> names;
    for (const auto& s : specs) {
      names.push_back(s.name);
      ASSERT_TRUE(ck.has(s.name)) << s.name;
      EXPECT_EQ(ck.entry(s.name).shape, s.shape) << s.name;
      EXPECT_EQ(ck.entry(s.name).dtype, dt) << s.name;
    }
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, ck.names());
  }
}

TEST(HfWriter, MakeModelOutputLoads) {
  // `deltamoe make-model` output of every family and option loads with the checks of
  // load_hf_weights; weights have the promised statistics and depend only on the seed.
  TempDir dir;
  const struct {
    const char* args;
    HfArch arch;
    DType dtype;
  } cases[] = {
      {"--arch mixtral --max-shard-size 300KB", HfArch::mixtral, DType::f32},
      {"--arch mixtral --expert-layout stacked --dtype bf16", HfArch::mixtral, DType::bf16},
      {"--arch qwen2-moe --mlp-only-layers 0 --tie-embeddings", HfArch::qwen2_moe, DType::f32},
      {"--arch qwen2-moe --sparse-step 2 --layers 3 --shared-inter 0", HfArch::qwen2_moe,
       DType::f32},
      {"--arch qwen3-moe --head-dim 32 --expert-layout stacked", HfArch::qwen3_moe, DType::f32},
      {"--arch olmoe --dtype bf16 --experts 6 --top-k 3", HfArch::olmoe, DType::bf16},
  };
  int n = 0;
  for (const auto& tc : cases) {
    SCOPED_TRACE(tc.args);
    const std::string out = dir.file("m" + std::to_string(n++));
    const std::string cmd =
        std::string(DELTAMOE_BINARY) + " make-model --quiet " + tc.args + " --out " + out;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const HfConfig c = HfConfig::load(out);
    EXPECT_EQ(c.arch, tc.arch);
    const HfCheckpoint ck = HfCheckpoint::open(out);
    const HfModelWeights w = load_hf_weights(c, ck);
    EXPECT_EQ(w.embed.dtype(), tc.dtype);
    const auto layout = std::string(tc.args).find("stacked") != std::string::npos
                            ? HfExpertLayout::stacked
                            : HfExpertLayout::per_expert;
    std::vector<std::string> names;
    for (const auto& spec : hf_tensor_specs(c, tc.dtype, layout)) names.push_back(spec.name);
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, ck.names());
    const std::vector<float> norm = w.final_norm.to_vector();
    for (float v : norm) EXPECT_EQ(v, 1.0f);
    const std::vector<float> e = w.embed.to_vector();
    double sum = 0, sq = 0;
    for (float v : e) sum += v, sq += static_cast<double>(v) * v;
    const double mean = sum / e.size(), sd = std::sqrt(sq / e.size() - mean * mean);
    EXPECT_NEAR(mean, 0.0, 0.002);
    EXPECT_NEAR(sd, 0.02, 0.001);
    for (const auto& l : w.layers)
      if (l.moe) {
        EXPECT_EQ(l.experts.size(), static_cast<size_t>(c.num_experts));
      }
  }
  // qwen2-moe without a shared expert, and a dense layer 0 for --sparse-step 2.
  const HfConfig q = HfConfig::load(dir.file("m3"));
  EXPECT_EQ(q.shared_expert_intermediate_size, 0);
  EXPECT_FALSE(q.is_moe_layer(0));
  EXPECT_TRUE(q.is_moe_layer(1));
  // Values depend on (seed, tensor name, index) only: the bf16 model is the f32 one rounded.
  const HfModelWeights a =
      load_hf_weights(HfConfig::load(dir.file("m0")), HfCheckpoint::open(dir.file("m0")));
  const HfModelWeights b =
      load_hf_weights(HfConfig::load(dir.file("m1")), HfCheckpoint::open(dir.file("m1")));
  const std::vector<float> fa = a.embed.to_vector(), fb = b.embed.to_vector();
  ASSERT_EQ(fa.size(), fb.size());
  for (size_t i = 0; i < fa.size(); ++i) ASSERT_EQ(bf16_to_f32(f32_to_bf16(fa[i])), fb[i]) << i;
}
