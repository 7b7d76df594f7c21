// `deltamoe eval`: evaluate a trained MoE classifier on the Fashion-MNIST test set, with its
// own routing or another policy.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/output.h"
#include "deltamoe/models/moe_classifier.h"
#include "lm_common.h"
#include "models/data_shim.h"
#include "train_common.h"

namespace {

using namespace deltamoe;

struct EvalCliOptions {
  std::string model, predictions_out, data_dir = "/usr/share/datasets/fashion-mnist";
  cli::RoutingCli routing;  // empty: the model's own
  int64_t batch = 1000;
  float null_bias = 0;
  int threads = 2;
  bool threads_explicit = false;
  std::string parallel = "none";
  int repeat = 1;
  bool json = false;
};

deltamoe::cli::CommandRegistrar reg(
    "eval", "Evaluate a trained MoE classifier on the test set (accuracy, experts used, speed)",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<EvalCliOptions>();
      app.add_option("--model", o->model, "checkpoint M.safetensors (with M.json beside it)")
          ->required();
      o->routing.add(app, "",
                     "calibrate the policy's P, THETA or null bias on the validation split to "
                     "this mean K (top-p, threshold, null-experts)");
      app.add_option("--null-bias", o->null_bias, "null-experts selection bias");
      app.add_option("--batch", o->batch, "evaluation batch size")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
          ->capture_default_str();
      app.add_option("--threads", o->threads,
                     "threads (per rank under mpirun with --parallel: default the cores shared "
                     "by the ranks on the machine)")
          ->check(CLI::Range(1, 1024))
          ->each([o](const std::string&) { o->threads_explicit = true; })
          ->capture_default_str();
      app.add_option("--parallel", o->parallel,
                     "none, or ep under `mpirun -np N`: each MoE layer's experts split over the "
                     "ranks, token rows sent to them by all-to-all; only rank 0 prints")
          ->check(CLI::IsMember({"none", "ep"}))
          ->capture_default_str();
      app.add_option("--repeat", o->repeat, "timed passes over the test set; samples/s is the best")
          ->check(CLI::Range(1, 1000))
          ->capture_default_str();
      app.add_option("--data-dir", o->data_dir, "Fashion-MNIST directory");
      app.add_option("--predictions-out", o->predictions_out,
                     "CSV index,label,predicted,experts_used for every test sample");
      app.add_flag("--json", o->json, "print one JSON object on stdout");
      cli::show_default(app, {"--target-k"}, "none");
      app.parse_complete_callback([&app, o] { o->routing.check(app); });
      return [o]() {
        dist::Communicator* comm = cli::parallel_comm(o->parallel);
        const bool writer = !comm || comm->rank() == 0;  // one rank writes files
        if (!o->predictions_out.empty() && writer) io::check_writable(o->predictions_out, "eval");
        set_num_threads(cli::rank_threads(o->threads, o->threads_explicit, comm != nullptr));
        cli::keep_freed_memory();
        auto model = models::MoeClassifier::load(o->model);
        const auto data = models::detail::load_data(o->data_dir);
        if (!o->routing.routing.empty()) {
          moe::PolicySpec s = o->routing.spec(
              model.config().experts, model.config().router_outputs() - model.config().experts);
          s.null_bias = o->null_bias;
          const int64_t n = data.train.images.size(0);
          models::calibrate_policy(model, s, data.train.images.slice(n - 5000, n));
        }
        // Warm-up pass (page faults, BLAS buffers) so samples/s measures steady state.
        models::evaluate(
            model, data.test.images.slice(0, std::min<int64_t>(o->batch, 1000)),
            std::vector<int32_t>(data.test.labels.begin(),
                                 data.test.labels.begin() + std::min<int64_t>(o->batch, 1000)),
            o->batch, nullptr, comm);
        auto r =
            models::evaluate(model, data.test.images, data.test.labels, o->batch, nullptr, comm);
        for (int rep = 1; rep < o->repeat; ++rep) {
          const auto again =
              models::evaluate(model, data.test.images, data.test.labels, o->batch, nullptr, comm);
          if (again.seconds < r.seconds) {
            r.seconds = again.seconds;
            r.samples_per_s = again.samples_per_s;
          }
        }
        if (!o->predictions_out.empty() && writer) {
          std::ostringstream csv;
          csv << "index,label,predicted,experts_used\n";
          for (size_t i = 0; i < r.predicted.size(); ++i)
            csv << i << ',' << data.test.labels[i] << ',' << r.predicted[i] << ','
                << r.experts_used[i] << '\n';
          cli::write_file_atomic(o->predictions_out, csv.str());
        }
        nlohmann::json j;
        j["model"] = o->model;
        j["policy"] = model.policy(0).name();
        j["accuracy"] = r.accuracy;
        j["avg_experts"] = r.avg_experts;
        j["expert_flops_per_sample"] = r.expert_flops_per_sample;
        j["samples_per_s"] = r.samples_per_s;
        j["time_ms"] = r.seconds * 1e3;
        j["samples"] = r.predicted.size();
        j["threads"] = num_threads();
        j["parallel"] = {{"mode", o->parallel}, {"ranks", comm ? comm->size() : 1}};
        j["timed_passes"] = std::max(1, o->repeat);
        j["load"] = nlohmann::json::array();
        for (const auto& layer : r.load) {
          int64_t tot = 0;
          for (int64_t v : layer) tot += v;
          nlohmann::json shares = nlohmann::json::array();
          for (int64_t v : layer)
            shares.push_back(tot ? static_cast<double>(v) / static_cast<double>(tot) : 0.0);
          j["load"].push_back({{"tokens_per_expert", layer}, {"share", shares}});
        }
        std::fprintf(
            stderr,
            "%s: accuracy %.2f%%, avg experts %.3f, %.3g expert FLOPs/sample, %.0f samples/s\n",
            model.policy(0).name().c_str(), 100.0 * r.accuracy, r.avg_experts,
            r.expert_flops_per_sample, r.samples_per_s);
        if (o->json) std::cout << j.dump() << "\n";
        return 0;
      };
    });

}  // namespace
