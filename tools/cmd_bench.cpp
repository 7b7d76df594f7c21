// `deltamoe bench moe-layer`: our MoE layer against the naive loop, a same-FLOP SGEMM and the
// machine's ceilings, all measured in one run.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <unistd.h>

#include "bench_model.h"
#include "bench_train_step.h"
#include "command.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "deltamoe/moe/moe_block.h"
#include "onednn_moe.h"
#include "roofline.h"
#include "train_common.h"

namespace deltamoe::cli {
namespace {

using json = nlohmann::json;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Median seconds of fn() over at least `min_reps` runs and `min_seconds` of timed time;
// `between()` runs untimed before each call.
template <typename F, typename B>
double time_median(F&& fn, int min_reps, double min_seconds, int warmup, B&& between) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  double timed = 0;
  while (static_cast<int>(times.size()) < min_reps || timed < min_seconds) {
    between();
    const double t0 = now_s();
    fn();
    times.push_back(now_s() - t0);
    timed += times.back();
    if (times.size() >= 1000) break;
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}
template <typename F>
double time_median(F&& fn, int min_reps, double min_seconds, int warmup = 1) {
  return time_median(fn, min_reps, min_seconds, warmup, [] {});
}

// Evicts the last-level cache (reads a buffer several times its size) so that a decode step
// finds its experts' weights in DRAM, as the next layer of a real model would.
class CacheFlusher {
 public:
  CacheFlusher() : buf_(llc_flush_bytes()) {}
  size_t bytes() const { return buf_.bytes(); }
  // Read by all threads, as the work before a layer in a real model would keep them busy:
  // a flush on one thread would let the others fall asleep and time their wake-up.
  void operator()() {
    const float* p = static_cast<const float*>(buf_.data());
    const int64_t n = static_cast<int64_t>(buf_.bytes() / 4);
    float s = 0;
#pragma omp parallel for reduction(+ : s) num_threads(num_threads())
    for (int64_t i = 0; i < n; i += 16) s += p[i];
    sink_ = s;
  }

 private:
  Storage buf_;
  volatile float sink_ = 0;
};

struct MoeBenchOptions {
  std::vector<int64_t> tokens{1, 16, 128, 512};
  int64_t hidden = 1024, inter = 512, experts = 32, top_k = 8;
  std::string dtype = "auto";  // moe-layer: auto = f32; model: the checkpoint's (native_dtype)
  std::string expert = "swiglu";
  int threads = 2;
  bool json_out = false;
  bool skip_naive = false;
  bool onednn = false;
  double min_seconds = 0.5;
  uint64_t seed = 1;
  std::string torch_json;
};

// Error of y against ref: max |Δ| / max |ref| and Σ|Δ| / Σ|ref|.
std::pair<double, double> rel_errors(const float* y, const float* ref, int64_t n) {
  double max_d = 0, max_r = 0, sum_d = 0, sum_r = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(y[i]) - ref[i]);
    const double mag = std::abs(static_cast<double>(ref[i]));
    max_d = std::max(max_d, d);
    max_r = std::max(max_r, mag);
    sum_d += d;
    sum_r += mag;
  }
  return {max_r > 0 ? max_d / max_r : 0.0, sum_r > 0 ? sum_d / sum_r : 0.0};
}

Tensor random_tokens(int64_t t, int64_t h, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  Tensor x({t, h});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = d(rng);
  return x;
}

// PyTorch times from python/bench_moe_torch.py's JSON, keyed by (tokens, dtype).
std::map<std::pair<int64_t, std::string>, double> load_torch_times(const std::string& path) {
  std::map<std::pair<int64_t, std::string>, double> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  DELTAMOE_CHECK(in.good(), "bench", "cannot read --torch-json file '", path, "'");
  json j;
  try {
    j = json::parse(in);
    for (const auto& r : j.at("results"))
      out[{r.at("tokens").get<int64_t>(), r.at("dtype").get<std::string>()}] =
          r.at("time_ms").get<double>();
  } catch (const json::exception& e) {
    fail("bench", path, ": not the JSON of python/bench_moe_torch.py (", e.what(), ")");
  }
  return out;
}

int run_moe_bench(const MoeBenchOptions& o) {
  set_num_threads(o.threads);
  const DType dtype = parse_dtype(o.dtype);
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::int8, "bench",
                 "--dtype must be f32, bf16 or int8");
  DELTAMOE_CHECK(o.expert == "swiglu" || o.expert == "gelu", "bench",
                 "--expert must be swiglu or gelu");
  DELTAMOE_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "bench", "--top-k must be in 1..--experts");
  const auto kind = o.expert == "swiglu" ? moe::ExpertKind::swiglu : moe::ExpertKind::gelu_mlp;
  const auto torch_ms = load_torch_times(o.torch_json);
  const auto& cpu = cpu_features();

  std::cerr << "bench moe-layer: H=" << o.hidden << " I=" << o.inter << " E=" << o.experts
            << " K=" << o.top_k << " dtype=" << o.dtype << " threads=" << o.threads << " on "
            << cpu.model_name << "\n";
  std::cerr << "  measuring machine ceilings...\n";
  // 2 MiB pages, like the weights, beyond the L3; also the same-bytes stream of the decode rows.
  StreamProbe probe;
  const double bw0 = probe.best_pass_gbps(o.threads);
  const double fma_peak = measure_fma_peak_gflops(o.threads);
  const double bf16_peak = measure_bf16_dot_peak_gflops(o.threads);
  const double int8_peak = dtype == DType::int8 ? measure_int8_dot_peak_gops(o.threads) : 0.0;
  const double amx_peak = measure_amx_bf16_peak_gflops(o.threads);
  std::cerr << "  building weights (" << o.experts << " experts)...\n";
  const auto weights = moe::MoeWeights::random(kind, o.experts, o.hidden, o.inter, o.seed);
  const moe::MoeBlock layer(weights, dtype);
  // The f32 layer is the reference for the error of bf16 and int8 weights.
  std::optional<moe::MoeBlock> f32_layer;
  if (dtype != DType::f32) f32_layer.emplace(weights, DType::f32);
  const moe::TopKRouting policy(o.top_k, true);
  std::mt19937_64 rng(o.seed + 1);
  // oneDNN's matmuls over experts, on our routing (route() is timed with it).
  // Two ways to call it: weights as PyTorch stores them with one run-time-sized primitive,
  // and weights prepacked into oneDNN's own layout with one primitive per row count (its
  // fastest kernels, e.g. AMX, need that); the second when this CPU and dtype allow it.
  std::unique_ptr<cli::OnednnMoe> dnn, dnn_packed;
  if (o.onednn) {
    dnn = std::make_unique<cli::OnednnMoe>(weights, dtype);
    std::cerr << "  oneDNN: " << cli::onednn_version() << ", " << dnn->impl() << "\n";
    try {
      dnn_packed = std::make_unique<cli::OnednnMoe>(weights, dtype, true);
      std::cerr << "  oneDNN prepacked: " << dnn_packed->impl() << "\n";
    } catch (const Error& e) {
      std::cerr << "  oneDNN prepacked: not run (" << e.what() << ")\n";
    }
  }
  moe::RoutingResult dnn_routing;
  std::vector<float> dnn_y;
  const auto run_with = [&](cli::OnednnMoe& d, const Tensor& x) {
    const int64_t t = x.size(0);
    dnn_y.resize(static_cast<size_t>(t * o.hidden));
    layer.route(x.data<float>(), t, policy, dnn_routing);
    d.forward(x.data<float>(), t, dnn_routing, dnn_y.data());
  };
  const auto run_dnn = [&](const Tensor& x) { run_with(*dnn, x); };
  const auto run_packed = [&](const Tensor& x) { run_with(*dnn_packed, x); };

  CacheFlusher flush;
  json rows = json::array();
  for (int64_t t : o.tokens) {
    DELTAMOE_CHECK(t >= 1, "bench", "--tokens values must be >= 1");
    std::cerr << "  tokens=" << t << ": layer" << std::flush;
    // A pool of different inputs so decode touches different experts each time (the same
    // 8 experts every time would sit in L3 and flatter the bandwidth figure).
    const int pool = t == 1 ? 64 : 4;
    std::vector<Tensor> xs;
    for (int i = 0; i < pool; ++i) xs.push_back(random_tokens(t, o.hidden, rng));
    int next = 0;
    moe::MoeStats stats;
    // Decode: the cache is flushed before every step (the weights of the 8 experts chosen
    // last time would otherwise partly sit in the L3 and flatter the roofline figure).
    // Decode is bound by reading the k active experts' weights (+ the router).
    const double decode_bytes =
        static_cast<double>(o.top_k) * static_cast<double>(layer.expert_weight_bytes()) +
        4.0 * static_cast<double>(o.experts * o.hidden);
    double layer_s = 0, stream_s = 0, dnn_s = 0, packed_s = 0;
    // The prepacked variant's primitives for every row count of this pool, created untimed.
    if (dnn_packed)
      for (const Tensor& x : xs) run_packed(x);
    if (t == 1) {
      // Each decode step alternates with a plain read of the same bytes from fresh memory,
      // both after a cache flush, so the two medians see the same machine conditions.
      std::vector<double> lt, st, dt, pt;
      layer.forward(xs[next++ % pool], policy, &stats);
      if (dnn) run_dnn(xs[0]);
      double timed = 0;
      while (lt.size() < 5 || timed < o.min_seconds) {
        flush();
        st.push_back(probe.time_pass_s(static_cast<size_t>(decode_bytes), o.threads));
        flush();
        const double t0 = now_s();
        layer.forward(xs[next++ % pool], policy, &stats);
        lt.push_back(now_s() - t0);
        timed += lt.back() + st.back();
        if (dnn) {
          flush();
          const double t1 = now_s();
          run_dnn(xs[(next - 1) % pool]);
          dt.push_back(now_s() - t1);
        }
        if (dnn_packed) {
          flush();
          const double t1 = now_s();
          run_packed(xs[(next - 1) % pool]);
          pt.push_back(now_s() - t1);
        }
        // A flush of a large L3 costs tens of ms: fewer steps then (medians of 60 still).
        if (lt.size() >= (flush.bytes() > (size_t{256} << 20) ? 60u : 1000u)) break;
      }
      std::sort(lt.begin(), lt.end());
      std::sort(st.begin(), st.end());
      layer_s = lt[lt.size() / 2];
      stream_s = st[st.size() / 2];
      if (dnn) {
        std::sort(dt.begin(), dt.end());
        dnn_s = dt[dt.size() / 2];
      }
      if (dnn_packed) {
        std::sort(pt.begin(), pt.end());
        packed_s = pt[pt.size() / 2];
      }
    } else {
      layer_s =
          time_median([&] { layer.forward(xs[next++ % pool], policy, &stats); }, 5, o.min_seconds);
      if (dnn) dnn_s = time_median([&] { run_dnn(xs[next++ % pool]); }, 5, o.min_seconds);
      if (dnn_packed)
        packed_s = time_median([&] { run_packed(xs[next++ % pool]); }, 5, o.min_seconds);
    }
    const double routed = static_cast<double>(t * o.top_k);
    const double flops = layer.expert_flops(t * o.top_k) + 2.0 * t * o.hidden * o.experts;

    // Same-FLOP SGEMM: [T·k, H] × [H, 3I] (2I for GELU experts): the GEMM work of the layer
    // without routing, as one call to OpenBLAS.
    std::cerr << ", sgemm" << std::flush;
    const int64_t gm = t * o.top_k, gn = (kind == moe::ExpertKind::swiglu ? 3 : 2) * o.inter;
    std::vector<float> a(static_cast<size_t>(gm * o.hidden), 0.5f),
        b(static_cast<size_t>(o.hidden * gn), 0.25f), c(static_cast<size_t>(gm * gn));
    const double sgemm_s = time_median(
        [&] {
          kernels::sgemm(false, false, gm, gn, o.hidden, 1.0f, a.data(), o.hidden, b.data(), gn,
                         0.0f, c.data(), gn);
        },
        5, o.min_seconds);
    const double sgemm_gflops = 2.0 * gm * gn * o.hidden / sgemm_s / 1e9;
    // OpenBLAS's pthreads keep spinning (sched_yield) for tens of ms after a call; let them
    // go to sleep so they do not steal a core from the next measurement.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));

    double naive_s = 0;
    if (!o.skip_naive) {
      std::cerr << ", naive" << std::flush;
      naive_s = time_median([&] { moe::moe_forward_naive(weights, xs[0], policy); }, 1, 0.0, 0);
    }
    double bw = bw0;
    if (t == 1) bw = std::max(bw0, probe.best_pass_gbps(o.threads));  // beside the decode
    std::cerr << "\n";

    const double gflops = flops / layer_s / 1e9;
    json r = {{"tokens", t},
              {"time_ms", layer_s * 1e3},
              {"gflops", gflops},
              {"routed_pairs", static_cast<int64_t>(routed)},
              {"sgemm_same_flops_time_ms", sgemm_s * 1e3},
              {"sgemm_same_flops_gflops", sgemm_gflops},
              {"frac_of_sgemm", gflops / sgemm_gflops},
              {"experts_active",
               std::count_if(stats.tokens_per_expert.begin(), stats.tokens_per_expert.end(),
                             [](int64_t n) { return n > 0; })}};
    if (!o.skip_naive) {
      r["naive_time_ms"] = naive_s * 1e3;
      r["speedup_vs_naive"] = naive_s / layer_s;
    }
    if (dtype == DType::bf16 && bf16_peak > 0) r["frac_of_bf16_dot_peak"] = gflops / bf16_peak;
    if (int8_peak > 0) r["frac_of_int8_dot_peak"] = gflops / int8_peak;
    if (dtype != DType::f32 && amx_peak > 0) r["frac_of_amx_bf16_peak"] = gflops / amx_peak;
    // Errors against the f32 layer on the same input (ours when not f32, and oneDNN's).
    const Tensor ref =
        f32_layer || dnn ? (f32_layer ? *f32_layer : layer).forward(xs[0], policy) : Tensor();
    if (f32_layer) {
      const Tensor y = layer.forward(xs[0], policy);
      const auto [mx, mean] = rel_errors(y.data<float>(), ref.data<float>(), ref.numel());
      r["max_rel_error_vs_f32"] = mx;
      r["mean_rel_error_vs_f32"] = mean;
    }
    if (dnn) {
      run_dnn(xs[0]);
      const auto [mx, mean] = rel_errors(dnn_y.data(), ref.data<float>(), ref.numel());
      r["onednn_time_ms"] = dnn_s * 1e3;
      r["speedup_vs_onednn"] = dnn_s / layer_s;
      r["onednn_max_rel_error_vs_f32"] = mx;
      r["onednn_mean_rel_error_vs_f32"] = mean;
    }
    if (dnn_packed) {
      run_packed(xs[0]);
      const auto [mx, mean] = rel_errors(dnn_y.data(), ref.data<float>(), ref.numel());
      r["onednn_prepacked_time_ms"] = packed_s * 1e3;
      r["speedup_vs_onednn_prepacked"] = packed_s / layer_s;
      r["onednn_prepacked_max_rel_error_vs_f32"] = mx;
      r["onednn_prepacked_mean_rel_error_vs_f32"] = mean;
    }
    if (t == 1) {
      const double bytes = decode_bytes;
      r["active_weight_bytes"] = bytes;
      r["cache_flush_bytes"] = static_cast<double>(flush.bytes());
      r["bandwidth_gbps"] = bw;
      r["achieved_gbps"] = bytes / layer_s / 1e9;
      r["frac_of_bandwidth_roofline"] = bytes / layer_s / 1e9 / bw;
      // The same bytes as one plain parallel read, interleaved with the decode steps.
      r["stream_same_bytes_time_ms"] = stream_s * 1e3;
      r["stream_same_bytes_gbps"] = bytes / stream_s / 1e9;
      r["frac_of_same_bytes_stream"] = stream_s / layer_s;
    }
    auto it = torch_ms.find({t, o.dtype});
    if (it != torch_ms.end()) {
      r["torch_time_ms"] = it->second;
      r["speedup_vs_torch"] = it->second / (layer_s * 1e3);
    }
    rows.push_back(r);
  }

  json out = {{"benchmark", "moe-layer"},
              {"cpu", cpu.model_name},
              {"threads", o.threads},
              {"hidden", o.hidden},
              {"inter", o.inter},
              {"experts", o.experts},
              {"top_k", o.top_k},
              {"dtype", o.dtype},
              {"expert", o.expert},
              {"kernel", kernels::linear_impl_name(dtype)},
              {"bandwidth_gbps", bw0},
              {"fma_peak_gflops", fma_peak},
              {"bf16_dot_peak_gflops", bf16_peak},
              {"results", rows}};
  if (int8_peak > 0) out["int8_dot_peak_gops"] = int8_peak;
  if (amx_peak > 0) out["amx_bf16_peak_gflops"] = amx_peak;
  if (dnn) {
    out["onednn"] = cli::onednn_version();
    out["onednn_impl"] = dnn->impl();
    if (dnn_packed) out["onednn_prepacked_impl"] = dnn_packed->impl();
  }
  if (o.json_out) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf(
      "MoE layer forward: H=%lld I=%lld E=%lld top-%lld, %s experts, %s weights, %d threads\n",
      static_cast<long long>(o.hidden), static_cast<long long>(o.inter),
      static_cast<long long>(o.experts), static_cast<long long>(o.top_k), o.expert.c_str(),
      o.dtype.c_str(), o.threads);
  std::printf(
      "CPU: %s   kernel: %s   read bandwidth %.1f GB/s   FMA peak %.0f GFLOP/s   BF16 dot peak "
      "%.0f GFLOP/s",
      cpu.model_name.c_str(), kernels::linear_impl_name(dtype), bw0, fma_peak, bf16_peak);
  if (amx_peak > 0) std::printf("   AMX-BF16 peak %.0f GFLOP/s", amx_peak);
  std::printf("\n\n");
  std::printf("%8s %10s %9s %12s %12s %14s %10s %12s %12s\n", "tokens", "time_ms", "GFLOP/s",
              "vs naive", "SGEMM GF/s", "frac of SGEMM", "vs torch", "BW roofline", "vs stream");
  for (const auto& r : rows) {
    std::printf("%8lld %10.3f %9.1f %11.1fx %12.1f %13.0f%% ",
                static_cast<long long>(r["tokens"].get<int64_t>()), r["time_ms"].get<double>(),
                r["gflops"].get<double>(),
                r.contains("speedup_vs_naive") ? r["speedup_vs_naive"].get<double>() : 0.0,
                r["sgemm_same_flops_gflops"].get<double>(), 100 * r["frac_of_sgemm"].get<double>());
    if (r.contains("speedup_vs_torch"))
      std::printf("%9.2fx ", r["speedup_vs_torch"].get<double>());
    else
      std::printf("%10s ", "-");
    if (r.contains("frac_of_bandwidth_roofline"))
      std::printf("%11.0f%% %11.0f%%", 100 * r["frac_of_bandwidth_roofline"].get<double>(),
                  100 * r["frac_of_same_bytes_stream"].get<double>());
    else
      std::printf("%12s %12s", "-", "-");
    if (r.contains("onednn_time_ms"))
      std::printf("   oneDNN %.3f ms (ours %.2fx)", r["onednn_time_ms"].get<double>(),
                  r["speedup_vs_onednn"].get<double>());
    if (r.contains("onednn_prepacked_time_ms"))
      std::printf("   oneDNN prepacked %.3f ms (ours %.2fx)",
                  r["onednn_prepacked_time_ms"].get<double>(),
                  r["speedup_vs_onednn_prepacked"].get<double>());
    if (r.contains("max_rel_error_vs_f32"))
      std::printf("   error vs f32: max %.2e, mean %.2e", r["max_rel_error_vs_f32"].get<double>(),
                  r["mean_rel_error_vs_f32"].get<double>());
    std::printf("\n");
  }
  std::printf(
      "\nGFLOP/s counts the expert GEMMs and the router. 'frac of SGEMM': against one OpenBLAS "
      "SGEMM\n"
      "of the same FLOPs ([T*k, H] x [H, 3I]) timed in this run. 'BW roofline': bytes of the k "
      "active\n"
      "experts' weights / time, over the read bandwidth measured in this run (best pass over 512 "
      "MiB).\n"
      "'vs stream': the decode step against a plain parallel read of the same bytes, alternated "
      "with\n"
      "the decode steps (median of each, cache flushed before both). --json for machine output.\n");
  return 0;
}

CommandRegistrar reg(
    "bench",
    "Benchmarks (moe-layer: the MoE layer vs naive, SGEMM and rooflines; model: a language model's "
    "pp/tg tokens/s as llama-bench, decode roofline, resident memory; train-step: a training "
    "step's memory on the heap, freed at last use, and inside a planned arena)",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<MoeBenchOptions>();
      auto mo = std::make_shared<ModelBenchOptions>();
      auto to = std::make_shared<TrainStepBenchOptions>();
      auto what = std::make_shared<std::string>("moe-layer");
      app.add_option("what", *what, "What to benchmark: moe-layer, model or train-step")
          ->check(CLI::IsMember({"moe-layer", "model", "train-step"}))
          ->capture_default_str();
      app.add_option("--kind", to->kind, "train-step: lm or classifier (patch stem)")
          ->check(CLI::IsMember({"lm", "classifier"}))
          ->capture_default_str();
      auto mp = std::make_shared<MemoryPlanCli>();
      mp->mode = "all";
      mp->add(app, /*bench=*/true, "train-step: ");
      app.add_option("--steps", to->steps, "train-step: steps per run (the first is recorded)")
          ->check(CLI::Range(int64_t{2}, int64_t{100000}))
          ->capture_default_str();
      app.add_option("--rounds", to->rounds, "train-step: rounds of the three modes (all)")
          ->check(CLI::Range(1, 100))
          ->capture_default_str();
      app.add_option("--vocab", to->vocab, "train-step: vocabulary (lm)")
          ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
          ->capture_default_str();
      app.add_option("--layers", to->layers, "train-step: decoder / MoE layers")
          ->check(CLI::Range(int64_t{1}, int64_t{256}))
          ->capture_default_str();
      app.add_option("--seq-len", to->seq_len, "train-step: tokens per sequence (lm)")
          ->check(CLI::Range(int64_t{2}, int64_t{1} << 16))
          ->capture_default_str();
      app.add_option("--batch", to->batch,
                     "train-step: sequences (lm, default 16) or images (classifier, default 256) "
                     "per step")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
      app.add_option("--model", mo->model, "model: Hugging Face model directory");
      app.add_option("-p,--n-prompt", mo->prompt, "model: prompt tokens of the pp test (0 = skip)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
          ->capture_default_str();
      app.add_option("-d,--n-depth", mo->depth,
                     "model: tokens already in the KV cache when each pp / tg test starts "
                     "(prefilled untimed, as llama-bench -d)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
          ->capture_default_str();
      app.add_option("-b,--decode-batch", mo->decode_batch,
                     "model: sequences decoding together in the tg test (one batched step each "
                     "token; tokens/s counts all)")
          ->check(CLI::Range(1, 4096))
          ->capture_default_str();
      app.add_option("-n,--n-gen", mo->gen, "model: generated tokens of the tg test (0 = skip)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
          ->capture_default_str();
      app.add_option("-r,--repetitions", mo->repetitions, "model: timed repetitions of each test")
          ->check(CLI::Range(1, 1000))
          ->capture_default_str();
      app.add_option("--routing", mo->routing,
                     "model: routing of every MoE layer (default: the model's own); "
                     "train-step: the routing trained with (default top-k:<--top-k>)");
      app.add_option("--kv-dtype", mo->kv_dtypes,
                     "model: what the KV cache stores, auto (f32 with f32 weights, f16 with bf16 "
                     "or int8 ones), f32 or f16 (half the bytes per position); two, "
                     "comma-separated, load the model twice and alternate their repetitions in "
                     "one process")
          ->delimiter(',')
          ->check(CLI::IsMember({"auto", "f32", "f16"}))
          ->capture_default_str();
      app.add_option("--weight-layout", mo->weight_layouts,
                     "model: mapped (matrices used in place from the mapped checkpoint) or "
                     "packed (copied into our panel layout at load); two, comma-separated, "
                     "load both and alternate their repetitions in one process")
          ->delimiter(',')
          ->check(CLI::IsMember({"mapped", "packed"}))
          ->capture_default_str();
      add_offload_options(app, mo->offload, "model: ");
      add_parallel_option(app, mo->parallel, mo->ep_placement);
      app.add_option("--tokens", o->tokens, "Token counts to measure (several allowed)")
          ->delimiter(',');
      app.add_option("--hidden", o->hidden, "Hidden size H")->check(CLI::PositiveNumber);
      app.add_option("--inter", o->inter, "Expert intermediate size I")->check(CLI::PositiveNumber);
      app.add_option("--experts", o->experts, "Number of experts E")->check(CLI::PositiveNumber);
      app.add_option("--top-k", o->top_k, "Experts per token K")->check(CLI::PositiveNumber);
      app.add_option("--dtype", o->dtype,
                     "Weight dtype: auto (model: the checkpoint's own, bf16 for a bf16 "
                     "checkpoint, else f32; moe-layer: f32), f32, bf16 (f32 accumulation) or "
                     "int8 (one scale per 32 weights; activations quantised per 32; error vs f32 "
                     "reported)")
          ->check(CLI::IsMember({"auto", "f32", "bf16", "int8"}))
          ->capture_default_str();
      app.add_option("--expert", o->expert, "Expert kind: swiglu (Mixtral) or gelu (MLP)")
          ->check(CLI::IsMember({"swiglu", "gelu"}));
      app.add_option("--threads", o->threads,
                     "Threads (model under mpirun with --parallel: per rank, default the cores "
                     "shared by the ranks on the machine)")
          ->check(CLI::Range(1, 1024))
          ->each([mo](const std::string&) { mo->threads_explicit = true; });
      app.add_option("--min-seconds", o->min_seconds, "Minimum timing time per measurement");
      app.add_option("--seed", o->seed, "Seed for weights and inputs");
      app.add_option("--torch-json", o->torch_json,
                     "JSON from python/bench_moe_torch.py to compare with");
      app.add_flag("--onednn", o->onednn,
                   "Also time oneDNN's matmuls in a loop over experts (same routing, inputs and "
                   "dtype; int8: oneDNN's per-row weight and per-batch activation scales), "
                   "twice: weights as stored with a run-time row count, and weights prepacked "
                   "into oneDNN's layout with one primitive per row count (its AMX / AVX-512 "
                   "kernels); alternated with ours; needs a build with libdnnl-dev");
      app.add_flag("--skip-naive", o->skip_naive,
                   "Do not time the naive loop (it is slow at 512 tokens)");
      app.add_flag("--json", o->json_out, "Print one JSON object on stdout (logs go to stderr)");
      return [o, mo, to, mp, what, &app] {
        if (*what == "train-step") {
          // Shape flags shared with moe-layer: train-step has its own defaults unless given.
          TrainStepBenchOptions t = *to;
          t.memory_plan = mp->mode;
          t.slack = mp->slack;
          if (app.count("--hidden")) t.hidden = o->hidden;
          if (app.count("--inter")) t.inter = o->inter;
          if (app.count("--experts")) t.experts = o->experts;
          if (app.count("--top-k")) t.top_k = o->top_k;
          if (app.count("--threads")) t.threads = o->threads;
          if (app.count("--seed")) t.seed = o->seed;
          t.routing = mo->routing;
          t.json = o->json_out;
          return run_train_step_bench(t);
        }
        if (*what == "model") {
          mo->seed = o->seed;
          return run_model_bench(*mo, o->dtype, o->threads, o->json_out);
        }
        DELTAMOE_CHECK(dist::launched_ranks() == 1 && mo->parallel == "none", "bench", "bench ",
                       *what,
                       " runs in one process: --parallel and mpirun are for "
                       "bench model");
        if (o->dtype == "auto") o->dtype = "f32";  // a synthetic layer has no stored dtype
        return run_moe_bench(*o);
      };
    });

}  // namespace
}  // namespace deltamoe::cli
