// Hugging Face checkpoints: single or sharded safetensors, and the weights of the MoE
// decoders (see deltamoe/io/hf_model.h, docs/llm.md for the tensor names).
#include <sys/stat.h>

#include <map>
#include <set>

#include "deltamoe/core/error.h"
#include "deltamoe/io/hf_model.h"
#include "io/file_util.h"
#include "io/hf_util.h"

namespace deltamoe::io {

using detail::kHfComponent;
using detail::quote_name;
using json = nlohmann::json;

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
// {"metadata": {...}, "weight_map": {name: file}}: three levels; a little slack for
// metadata values some exporters nest.
constexpr int kMaxIndexDepth = 4;

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_float(DType t) {
  return t == DType::f32 || t == DType::bf16 || t == DType::f16;
}

}  // namespace

std::map<std::string, std::string> parse_hf_index(const std::string& json_text,
                                                  const std::string& path_for_errors) {
  auto bad = [&](auto&&... args) { fail(kHfComponent, path_for_errors, ": ", args...); };
  const json j = detail::parse_hf_json_object(json_text, path_for_errors, kMaxIndexDepth);
  const auto wm = j.find("weight_map");
  if (wm == j.end()) bad("no 'weight_map' object");
  if (!wm->is_object()) bad("'weight_map' is a JSON ", wm->type_name(), ", not an object");
  if (wm->empty()) bad("'weight_map' is empty");
  std::map<std::string, std::string> out;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (it.key().empty()) bad("'weight_map' has an empty tensor name");
    if (!it->is_string())
      bad("tensor ", quote_name(it.key()), " maps to a JSON ", it->type_name(),
          ", not a file name");
    const std::string file = it->get<std::string>();
    // Shards sit beside the index: a path (or "..") could read files outside the model.
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
        file.find('\0') != std::string::npos)
      bad("tensor ", quote_name(it.key()), " maps to ", quote_name(file),
          ", not a plain file name in the model directory");
    out.emplace(it.key(), file);
  }
  return out;
}

HfCheckpoint HfCheckpoint::open(const std::string& model_dir) {
  if (!is_directory(model_dir)) fail(kHfComponent, model_dir, ": not a directory");
  HfCheckpoint ck;
  ck.dir_ = model_dir;
  const std::string index_path = model_dir + "/" + kIndexName;
  const std::string single_path = model_dir + "/" + kSingleName;

  if (is_regular_file(index_path)) {
    ck.source_ = index_path;
    const auto weight_map = parse_hf_index(detail::read_hf_text_file(index_path), index_path);
    std::map<std::string, size_t> file_index;  // shard name → position in files_
    for (const auto& [tensor, file] : weight_map) {
      if (file_index.count(file) != 0) continue;
      const std::string shard = model_dir + "/" + file;
      if (!is_regular_file(shard))
        fail(kHfComponent, index_path, ": shard ", quote_name(file), " (holding tensor ",
             quote_name(tensor), ") does not exist");
      file_index.emplace(file, ck.files_.size());
      ck.files_.push_back(SafetensorsFile::open(shard));
    }
    for (const auto& [tensor, file] : weight_map) {
      const size_t i = file_index.at(file);
      if (!ck.files_[i].has(tensor))
        fail(kHfComponent, ck.files_[i].path(), ": tensor ", quote_name(tensor), " is listed in ",
             kIndexName, " but not in this shard");
      ck.where_.emplace(tensor, i);
    }
    return ck;
  }
  if (is_regular_file(single_path)) {
    ck.source_ = single_path;
    ck.files_.push_back(SafetensorsFile::open(single_path));
    for (const auto& e : ck.files_[0].entries()) ck.where_.emplace(e.name, 0);
    return ck;
  }
  if (is_regular_file(model_dir + "/pytorch_model.bin") ||
      is_regular_file(model_dir + "/pytorch_model.bin.index.json"))
    fail(kHfComponent, model_dir,
         ": only PyTorch .bin weights; deltamoe reads safetensors "
         "(convert with transformers: save_pretrained(dir, safe_serialization=True))");
  fail(kHfComponent, model_dir, ": no ", kSingleName, " or ", kIndexName);
}

bool HfCheckpoint::has(const std::string& name) const {
  return where_.count(name) != 0;
}

std::vector<std::string> HfCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

const SafetensorsEntry& HfCheckpoint::entry(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end())
    fail(kHfComponent, source_, ": no tensor ", quote_name(name), " (the checkpoint has ",
         where_.size(), " tensors)");
  return files_[it->second].entry(name);
}

Tensor HfCheckpoint::get(const std::string& name) const {
  entry(name);  // the "no tensor" error names the checkpoint, not a random shard
  return files_[where_.at(name)].get(name);
}

Tensor HfCheckpoint::expect(const std::string& name, const Shape& shape) const {
  const SafetensorsEntry& e = entry(name);
  if (e.shape != shape)
    fail(kHfComponent, file_of(name), ": tensor ", quote_name(name), " has shape ",
         shape_str(e.shape), ", expected ", shape_str(shape));
  if (!is_float(e.dtype))
    fail(kHfComponent, file_of(name), ": tensor ", quote_name(name), " has dtype ",
         safetensors_dtype_name(e.dtype), ", expected F32, BF16 or F16");
  return get(name);
}

std::string HfCheckpoint::file_of(const std::string& name) const {
  entry(name);
  return files_[where_.at(name)].path();
}

uint64_t HfCheckpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, i] : where_) {
    const SafetensorsEntry& e = files_[i].entry(name);
    total += e.end - e.begin;
  }
  return total;
}

FileExtent HfCheckpoint::locate(const Tensor& t) const {
  DELTAMOE_CHECK(t.defined() && t.is_contiguous(), kHfComponent,
                 "locate: tensor must be a contiguous view of the checkpoint");
  const auto* p = static_cast<const uint8_t*>(t.raw());
  for (const SafetensorsFile& f : files_) {
    const uint8_t* base = f.file_data();
    if (p >= base && p + t.nbytes() <= base + f.file_size())
      return {f.path(), static_cast<uint64_t>(p - base), static_cast<uint64_t>(t.nbytes())};
  }
  fail(kHfComponent, dir_, ": a tensor of shape ", shape_str(t.shape()),
       " is not inside the checkpoint's files (a copy, not a view of the mapping)");
}

namespace {

// Reads the expert FFNs under `prefix` ("model.layers.3.mlp.experts."): stacked
// gate_up_proj [E, 2I, H] + down_proj [E, H, I] as transformers 5 keeps them (gate is the
// first I rows, as its chunk(2) takes them), or per-expert matrices under either naming.
std::vector<HfFfnWeights> load_experts(const HfCheckpoint& ck, const std::string& prefix, int64_t n,
                                       int64_t inter, int64_t hidden) {
  std::vector<HfFfnWeights> out(static_cast<size_t>(n));
  if (ck.has(prefix + "gate_up_proj")) {
    const Tensor gu = ck.expect(prefix + "gate_up_proj", {n, 2 * inter, hidden});
    const Tensor dn = ck.expect(prefix + "down_proj", {n, hidden, inter});
    for (int64_t e = 0; e < n; ++e) {
      const Tensor g2 = gu.slice(e, e + 1).reshape({2 * inter, hidden});
      out[e] = {g2.slice(0, inter), g2.slice(inter, 2 * inter),
                dn.slice(e, e + 1).reshape({hidden, inter})};
    }
    return out;
  }
  struct Names {
    const char *gate, *up, *down;
  };
  static constexpr Names kNamings[] = {{"w1", "w3", "w2"}, {"gate_proj", "up_proj", "down_proj"}};
  const Names* names = nullptr;
  for (const auto& nm : kNamings)
    if (ck.has(prefix + "0." + nm.gate + ".weight")) names = &nm;
  if (names == nullptr)
    fail(kHfComponent, ck.dir(), ": no experts under ", quote_name(prefix),
         " (looked for '0.w1.weight', '0.gate_proj.weight' and stacked 'gate_up_proj')");
  for (int64_t e = 0; e < n; ++e) {
    const std::string p = prefix + std::to_string(e) + ".";
    out[e] = {ck.expect(p + names->gate + ".weight", {inter, hidden}),
              ck.expect(p + names->up + ".weight", {inter, hidden}),
              ck.expect(p + names->down + ".weight", {hidden, inter})};
  }
  return out;
}

HfFfnWeights load_ffn(const HfCheckpoint& ck, const std::string& prefix, int64_t inter,
                      int64_t hidden) {
  return {ck.expect(prefix + "gate_proj.weight", {inter, hidden}),
          ck.expect(prefix + "up_proj.weight", {inter, hidden}),
          ck.expect(prefix + "down_proj.weight", {hidden, inter})};
}

HfLayerWeights load_layer(const HfConfig& c, const HfCheckpoint& ck, int64_t layer) {
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  const int64_t H = c.hidden_size, q_dim = c.num_attention_heads * c.head_dim,
                kv_dim = c.num_key_value_heads * c.head_dim;
  HfLayerWeights w;
  w.input_norm = ck.expect(p + "input_layernorm.weight", {H});
  w.post_attn_norm = ck.expect(p + "post_attention_layernorm.weight", {H});
  const std::string a = p + "self_attn.";
  w.q = ck.expect(a + "q_proj.weight", {q_dim, H});
  w.k = ck.expect(a + "k_proj.weight", {kv_dim, H});
  w.v = ck.expect(a + "v_proj.weight", {kv_dim, H});
  w.o = ck.expect(a + "o_proj.weight", {H, q_dim});
  if (c.attention_bias) {
    w.q_bias = ck.expect(a + "q_proj.bias", {q_dim});
    w.k_bias = ck.expect(a + "k_proj.bias", {kv_dim});
    w.v_bias = ck.expect(a + "v_proj.bias", {kv_dim});
  }
  if (c.o_proj_bias) w.o_bias = ck.expect(a + "o_proj.bias", {H});
  if (c.qk_norm == HfConfig::QkNorm::per_head) {
    w.q_norm = ck.expect(a + "q_norm.weight", {c.head_dim});
    w.k_norm = ck.expect(a + "k_norm.weight", {c.head_dim});
  } else if (c.qk_norm == HfConfig::QkNorm::full) {
    w.q_norm = ck.expect(a + "q_norm.weight", {q_dim});
    w.k_norm = ck.expect(a + "k_norm.weight", {kv_dim});
  }

  w.moe = c.is_moe_layer(layer);
  if (!w.moe) {
    w.dense = load_ffn(ck, p + "mlp.", c.intermediate_size, H);
    return w;
  }
  // Published Mixtral checkpoints say block_sparse_moe; transformers 5 renames it mlp.
  const std::string m = c.arch == HfArch::mixtral && ck.has(p + "block_sparse_moe.gate.weight")
                            ? p + "block_sparse_moe."
                            : p + "mlp.";
  const int64_t E = c.experts_in_layer(layer);
  w.router = ck.expect(m + "gate.weight", {c.router_outputs(layer), H});
  w.experts = load_experts(ck, m + "experts.", E, c.moe_intermediate_size, H);
  if (c.shared_expert_intermediate_size > 0) {
    w.shared = load_ffn(ck, m + "shared_expert.", c.shared_expert_intermediate_size, H);
    w.shared_gate = ck.expect(m + "shared_expert_gate.weight", {1, H});
  }
  return w;
}

}  // namespace

HfModelWeights load_hf_weights(const HfConfig& cfg, const HfCheckpoint& ckpt) {
  HfModelWeights w;
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size;
  w.embed = ckpt.expect("model.embed_tokens.weight", {V, H});
  w.layers.reserve(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) w.layers.push_back(load_layer(cfg, ckpt, l));
  w.final_norm = ckpt.expect("model.norm.weight", {H});
  w.lm_head = cfg.tie_word_embeddings ? w.embed : ckpt.expect("lm_head.weight", {V, H});
  return w;
}

}  // namespace deltamoe::io
