// `deltamoe export-graph`: record one training step (forward + loss + backward) of the MoE
// classifier and write it as a memgraph-v1 file for `deltamoe schedule`.
#include <cstdio>
#include <iostream>
#include <random>

#include <nlohmann/json.hpp>

#include "command.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/graph/export_memgraph.h"
#include "deltamoe/io/output.h"
#include "deltamoe/models/moe_classifier.h"
#include "models/data_shim.h"
#include "train_common.h"

namespace {

using namespace deltamoe;

struct ExportCliOptions {
  cli::TrainCliOptions train;
  bool synthetic = false;
  std::string name;
};

deltamoe::cli::CommandRegistrar reg(
    "export-graph",
    "Export one training step of the MoE classifier as a memgraph-v1 graph (for `schedule`)",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<ExportCliOptions>();
      o->train.layers = 1;
      cli::add_model_options(app, o->train);
      app.add_option("--out", o->train.out, "output graph (.json or .json.gz), written atomically")
          ->required();
      app.add_flag("--synthetic", o->synthetic,
                   "uniform random pixels and labels instead of the first --batch training images");
      app.add_option("--name", o->name, "graph name (default: derived from the model shape)");
      app.add_flag("--json", o->train.json, "print one JSON summary on stdout");
      app.footer(
          "Builds the model (random init, --seed), records ONE training step of --batch samples "
          "(routing, losses and noise as in `train`; the step is not applied) and exits. "
          "--layers defaults to 1 here. Options that only shape a training run (--epochs, "
          "--lr, --dropout, ...) are not taken.");
      return [o]() {
        const cli::TrainCliOptions& t = o->train;
        io::check_writable(t.out, "export-graph");
        set_num_threads(t.threads);
        models::MoeClassifier model(cli::make_config(t), t.seed);
        const models::TrainOptions to = cli::make_train_options(t);
        const int64_t side2 = model.config().input_side * model.config().input_side;
        Tensor x({t.batch, side2});
        std::vector<int32_t> y(static_cast<size_t>(t.batch));
        std::mt19937_64 rng(t.seed);
        if (o->synthetic) {
          std::uniform_real_distribution<float> px(0.0f, 1.0f);
          float* xp = x.data<float>();
          for (int64_t i = 0; i < x.numel(); ++i) xp[i] = px(rng);
          for (auto& l : y) l = static_cast<int32_t>(rng() % model.config().classes);
        } else {
          const auto data = models::detail::load_data(t.data_dir);
          DELTAMOE_CHECK(data.train.images.size(0) >= t.batch, "export-graph", "--batch ", t.batch,
                         " exceeds the ", data.train.images.size(0), " training images");
          x = models::take_rows(data.train.images, 0, t.batch);
          y.assign(data.train.labels.begin(), data.train.labels.begin() + t.batch);
        }
        models::ForwardOptions fo;
        fo.training = true;
        fo.balance_alpha = to.balance_alpha;
        fo.entropy_beta = to.entropy_beta;
        fo.noisy_weight = to.noisy_weight;
        fo.rng = &rng;
        graph::Graph g(true);
        const models::ForwardOut out = model.forward(g, x, fo);
        graph::Var loss = g.cross_entropy(out.logits, y);
        if (out.aux_loss.valid()) loss = g.add(loss, out.aux_loss);

        graph::ExportOptions eo;
        eo.name = !o->name.empty()
                      ? o->name
                      : "deltamoe-moe-train L" + std::to_string(t.layers) + " E" +
                            std::to_string(t.experts) + " H" + std::to_string(t.hidden) + " I" +
                            std::to_string(t.inter) + " B" + std::to_string(t.batch) + " " +
                            model.policy(0).name();
        for (const auto& p : model.params().params())
          eo.param_names.emplace_back(p.value.raw(), p.name);
        const sched::Graph mg = graph::export_training_graph(g, loss, eo);
        sched::write_memgraph(mg, t.out);
        const auto sim = sched::simulate(mg, sched::program_order(mg));
        int64_t n_params = 0, n_outputs = 0;
        for (int32_t v = 0; v < mg.size(); ++v) {
          n_params += mg.is_persistent[static_cast<size_t>(v)];
          n_outputs += mg.is_output[static_cast<size_t>(v)];
        }
        std::fprintf(stderr, "wrote %s: %d nodes (%lld tape ops), program-order peak %.2f MiB\n",
                     t.out.c_str(), mg.size(), static_cast<long long>(g.size()),
                     static_cast<double>(sim.peak) / 1048576.0);
        if (t.json) {
          nlohmann::json j;
          j["out"] = t.out;
          j["name"] = mg.name;
          j["nodes"] = mg.size();
          j["tape_ops"] = g.size();
          j["params"] = n_params;
          j["gradient_outputs"] = n_outputs;
          j["program_peak_bytes"] = sim.peak;
          j["persistent_bytes"] = sim.persistent_bytes;
          j["tape_resident_bytes"] = graph::tape_resident_bytes(g, loss);
          j["loss"] = g.scalar(loss);
          std::cout << j.dump() << "\n";
        }
        return 0;
      };
    });

}  // namespace
