// Options shared by `deltamoe train`, `eval` and `sweep` (model shape, routing, data).
#pragma once

#include <malloc.h>

#include <cmath>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "deltamoe/models/moe_classifier.h"

namespace deltamoe::cli {

struct TrainCliOptions {
  // routing
  std::string routing = "top-k";
  int64_t k = 0;           // 0: policy default (top-k 2; null-experts floor(K*)+1 or 2)
  double p = 0.5;
  double target_k = 0;
  int64_t nulls = 0;
  bool no_renorm = false;
  // model
  std::string stem = "fc";
  int64_t layers = 2, experts = 8, hidden = 256, inter = 256;
  std::string activation = "gelu";
  bool residual = false;
  bool noisy = false;
  // training
  // The recipe of docs/training.md (the sweep's): 12 epochs, batch 256, Adam lr 2e-3 with
  // cosine decay, dropout 0.1.
  int epochs = 12;
  int64_t batch = 256;
  float lr = 2e-3f;
  float weight_decay = 0.0f;
  uint64_t seed = 1;
  double balance_alpha = 0.01;
  double entropy_beta = -1;  // -1: 1e-4 for top-p, else 0
  int64_t max_train = 0, val_size = 5000;
  bool augment_flip = false;
  int64_t augment_shift = 0;
  int64_t warmup = 0;
  double dropout = 0.1;
  float label_smoothing = 0.0f;
  int threads = 2;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  // output
  std::string out;
  bool json = false, no_progress = false, no_test = false;
};

/// Keeps freed blocks in the heap instead of returning them to the kernel: every graph op
/// allocates its output, and with glibc's default mmap threshold each large tensor cost fresh
/// zeroed pages (page faults were 13% of an evaluation pass).
inline void keep_freed_memory() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

inline void add_train_options(CLI::App& app, TrainCliOptions& o) {
  app.add_option("--routing", o.routing, "top-k | top-p | threshold | null-experts")
      ->check(CLI::IsMember({"top-k", "top-p", "threshold", "null-experts"}));
  app.add_option("--k", o.k, "experts per token (top-k), or k of null-experts");
  app.add_option("--p", o.p, "top-p threshold (start value when --target-k is given)");
  app.add_option("--target-k", o.target_k, "target mean experts per token K* (controllers)");
  app.add_option("--nulls", o.nulls, "null experts for null-experts (default E)");
  app.add_flag("--no-renorm", o.no_renorm, "gate weights p_e as is (default: renormalised over S)");
  app.add_option("--stem", o.stem, "fc | patch (16 tokens of 7x7 pixels)")
      ->check(CLI::IsMember({"fc", "patch"}));
  app.add_option("--layers", o.layers, "MoE layers");
  app.add_option("--experts", o.experts, "experts per layer E");
  app.add_option("--hidden", o.hidden, "model width H");
  app.add_option("--inter", o.inter, "expert MLP width I");
  app.add_option("--activation", o.activation, "gelu | relu")->check(CLI::IsMember({"gelu", "relu"}));
  app.add_flag("--residual", o.residual, "h + MoE(LN(h)) instead of MoE(LN(h))");
  app.add_flag("--noisy", o.noisy, "noisy top-k gating with importance and load losses");
  app.add_option("--epochs", o.epochs, "training epochs (default 12)");
  app.add_option("--batch", o.batch, "batch size (default 256)");
  app.add_option("--lr", o.lr, "Adam learning rate, cosine decay (default 2e-3)");
  app.add_option("--weight-decay", o.weight_decay, "decoupled (AdamW) weight decay");
  app.add_option("--seed", o.seed, "seed (init, data order, noise)");
  app.add_option("--balance-alpha", o.balance_alpha, "Switch load-balancing loss weight");
  app.add_option("--entropy-beta", o.entropy_beta, "router entropy weight (default 1e-4 for top-p)");
  app.add_option("--max-train", o.max_train, "use only this many training images");
  app.add_option("--val-size", o.val_size, "held-out validation images (end of the train set)");
  app.add_flag("--augment-flip", o.augment_flip, "mirror training images left-right with probability 1/2");
  app.add_option("--augment-shift", o.augment_shift, "shift training images by up to this many pixels");
  app.add_option("--warmup", o.warmup, "linear learning-rate warm-up steps");
  app.add_option("--dropout", o.dropout, "dropout rate on the stem and MoE layer outputs (training; default 0.1)");
  app.add_option("--label-smoothing", o.label_smoothing, "cross-entropy label smoothing ε");
  app.add_option("--threads", o.threads, "threads");
  app.add_option("--data-dir", o.data_dir, "Fashion-MNIST directory");
}

inline moe::PolicySpec make_spec(const TrainCliOptions& o) {
  moe::PolicySpec s;
  s.kind = o.routing;
  s.p = o.p;
  s.target_k = o.target_k;
  s.nulls = o.nulls;
  s.renormalize = !o.no_renorm;
  if (o.routing == "null-experts")
    s.k = o.k > 0 ? o.k : (o.target_k > 0 ? static_cast<int64_t>(std::floor(o.target_k)) + 1 : 2);
  else
    s.k = o.k > 0 ? o.k : 2;
  return s;
}

inline models::MoeClassifierConfig make_config(const TrainCliOptions& o) {
  models::MoeClassifierConfig c;
  c.stem = o.stem;
  c.layers = o.layers;
  c.experts = o.experts;
  c.hidden = o.hidden;
  c.inter = o.inter;
  c.activation = o.activation;
  c.residual = o.residual;
  c.noisy_gating = o.noisy;
  c.routing = make_spec(o);
  return c;
}

inline models::TrainOptions make_train_options(const TrainCliOptions& o) {
  models::TrainOptions t;
  t.epochs = o.epochs;
  t.batch = o.batch;
  t.lr = o.lr;
  t.weight_decay = o.weight_decay;
  t.seed = o.seed;
  t.balance_alpha = o.balance_alpha;
  t.entropy_beta = o.entropy_beta >= 0 ? o.entropy_beta : (o.routing == "top-p" ? 1e-4 : 0.0);
  t.max_train = o.max_train;
  t.val_size = o.val_size;
  t.augment_flip = o.augment_flip;
  t.augment_shift = o.augment_shift;
  t.warmup_steps = o.warmup;
  t.dropout = o.dropout;
  t.label_smoothing = o.label_smoothing;
  return t;
}

inline nlohmann::json summary_json(models::MoeClassifier& model, const models::TrainSummary& s) {
  nlohmann::json j;
  j["config"] = model.config().to_json();
  j["policy"] = model.policy(0).name();
  j["parameters"] = model.params().numel();
  j["train_seconds"] = s.seconds;
  j["epochs"] = nlohmann::json::array();
  for (const auto& e : s.epochs)
    j["epochs"].push_back({{"epoch", e.epoch}, {"train_loss", e.train_loss},
                           {"train_accuracy", e.train_accuracy}, {"val_accuracy", e.val_accuracy},
                           {"avg_experts", e.avg_experts}, {"samples_per_s", e.samples_per_s},
                           {"time_s", e.seconds}});
  if (!s.epochs.empty()) {
    j["val_accuracy"] = s.epochs.back().val_accuracy;
    j["train_avg_experts"] = s.epochs.back().avg_experts;
  }
  return j;
}

}  // namespace deltamoe::cli
