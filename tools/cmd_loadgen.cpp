// `deltamoe loadgen`: open-loop Poisson or closed-loop load, over loopback HTTP or in-process.
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>
#include <vector>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/idx.h"
#include "deltamoe/io/output.h"
#include "deltamoe/serve/llm_loadgen.h"
#include "deltamoe/serve/loadgen.h"
#include "serve_cli.h"

namespace {

// The machine's own stall floor: `threads` threads spin reading the clock for `seconds` and
// record every gap between two reads. On a VM whose host preempts the vCPUs, a thread that
// never blocks still loses the CPU for milliseconds at a time; a request in flight during
// such a gap waits for it, whatever the server does, so this bounds how low p99 can go here.
std::string stall_probe_json(int threads, double seconds) {
  using clk = std::chrono::steady_clock;
  struct Gaps {
    int64_t over_100us = 0, over_1ms = 0, over_5ms = 0;
    double max_us = 0.0, lost_us = 0.0;  // lost: time in gaps > 100 µs
  };
  std::vector<Gaps> per(static_cast<size_t>(threads));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&per, t, seconds] {
      Gaps& g = per[static_cast<size_t>(t)];
      const auto start = clk::now(), stop = start + std::chrono::duration_cast<clk::duration>(
                                                        std::chrono::duration<double>(seconds));
      for (auto last = start, now = start; now < stop; last = now) {
        now = clk::now();
        const double us = std::chrono::duration<double, std::micro>(now - last).count();
        if (us > 100) {
          ++g.over_100us;
          g.lost_us += us;
        }
        if (us > 1000) ++g.over_1ms;
        if (us > 5000) ++g.over_5ms;
        g.max_us = std::max(g.max_us, us);
      }
    });
  for (auto& th : pool) th.join();
  nlohmann::json j;
  Gaps all;
  for (const Gaps& g : per) {
    all.over_100us += g.over_100us;
    all.over_1ms += g.over_1ms;
    all.over_5ms += g.over_5ms;
    all.max_us = std::max(all.max_us, g.max_us);
    all.lost_us += g.lost_us;
  }
  const double thread_s = seconds * threads;
  j["mode"] = "stall-probe";
  j["threads"] = threads;
  j["duration_s"] = seconds;
  j["gaps_over_100us_per_s"] = static_cast<double>(all.over_100us) / thread_s;
  j["gaps_over_1ms_per_s"] = static_cast<double>(all.over_1ms) / thread_s;
  j["gaps_over_5ms_per_s"] = static_cast<double>(all.over_5ms) / thread_s;
  j["max_gap_ms"] = all.max_us / 1000.0;
  j["lost_share"] = all.lost_us / 1e6 / thread_s;
  return j.dump();
}

// Per-sample time of each model call at batch size m, single-threaded (a worker's view): the
// service curve that decides how much batching can buy on this machine.
std::string model_curve_json(const deltamoe::cli::RuntimeOptions& opts) {
  using clk = std::chrono::steady_clock;
  deltamoe::set_blas_threads(1);
  const auto model = opts.build_model();
  const int64_t d = model->hidden(), r = model->router_outputs(), c = model->classes();
  nlohmann::json rows = nlohmann::json::array();
  const auto x0 = deltamoe::serve::synthetic_images(256, 1);
  for (int64_t m = 1; m <= 256; m *= 2) {
    std::vector<float> h(static_cast<size_t>(m * d)), u(static_cast<size_t>(m * d)),
        lg(static_cast<size_t>(m * r)), y(static_cast<size_t>(m * d)),
        p(static_cast<size_t>(m * c));
    const int iters = static_cast<int>(std::max<int64_t>(20, 4096 / m));
    auto time_us = [&](auto&& fn) {
      fn(0);  // warm-up
      const auto t0 = clk::now();
      for (int i = 0; i < iters; ++i) fn(i);
      return std::chrono::duration<double, std::micro>(clk::now() - t0).count() / iters /
             static_cast<double>(m);
    };
    const double stem = time_us([&](int) { model->stem(x0.data(), m, h.data()); });
    const double gate =
        time_us([&](int i) { model->gate(i % model->layers(), h.data(), m, u.data(), lg.data()); });
    const double expert = time_us([&](int i) {
      model->expert(i % model->layers(), i % model->experts(), u.data(), m, y.data());
    });
    const double head = time_us([&](int) { model->head(h.data(), m, p.data()); });
    rows.push_back({{"batch", m},
                    {"stem_us_per_sample", stem},
                    {"gate_us_per_sample", gate},
                    {"expert_us_per_sample", expert},
                    {"head_us_per_sample", head}});
  }
  return nlohmann::json({{"model", model->name()}, {"layers", model->layers()}, {"curve", rows}})
      .dump();
}

// "N" or "MIN:MAX" token counts for --prompt-tokens / --output-tokens.
std::pair<int64_t, int64_t> token_range(const std::string& flag, const std::string& v) {
  try {
    const auto colon = v.find(':');
    size_t used = 0;
    const int64_t lo = std::stoll(v.substr(0, colon), &used);
    DELTAMOE_CHECK(used == (colon == std::string::npos ? v.size() : colon), "cli", "");
    int64_t hi = lo;
    if (colon != std::string::npos) {
      hi = std::stoll(v.substr(colon + 1), &used);
      DELTAMOE_CHECK(used == v.size() - colon - 1, "cli", "");
    }
    DELTAMOE_CHECK(lo >= 1 && lo <= hi && hi <= (1 << 20), "cli", "");
    return {lo, hi};
  } catch (const std::exception&) {
    deltamoe::fail("cli", flag, ": expected N or MIN:MAX with 1 ≤ MIN ≤ MAX ≤ 1048576, got '", v,
                   "'");
  }
}

// The report is printed either way, but a run in which no request was answered is a failure,
// not a measurement: one line naming what went wrong, exit 1.
int none_answered_status(int64_t sent, int64_t ok, const std::map<std::string, int64_t>& errors) {
  if (sent == 0 || ok > 0) return 0;
  std::string why;
  for (const auto& [kind, n] : errors)
    why += (why.empty() ? "" : ", ") + kind + ": " + std::to_string(n);
  std::cerr << "deltamoe: error: [loadgen] every request failed (" << sent << " sent; "
            << (why.empty() ? "no answers" : why) << ")\n";
  return 1;
}

// --openai: LLM traffic against an OpenAI-compatible server.
int run_openai_load(const std::string& url, deltamoe::serve::LlmLoadConfig c, bool json,
                    const std::string& latencies_out, const std::string& timeline_out) {
  DELTAMOE_CHECK(!url.empty(), "loadgen", "--openai needs --url http://127.0.0.1:PORT");
  if (!latencies_out.empty()) deltamoe::io::check_writable(latencies_out, "loadgen");
  if (!timeline_out.empty()) deltamoe::io::check_writable(timeline_out, "loadgen");
  const auto r = deltamoe::serve::run_llm_http_load(url, c);
  const std::string out = deltamoe::serve::llm_load_result_json(r, c);
  if (!latencies_out.empty()) {
    std::string text;
    for (double v : r.e2e_ms) text += std::to_string(v) + "\n";
    deltamoe::cli::write_file_atomic(latencies_out, text);
  }
  if (!timeline_out.empty())
    deltamoe::cli::write_file_atomic(timeline_out, deltamoe::serve::llm_load_timeline_csv(r));
  std::cout << (json ? out : nlohmann::json::parse(out).dump(2)) << std::endl;
  return none_answered_status(r.sent, r.ok, r.errors);
}

deltamoe::cli::CommandRegistrar reg(
    "loadgen", "Load generator for deltamoe serve (loopback HTTP or in-process)",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto opts = std::make_shared<deltamoe::cli::RuntimeOptions>();
      auto lc = std::make_shared<deltamoe::serve::LoadConfig>();
      lc->warmup_s = 0.25;
      auto url = std::make_shared<std::string>();
      auto in_process = std::make_shared<bool>(false);
      auto json = std::make_shared<bool>(false);
      auto latencies_out = std::make_shared<std::string>();
      auto images_idx = std::make_shared<std::string>();
      auto model_curve = std::make_shared<bool>(false);
      auto stall_probe = std::make_shared<bool>(false);
      auto openai = std::make_shared<bool>(false);
      auto llm = std::make_shared<deltamoe::serve::LlmLoadConfig>();
      auto prompt_tokens = std::make_shared<std::string>("32:128");
      auto output_tokens = std::make_shared<std::string>("32:128");
      app.add_flag("--openai", *openai,
                   "LLM traffic: POST /v1/completions (token-id prompts, streamed) to an "
                   "OpenAI-compatible server; reports TTFT, TPOT, end-to-end and goodput");
      app.add_option("--prompt-tokens", *prompt_tokens,
                     "--openai: prompt tokens per request, N or MIN:MAX (uniform)")
          ->capture_default_str();
      app.add_option("--output-tokens", *output_tokens,
                     "--openai: generated tokens per request, N or MIN:MAX (uniform; ignore_eos)")
          ->capture_default_str();
      auto prompt_ids = std::make_shared<std::string>("10:249");
      app.add_option("--prompt-ids", *prompt_ids,
                     "--openai: prompt token ids drawn uniformly from MIN:MAX (the default fits "
                     "any vocabulary of 250+ ids; in byte-fallback tokenizers it is mostly byte "
                     "tokens, whose answers may stream no text until a run of byte tokens ends)")
          ->capture_default_str();
      app.add_flag("!--no-stream", llm->stream, "--openai: unstreamed responses");
      app.add_option("--temperature", llm->temperature, "--openai: sampling temperature")
          ->check(CLI::Range(0.0, 2.0))
          ->capture_default_str();
      app.add_option("--slo-ttft-ms", llm->slo_ttft_ms, "--openai: time-to-first-token objective")
          ->check(CLI::PositiveNumber)
          ->capture_default_str();
      app.add_option("--slo-tpot-ms", llm->slo_tpot_ms, "--openai: time-per-output-token objective")
          ->check(CLI::PositiveNumber)
          ->capture_default_str();
      app.add_option("--model-name", llm->model, "--openai: the \"model\" field sent");
      app.add_option("--then-rate", llm->then_rate_rps,
                     "--openai open loop: after --duration, arrivals at this rate (requests/s) "
                     "for --then-duration s; the report gives recovery_s")
          ->check(CLI::PositiveNumber);
      app.add_option("--then-duration", llm->then_duration_s,
                     "--openai open loop: seconds of the second phase (max 600)")
          ->check(CLI::Range(0.0, 600.0));
      deltamoe::cli::show_default(app, {"--then-rate", "--then-duration"}, "none");
      auto timeline_out = std::make_shared<std::string>();
      app.add_option("--timeline-out", *timeline_out,
                     "--openai: write every request as CSV (scheduled_s, done_s, status, ttft_ms, "
                     "tpot_ms, met_slo)");
      app.add_option("--url", *url, "Server URL, loopback only (http://127.0.0.1:PORT)");
      app.add_flag("--in-process", *in_process,
                   "Drive a runtime in this process (no HTTP); takes the serve options");
      CLI::Option* rate_opt = app.add_option(
          "--rate", lc->rate_rps,
          "Open loop: mean Poisson arrival rate, requests/s (default 100; --openai: 2)");
      app.add_option("--duration", lc->duration_s, "Seconds of arrivals (max 600)");
      app.add_flag("--closed-loop", lc->closed_loop,
                   "Closed loop: keep --concurrency requests outstanding");
      app.add_option("--concurrency", lc->concurrency,
                     "Closed loop: outstanding requests; HTTP open loop: sender threads");
      app.add_option("--images", lc->images_per_request, "Images per request");
      app.add_flag("!--arrays", lc->base64, "Send images as JSON arrays instead of base64");
      app.add_flag("!--no-keep-alive", lc->keep_alive, "HTTP: a new connection per request");
      app.add_option("--slo-ms", lc->slo_ms, "Latency objective for slo_attainment");
      CLI::Option* grace_opt = app.add_option(
          "--grace", lc->grace_s,
          "Seconds to wait for answers after --duration (default 30; --openai: 120)");
      app.add_option(
             "--warmup", lc->warmup_s,
             "In-process: seconds of the same load before the measured --duration (not counted; "
             "default 0.25)")
          ->check(CLI::Range(0.0, 60.0));
      app.add_option(
             "--sender-tick-us", lc->sender_tick_us,
             "In-process open loop: the sender wakes at most this often and sends what is due "
             "(lateness counts in latency; each wake costs CPU the workers need)")
          ->check(CLI::Range(int64_t{0}, int64_t{10000}));
      app.add_option("--load-seed", lc->seed, "Seed of arrivals and images");
      app.add_option("--images-idx", *images_idx,
                     "Send images from this IDX file (e.g. " +
                         std::string(deltamoe::io::kFashionMnistDir) +
                         "/t10k-images-idx3-ubyte.gz; first 1024); default synthetic");
      app.add_flag("--stall-probe", *stall_probe,
                   "Instead of load: spin --threads threads for --duration s and report the gaps "
                   "between clock "
                   "reads (the machine's own stall floor under any server)");
      app.add_flag(
          "--model-curve", *model_curve,
          "Instead of load: time the model's calls alone at batch sizes 1..256 (per-sample us)");
      app.add_flag("--json", *json, "Print one JSON object on stdout");
      app.add_option("--latencies-out", *latencies_out,
                     "Write every answered request's latency (ms), one per line");
      opts->add(app);
      return [opts, lc, url, in_process, json, latencies_out, images_idx, model_curve, stall_probe,
              openai, llm, prompt_tokens, output_tokens, prompt_ids, rate_opt, grace_opt,
              timeline_out]() {
        if (*openai) {
          DELTAMOE_CHECK(!*in_process, "loadgen", "--openai runs over HTTP: drop --in-process");
          auto c = *llm;
          if (rate_opt->count() > 0) c.rate_rps = lc->rate_rps;
          c.duration_s = lc->duration_s;
          c.closed_loop = lc->closed_loop;
          c.concurrency = lc->concurrency;
          if (grace_opt->count() > 0) c.grace_s = lc->grace_s;
          c.seed = lc->seed;
          std::tie(c.prompt_min, c.prompt_max) = token_range("--prompt-tokens", *prompt_tokens);
          std::tie(c.output_min, c.output_max) = token_range("--output-tokens", *output_tokens);
          const auto [id_lo, id_hi] = token_range("--prompt-ids", *prompt_ids);
          c.vocab_lo = static_cast<int32_t>(id_lo);
          c.vocab_hi = static_cast<int32_t>(id_hi + 1);
          return run_openai_load(*url, c, *json, *latencies_out, *timeline_out);
        }
        if (*stall_probe) {
          DELTAMOE_CHECK(lc->duration_s > 0 && lc->duration_s <= 600, "loadgen",
                         "--duration must be in (0, 600] s");
          std::cout << stall_probe_json(opts->workers, lc->duration_s) << std::endl;
          return 0;
        }
        if (*model_curve) {
          std::cout << model_curve_json(*opts) << std::endl;
          return 0;
        }
        if (!latencies_out->empty()) deltamoe::io::check_writable(*latencies_out, "loadgen");
        if (!images_idx->empty()) {
          const auto idx = deltamoe::io::read_idx(*images_idx, 3);
          DELTAMOE_CHECK(idx.dims[1] * idx.dims[2] == 784, "loadgen", *images_idx,
                         ": images are not 28x28");
          const size_t n = std::min<size_t>(1024, static_cast<size_t>(idx.dims[0]));
          lc->image_pool.assign(idx.data.begin(),
                                idx.data.begin() + static_cast<std::ptrdiff_t>(n * 784));
        }
        deltamoe::serve::LoadResult r;
        std::string extra = "{}";
        if (*in_process) {
          DELTAMOE_CHECK(url->empty(), "loadgen", "give --url or --in-process, not both");
          auto runtime = opts->build();
          r = deltamoe::serve::run_inprocess_load(*runtime, *lc);
          // The runtime's counters over the measured window only: the warm-up's batches and the
          // final drain's partial ones (T = ∞) would otherwise pull the mean batch and service
          // time down.
          const auto st = deltamoe::serve::runtime_stats_between(r.stats_at_window_start,
                                                                 r.stats_at_window_end);
          auto ej = nlohmann::json::parse(deltamoe::serve::runtime_stats_json(st));
          ej["routing"] = runtime->policy().name();
          ej["batching"] = deltamoe::serve::batching_mode_name(runtime->config().mode);
          ej["queue_size"] = opts->queue_size;
          ej["queue_timeout_us"] = opts->queue_timeout_us;
          ej["adaptive"] = opts->adaptive;
          // Share of the workers' time in the window spent running batches (the rest: waiting,
          // locking).
          const double workers = static_cast<double>(runtime->config().workers);
          double busy_us = 0.0;
          for (const auto& q : st.queues) busy_us += q.busy_us;
          const double worker_us = lc->duration_s * 1e6 * workers;
          ej["worker_busy_share"] = worker_us > 0 ? busy_us / worker_us : 0.0;
          // Wave service time: one stem batch of the realised size through every stage when the
          // workers have nothing else to do (its expert batches shared among the workers). The
          // latency target's "batch service time" for a multi-stage pipeline.
          const double stem_runs = ej.value("stem_runs", 0.0),
                       expert_runs = ej.value("expert_runs", 0.0);
          ej["wave_service_ms"] = ej.value("mean_stem_service_ms", 0.0) +
                                  (stem_runs > 0 ? expert_runs / stem_runs : 0.0) *
                                      ej.value("mean_expert_service_ms", 0.0) / workers;
          ej["workers"] = runtime->config().workers;
          extra = ej.dump();
        } else {
          DELTAMOE_CHECK(!url->empty(), "loadgen",
                         "give --url http://127.0.0.1:PORT or --in-process");
          r = deltamoe::serve::run_http_load(*url, *lc);
        }
        const std::string out = deltamoe::serve::load_result_json(r, *lc, extra);
        if (!latencies_out->empty()) {
          std::string text;
          for (double v : r.latency_us) text += std::to_string(v / 1000.0) + "\n";
          deltamoe::cli::write_file_atomic(*latencies_out, text);
        }
        if (*json) {
          std::cout << out << std::endl;
        } else {
          const auto j = nlohmann::json::parse(out);
          std::cout << j.dump(2) << std::endl;
        }
        return none_answered_status(r.sent, r.ok, r.errors);
      };
    });

}  // namespace
