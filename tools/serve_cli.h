// Options shared by `deltamoe serve` and `deltamoe loadgen --in-process`: the model, routing
// policy and queue settings, and how to build a runtime from them.
#pragma once

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/serve/expert_queue.h"
#include "deltamoe/serve/model.h"

namespace deltamoe::cli {

struct RuntimeOptions {
  std::string model_path;
  bool random_model = false;
  uint64_t seed = 1;
  std::string routing;  // empty: the model's own (checkpoint), top-k:2 for the random model
  std::string mode = "per-expert";
  int64_t queue_size = 32;
  int64_t queue_timeout_us = 200;
  bool adaptive = false;
  double latency_target_us = 5000.0;
  int64_t max_inflight = 2048;
  int64_t max_request_samples = 64;
  int workers = 2;
  int64_t split_min_rows = 16;
  int64_t spin_us = 0;
  bool group_layers = true;

  void add(CLI::App& app) {
    app.add_option("--model", model_path,
                   "Checkpoint written by `deltamoe train` (M.safetensors, M.json beside it)");
    app.add_flag("--random-model", random_model,
                 "Use the built-in random-weights model (the default without --model)");
    app.add_option("--seed", seed, "Random model seed");
    app.add_option(
        "--routing", routing,
        "Routing policy: top-k:K, top-k-raw:K, top-p:P, threshold[:THETA], null-experts:K:M "
        "(default: the policy the model was trained with)");
    app.add_option("--mode", mode,
                   "per-expert (queues per expert) or whole-model (batch before routing); language "
                   "models: continuous (default) or per-expert (queues across decode steps)");
    app.add_option("--queue-size", queue_size,
                   "B: samples per batch (language models: token rows an expert's queue waits "
                   "for)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    app.add_option("--queue-timeout-us", queue_timeout_us,
                   "T: max wait of a queue's oldest sample in us (0 = flush when a worker is free, "
                   "-1 = infinity; language models: a finite wait, and both B and T are "
                   "required with --mode per-expert)")
        ->check(CLI::Validator(
            [](std::string& s) -> std::string {
              try {
                size_t used = 0;
                const long long v = std::stoll(s, &used);
                if (used == s.size() && (v == -1 || (v >= 0 && v <= (1LL << 40)))) return {};
              } catch (const std::exception&) {
              }
              return "value " + s + " is not -1 (infinity) or a wait in [0, 2^40] us";
            },
            "-1 or US >= 0"));
    app.add_flag("--adaptive", adaptive,
                 "Adapt B by AIMD (Clipper): grow while each sample's batch processing time meets "
                 "--latency-target-us, shrink when one misses it (B is then the cap; T still "
                 "bounds the wait)");
    app.add_option(
           "--latency-target-us", latency_target_us,
           "Batch processing time target for --adaptive, in microseconds (queueing excluded)")
        ->capture_default_str();
    app.add_option("--max-inflight", max_inflight, "Admission bound in samples (beyond it: 503)");
    app.add_option("--max-request-images", max_request_samples, "Most images in one request");
    app.add_option("--threads", workers,
                   "Compute threads: the workers running expert batches (classifiers), the "
                   "kernels' threads (language models)")
        ->check(CLI::Range(1, 256))
        ->capture_default_str();
    // A hidden option has no name in CLI11's errors: its validator names it.
    app.add_option("--workers", workers, "alias of --threads")
        ->check(CLI::Validator(
            [](std::string& s) {
              const std::string err = CLI::Range(1, 256)(s);
              return err.empty() ? err : "--workers (alias of --threads): " + err;
            },
            ""))
        ->group("");
    app.add_option("--split-min-rows", split_min_rows,
                   "Share a flushed batch with idle workers when each part keeps at least this "
                   "many samples (0 = never)")
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
    app.add_flag("--group-layers,!--no-group-layers", group_layers,
                 "A worker that takes an expert queue while no other is idle also takes the "
                 "layer's other ready "
                 "queues (default on)");
    app.add_option("--spin-us", spin_us,
                   "An idle worker polls this long (us) before blocking; wakes faster on VMs, "
                   "costs idle CPU (0 = off)")
        ->check(CLI::Range(int64_t{0}, int64_t{100000}));
  }

  std::shared_ptr<const serve::ServeModel> build_model() const {
    if (!model_path.empty()) {
      DELTAMOE_CHECK(!random_model, "serve", "give --model or --random-model, not both");
      return serve::load_serve_model(model_path);
    }
    serve::RandomModelConfig rc;
    rc.seed = seed;
    return serve::make_random_model(rc);
  }

  std::shared_ptr<serve::ExpertQueueRuntime> build() const {
    std::shared_ptr<const serve::ServeModel> model = build_model();
    serve::QueueConfig qc;
    qc.mode = serve::parse_batching_mode(mode);
    qc.max_batch = queue_size;
    qc.timeout_us = queue_timeout_us < 0 ? -1 : queue_timeout_us;
    qc.adaptive = adaptive;
    qc.latency_target_us = latency_target_us;
    qc.max_inflight_samples = max_inflight;
    qc.max_request_samples = max_request_samples;
    qc.workers = workers;
    qc.split_min_rows = split_min_rows;
    qc.spin_us = spin_us;
    qc.group_layers = group_layers;
    return std::make_shared<serve::ExpertQueueRuntime>(model, policies(*model), qc);
  }

  /// The --routing policy in every layer, or the model's own per-layer policies.
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> policies(
      const serve::ServeModel& model) const {
    if (routing.empty()) return model.default_policies();
    return {std::shared_ptr<const moe::RoutingPolicy>(moe::make_policy(routing, model.experts()))};
  }
};

}  // namespace deltamoe::cli
