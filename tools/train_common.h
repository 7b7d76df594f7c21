// Options shared by `deltamoe train`, `eval` and `sweep` (model shape, routing, data).
#pragma once

#include <malloc.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "deltamoe/models/moe_classifier.h"

namespace deltamoe::cli {

struct TrainCliOptions {
  // routing
  std::string routing = "top-k";
  int64_t k = 0;  // 0: policy default (top-k 2; null-experts floor(K*)+1 or 2)
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

/// A floating-point validator: finite and within [lo, hi] (lo_open / hi_open exclude the ends);
/// NaN and infinities are rejected, which CLI11's Range and PositiveNumber let through.
inline CLI::Validator finite_in(double lo, double hi, bool lo_open = false, bool hi_open = false) {
  const auto num = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return std::string(buf);
  };
  const std::string desc = std::string(lo_open ? "(" : "[") + num(lo) + ", " + num(hi) +
                           (hi_open ? ")" : "]");
  return CLI::Validator(
      [=](std::string& s) -> std::string {
        double v = 0;
        try {
          size_t used = 0;
          v = std::stod(s, &used);
          if (used != s.size()) return "not a number: " + s;
        } catch (const std::exception&) {
          return "not a number: " + s;
        }
        const bool ok =
            std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
        return ok ? std::string() : "value " + s + " not in " + desc;
      },
      "FLOAT in " + desc);
}

/// Which routing kinds each routing parameter applies to: a parameter given with another kind
/// would be silently ignored, so it is an error instead.
inline void check_routing_flags(const CLI::App& app, const std::string& routing) {
  struct Rule {
    const char* flag;
    std::vector<std::string> kinds;
  };
  const Rule rules[] = {{"--k", {"top-k", "null-experts"}},
                        {"--p", {"top-p"}},
                        {"--target-k", {"top-p", "threshold", "null-experts"}},
                        {"--nulls", {"null-experts"}}};
  for (const Rule& r : rules) {
    if (app.count(r.flag) == 0) continue;
    bool ok = false;
    std::string list;
    for (const auto& k : r.kinds) {
      ok = ok || k == routing;
      list += (list.empty() ? "" : ", ") + k;
    }
    if (!ok)
      throw CLI::ValidationError(
          r.flag,
          "applies to --routing " + list + " only; it would be ignored with --routing " + routing);
  }
}

inline void add_train_options(CLI::App& app, TrainCliOptions& o) {
  app.add_option("--routing", o.routing, "top-k | top-p | threshold | null-experts")
      ->check(CLI::IsMember({"top-k", "top-p", "threshold", "null-experts"}))
      ->capture_default_str();
  app.add_option("--k", o.k, "experts per token (top-k, default 2), or k of null-experts")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  app.add_option("--p", o.p, "top-p threshold (start value when --target-k is given)")
      ->check(finite_in(0.0, 1.0, /*lo_open=*/true))
      ->capture_default_str();
  app.add_option("--target-k", o.target_k,
                 "target mean experts per token K* (controllers; top-p, threshold, null-experts)")
      ->check(finite_in(1.0, 4096.0));
  app.add_option("--nulls", o.nulls, "null experts for null-experts (default E)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  app.add_flag("--no-renorm", o.no_renorm, "gate weights p_e as is (default: renormalised over S)");
  app.add_option("--stem", o.stem, "fc | patch (16 tokens of 7x7 pixels)")
      ->check(CLI::IsMember({"fc", "patch"}))
      ->capture_default_str();
  app.add_option("--layers", o.layers, "MoE layers")
      ->check(CLI::Range(int64_t{1}, int64_t{64}))
      ->capture_default_str();
  app.add_option("--experts", o.experts, "experts per layer E")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  app.add_option("--hidden", o.hidden, "model width H")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16))
      ->capture_default_str();
  app.add_option("--inter", o.inter, "expert MLP width I")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 16))
      ->capture_default_str();
  app.add_option("--activation", o.activation, "gelu | relu")
      ->check(CLI::IsMember({"gelu", "relu"}))
      ->capture_default_str();
  app.add_flag("--residual", o.residual, "h + MoE(LN(h)) instead of MoE(LN(h))");
  app.add_flag("--noisy", o.noisy, "noisy top-k gating with importance and load losses");
  app.add_option("--epochs", o.epochs, "training epochs")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--batch", o.batch, "batch size")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate, cosine decay")
      ->check(finite_in(0.0, 10.0, /*lo_open=*/true))
      ->capture_default_str();
  app.add_option("--weight-decay", o.weight_decay, "decoupled (AdamW) weight decay")
      ->check(finite_in(0.0, 10.0))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed (init, data order, noise)")->capture_default_str();
  app.add_option("--balance-alpha", o.balance_alpha, "Switch load-balancing loss weight")
      ->check(finite_in(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--entropy-beta", o.entropy_beta,
                 "router entropy weight (default 1e-4 for top-p, else 0)")
      ->check(finite_in(0.0, 1e6));
  app.add_option("--max-train", o.max_train, "use only this many training images (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--val-size", o.val_size, "held-out validation images (end of the train set)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_flag("--augment-flip", o.augment_flip,
               "mirror training images left-right with probability 1/2");
  app.add_option("--augment-shift", o.augment_shift,
                 "shift training images by up to this many pixels")
      ->check(CLI::Range(int64_t{0}, int64_t{27}))
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "linear learning-rate warm-up steps")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--dropout", o.dropout,
                 "dropout rate on the stem and MoE layer outputs (training)")
      ->check(finite_in(0.0, 1.0, false, /*hi_open=*/true))
      ->capture_default_str();
  app.add_option("--label-smoothing", o.label_smoothing, "cross-entropy label smoothing ε")
      ->check(finite_in(0.0, 1.0, false, /*hi_open=*/true))
      ->capture_default_str();
  app.add_option("--threads", o.threads, "threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--data-dir", o.data_dir, "Fashion-MNIST directory")->capture_default_str();
  // After parsing: routing parameters that the chosen routing would ignore are errors.
  app.parse_complete_callback([&app, &o] { check_routing_flags(app, o.routing); });
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
    j["epochs"].push_back({{"epoch", e.epoch},
                           {"train_loss", e.train_loss},
                           {"train_accuracy", e.train_accuracy},
                           {"val_accuracy", e.val_accuracy},
                           {"avg_experts", e.avg_experts},
                           {"samples_per_s", e.samples_per_s},
                           {"time_s", e.seconds}});
  if (!s.epochs.empty()) {
    j["val_accuracy"] = s.epochs.back().val_accuracy;
    j["train_avg_experts"] = s.epochs.back().avg_experts;
  }
  return j;
}

}  // namespace deltamoe::cli
