// Options and loading shared by the language-model subcommands (generate, perplexity,
// bench model): one flag vocabulary, one place that loads a model directory.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "deltamoe/core/parallel.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/moe/policies.h"

namespace deltamoe::cli {

struct LmCliOptions {
  std::string model;
  std::string dtype = "f32";
  std::string weight_layout = "mapped";
  std::string routing;  // empty: the model's own
  int threads = 2;
  bool json = false;
};

inline void add_lm_options(CLI::App& app, LmCliOptions& o) {
  app.add_option("--model", o.model,
                 "Hugging Face model directory (config.json, *.safetensors, tokenizer)")
      ->required();
  app.add_option("--dtype", o.dtype,
                 "Weight dtype the kernels compute with: f32, bf16, or int8 (quantised at load, "
                 "one scale per 32 weights; activations quantised per 32 on the fly)")
      ->check(CLI::IsMember({"f32", "bf16", "int8"}))
      ->capture_default_str();
  app.add_option("--weight-layout", o.weight_layout,
                 "mapped: weight matrices used in place from the memory-mapped checkpoint (a "
                 "row-major copy only where --dtype differs from the file's); packed: copied "
                 "into the panel layout of our packed kernels at load")
      ->check(CLI::IsMember({"mapped", "packed"}))
      ->capture_default_str();
  app.add_option("--routing", o.routing,
                 "Routing of every MoE layer: top-k:K, top-k-raw:K, top-p:P, threshold[:THETA] "
                 "(default: the model's own top-k)");
  app.add_option("--threads", o.threads, "Threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_flag("--json", o.json, "Print one JSON object on stdout (logs go to stderr)");
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Loads the model (and sets threads and routing) as the options say. The routing spec is
/// checked against config.json before the weights are read.
inline std::unique_ptr<models::MoeLm> load_lm(const LmCliOptions& o) {
  DELTAMOE_CHECK(!(o.dtype == "int8" && o.weight_layout == "packed"), "cli",
                 "--weight-layout packed has no int8 form (int8 weights are row-major quantised "
                 "copies): leave --weight-layout at mapped");
  set_num_threads(o.threads);
  std::shared_ptr<const moe::RoutingPolicy> policy;
  if (!o.routing.empty())
    policy = moe::make_policy(o.routing, io::HfConfig::load(o.model).num_experts);
  auto m =
      models::MoeLm::load(o.model, {parse_dtype(o.dtype), o.weight_layout == "packed"
                                                              ? kernels::WeightLayout::packed
                                                              : kernels::WeightLayout::row_major});
  if (policy) m->set_policy(policy);
  return m;
}

}  // namespace deltamoe::cli
