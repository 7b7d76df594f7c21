// Options shared by `deltamoe train`, `eval` and `sweep` (model shape, routing, data).
#pragma once

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/models/moe_classifier.h"
#include "deltamoe/moe/policies.h"

namespace deltamoe::cli {

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
  const std::string desc =
      std::string(lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + (hi_open ? ")" : "]");
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

/// `--routing` of the classifier commands (train, eval, export-graph): the spec every command
/// takes (moe::parse_policy_spec: top-k:K, top-k-raw:K, top-p:P, threshold[:THETA],
/// null-experts:K:M), or a bare kind whose parameters take their defaults (top-k 2, top-p 0.5
/// (the controller's start with --target-k), threshold 1/E, null-experts k = floor(K*) + 1 (or
/// 2) with M = E). `--k`, `--p` and `--nulls`, the spellings from before specs, stay as hidden
/// aliases for one release; one given beside a spec that already sets it is an error.
struct RoutingCli {
  std::string routing;
  int64_t k = 0, nulls = 0;  // aliases; 0: not given
  double p = 0;              // alias; 0: not given
  double target_k = 0;
  bool no_renorm = false;
  // The aliases as given: hidden options have no name in CLI11's own errors, so they are
  // converted and range-checked in check(), with errors that name them.
  std::string k_text, p_text, nulls_text;

  /// The kind of the spec ("top-k" for top-k-raw too); empty when no --routing was given.
  std::string kind() const {
    const std::string k0 = routing.substr(0, routing.find(':'));
    return k0 == "top-k-raw" ? "top-k" : k0;
  }
  bool is_spec() const { return routing.find(':') != std::string::npos; }

  /// The policy spec for `experts` real experts; `default_nulls` is M when neither the spec
  /// nor --nulls gives it (0: E). Throws Error("routing") on a bad spec.
  moe::PolicySpec spec(int64_t experts, int64_t default_nulls = 0) const {
    moe::PolicySpec s;
    if (is_spec()) {
      s = moe::parse_policy_spec(routing, experts);
    } else {
      s.kind = kind();
      s.renormalize = routing != "top-k-raw";
      s.nulls = default_nulls;
      if (s.kind == "null-experts")
        s.k = target_k > 0 ? static_cast<int64_t>(std::floor(target_k)) + 1 : 2;
    }
    if (k > 0) s.k = k;
    if (p > 0) s.p = p;
    if (nulls > 0) s.nulls = nulls;
    s.target_k = target_k;
    s.renormalize = s.renormalize && !no_renorm;
    return s;
  }

  /// After parsing: the spec parses, and no alias or parameter flag is given that the chosen
  /// routing would ignore or that its spec already sets.
  void check(const CLI::App& app) {
    const auto alias = [&](const char* flag, const std::string& text, CLI::Validator v, auto& out) {
      if (app.count(flag) == 0) return;
      std::string t = text;
      const std::string err = v(t);
      if (!err.empty()) throw CLI::ValidationError(flag, err);
      out = static_cast<std::decay_t<decltype(out)>>(std::stod(t));
    };
    alias("--k", k_text, CLI::Range(int64_t{1}, int64_t{4096}), k);
    alias("--p", p_text, finite_in(0.0, 1.0, /*lo_open=*/true), p);
    alias("--nulls", nulls_text, CLI::Range(int64_t{1}, int64_t{4096}), nulls);
    if (routing.empty()) {
      for (const char* f : {"--k", "--p", "--nulls", "--no-renorm", "--target-k"})
        if (app.count(f))
          throw CLI::ValidationError(f, "goes with --routing (the model's own routing is kept)");
      return;
    }
    const std::string kd = kind();
    const std::vector<std::string> kinds = {"top-k", "top-p", "threshold", "null-experts"};
    if (std::find(kinds.begin(), kinds.end(), kd) == kinds.end())
      throw CLI::ValidationError("--routing", "unknown routing '" + routing +
                                                  "' (known: top-k:K, top-k-raw:K, top-p:P, "
                                                  "threshold[:THETA], null-experts:K:M)");
    if (is_spec()) {
      try {
        (void)moe::parse_policy_spec(routing, 8);
      } catch (const Error& e) {
        throw CLI::ValidationError("--routing", e.what());
      }
    }
    struct Rule {
      const char* flag;
      std::vector<std::string> kinds;
      bool in_spec;  // the spec form of those kinds sets it
    };
    const Rule rules[] = {{"--k", {"top-k", "null-experts"}, true},
                          {"--p", {"top-p"}, true},
                          {"--target-k", {"top-p", "threshold", "null-experts"}, false},
                          {"--nulls", {"null-experts"}, true}};
    for (const Rule& r : rules) {
      if (app.count(r.flag) == 0) continue;
      bool ok = false;
      std::string list;
      for (const auto& k0 : r.kinds) {
        ok = ok || k0 == kd;
        list += (list.empty() ? "" : ", ") + k0;
      }
      if (!ok)
        throw CLI::ValidationError(r.flag, "applies to --routing " + list +
                                               " only; it would be ignored with --routing " +
                                               routing);
      if (r.in_spec && is_spec())
        throw CLI::ValidationError(r.flag, "the routing spec '" + routing +
                                               "' already sets it (give it in the spec only)");
    }
  }

  /// Adds --routing (default `def`, empty: none), the hidden aliases, --target-k (with its
  /// help, which differs between training and evaluation) and --no-renorm; checks after
  /// parsing.
  void add(CLI::App& app, const std::string& def, const std::string& target_k_help) {
    routing = def;
    auto* r = app.add_option("--routing", routing,
                             "routing spec: top-k:K, top-k-raw:K, top-p:P, threshold[:THETA], "
                             "null-experts:K:M, or a bare kind with default parameters");
    if (!def.empty()) r->capture_default_str();
    app.add_option("--k", k_text, "alias: the K of --routing top-k:K / null-experts:K:M")
        ->group("");
    app.add_option("--p", p_text, "alias: the P of --routing top-p:P")->group("");
    app.add_option("--nulls", nulls_text, "alias: the M of --routing null-experts:K:M")->group("");
    app.add_option("--target-k", target_k, target_k_help)->check(finite_in(1.0, 4096.0));
    app.add_flag("--no-renorm", no_renorm,
                 "gate weights p_e as is (default: renormalised over the chosen experts)");
  }
};

/// --memory-plan heap|arena and --memory-plan-slack (train, train-lm; bench train-step adds
/// "all" and "release"): training steps on the heap, or inside one arena laid out by sched/.
struct MemoryPlanCli {
  std::string mode = "heap";
  double slack = 0.1;
  bool arena() const { return mode == "arena"; }
  /// `bench`: bench train-step's modes; `prefix` starts the help ("train-step: ").
  void add(CLI::App& app, bool bench = false, const std::string& prefix = "") {
    app.add_option(
           "--memory-plan", mode,
           prefix + (bench ? "all (heap, release and arena runs alternated, each its "
                             "own process), or one of them: heap (the tape holds every "
                             "tensor to the step's end), release (the backward frees "
                             "each after its last reader), arena (one planned arena)"
                           : "heap (every tensor of a step its own allocation, held to the "
                             "step's end) or arena (from the second step on, one arena laid "
                             "out by the memory scheduler: buffers reused after their last "
                             "reader; same results bit for bit)"))
        ->check(bench ? CLI::IsMember({"all", "heap", "release", "arena"})
                      : CLI::IsMember({"heap", "arena"}))
        ->capture_default_str();
    app.add_option("--memory-plan-slack", slack,
                   prefix +
                       "room in the plan for routing-dependent buffers (expert batches), as a "
                       "fraction of the size seen; larger ones go to the heap and the plan grows")
        ->check(CLI::Range(0.0, 10.0))
        ->capture_default_str();
  }
};

struct TrainCliOptions {
  RoutingCli routing;
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
  MemoryPlanCli memory_plan;
};

/// The model and its routing, the seed, threads and data: what every command that builds a
/// classifier takes (train, export-graph).
inline void add_model_options(CLI::App& app, TrainCliOptions& o) {
  o.routing.add(app, "top-k",
                "target mean experts per token K*: a controller adapts P, THETA or the null "
                "bias toward it while training (top-p, threshold, null-experts)");
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
  app.add_option("--batch", o.batch, "batch size")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "seed (init, data order, noise)")->capture_default_str();
  app.add_option("--balance-alpha", o.balance_alpha, "Switch load-balancing loss weight")
      ->check(finite_in(0.0, 1e6))
      ->capture_default_str();
  app.add_option("--entropy-beta", o.entropy_beta,
                 "router entropy weight (default 1e-4 for top-p, else 0)")
      ->check(finite_in(0.0, 1e6));
  app.add_option("--threads", o.threads, "threads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--data-dir", o.data_dir, "Fashion-MNIST directory")->capture_default_str();
  show_default(app, {"--target-k"}, "none");
  show_default(app, {"--entropy-beta"}, "1e-4 for top-p, else 0");
  // After parsing: routing parameters that the chosen routing would ignore are errors.
  app.parse_complete_callback([&app, &o] { o.routing.check(app); });
}

/// add_model_options and the optimisation, data and augmentation options of `train`.
inline void add_train_options(CLI::App& app, TrainCliOptions& o) {
  add_model_options(app, o);
  app.add_option("--epochs", o.epochs, "training epochs")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate, cosine decay")
      ->check(finite_in(0.0, 10.0, /*lo_open=*/true))
      ->capture_default_str();
  app.add_option("--weight-decay", o.weight_decay, "decoupled (AdamW) weight decay")
      ->check(finite_in(0.0, 10.0))
      ->capture_default_str();
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
  o.memory_plan.add(app);
}

inline moe::PolicySpec make_spec(const TrainCliOptions& o) {
  return o.routing.spec(o.experts);
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
  t.entropy_beta =
      o.entropy_beta >= 0 ? o.entropy_beta : (o.routing.kind() == "top-p" ? 1e-4 : 0.0);
  t.max_train = o.max_train;
  t.val_size = o.val_size;
  t.augment_flip = o.augment_flip;
  t.augment_shift = o.augment_shift;
  t.warmup_steps = o.warmup;
  t.dropout = o.dropout;
  t.label_smoothing = o.label_smoothing;
  t.memory_plan = o.memory_plan.arena();
  t.memory_plan_slack = o.memory_plan.slack;
  return t;
}

/// The statistics of a StepMemoryPlanner as JSON (train, train-lm).
inline nlohmann::json memory_plan_json(const graph::StepPlanStats& st) {
  return {{"steps", st.steps},
          {"planned_steps", st.planned_steps},
          {"plans", st.plans},
          {"overflows", st.overflows},
          {"diverged_steps", st.diverged_steps},
          {"arena_bytes", st.arena_bytes},
          {"recorded_peak_bytes", st.recorded_peak_bytes},
          {"tape_resident_bytes", st.tape_resident_bytes},
          {"plan_seconds", st.plan_seconds}};
}

inline nlohmann::json summary_json(models::MoeClassifier& model, const models::TrainSummary& s) {
  nlohmann::json j;
  j["config"] = model.config().to_json();
  j["policy"] = model.policy(0).name();
  j["parameters"] = model.params().numel();
  j["train_seconds"] = s.seconds;
  if (s.memory_plan.steps > 0) j["memory_plan"] = memory_plan_json(s.memory_plan);
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
