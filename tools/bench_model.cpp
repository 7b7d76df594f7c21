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

int run_model_bench(const ModelBenchOptions& o, const std::string& dtype, int threads,
                    bool json_out) {
  DELTAMOE_CHECK(!o.model.empty(), "bench", "bench model needs --model DIR");
  DELTAMOE_CHECK(o.prompt > 0 || o.gen > 0, "bench", "nothing to measure: -p and -n are both 0");
  LmCliOptions lo;
  lo.model = o.model;
  lo.dtype = dtype;
  lo.routing = o.routing;
  lo.threads = threads;
  const auto t_load = Clock::now();
  auto m = load_lm(lo);
  const double load_s = seconds_since(t_load);
  const int64_t ctx = std::min<int64_t>(m->config().max_position_embeddings, 65536);
  DELTAMOE_CHECK(o.prompt <= ctx && o.gen <= ctx, "bench", "-p ", o.prompt, " / -n ", o.gen,
                 " exceed the model's context of ", ctx, " tokens");
  std::cerr << "bench model: " << o.model << " (" << io::hf_arch_name(m->config().arch) << ", "
            << static_cast<double>(m->weight_bytes()) / 1e9 << " GB packed " << dtype
            << ", loaded in " << load_s << " s), " << threads << " threads\n";
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(m->vocab_size() - 1));
  std::vector<float> logits(static_cast<size_t>(m->vocab_size()));

  Series pp, tg;
  models::LmStats tg_stats;
  size_t kv_bytes = 0;
  for (int rep = -1; rep < o.repetitions; ++rep) {  // rep -1: warm-up
    if (o.prompt > 0) {
      std::vector<int32_t> toks(static_cast<size_t>(o.prompt));
      for (auto& t : toks) t = pick(rng);
      models::KvCache cache;
      const auto t0 = Clock::now();
      m->forward(toks.data(), o.prompt, cache, logits.data(), false);
      const double s = seconds_since(t0);
      if (rep >= 0) pp.tps.push_back(static_cast<double>(o.prompt) / s);
      std::cerr << "  pp" << o.prompt << (rep < 0 ? " warm-up" : "") << ": "
                << static_cast<double>(o.prompt) / s << " tokens/s\n";
    }
    if (o.gen > 0) {
      models::KvCache cache;
      models::LmStats st;
      int32_t t = pick(rng);
      const auto t0 = Clock::now();
      for (int64_t i = 0; i < o.gen; ++i) {
        m->forward(&t, 1, cache, logits.data(), false, &st);
        t = pick(rng);
      }
      const double s = seconds_since(t0);
      if (rep >= 0) {
        tg.tps.push_back(static_cast<double>(o.gen) / s);
        tg_stats.moe_rows += st.moe_rows;
        tg_stats.routed_experts += st.routed_experts;
      }
      kv_bytes = cache.bytes();
      std::cerr << "  tg" << o.gen << (rep < 0 ? " warm-up" : "") << ": "
                << static_cast<double>(o.gen) / s << " tokens/s\n";
    }
  }
  const size_t rss = proc_status_bytes("VmRSS"), hwm = proc_status_bytes("VmHWM");

  // Decode roofline: bytes of the weights a token reads (routed experts at the measured mean)
  // plus the KV cache read at the mean context of the tg test, over the read bandwidth
  // measured now, in this run.
  json out = {{"model", o.model},
              {"arch", io::hf_arch_name(m->config().arch)},
              {"dtype", dtype},
              {"routing", m->policy().name()},
              {"threads", threads},
              {"cpu", cpu_features().model_name},
              {"repetitions", o.repetitions},
              {"weight_bytes", m->weight_bytes()},
              {"load_time_ms", 1e3 * load_s}};
  if (o.prompt > 0) {
    out["pp_tokens"] = o.prompt;
    out["pp_tokens_per_s"] = pp.mean();
    out["pp_tokens_per_s_stddev"] = pp.stddev();
  }
  if (o.gen > 0) {
    StreamProbe probe;
    const double gbps = probe.best_pass_gbps(threads);
    const double experts = tg_stats.mean_experts();
    const auto& c = m->config();
    const double kv_read = static_cast<double>(c.num_hidden_layers) * 2.0 *
                           static_cast<double>(c.num_key_value_heads * c.head_dim) * 4.0 *
                           (static_cast<double>(o.gen) + 1.0) / 2.0;
    const double bytes = m->active_weight_bytes(experts) + kv_read;
    const double roofline = gbps * 1e9 / bytes;
    out["tg_tokens"] = o.gen;
    out["tg_tokens_per_s"] = tg.mean();
    out["tg_tokens_per_s_stddev"] = tg.stddev();
    out["mean_experts_per_token"] = experts;
    out["read_bandwidth_gbps"] = gbps;
    out["decode_bytes_per_token"] = bytes;
    out["decode_roofline_tokens_per_s"] = roofline;
    out["decode_frac_of_roofline"] = tg.mean() / roofline;
    out["kv_cache_bytes"] = kv_bytes;
  }
  out["rss_bytes"] = rss;
  out["peak_rss_bytes"] = hwm;
  out["rss_over_weights_and_kv"] =
      static_cast<double>(rss) / static_cast<double>(m->weight_bytes() + kv_bytes);
  if (json_out) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("model %s (%s, %s, %d threads), CPU %s\n", o.model.c_str(),
              out["arch"].get<std::string>().c_str(), dtype.c_str(), threads,
              cpu_features().model_name.c_str());
  if (o.prompt > 0)
    std::printf("  pp%-5lld %9.2f ± %.2f tokens/s\n", static_cast<long long>(o.prompt), pp.mean(),
                pp.stddev());
  if (o.gen > 0)
    std::printf(
        "  tg%-5lld %9.2f ± %.2f tokens/s   (%.0f%% of the %.1f tokens/s bandwidth roofline at "
        "%.1f GB/s; "
        "%.2f experts per token)\n",
        static_cast<long long>(o.gen), tg.mean(), tg.stddev(),
        100 * out["decode_frac_of_roofline"].get<double>(),
        out["decode_roofline_tokens_per_s"].get<double>(), out["read_bandwidth_gbps"].get<double>(),
        out["mean_experts_per_token"].get<double>());
  std::printf("  resident %.2f GB = %.2fx (weights %.2f GB + KV cache %.3f GB)\n",
              static_cast<double>(rss) / 1e9, out["rss_over_weights_and_kv"].get<double>(),
              static_cast<double>(m->weight_bytes()) / 1e9, static_cast<double>(kv_bytes) / 1e9);
  return 0;
}

}  // namespace deltamoe::cli
