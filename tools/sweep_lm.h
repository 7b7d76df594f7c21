// Results of `deltamoe sweep-lm` (the delta-MoE language-model study, issue 15 item 4) and
// the report written from them (docs/experiments/delta-moe-lm.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace deltamoe::cli::sweep_lm {

/// Whether `method` is a delta policy (per-token expert budgets), not fixed top-k or the
/// PR-MoE residual (a shared expert plus fixed top-1).
inline bool is_delta(const std::string& method) {
  return method == "top-p" || method == "threshold" || method == "null-experts";
}

/// DeepSpeed's pyramid as `train-lm --layer-experts` takes it ("4,8", "4,4,8,8"): half the
/// experts in the first half of the layers, all of them in the rest.
inline std::string pyramid_experts(int64_t layers, int64_t experts) {
  std::string t;
  for (int64_t l = 0; l < layers; ++l)
    t += (l ? "," : "") + std::to_string(2 * l < layers ? experts / 2 : experts);
  return t;
}

/// One trained model of the sweep.
struct TrainRow {
  std::string name, method;  // e.g. "top-p_K1.5", "top-p"
  double budget = 0;         // k (top-k) or the target K* (delta policies)
  int seed = 1;
  double train_loss = 0, train_experts = 0, seconds = 0, tokens_per_s = 0;
};

/// E1: a fixed top-k model (trained at k_train) evaluated with top-k_eval routing.
struct E1Row {
  int seed, k_train, k_eval;
  double perplexity, experts;
};

/// E2: the expert load of a model at its trained routing, per layer.
struct LoadRow {
  int seed;
  std::string method;
  double budget;
  int layer;
  std::vector<double> share;  // per expert, sums to 1
  double max_over_mean, cv;
};

/// E2: mean experts per token (over layers) and mean loss, for the tokens of one bucket.
struct TokenRow {
  int seed;
  std::string method;
  double budget;
  std::string by, bucket;  // by: frequency | position | loss
  int64_t tokens;
  double experts, loss;
};

/// E3: a model at its trained routing on the validation split, with the controls.
struct E3Row {
  int seed = 0;
  std::string method;
  double budget = 0;
  double perplexity = 0, experts = 0, tokens_per_s = 0;
  int64_t params = 0;              // all parameters
  double active_ffn_params = 0;    // FFN parameters a token uses, all layers (measured K)
  double shuffled_perplexity = 0;  // delta policies: the same K per layer, shuffled over tokens
  // Paired over validation windows (mean loss per window, nats/token): this − top-2 of the
  // seed, and this − its shuffled control.
  double d_top2 = 0, d_top2_half = 0, p_top2 = 1;
  double d_shuffled = 0, d_shuffled_half = 0, p_shuffled = 1;
  std::vector<double> k_hist;  // fraction of (token, layer) pairs with k = 1..E (index k − 1)
};

/// Post-hoc top-p on the fixed top-2 model (what llama.cpp users do with expert_used_count).
struct PostHocRow {
  int seed;
  double p, perplexity, experts;
};

struct Study {
  bool quick = false;
  int seeds = 0, jobs = 1, threads = 1;
  int64_t steps = 0, batch = 0, seq_len = 0, eval_tokens = 0, train_tokens = 0;
  int64_t experts = 8, layers = 2, hidden = 0, inter = 0, vocab = 0;
  double lr = 0, seconds = 0;
  std::string data, recipe;
  bool plots = false;
  std::vector<TrainRow> train;
  std::vector<E1Row> e1;
  std::vector<LoadRow> load;
  std::vector<TokenRow> tokens;
  std::vector<E3Row> e3;
  std::vector<PostHocRow> posthoc;
};

/// Writes every table of `s` as CSV into `dir` (delta-moe-lm-*.csv, atomically).
void write_csvs(const std::string& dir, const Study& s);
/// Writes `dir`/delta-moe-lm.md (setup, E1-E3 tables with 95% intervals over seeds, paired
/// tests, post-hoc top-p, plots when drawn, the verdict) and returns the verdict as JSON.
nlohmann::json write_report(const std::string& dir, const Study& s);

}  // namespace deltamoe::cli::sweep_lm
