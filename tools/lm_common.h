// Options and loading shared by the language-model subcommands (generate, perplexity,
// bench model): one flag vocabulary, one place that loads a model directory.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>

#include "command.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/dist/communicator.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/moe/policies.h"

namespace deltamoe::cli {

/// Experts beyond RAM (models/expert_cache.h): generate, perplexity, bench model and serve.
struct OffloadCliOptions {
  std::string expert_cache;  // empty: every expert used from the mapping
  std::string expert_policy = "router";
  bool no_prefetch = false;
  bool substitute = false;
  int io_threads = 4;
  bool drop_page_cache = false;
};

/// Adds --expert-cache, --expert-policy, --no-prefetch, --substitute, --io-threads and
/// --drop-page-cache (`prefix` starts their help, e.g. "Language models: ").
/// "8 experts", or per layer for a pyramid model: "4,8 experts".
inline std::string experts_text(const io::HfConfig& c) {
  if (c.layer_experts.empty()) return std::to_string(c.num_experts) + " experts";
  std::string s;
  for (int64_t e : c.layer_experts) s += (s.empty() ? "" : ",") + std::to_string(e);
  return s + " experts";
}

inline void add_offload_options(CLI::App& app, OffloadCliOptions& o,
                                const std::string& prefix = "") {
  app.add_option("--expert-cache", o.expert_cache,
                 prefix +
                     "Keep routed experts in a cache of this many bytes (4GiB, 500MB) or this "
                     "share of the experts' bytes (25%), read from the checkpoint on demand "
                     "(O_DIRECT); attention, norms, routers and embeddings stay resident. "
                     "Needs --dtype = the checkpoint's dtype (default: off)");
  app.add_option("--expert-policy", o.expert_policy,
                 prefix +
                     "Expert cache eviction: lru, lfu (decayed use counts) or router "
                     "(decayed router probability mass)")
      ->check(CLI::IsMember({"lru", "lfu", "router"}))
      ->capture_default_str();
  app.add_flag("--no-prefetch", o.no_prefetch,
               prefix +
                   "Expert cache: do not prefetch the next layer's predicted experts "
                   "(pre-gating: its router applied to the current hidden state)");
  app.add_flag("--substitute", o.substitute,
               prefix +
                   "Expert cache: on a miss, run the token with its resident experts "
                   "(weights renormalised) instead of waiting; changes outputs");
  app.add_option("--io-threads", o.io_threads, prefix + "Expert cache: reader threads")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("--drop-page-cache", o.drop_page_cache,
               prefix +
                   "Drop the checkpoint's pages from the page cache before loading "
                   "(posix_fadvise DONTNEED), so a measurement reads the disk");
}

/// Drops the page-cache pages of every *.safetensors file in `dir` (best effort).
inline void drop_checkpoint_pages(const std::string& dir) {
  for (const auto& f : std::filesystem::directory_iterator(dir)) {
    if (f.path().extension() != ".safetensors") continue;
    const int fd = ::open(f.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

/// The ExpertCacheOptions the flags ask for (off when --expert-cache is not given).
inline models::ExpertCacheOptions expert_cache_options(const OffloadCliOptions& o) {
  models::ExpertCacheOptions c;
  if (!o.expert_cache.empty()) c = models::parse_expert_cache_budget(o.expert_cache);
  c.policy = models::parse_expert_cache_policy(o.expert_policy);
  c.prefetch = !o.no_prefetch;
  c.substitute = o.substitute;
  c.io_threads = o.io_threads;
  DELTAMOE_CHECK(c.enabled() || (!o.no_prefetch && !o.substitute && o.expert_policy == "router"),
                 "cli", "--expert-policy, --no-prefetch and --substitute need --expert-cache");
  return c;
}

/// The expert cache's configuration and counters (since its last reset_stats()) as JSON,
/// per-token figures over `tokens` token rows.
inline nlohmann::json expert_cache_json(const models::ExpertCache& c, double tokens) {
  const models::ExpertCacheStats s = c.stats();
  const models::ExpertCacheOptions& o = c.options();
  const double t = tokens > 0 ? tokens : 1.0;
  return {{"capacity_bytes", c.capacity_bytes()},
          {"slots", c.slots()},
          {"total_experts", c.total_experts()},
          {"expert_bytes", c.expert_bytes()},
          {"policy", models::expert_cache_policy_name(o.policy)},
          {"prefetch", o.prefetch},
          {"substitute", o.substitute},
          {"io_threads", o.io_threads},
          {"direct_io", c.direct_io()},
          {"requests", s.requests},
          {"hits", s.hits},
          {"late_prefetch_hits", s.late_prefetch},
          {"misses", s.misses},
          {"hit_rate", s.hit_rate()},
          {"reads", s.reads},
          {"bytes_read", s.bytes_read},
          {"bytes_read_per_token", static_cast<double>(s.bytes_read) / t},
          {"demand_bytes_read", s.demand_bytes},
          {"prefetch_reads", s.prefetch_reads},
          {"prefetch_reads_used", s.prefetch_used},
          {"prefetch_reads_cancelled", s.prefetch_cancelled},
          {"prediction_precision", s.precision()},
          {"prediction_recall", s.recall()},
          {"substitutions", s.substitutions},
          {"substitutions_per_token", static_cast<double>(s.substitutions) / t},
          {"evictions", s.evictions},
          {"stall_ms_per_token", 1e3 * s.stall_s / t},
          {"read_busy_s", s.read_s}};
}

/// One line for people from expert_cache_json()'s object: the cache's size and policy, hit
/// rate, bytes read, prefetch precision / recall, stall per token, substitutions.
inline std::string expert_cache_line(const nlohmann::json& e) {
  char buf[400];
  std::snprintf(buf, sizeof buf,
                "expert cache: %lld of %lld experts (%.2f GB, %s, %s), hit rate %.1f%%, %.1f MB "
                "read per token, prefetch precision %.1f%% recall %.1f%%, stall %.1f ms per "
                "token, %lld substitutions",
                e["slots"].get<long long>(), e["total_experts"].get<long long>(),
                e["capacity_bytes"].get<double>() / 1e9, e["policy"].get<std::string>().c_str(),
                e["direct_io"].get<bool>() ? "O_DIRECT" : "buffered",
                100.0 * e["hit_rate"].get<double>(), e["bytes_read_per_token"].get<double>() / 1e6,
                100.0 * e["prediction_precision"].get<double>(),
                100.0 * e["prediction_recall"].get<double>(), e["stall_ms_per_token"].get<double>(),
                e["substitutions"].get<long long>());
  return buf;
}

struct LmCliOptions {
  std::string model;
  std::string dtype = "auto";  // auto (models::MoeLm::native_dtype) | f32 | bf16 | int8
  std::string weight_layout = "mapped";
  std::string kv_dtype = "auto";  // auto (models::MoeLm::auto_kv_dtype) | f32 | f16
  std::string routing;            // empty: the model's own
  int threads = 2;
  bool threads_explicit = false;  // --threads given (else a parallel run shares the cores)
  std::string parallel = "none";
  std::string
      ep_placement;  // empty: balanced under --parallel ep (given with another mode: an error)
  bool json = false;
  OffloadCliOptions offload;
};

/// Adds --parallel and --ep-placement (generate, perplexity, bench model).
inline void add_parallel_option(CLI::App& app, std::string& mode, std::string& placement) {
  app.add_option("--parallel", mode,
                 "How the ranks of `mpirun -np N deltamoe ...` share the model: none (one "
                 "process), ep (expert parallelism: each rank holds 1/N of every MoE layer's "
                 "experts; token rows travel by all-to-all), es (expert slicing: each rank "
                 "holds 1/N of every expert's intermediate dimension; outputs all-reduced), tp "
                 "(tensor slicing: es plus 1/N of the attention heads per rank, with their KV "
                 "cache and output-projection columns; outputs all-reduced), auto (attention as "
                 "tp; each MoE layer's FFN as es or ep, chosen per layer and per pass's token "
                 "count by a cost model of collectives measured at load). Only rank 0 prints")
      ->check(CLI::IsMember({"none", "ep", "es", "tp", "auto"}))
      ->capture_default_str();
  app.add_option("--ep-placement", placement,
                 "Which rank runs which experts under --parallel ep: contiguous (blocks of "
                 "expert ids), balanced (by each expert's load in a 256-token calibration "
                 "prefill of random tokens at load), or dynamic (placed anew in every layer of "
                 "every pass by that pass's load; each rank may read any expert, so for ranks "
                 "of one machine sharing the mapped checkpoint)")
      ->check(CLI::IsMember({"contiguous", "balanced", "dynamic"}));
  show_default(app, {"--ep-placement"}, "balanced");
}

/// Tokens of the calibration prefill of --ep-placement balanced.
constexpr int64_t kPlacementCalibrationTokens = 256;

/// Threads of a rank: --threads when given; under mpirun with --parallel, the machine's
/// hardware threads shared by the ranks on it (one each on 2 cores with -np 2).
inline int rank_threads(int threads, bool explicit_threads, bool parallel) {
  if (explicit_threads || !parallel || dist::launched_local_ranks() <= 1) return threads;
  const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, hw / dist::launched_local_ranks());
}

/// The communicator of `--parallel MODE` (null for none), silencing ranks other than 0.
/// Throws Error("dist") when mpirun started several ranks without --parallel.
inline dist::Communicator* parallel_comm(const std::string& mode) {
  if (mode == "none") {
    DELTAMOE_CHECK(dist::launched_ranks() == 1, "dist", "started on ", dist::launched_ranks(),
                   " ranks by mpirun without --parallel: each rank would run the whole model "
                   "alone; pass --parallel ep or es");
    return nullptr;
  }
  dist::Communicator& c = dist::world();
  silence_rank(c.rank());
  return &c;
}

/// --parallel auto's choice for every MoE layer on a pass of `rows` token rows, with the
/// modelled communication of each layout and the measured collective costs it used.
inline nlohmann::json ffn_choices_json(const models::MoeLm& m, int64_t rows) {
  nlohmann::json layers = nlohmann::json::array();
  int64_t ep = 0;
  for (int64_t l = 0; l < m.layers(); ++l) {
    if (!m.config().is_moe_layer(l)) continue;
    const auto c = m.ffn_choice(l, rows);
    ep += c.layout == models::FfnLayout::ep;
    layers.push_back({{"layer", l},
                      {"layout", c.layout == models::FfnLayout::ep ? "ep" : "es"},
                      {"experts_per_token", c.experts_per_token},
                      {"es_comm_ms", 1e3 * c.es_seconds},
                      {"ep_comm_ms", 1e3 * c.ep_seconds},
                      {"forced", c.forced}});
  }
  const auto curve = [](const dist::CollectiveCost& k) {
    return nlohmann::json{{"latency_us", 1e6 * k.latency_s}, {"bandwidth_gbps", k.bandwidth_gbps}};
  };
  return {{"rows", rows},
          {"ep_layers", ep},
          {"es_layers", static_cast<int64_t>(layers.size()) - ep},
          {"layers", layers},
          {"all_reduce", curve(m.all_reduce_cost())},
          {"all_to_all", curve(m.all_to_all_cost())},
          {"all_gather", curve(m.all_gather_cost())}};
}

/// The "parallel" object of a --json report: layout, ranks, this rank's experts.
inline nlohmann::json parallel_json(const models::MoeLm& m) {
  nlohmann::json j = {{"mode", models::parallel_mode_name(m.parallel())}};
  if (const dist::Communicator* c = m.comm()) {
    j["ranks"] = c->size();
    j["backend"] = c->backend();
    if (m.parallel() != models::ParallelMode::ep) return j;
    const auto& pr = m.placement_report();
    j["ep_placement"] = pr.kind;
    // This rank's share: the experts it holds (converted, packed or mapped) and their bytes
    // with the parts every rank holds.
    int64_t held = 0, all = 0;
    for (int64_t l = 0; l < m.layers(); ++l) {
      if (!m.config().is_moe_layer(l)) continue;
      held += m.held_experts(l);
      all += m.config().num_experts;
    }
    j["held_experts"] = held;
    j["experts"] = all;
    j["held_weight_bytes"] = m.held_weight_bytes();
    if (pr.kind == "balanced") {
      j["calibration_tokens"] = pr.calibration_tokens;
      j["calibration_load_imbalance_contiguous"] = pr.imbalance_contiguous;
      j["calibration_load_imbalance_balanced"] = pr.imbalance_balanced;
      j["released_expert_bytes"] = pr.released_bytes;
    }
  } else {
    j["ranks"] = 1;
  }
  return j;
}

/// Adds --kv-dtype (generate, perplexity, bench model, serve).
inline void add_kv_dtype_option(CLI::App& app, std::string& kv_dtype,
                                const std::string& prefix = "") {
  app.add_option("--kv-dtype", kv_dtype,
                 prefix +
                     "What the KV cache stores: auto (f32 with f32 weights, f16 with bf16 or "
                     "int8 ones), f32 (exact) or f16 (half the memory per position and half "
                     "the bytes each decode step reads from the cache; keys and values rounded "
                     "to f16)")
      ->check(CLI::IsMember({"auto", "f32", "f16"}))
      ->capture_default_str();
}

inline void add_lm_options(CLI::App& app, LmCliOptions& o) {
  app.add_option("--model", o.model,
                 "Hugging Face model directory (config.json, *.safetensors, tokenizer)")
      ->required();
  app.add_option("--dtype", o.dtype,
                 "Weight dtype the kernels compute with: auto (the checkpoint's own: bf16 for a "
                 "bf16 checkpoint, used in place from the file; f32 for f32 and f16 ones), f32, "
                 "bf16, or int8 (quantised at load, one scale per 32 weights; activations "
                 "quantised per 32 on the fly)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "int8"}))
      ->capture_default_str();
  app.add_option("--weight-layout", o.weight_layout,
                 "mapped: weight matrices used in place from the memory-mapped checkpoint (a "
                 "row-major copy only where --dtype differs from the file's); packed: copied "
                 "into the panel layout of our packed kernels at load")
      ->check(CLI::IsMember({"mapped", "packed"}))
      ->capture_default_str();
  add_kv_dtype_option(app, o.kv_dtype);
  app.add_option("--routing", o.routing,
                 "Routing of every MoE layer: top-k:K, top-k-raw:K, top-p:P, threshold[:THETA] "
                 "(default: the model's own top-k)");
  app.add_option("--threads", o.threads,
                 "Threads (per rank; under mpirun with --parallel the default is the cores "
                 "shared by the ranks on the machine)")
      ->check(CLI::Range(1, 1024))
      ->each([&o](const std::string&) { o.threads_explicit = true; })
      ->capture_default_str();
  app.add_flag("--json", o.json, "Print one JSON object on stdout (logs go to stderr)");
  add_offload_options(app, o.offload);
  add_parallel_option(app, o.parallel, o.ep_placement);
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// --dtype with "auto" resolved for the checkpoint in `model_dir` (models::MoeLm::native_dtype).
inline std::string resolved_dtype(const std::string& dtype, const std::string& model_dir) {
  return dtype == "auto" ? std::string(dtype_name(models::MoeLm::native_dtype(model_dir))) : dtype;
}
/// --kv-dtype with "auto" resolved for weights of the (resolved) `dtype`
/// (models::MoeLm::auto_kv_dtype).
inline std::string resolved_kv_dtype(const std::string& kv_dtype, const std::string& dtype) {
  return kv_dtype == "auto"
             ? std::string(dtype_name(models::MoeLm::auto_kv_dtype(parse_dtype(dtype))))
             : kv_dtype;
}

/// Loads the model (and sets threads and routing) as the options say. The routing spec is
/// checked against config.json before the weights are read.
inline std::unique_ptr<models::MoeLm> load_lm(const LmCliOptions& o) {
  DELTAMOE_CHECK(!(o.dtype == "int8" && o.weight_layout == "packed"), "cli",
                 "--weight-layout packed has no int8 form (int8 weights are row-major quantised "
                 "copies): leave --weight-layout at mapped");
  DELTAMOE_CHECK(o.ep_placement.empty() || o.parallel == "ep", "cli", "--ep-placement ",
                 o.ep_placement, " places experts for --parallel ep, not --parallel ", o.parallel);
  dist::Communicator* comm = parallel_comm(o.parallel);
  set_num_threads(rank_threads(o.threads, o.threads_explicit, comm != nullptr));
  // Checked against every MoE layer's expert count before the weights are read; each layer
  // then gets its own policy (a pyramid model's layers differ in size).
  std::optional<moe::PolicySpec> spec;
  if (!o.routing.empty()) {
    const io::HfConfig cfg = io::HfConfig::load(o.model);
    spec = moe::parse_policy_spec(o.routing, cfg.num_experts);
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      if (cfg.is_moe_layer(l))
        (void)moe::make_layer_policy(*spec, cfg.experts_in_layer(l), cfg.null_experts);
  }
  models::LmOptions lo;
  const std::string dtype = resolved_dtype(o.dtype, o.model);
  lo.dtype = parse_dtype(dtype);
  lo.layout = o.weight_layout == "packed" ? kernels::WeightLayout::packed
                                          : kernels::WeightLayout::row_major;
  lo.expert_cache = expert_cache_options(o.offload);
  lo.kv_dtype = parse_dtype(resolved_kv_dtype(o.kv_dtype, dtype));
  if (comm) {
    lo.parallel = o.parallel == "es"     ? models::ParallelMode::es
                  : o.parallel == "tp"   ? models::ParallelMode::tp
                  : o.parallel == "auto" ? models::ParallelMode::automatic
                                         : models::ParallelMode::ep;
    lo.comm = comm;
  }
  if (o.offload.drop_page_cache) drop_checkpoint_pages(o.model);
  auto m = models::MoeLm::load(o.model, lo);
  if (spec) m->set_policy(*spec);
  const bool ep = m->parallel() == models::ParallelMode::ep;
  const std::string placement = o.ep_placement.empty() ? "balanced" : o.ep_placement;
  if (ep && placement == "dynamic") m->set_dynamic_placement(true);
  if (ep && placement == "balanced") {
    const int64_t n =
        std::min<int64_t>(kPlacementCalibrationTokens, m->config().max_position_embeddings - 1);
    const auto [before, after] = m->balance_placement(n, /*seed=*/12345);
    std::fprintf(stderr,
                 "parallel: experts placed by load on %d ranks (%lld-token calibration): busiest "
                 "rank %.2fx the mean with contiguous blocks, %.2fx balanced\n",
                 comm->size(), static_cast<long long>(n), before, after);
  }
  return m;
}

}  // namespace deltamoe::cli
