// config.json of Hugging Face MoE language models (see deltamoe/io/hf_model.h, docs/llm.md).
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/io/hf_model.h"
#include "io/file_util.h"
#include "io/hf_util.h"

namespace deltamoe::io {

using detail::kHfComponent;
using detail::quote_name;
using json = nlohmann::json;

namespace detail {

std::string read_hf_text_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    fail(kHfComponent, path, ": cannot open: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(kHfComponent, path, ": not a regular file");
  if (static_cast<uint64_t>(st.st_size) > kHfMaxJsonBytes)
    fail(kHfComponent, path, ": ", st.st_size, " bytes, more than the limit of ", kHfMaxJsonBytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(kHfComponent, path, ": cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(kHfComponent, path, ": read failed");
  return ss.str();
}

json parse_hf_json_object(const std::string& text, const std::string& path, int max_depth) {
  return parse_json_object_strict(
      text, max_depth, "", [&](const std::string& msg) { fail(kHfComponent, path, ": ", msg); });
}

}  // namespace detail

namespace {

// config.json nests little (rope_parameters, quantization_config, sub-configs of
// multimodal models); 16 levels is far beyond any real file and bounds the parser.
constexpr int kMaxConfigDepth = 16;

struct ArchInfo {
  HfArch arch;
  const char* architecture;
  const char* model_type;
};
constexpr ArchInfo kArchs[] = {
    {HfArch::mixtral, "MixtralForCausalLM", "mixtral"},
    {HfArch::qwen2_moe, "Qwen2MoeForCausalLM", "qwen2_moe"},
    {HfArch::qwen3_moe, "Qwen3MoeForCausalLM", "qwen3_moe"},
    {HfArch::olmoe, "OlmoeForCausalLM", "olmoe"},
};

std::string supported_list() {
  std::string s;
  for (const auto& a : kArchs) s += std::string(s.empty() ? "" : ", ") + a.architecture;
  return s;
}

// Typed, range-checked access to config.json fields, with one-line errors naming the file
// and the field. A JSON null counts as absent (transformers writes "head_dim": null).
class Fields {
 public:
  Fields(const json& j, const std::string& path) : j_(j), path_(path) {}

  template <typename... Args>
  [[noreturn]] void bad(Args&&... args) const {
    fail(kHfComponent, path_, ": ", std::forward<Args>(args)...);
  }

  const json* find(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return find(key) != nullptr; }

  std::optional<int64_t> opt_int(const char* key, int64_t lo, int64_t hi) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    return as_int(*v, key, lo, hi);
  }
  int64_t req_int(const char* key, int64_t lo, int64_t hi) const {
    const auto v = opt_int(key, lo, hi);
    if (!v) bad("missing field ", quote_name(key));
    return *v;
  }
  int64_t int_or(const char* key, int64_t lo, int64_t hi, int64_t dflt) const {
    return opt_int(key, lo, hi).value_or(dflt);
  }
  int64_t as_int(const json& v, const std::string& what, int64_t lo, int64_t hi) const {
    if (!v.is_number_integer())
      bad("field ", quote_name(what), " is a JSON ", v.type_name(), ", expected an integer");
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
      bad("field ", quote_name(what), " = ", v.get<uint64_t>(), " is out of range [", lo, ", ", hi,
          "]");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi)
      bad("field ", quote_name(what), " = ", x, " is out of range [", lo, ", ", hi, "]");
    return x;
  }
  std::optional<double> opt_double(const json& obj, const char* key, double lo, double hi) const {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    if (!it->is_number())
      bad("field ", quote_name(key), " is a JSON ", it->type_name(), ", expected a number");
    const double x = it->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi)
      bad("field ", quote_name(key), " = ", x, " is out of range [", lo, ", ", hi, "]");
    return x;
  }
  std::optional<double> opt_double(const char* key, double lo, double hi) const {
    return opt_double(j_, key, lo, hi);
  }
  bool bool_or(const char* key, bool dflt) const {
    const json* v = find(key);
    if (v == nullptr) return dflt;
    if (!v->is_boolean())
      bad("field ", quote_name(key), " is a JSON ", v->type_name(), ", expected true or false");
    return v->get<bool>();
  }
  std::optional<std::string> opt_string(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string())
      bad("field ", quote_name(key), " is a JSON ", v->type_name(), ", expected a string");
    return v->get<std::string>();
  }

 private:
  const json& j_;
  const std::string& path_;
};

// Limits: generous for any real model, small enough that products of two of them
// (vocab × hidden, experts × inter × hidden) cannot overflow 64 bits.
constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxExperts = 65536;
constexpr int64_t kMaxTokenId = std::numeric_limits<int32_t>::max();

HfArch pick_arch(const Fields& f, HfConfig& c) {
  const json* archs = f.find("architectures");
  if (archs != nullptr) {
    if (!archs->is_array() || archs->empty())
      f.bad("field 'architectures' must be a non-empty list of strings");
    for (const json& a : *archs)
      if (!a.is_string()) f.bad("field 'architectures' must be a non-empty list of strings");
    const std::string name = (*archs)[0].get<std::string>();
    for (const auto& a : kArchs)
      if (name == a.architecture) {
        c.architecture = a.architecture;
        c.model_type = a.model_type;
        return a.arch;
      }
    f.bad("architecture ", quote_name(name), " is not supported (supported: ", supported_list(),
          ")");
  }
  const auto mt = f.opt_string("model_type");
  if (!mt)
    f.bad("no 'architectures' or 'model_type' field (supported architectures: ", supported_list(),
          ")");
  for (const auto& a : kArchs)
    if (*mt == a.model_type) {
      c.architecture = a.architecture;
      c.model_type = a.model_type;
      return a.arch;
    }
  f.bad("model_type ", quote_name(*mt),
        " is not supported (supported architectures: ", supported_list(), ")");
}

// RoPE: transformers 5 writes rope_parameters {rope_theta, rope_type}; 4.x wrote a top-level
// rope_theta and rope_scaling (null for plain RoPE). Scaled variants (linear, dynamic, yarn,
// llama3, ...) change the frequencies; they are refused rather than silently ignored.
void parse_rope(const Fields& f, const json& j, HfConfig& c, double default_theta) {
  c.rope_theta = default_theta;
  if (const json* rp = f.find("rope_parameters")) {
    c.config_generation = 5;
    if (!rp->is_object())
      f.bad("field 'rope_parameters' is a JSON ", rp->type_name(), ", expected an object");
    for (auto it = rp->begin(); it != rp->end(); ++it) {
      const std::string& k = it.key();
      if (k == "rope_theta") continue;
      if (k == "rope_type" || k == "type") {
        if (!it->is_string() || it->get<std::string>() != "default")
          f.bad("rope_parameters.", k, " ", detail::one_line(it->dump()),
                " is not supported (only \"default\" RoPE)");
        continue;
      }
      if (k == "partial_rotary_factor" && it->is_number() && it->get<double>() == 1.0) continue;
      f.bad("rope_parameters.", quote_name(k),
            " is not supported (only default RoPE with "
            "rope_theta)");
    }
    if (const auto t = f.opt_double(*rp, "rope_theta", 1.0, 1e12)) c.rope_theta = *t;
    return;
  }
  if (const auto t = f.opt_double(j, "rope_theta", 1.0, 1e12)) c.rope_theta = *t;
  if (const json* rs = f.find("rope_scaling")) {
    std::string type;
    if (rs->is_object()) {
      for (const char* k : {"rope_type", "type"}) {
        const auto it = rs->find(k);
        if (it != rs->end() && it->is_string()) type = it->get<std::string>();
      }
    }
    if (type != "default")
      f.bad("rope_scaling ", detail::one_line(rs->dump()),
            " is not supported (only null or default RoPE)");
  }
}

// Sliding-window attention changes results only for contexts longer than the window. We do
// not implement it, so a window in force that is shorter than max_position_embeddings is an
// error (a window at least that long can never take effect and is accepted).
void check_sliding_window(const Fields& f, const HfConfig& c, bool in_force) {
  if (!in_force) return;
  const auto w = f.opt_int("sliding_window", 0, std::numeric_limits<int64_t>::max());
  if (!w || *w == 0 || *w >= c.max_position_embeddings) return;
  f.bad("sliding_window ", *w, " is shorter than max_position_embeddings ",
        c.max_position_embeddings, "; sliding-window attention is not supported");
}

void parse_layer_types(const Fields& f, const HfConfig& c, bool window_in_force) {
  const json* lt = f.find("layer_types");
  if (lt == nullptr) return;
  if (!lt->is_array() || static_cast<int64_t>(lt->size()) != c.num_hidden_layers)
    f.bad("field 'layer_types' must be a list of ", c.num_hidden_layers, " strings");
  for (const json& t : *lt) {
    if (!t.is_string()) f.bad("field 'layer_types' must be a list of strings");
    const std::string s = t.get<std::string>();
    if (s == "full_attention") continue;
    if (s == "sliding_attention") {
      check_sliding_window(f, c, window_in_force);
      continue;
    }
    f.bad("layer type ", quote_name(s), " is not supported (full_attention only)");
  }
}

void parse_special_tokens(const Fields& f, HfConfig& c) {
  c.bos_token_id = static_cast<int32_t>(f.int_or("bos_token_id", 0, kMaxTokenId, -1));
  c.eos_token_ids.clear();
  if (const json* e = f.find("eos_token_id")) {
    if (e->is_array()) {
      for (const json& x : *e)
        c.eos_token_ids.push_back(
            static_cast<int32_t>(f.as_int(x, "eos_token_id", 0, kMaxTokenId)));
    } else {
      c.eos_token_ids.push_back(static_cast<int32_t>(f.as_int(*e, "eos_token_id", 0, kMaxTokenId)));
    }
  }
}

void parse_dtype(const Fields& f, HfConfig& c) {
  std::optional<std::string> d = f.opt_string("dtype");
  if (d) c.config_generation = 5;
  if (!d) d = f.opt_string("torch_dtype");
  c.dtype = d.value_or("float32");
  if (c.dtype != "float32" && c.dtype != "bfloat16" && c.dtype != "float16")
    f.bad("dtype ", quote_name(c.dtype), " is not supported (float32, bfloat16, float16)");
}

void check_consistency(const Fields& f, const HfConfig& c) {
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.bad("num_attention_heads ", c.num_attention_heads,
          " is not a multiple of "
          "num_key_value_heads ",
          c.num_key_value_heads);
  if (c.head_dim % 2 != 0) f.bad("head_dim ", c.head_dim, " is odd; RoPE needs an even head_dim");
  if (c.num_attention_heads * c.head_dim > kMaxDim)
    f.bad("num_attention_heads × head_dim = ", c.num_attention_heads * c.head_dim, " exceeds ",
          kMaxDim);
  if (c.num_experts_per_tok > c.num_experts)
    f.bad("num_experts_per_tok ", c.num_experts_per_tok, " exceeds the number of experts ",
          c.num_experts);
  if (!c.layer_experts.empty()) {
    if (static_cast<int64_t>(c.layer_experts.size()) != c.num_hidden_layers)
      f.bad("deltamoe_layer_experts has ", c.layer_experts.size(), " entries for ",
            c.num_hidden_layers, " layers");
    int64_t largest = 0;
    for (size_t l = 0; l < c.layer_experts.size(); ++l) {
      largest = std::max(largest, c.layer_experts[l]);
      if (c.layer_experts[l] < c.num_experts_per_tok)
        f.bad("deltamoe_layer_experts gives layer ", l, " ", c.layer_experts[l],
              " experts, fewer than num_experts_per_tok ", c.num_experts_per_tok);
    }
    if (largest != c.num_experts)
      f.bad("the largest of deltamoe_layer_experts (", largest, ") must equal the expert count ",
            c.num_experts);
  }
  for (const int64_t l : c.mlp_only_layers)
    if (l < 0 || l >= c.num_hidden_layers)
      f.bad("mlp_only_layers names layer ", l, " of a ", c.num_hidden_layers, "-layer model");
  for (const int32_t id : c.eos_token_ids)
    if (id >= c.vocab_size) f.bad("eos_token_id ", id, " is not below vocab_size ", c.vocab_size);
  if (c.bos_token_id >= c.vocab_size)
    f.bad("bos_token_id ", c.bos_token_id, " is not below vocab_size ", c.vocab_size);
}

}  // namespace

const char* hf_arch_name(HfArch arch) {
  for (const auto& a : kArchs)
    if (a.arch == arch) return a.architecture;
  return "?";
}

int64_t HfConfig::experts_in_layer(int64_t layer) const {
  return layer_experts.empty() ? num_experts : layer_experts.at(static_cast<size_t>(layer));
}

bool HfConfig::is_moe_layer(int64_t layer) const {
  if (arch == HfArch::mixtral || arch == HfArch::olmoe) return true;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end())
    return false;
  return num_experts > 0 && (layer + 1) % decoder_sparse_step == 0;
}

HfConfig HfConfig::parse(const std::string& json_text, const std::string& path_for_errors) {
  const json j = detail::parse_hf_json_object(json_text, path_for_errors, kMaxConfigDepth);
  const Fields f(j, path_for_errors);
  HfConfig c;
  c.arch = pick_arch(f, c);
  const bool qwen = c.arch == HfArch::qwen2_moe || c.arch == HfArch::qwen3_moe;

  if (const auto act = f.opt_string("hidden_act"); act && *act != "silu")
    f.bad("hidden_act ", quote_name(*act), " is not supported (silu only)");

  c.vocab_size = f.req_int("vocab_size", 1, kMaxTokenId);
  c.hidden_size = f.req_int("hidden_size", 1, kMaxDim);
  c.num_hidden_layers = f.req_int("num_hidden_layers", 1, kMaxLayers);
  c.num_attention_heads = f.req_int("num_attention_heads", 1, kMaxHeads);
  c.num_key_value_heads = f.int_or("num_key_value_heads", 1, kMaxHeads, c.num_attention_heads);
  const auto hd = f.opt_int("head_dim", 1, kMaxDim);
  if (!hd && c.hidden_size % c.num_attention_heads != 0)
    f.bad("hidden_size ", c.hidden_size, " is not a multiple of num_attention_heads ",
          c.num_attention_heads, " and head_dim is not given");
  c.head_dim = hd.value_or(c.hidden_size / c.num_attention_heads);
  if (c.arch == HfArch::olmoe && c.head_dim * c.num_attention_heads != c.hidden_size)
    f.bad("head_dim ", c.head_dim, " × num_attention_heads ", c.num_attention_heads,
          " must equal hidden_size ", c.hidden_size, " for OLMoE (its q_norm spans hidden_size)");

  // Experts: Mixtral calls the count num_local_experts, the others num_experts; transformers
  // 5 writes Qwen3-MoE's as num_local_experts too, so both names are read for every family.
  const char* count_key = f.has("num_local_experts") ? "num_local_experts" : "num_experts";
  if (f.has("num_local_experts") && f.has("num_experts") &&
      f.req_int("num_local_experts", 1, kMaxExperts) != f.req_int("num_experts", 1, kMaxExperts))
    f.bad("num_local_experts and num_experts disagree");
  c.num_experts = f.req_int(count_key, 1, kMaxExperts);
  c.num_experts_per_tok = f.req_int("num_experts_per_tok", 1, kMaxExperts);
  c.intermediate_size = f.req_int("intermediate_size", 1, kMaxDim);
  c.moe_intermediate_size =
      qwen ? f.req_int("moe_intermediate_size", 1, kMaxDim) : c.intermediate_size;
  if (c.arch == HfArch::qwen2_moe)
    c.shared_expert_intermediate_size = f.req_int("shared_expert_intermediate_size", 0, kMaxDim);
  c.norm_topk_prob = c.arch == HfArch::mixtral ? true : f.bool_or("norm_topk_prob", false);
  if (qwen) {
    c.decoder_sparse_step = f.int_or("decoder_sparse_step", 1, kMaxLayers, 1);
    if (const json* m = f.find("mlp_only_layers")) {
      if (!m->is_array()) f.bad("field 'mlp_only_layers' must be a list of layer indices");
      for (const json& x : *m)
        c.mlp_only_layers.push_back(f.as_int(x, "mlp_only_layers", 0, kMaxLayers));
    }
  }

  switch (c.arch) {
    case HfArch::mixtral:
      break;
    case HfArch::qwen2_moe:
      c.attention_bias = f.bool_or("qkv_bias", true);
      break;
    case HfArch::qwen3_moe:
      c.attention_bias = c.o_proj_bias = f.bool_or("attention_bias", false);
      c.qk_norm = QkNorm::per_head;
      break;
    case HfArch::olmoe:
      c.attention_bias = c.o_proj_bias = f.bool_or("attention_bias", false);
      c.qk_norm = QkNorm::full;
      c.clip_qkv = f.opt_double("clip_qkv", 0.0, 1e30);
      if (c.clip_qkv && *c.clip_qkv <= 0.0) f.bad("clip_qkv ", *c.clip_qkv, " must be positive");
      break;
  }

  const double default_eps = qwen ? 1e-6 : 1e-5;
  c.rms_norm_eps = f.opt_double("rms_norm_eps", 0.0, 1.0).value_or(default_eps);
  const int64_t default_max_pos = c.arch == HfArch::mixtral ? 131072
                                  : c.arch == HfArch::olmoe ? 4096
                                                            : 32768;
  c.max_position_embeddings =
      f.int_or("max_position_embeddings", 1, int64_t{1} << 31, default_max_pos);
  parse_rope(f, j, c, c.arch == HfArch::mixtral ? 1e6 : 10000.0);
  const bool window = qwen ? f.bool_or("use_sliding_window", false) : true;
  check_sliding_window(f, c, window);
  parse_layer_types(f, c, window);
  c.tie_word_embeddings = f.bool_or("tie_word_embeddings", false);
  parse_special_tokens(f, c);
  parse_dtype(f, c);
  c.router_aux_loss_coef = f.opt_double("router_aux_loss_coef", -1e30, 1e30).value_or(0.0);
  if (const auto it = j.find("deltamoe_routing"); it != j.end() && !it->is_null()) {
    DELTAMOE_CHECK(it->is_object(), "hf", path_for_errors, ": deltamoe_routing is not an object");
    c.deltamoe_routing_json = it->dump();
  }
  if (const json* m = f.find("deltamoe_layer_experts"); m && !m->is_null()) {
    if (!m->is_array()) f.bad("field 'deltamoe_layer_experts' must be a list of expert counts");
    for (const json& x : *m)
      c.layer_experts.push_back(f.as_int(x, "deltamoe_layer_experts", 1, kMaxExperts));
  }
  c.null_experts = f.int_or("deltamoe_null_experts", 0, kMaxExperts, 0);
  check_consistency(f, c);
  return c;
}

HfConfig HfConfig::load(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  return parse(detail::read_hf_text_file(path), path);
}

}  // namespace deltamoe::io
