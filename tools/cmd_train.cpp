// `deltamoe train`: train an MoE classifier on Fashion-MNIST with a routing policy.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <system_error>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/output.h"
#include "deltamoe/models/moe_classifier.h"
#include "models/data_shim.h"
#include "train_common.h"

namespace {

using namespace deltamoe;

deltamoe::cli::CommandRegistrar reg(
    "train", "Train an MoE classifier on Fashion-MNIST (delta-MoE routing policies)",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<cli::TrainCliOptions>();
      cli::add_train_options(app, *o);
      app.add_option("--out", o->out,
                     "checkpoint path (M.safetensors; M.json is written beside it)")
          ->required();
      app.add_flag("--json", o->json, "print one JSON summary on stdout");
      app.add_flag("--no-progress", o->no_progress, "no progress bar on stderr");
      app.add_flag("--no-test", o->no_test, "skip the test-set evaluation at the end");
      return [o]() {
        // Check --out (and M.json beside it) now, so that a bad path fails with a clear
        // message and not after the epochs have run.
        io::check_writable(o->out, "train");
        io::check_writable(models::MoeClassifier::config_path(o->out), "train");
        set_num_threads(o->threads);
        cli::keep_freed_memory();
        const auto data = models::detail::load_data(o->data_dir);
        models::MoeClassifier model(cli::make_config(*o), o->seed);
        models::TrainOptions to = cli::make_train_options(*o);
        to.progress = !o->no_progress;
        std::fprintf(stderr, "training %s, %lld parameters, %d epochs\n",
                     model.policy(0).name().c_str(), static_cast<long long>(model.params().numel()),
                     to.epochs);
        const auto summary = models::train(model, data.train.images, data.train.labels, to);
        model.save(o->out);
        nlohmann::json j = cli::summary_json(model, summary);
        j["model"] = o->out;
        if (!o->no_test) {
          model.reset_policies();
          const auto r = models::evaluate(model, data.test.images, data.test.labels);
          j["test_accuracy"] = r.accuracy;
          j["test_avg_experts"] = r.avg_experts;
          j["test_expert_flops_per_sample"] = r.expert_flops_per_sample;
          j["test_samples_per_s"] = r.samples_per_s;
          std::fprintf(stderr, "test accuracy %.2f%%, avg experts %.3f, %.0f samples/s\n",
                       100.0 * r.accuracy, r.avg_experts, r.samples_per_s);
        }
        if (o->json) std::cout << j.dump() << "\n";
        return 0;
      };
    });

}  // namespace
