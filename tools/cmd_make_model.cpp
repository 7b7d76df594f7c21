// `deltamoe make-model`: a random-weight MoE language model in Hugging Face layout
// (config.json, model.safetensors or shards + index, generation_config.json), loadable by
// transformers and by io::load_hf_weights. Tensors are generated and written one at a time,
// so a model larger than memory (the 5.4 GB `reference` preset) streams to disk.
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/core/units.h"
#include "deltamoe/io/chat_template.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/output.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/io/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using deltamoe::DType;
using deltamoe::fail;
using deltamoe::io::HfArch;
using deltamoe::io::HfConfig;
using deltamoe::io::SafetensorsTensorSpec;

constexpr const char* kComponent = "make-model";

struct Opts {
  std::string arch = "mixtral", preset = "tiny", dtype = "f32", out, max_shard = "4GiB";
  std::string layout = "per-expert", norm_topk = "auto";
  // -1: take the value from the preset (or derive it, see --help).
  int64_t layers = -1, hidden = -1, heads = -1, kv_heads = -1, head_dim = -1, experts = -1,
          top_k = -1, inter = -1, shared_inter = -1, dense_inter = -1, vocab = -1, max_pos = 4096,
          sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  uint64_t seed = 1;
  double init_std = 0.02;
  double embed_std = -1.0;  // < 0: init_std
  bool tie = false, force = false, quiet = false;
};

struct Preset {
  const char* name;
  int64_t layers, hidden, heads, kv_heads, experts, top_k, inter, vocab;
};
// reference: the Mixtral-shaped model of the benchmarks (docs/benchmarks.md, LLM digest §3).
constexpr Preset kPresets[] = {
    {"tiny", 2, 64, 4, 2, 4, 2, 64, 512},
    {"small", 4, 256, 8, 4, 8, 2, 256, 8192},
    {"reference", 24, 1024, 16, 8, 32, 8, 512, 32000},
};

// splitmix64's output function: a bijective 64-bit mixer, so hashing a counter gives a
// stream of independent-looking words at any position (no sequential RNG state to share).
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t name_key(uint64_t seed, const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a of the name
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return mix64(h ^ mix64(seed + 0x9e3779b97f4a7c15ull));
}

// Element i of a weight: the sum of four uniform 16-bit fields of one hashed word, centred
// and scaled to standard deviation `std` (Irwin-Hall of 4, a normal to within ±3.5σ). Values
// depend only on (seed, tensor name, i): not on thread count, sharding or tensor order.
inline float normal_like(uint64_t key, uint64_t i, float scale) {
  const uint64_t h = mix64(key + i * 0x9e3779b97f4a7c15ull);
  const uint64_t s = (h & 0xffff) + ((h >> 16) & 0xffff) + ((h >> 32) & 0xffff) + (h >> 48);
  return (static_cast<float>(s) - 131070.0f) * scale;
}

// Fills `out` (numel elements of `dtype`) with tensor `name`'s values: norms 1, biases 0
// (as transformers initialises them), weights normal-like with std `init_std`.
void fill_tensor(const SafetensorsTensorSpec& s, uint64_t seed, double init_std, void* out) {
  const int64_t n = deltamoe::shape_numel(s.shape);
  const bool norm = s.name.size() > 11 && s.name.ends_with("norm.weight");
  const bool bias = s.name.ends_with(".bias");
  const uint64_t key = name_key(seed, s.name);
  // One uniform 16-bit field has std sqrt((65536² - 1) / 12); four of them twice that.
  const float scale = static_cast<float>(init_std / (2.0 * 18918.61));
  deltamoe::parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = norm ? 1.0f : bias ? 0.0f : normal_like(key, static_cast<uint64_t>(i), scale);
      if (s.dtype == DType::f32)
        static_cast<float*>(out)[i] = v;
      else
        static_cast<uint16_t*>(out)[i] = deltamoe::f32_to_bf16(v);
    }
  });
}

HfConfig build_config(Opts& o) {
  const Preset* p = nullptr;
  for (const auto& pr : kPresets)
    if (o.preset == pr.name) p = &pr;
  auto pick = [](int64_t v, int64_t dflt) { return v >= 0 ? v : dflt; };
  HfConfig c;
  c.arch = o.arch == "mixtral"     ? HfArch::mixtral
           : o.arch == "qwen2-moe" ? HfArch::qwen2_moe
           : o.arch == "qwen3-moe" ? HfArch::qwen3_moe
                                   : HfArch::olmoe;
  const bool qwen = c.arch == HfArch::qwen2_moe || c.arch == HfArch::qwen3_moe;
  c.architecture = deltamoe::io::hf_arch_name(c.arch);
  c.num_hidden_layers = pick(o.layers, p->layers);
  c.hidden_size = pick(o.hidden, p->hidden);
  c.num_attention_heads = pick(o.heads, p->heads);
  c.num_key_value_heads = pick(o.kv_heads, p->kv_heads);
  c.head_dim = pick(o.head_dim, c.hidden_size / c.num_attention_heads);
  c.num_experts = pick(o.experts, p->experts);
  c.num_experts_per_tok = pick(o.top_k, p->top_k);
  c.moe_intermediate_size = pick(o.inter, p->inter);
  c.vocab_size = pick(o.vocab, p->vocab);
  // Published Qwen MoE models: dense and shared widths are 4x (Qwen1.5) the expert width.
  c.intermediate_size =
      qwen ? pick(o.dense_inter, 4 * c.moe_intermediate_size) : c.moe_intermediate_size;
  if (!qwen && o.dense_inter >= 0) fail(kComponent, "--dense-inter is for qwen2-moe and qwen3-moe");
  if (c.arch == HfArch::qwen2_moe)
    c.shared_expert_intermediate_size = pick(o.shared_inter, 4 * c.moe_intermediate_size);
  else if (o.shared_inter >= 0)
    fail(kComponent, "--shared-inter is for qwen2-moe (the only family with a shared expert)");
  if (!qwen && (o.sparse_step != 1 || !o.mlp_only_layers.empty()))
    fail(kComponent, "--sparse-step and --mlp-only-layers are for qwen2-moe and qwen3-moe");
  c.decoder_sparse_step = o.sparse_step;
  c.mlp_only_layers = o.mlp_only_layers;
  // Published defaults: Mixtral and Qwen3-MoE renormalise the top-k weights, Qwen1.5-MoE
  // and OLMoE do not.
  c.norm_topk_prob = c.arch == HfArch::mixtral || c.arch == HfArch::qwen3_moe;
  if (o.norm_topk != "auto") {
    if (c.arch == HfArch::mixtral && o.norm_topk == "false")
      fail(kComponent, "Mixtral always renormalises the top-k weights (--norm-topk false)");
    c.norm_topk_prob = o.norm_topk == "true";
  }
  c.attention_bias = c.arch == HfArch::qwen2_moe;
  c.qk_norm = c.arch == HfArch::qwen3_moe ? HfConfig::QkNorm::per_head
              : c.arch == HfArch::olmoe   ? HfConfig::QkNorm::full
                                          : HfConfig::QkNorm::none;
  c.rms_norm_eps = qwen ? 1e-6 : 1e-5;
  c.rope_theta = c.arch == HfArch::olmoe ? 10000.0 : 1e6;
  c.max_position_embeddings = o.max_pos;
  c.tie_word_embeddings = o.tie;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.dtype = o.dtype == "bf16" ? "bfloat16" : "float32";
  c.router_aux_loss_coef = 0.001;
  // The parser is the one judge of a valid config: what it rejects would not load.
  return HfConfig::parse(deltamoe::io::hf_config_to_json(c), "make-model");
}

// A synthetic SentencePiece-style BPE tokenizer.json of the model's vocabulary size (the
// tokenizer layer's make_synthetic_tokenizer_json), so generate and tokenize work offline, and
// a tokenizer_config.json with its bos / eos tokens and the family's reference chat template
// (io::reference_chat_template), so chat prompts render as for the real model. Returns
// whether they were written (vocabularies below the tokenizer's minimum of 300 get none).
bool write_tokenizer_files(const std::string& dir, const HfConfig& cfg) {
  if (cfg.vocab_size < 300) return false;
  const std::string text =
      deltamoe::io::make_synthetic_tokenizer_json(static_cast<int32_t>(cfg.vocab_size));
  std::ofstream f(dir + "/tokenizer.json", std::ios::binary);
  f << text;
  f.close();
  DELTAMOE_CHECK(f.good(), kComponent, dir, "/tokenizer.json: cannot write");
  nlohmann::ordered_json config;
  config["bos_token"] = "<s>";  // the synthetic vocabulary's specials (ids 1 and 2)
  config["eos_token"] = "</s>";
  config["chat_template"] = deltamoe::io::reference_chat_template(cfg.model_type);
  deltamoe::cli::write_file_atomic(dir + "/tokenizer_config.json", config.dump(2) + "\n");
  return true;
}

uint64_t spec_bytes(const SafetensorsTensorSpec& s) {
  return static_cast<uint64_t>(deltamoe::shape_numel(s.shape)) * deltamoe::dtype_size(s.dtype);
}

// Splits the tensors, in order, into shards of at most `max_bytes` of data (a tensor larger
// than that gets a shard of its own), as transformers' save_pretrained does.
std::vector<std::vector<SafetensorsTensorSpec>> plan_shards(
    const std::vector<SafetensorsTensorSpec>& specs, uint64_t max_bytes) {
  std::vector<std::vector<SafetensorsTensorSpec>> shards(1);
  uint64_t cur = 0;
  for (const auto& s : specs) {
    const uint64_t b = spec_bytes(s);
    if (cur > 0 && cur + b > max_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(s);
    cur += b;
  }
  return shards;
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

class Progress {
 public:
  Progress(uint64_t total, bool enabled) : total_(total), enabled_(enabled) {}
  void add(uint64_t bytes) {
    done_ += bytes;
    const auto now = std::chrono::steady_clock::now();
    if (!enabled_ || now - last_ < std::chrono::seconds(1)) return;
    last_ = now;
    std::fprintf(stderr, "make-model: %.2f / %.2f GB (%.0f%%)\n", done_ / 1e9, total_ / 1e9,
                 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
  }

 private:
  uint64_t total_, done_ = 0;
  bool enabled_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

int run(const Opts& o_in) {
  Opts o = o_in;
  const auto t0 = std::chrono::steady_clock::now();
  const HfConfig cfg = build_config(o);
  const uint64_t max_shard = deltamoe::parse_byte_size(o.max_shard, kComponent, "--max-shard-size");
  const DType dtype = o.dtype == "bf16" ? DType::bf16 : DType::f32;
  const auto layout = o.layout == "stacked" ? deltamoe::io::HfExpertLayout::stacked
                                            : deltamoe::io::HfExpertLayout::per_expert;
  const auto specs = deltamoe::io::hf_tensor_specs(cfg, dtype, layout);
  uint64_t total = 0, largest = 0;
  for (const auto& s : specs) {
    total += spec_bytes(s);
    largest = std::max(largest, spec_bytes(s));
  }

  deltamoe::io::OutputDir dir(o.out, o.force, kComponent);
  dir.check_space(total);
  const auto shards = plan_shards(specs, max_shard);
  Progress progress(total, !o.quiet && total > (256u << 20));
  std::vector<uint8_t> buf(static_cast<size_t>(largest));
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t si = 0; si < shards.size(); ++si) {
    const std::string name =
        shards.size() == 1 ? "model.safetensors" : shard_name(si, shards.size());
    deltamoe::io::SafetensorsWriter w(dir.file(name), shards[si], {{"format", "pt"}});
    for (size_t i : w.order()) {
      const auto& s = shards[si][i];
      // The embedding may have its own std: with a large one the residual stream is
      // dominated by the current token, so random routers route (almost) uniformly and
      // independently from token to token, the worst case for an expert cache.
      const bool embed = s.name == "model.embed_tokens.weight";
      fill_tensor(s, o.seed, embed && o.embed_std >= 0 ? o.embed_std : o.init_std, buf.data());
      w.append_bytes(buf.data(), static_cast<size_t>(spec_bytes(s)));
      weight_map[s.name] = name;
      progress.add(spec_bytes(s));
    }
    w.commit();
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total}}},
                                  {"weight_map", weight_map}};
    deltamoe::cli::write_file_atomic(dir.file("model.safetensors.index.json"),
                                     index.dump(2) + "\n");
  }
  deltamoe::cli::write_file_atomic(dir.file("config.json"), deltamoe::io::hf_config_to_json(cfg));
  const nlohmann::json gen = {{"_from_model_config", true},
                              {"bos_token_id", cfg.bos_token_id},
                              {"eos_token_id", cfg.eos_token_ids[0]}};
  deltamoe::cli::write_file_atomic(dir.file("generation_config.json"), gen.dump(2) + "\n");
  const bool tokenizer = write_tokenizer_files(dir.file(""), cfg);
  dir.commit();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!o.quiet)
    std::fprintf(stderr,
                 "make-model: wrote %s: %s, %zu tensors, %.2f MB of weights in %zu file%s, "
                 "%.1f s%s\n",
                 dir.out().c_str(), cfg.architecture.c_str(), specs.size(), total / 1e6,
                 shards.size(), shards.size() == 1 ? "" : "s", secs,
                 tokenizer ? "" : " (no tokenizer.json yet)");
  return 0;
}

deltamoe::cli::CommandRegistrar reg(
    "make-model", "Write a random-weight MoE language model in Hugging Face layout",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<Opts>();
      app.add_option("--arch", o->arch, "Model family (default mixtral)")
          ->check(CLI::IsMember({"mixtral", "qwen2-moe", "qwen3-moe", "olmoe"}));
      app.add_option("--preset", o->preset, "Sizes to start from (default tiny; see below)")
          ->check(CLI::IsMember({"tiny", "small", "reference"}));
      app.add_option("--layers", o->layers, "Decoder layers (default: preset)")
          ->check(CLI::Range(1, 4096));
      app.add_option("--hidden", o->hidden, "Hidden size (default: preset)")
          ->check(CLI::Range(2, 1 << 20));
      app.add_option("--heads", o->heads, "Attention heads (default: preset)")
          ->check(CLI::Range(1, 4096));
      app.add_option("--kv-heads", o->kv_heads, "Key/value heads (default: preset)")
          ->check(CLI::Range(1, 4096));
      app.add_option("--head-dim", o->head_dim,
                     "Head size (default hidden/heads; OLMoE: must be that)")
          ->check(CLI::Range(2, 1 << 16));
      app.add_option("--experts", o->experts, "Routed experts per MoE layer (default: preset)")
          ->check(CLI::Range(1, 65536));
      app.add_option("--top-k", o->top_k, "Experts per token (default: preset)")
          ->check(CLI::Range(1, 65536));
      app.add_option("--inter", o->inter, "Expert intermediate size (default: preset)")
          ->check(CLI::Range(1, 1 << 22));
      app.add_option("--shared-inter", o->shared_inter,
                     "qwen2-moe shared expert width (default 4 x --inter; 0 = none)")
          ->check(CLI::Range(0, 1 << 22));
      app.add_option(
             "--dense-inter", o->dense_inter,
             "qwen dense-MLP width for --mlp-only-layers / --sparse-step (default 4 x --inter)")
          ->check(CLI::Range(1, 1 << 22));
      app.add_option("--sparse-step", o->sparse_step,
                     "qwen decoder_sparse_step: layer l is MoE when (l+1) % step == 0 (default 1)")
          ->check(CLI::Range(1, 4096));
      app.add_option("--mlp-only-layers", o->mlp_only_layers, "qwen: layers with a dense MLP")
          ->delimiter(',');
      app.add_option("--norm-topk", o->norm_topk,
                     "Renormalise top-k weights: auto (as published: Mixtral, Qwen3 yes; Qwen2, "
                     "OLMoE no), true, false")
          ->check(CLI::IsMember({"auto", "true", "false"}));
      app.add_option("--vocab", o->vocab, "Vocabulary size (default: preset)")
          ->check(CLI::Range(3, 1 << 24));
      app.add_option("--max-pos", o->max_pos, "max_position_embeddings (default 4096)")
          ->check(CLI::Range(1, 1 << 24));
      app.add_flag("--tie-embeddings", o->tie, "tie_word_embeddings (no lm_head.weight)");
      app.add_option("--dtype", o->dtype, "Weight dtype (default f32)")
          ->check(CLI::IsMember({"f32", "bf16"}));
      app.add_option("--seed", o->seed, "Random seed (default 1)");
      app.add_option("--init-std", o->init_std, "Weight std, as initializer_range (default 0.02)")
          ->check(CLI::Range(0.0, 100.0));
      app.add_option("--embed-std", o->embed_std,
                     "Std of the token embedding (default --init-std); e.g. 1 makes random "
                     "routers route almost uniformly, token by token")
          ->check(CLI::Range(0.0, 100.0));
      app.add_option("--expert-layout", o->layout,
                     "per-expert (published checkpoints, default) or stacked (transformers 5: "
                     "experts.gate_up_proj [E,2I,H], experts.down_proj [E,H,I])")
          ->check(CLI::IsMember({"per-expert", "stacked"}));
      app.add_option(
          "--max-shard-size", o->max_shard,
          "Shard above this many bytes of weights (default 4GiB; KB/MB/GB, KiB/MiB/GiB)");
      app.add_option("--out", o->out, "Output model directory")->required();
      app.add_flag("--force", o->force, "Replace --out if it exists and is not empty");
      app.add_flag("--quiet", o->quiet, "No progress or summary on stderr");
      app.footer(
          "Presets (layers, hidden, heads/kv-heads, experts top-k, expert inter, vocab):\n"
          "  tiny       2, 64, 4/2, 4 top-2, 64, 512\n"
          "  small      4, 256, 8/4, 8 top-2, 256, 8192\n"
          "  reference  24, 1024, 16/8, 32 top-8, 512, 32000  (Mixtral: 5.4 GB in f32)\n"
          "Weights: normal-like(0, --init-std), norms 1, biases 0, deterministic in --seed.\n"
          "Writes config.json (transformers 4.x form), model.safetensors or shards with\n"
          "model.safetensors.index.json, generation_config.json (bos 1, eos 2).");
      deltamoe::cli::show_default(app,
                                  {"--layers", "--hidden", "--heads", "--kv-heads", "--head-dim",
                                   "--experts", "--top-k", "--inter", "--vocab"},
                                  "preset");
      deltamoe::cli::show_default(app, {"--shared-inter", "--dense-inter"}, "4 x --inter");
      return [o]() -> int { return run(*o); };
    });

}  // namespace
