// `deltamoe bench model` (see bench_model.h). As llama-bench: pp = one forward over a prompt
// of random tokens from an empty cache (logits of the last token only), tg = that many
// single-token steps from an empty cache; each repeated, mean and standard deviation of the
// tokens/s of the repetitions, after one untimed warm-up of each.
#include "bench_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "deltamoe/kernels/cpu_features.h"
#include "lm_common.h"
#include "roofline.h"

namespace deltamoe::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// VmRSS or VmHWM of this process in bytes (0 when /proc is not there).
size_t proc_status_bytes(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0)
      return static_cast<size_t>(std::stoull(line.substr(key.size() + 1))) * 1024;
  return 0;
}

struct Series {
  std::vector<double> tps;
  double mean() const {
    double s = 0;
    for (double v : tps) s += v;
    return tps.empty() ? 0.0 : s / static_cast<double>(tps.size());
  }
  double stddev() const {
    if (tps.size() < 2) return 0.0;
    const double m = mean();
    double s = 0;
    for (double v : tps) s += (v - m) * (v - m);
    return std::sqrt(s / static_cast<double>(tps.size() - 1));
  }
};

}  // namespace

namespace {

// One model under test: a weight layout, loaded once, measured over the repetitions.
struct Contender {
  std::string layout;
  std::unique_ptr<models::MoeLm> m;
  double load_s = 0;
  Series pp, tg;
  models::LmStats tg_stats;
  // Batched decode: distinct experts per MoE layer and step (what a step reads), summed.
  double unique_experts = 0, unique_layer_steps = 0;
  size_t kv_bytes = 0;
};

void measure_once(Contender& c, const ModelBenchOptions& o, std::mt19937_64& rng, bool timed,
                  std::vector<float>& logits) {
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.m->vocab_size() - 1));
  const char* tag = timed ? "" : " warm-up";
  if (o.prompt > 0) {
    std::vector<int32_t> toks(static_cast<size_t>(o.prompt));
    for (auto& t : toks) t = pick(rng);
    models::KvCache cache;
    const auto t0 = Clock::now();
    c.m->forward(toks.data(), o.prompt, cache, logits.data(), false);
    const double s = seconds_since(t0);
    if (timed) c.pp.tps.push_back(static_cast<double>(o.prompt) / s);
    std::cerr << "  " << c.layout << " pp" << o.prompt << tag << ": "
              << static_cast<double>(o.prompt) / s << " tokens/s\n";
  }
  if (o.gen > 0) {
    const size_t b = static_cast<size_t>(o.decode_batch);
    std::vector<models::KvCache> caches(b);
    std::vector<models::KvCache*> ptrs;
    for (auto& kc : caches) ptrs.push_back(&kc);
    std::vector<std::vector<int32_t>> step(b, std::vector<int32_t>(1));
    std::vector<float> batch_logits(b == 1 ? 0 : b * static_cast<size_t>(c.m->vocab_size()));
    models::LmStats st;
    st.record_routing = b > 1;
    for (auto& s : step) s[0] = pick(rng);
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < o.gen; ++i) {
      if (b == 1)
        c.m->forward(step[0].data(), 1, caches[0], logits.data(), false, &st);
      else
        c.m->forward_batch(step, ptrs, batch_logits.data(), &st);
      for (auto& s : step) s[0] = pick(rng);
    }
    const double s = seconds_since(t0);
    const double tps = static_cast<double>(o.gen) * static_cast<double>(b) / s;
    if (timed) {
      c.tg.tps.push_back(tps);
      c.tg_stats.moe_rows += st.moe_rows;
      c.tg_stats.routed_experts += st.routed_experts;
      for (const moe::RoutingResult& r : st.routing) {
        std::vector<int32_t> ids = r.expert_ids;
        std::sort(ids.begin(), ids.end());
        c.unique_experts += static_cast<double>(std::unique(ids.begin(), ids.end()) - ids.begin());
        c.unique_layer_steps += 1;
      }
    }
    const models::KvCache& cache = caches[0];
    c.kv_bytes = cache.bytes();
    std::cerr << "  " << c.layout << " tg" << o.gen << (b > 1 ? " x" + std::to_string(b) : "")
              << tag << ": " << tps << " tokens/s\n";
  }
}

// The figures of one contender (the whole report when there is one).
json report(const Contender& c, const ModelBenchOptions& o, double gbps) {
  json out = {{"weight_layout", c.layout},
              {"weight_bytes", c.m->weight_bytes()},
              {"mapped_weight_bytes", c.m->mapped_weight_bytes()},
              {"load_time_ms", 1e3 * c.load_s}};
  if (o.prompt > 0) {
    out["pp_tokens"] = o.prompt;
    out["pp_tokens_per_s"] = c.pp.mean();
    out["pp_tokens_per_s_stddev"] = c.pp.stddev();
  }
  if (o.gen > 0) {
    const double experts = c.tg_stats.mean_experts();
    const auto& cfg = c.m->config();
    const double kv_read = static_cast<double>(cfg.num_hidden_layers) * 2.0 *
                           static_cast<double>(cfg.num_key_value_heads * cfg.head_dim) * 4.0 *
                           (static_cast<double>(o.gen) + 1.0) / 2.0;
    // One step reads the weights once for all its sequences: the distinct experts of each
    // MoE layer, everything else once; KV per sequence.
    const double batch = static_cast<double>(o.decode_batch);
    const double step_experts = o.decode_batch > 1 && c.unique_layer_steps > 0
                                    ? c.unique_experts / c.unique_layer_steps
                                    : experts;
    const double bytes = (c.m->active_weight_bytes(step_experts) + kv_read * batch) / batch;
    const double roofline = gbps * 1e9 / bytes;
    out["tg_tokens"] = o.gen;
    out["decode_batch"] = o.decode_batch;
    out["tg_tokens_per_s"] = c.tg.mean();
    out["tg_tokens_per_s_stddev"] = c.tg.stddev();
    out["mean_experts_per_token"] = experts;
    if (o.decode_batch > 1) out["distinct_experts_per_layer_step"] = step_experts;
    out["read_bandwidth_gbps"] = gbps;
    out["decode_bytes_per_token"] = bytes;
    out["decode_roofline_tokens_per_s"] = roofline;
    out["decode_frac_of_roofline"] = c.tg.mean() / roofline;
    out["kv_cache_bytes"] = c.kv_bytes;
  }
  return out;
}

void print_contender(const json& r, const ModelBenchOptions& o) {
  const std::string layout = r["weight_layout"].get<std::string>();
  std::printf(
      "  [%s] %.2f GB of weights, %.2f GB used in place from the mapping, loaded in %.2f s\n",
      layout.c_str(), r["weight_bytes"].get<double>() / 1e9,
      r["mapped_weight_bytes"].get<double>() / 1e9, r["load_time_ms"].get<double>() / 1e3);
  if (o.prompt > 0)
    std::printf("  [%s] pp%-5lld %9.2f ± %.2f tokens/s\n", layout.c_str(),
                static_cast<long long>(o.prompt), r["pp_tokens_per_s"].get<double>(),
                r["pp_tokens_per_s_stddev"].get<double>());
  if (o.gen > 0)
    std::printf(
        "  [%s] tg%-5lld %9.2f ± %.2f tokens/s   (%.0f%% of the %.1f tokens/s bandwidth roofline "
        "at %.1f GB/s; %.2f experts per token)\n",
        layout.c_str(), static_cast<long long>(o.gen), r["tg_tokens_per_s"].get<double>(),
        r["tg_tokens_per_s_stddev"].get<double>(), 100 * r["decode_frac_of_roofline"].get<double>(),
        r["decode_roofline_tokens_per_s"].get<double>(), r["read_bandwidth_gbps"].get<double>(),
        r["mean_experts_per_token"].get<double>());
}

}  // namespace

int run_model_bench(const ModelBenchOptions& o, const std::string& dtype, int threads,
                    bool json_out) {
  DELTAMOE_CHECK(!o.model.empty(), "bench", "bench model needs --model DIR");
  DELTAMOE_CHECK(o.prompt > 0 || o.gen > 0, "bench", "nothing to measure: -p and -n are both 0");
  DELTAMOE_CHECK(!o.weight_layouts.empty() && o.weight_layouts.size() <= 2, "bench",
                 "--weight-layout takes one layout or two to compare, got ",
                 o.weight_layouts.size());
  std::vector<Contender> runs;
  for (const std::string& layout : o.weight_layouts) {
    LmCliOptions lo;
    lo.model = o.model;
    lo.dtype = dtype;
    lo.routing = o.routing;
    lo.threads = threads;
    lo.weight_layout = layout;
    Contender c;
    // int8 has one layout, quantised row-major copies (load_lm refuses packed): say so.
    c.layout = dtype == "int8" ? "int8_copies" : layout;
    const auto t_load = Clock::now();
    c.m = load_lm(lo);
    c.load_s = seconds_since(t_load);
    runs.push_back(std::move(c));
  }
  const models::MoeLm& m0 = *runs[0].m;
  const int64_t ctx = std::min<int64_t>(m0.config().max_position_embeddings, 65536);
  DELTAMOE_CHECK(o.prompt <= ctx && o.gen <= ctx, "bench", "-p ", o.prompt, " / -n ", o.gen,
                 " exceed the model's context of ", ctx, " tokens");
  std::cerr << "bench model: " << o.model << " (" << io::hf_arch_name(m0.config().arch) << ", "
            << dtype << ", " << threads << " threads)";
  for (const auto& c : runs)
    std::cerr << "; " << c.layout << ": " << static_cast<double>(c.m->weight_bytes()) / 1e9
              << " GB, " << static_cast<double>(c.m->mapped_weight_bytes()) / 1e9
              << " GB in place, loaded in " << c.load_s << " s";
  std::cerr << "\n";
  std::vector<float> logits(static_cast<size_t>(m0.vocab_size()));
  // Every contender sees the same prompts and tokens: one generator per contender, same seed.
  std::vector<std::mt19937_64> rngs(runs.size(), std::mt19937_64(o.seed));
  // Repetitions alternate between the contenders (A B A B), so that a machine whose speed
  // drifts during the run treats both alike.
  for (int rep = -1; rep < o.repetitions; ++rep)  // rep -1: warm-up
    for (size_t i = 0; i < runs.size(); ++i) measure_once(runs[i], o, rngs[i], rep >= 0, logits);
  const size_t rss = proc_status_bytes("VmRSS"), hwm = proc_status_bytes("VmHWM");
  // Decode roofline: bytes of the weights a token reads (routed experts at the measured mean)
  // plus the KV cache read at the mean context of the tg test, over the read bandwidth
  // measured now, in this run.
  const double gbps = o.gen > 0 ? StreamProbe().best_pass_gbps(threads) : 0.0;
  json out = {{"model", o.model},
              {"arch", io::hf_arch_name(m0.config().arch)},
              {"dtype", dtype},
              {"routing", m0.policy().name()},
              {"threads", threads},
              {"cpu", cpu_features().model_name},
              {"repetitions", o.repetitions}};
  std::vector<json> reports;
  for (const auto& c : runs) reports.push_back(report(c, o, gbps));
  out["rss_bytes"] = rss;
  out["peak_rss_bytes"] = hwm;
  if (runs.size() == 1) {
    out.update(reports[0]);
    out["rss_over_weights_and_kv"] =
        static_cast<double>(rss) / static_cast<double>(m0.weight_bytes() + runs[0].kv_bytes);
  } else {
    // Two layouts in one process: resident memory is that of both, so no per-layout ratio.
    out["layouts"] = reports;
    const std::string key = runs[0].layout + "_over_" + runs[1].layout;
    if (o.prompt > 0) out["pp_ratio_" + key] = runs[0].pp.mean() / runs[1].pp.mean();
    if (o.gen > 0) out["tg_ratio_" + key] = runs[0].tg.mean() / runs[1].tg.mean();
  }
  if (json_out) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("model %s (%s, %s, %d threads), CPU %s\n", o.model.c_str(),
              out["arch"].get<std::string>().c_str(), dtype.c_str(), threads,
              cpu_features().model_name.c_str());
  for (const auto& r : reports) print_contender(r, o);
  if (runs.size() == 1) {
    std::printf("  resident %.2f GB = %.2fx (weights %.2f GB + KV cache %.3f GB)\n",
                static_cast<double>(rss) / 1e9, out["rss_over_weights_and_kv"].get<double>(),
                static_cast<double>(m0.weight_bytes()) / 1e9,
                static_cast<double>(runs[0].kv_bytes) / 1e9);
  } else {
    if (o.prompt > 0)
      std::printf("  pp %s / %s = %.3f\n", runs[0].layout.c_str(), runs[1].layout.c_str(),
                  runs[0].pp.mean() / runs[1].pp.mean());
    if (o.gen > 0)
      std::printf("  tg %s / %s = %.3f\n", runs[0].layout.c_str(), runs[1].layout.c_str(),
                  runs[0].tg.mean() / runs[1].tg.mean());
  }
  return 0;
}

}  // namespace deltamoe::cli
