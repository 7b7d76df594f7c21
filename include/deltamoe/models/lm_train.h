// Training and evaluating a TrainableMoeLm on token streams, and writing it as a Hugging Face
// model directory that `generate`, `serve` and transformers load (issue 15, item 3).
//
// Thread-safety: one trainer thread; the ops parallelise internally.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "deltamoe/graph/memory_plan.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/models/moe_lm_train.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/nn/nn.h"

namespace deltamoe::models {

/// The ids of `docs` in order, each document followed by `separator` (<|endoftext|>).
std::vector<int32_t> token_stream(const io::Tokenizer& tokenizer,
                                  const std::vector<std::string>& docs, int32_t separator);

struct LmTrainOptions {
  int64_t steps = 300;          // optimizer steps
  int64_t batch = 8;            // sequences per step
  int64_t seq_len = 64;         // tokens per sequence
  float lr = 3e-3f;             // Adam's rate after warmup; cosine decay to 10% of it at the end
  int64_t warmup = 20;          // linear warmup steps
  double balance_alpha = 0.01;  // Switch balance loss weight per MoE layer
  double budget_beta = 0.0;     // budget (router entropy) loss weight per MoE layer
  uint64_t seed = 1;            // which windows of the stream each step reads
  int64_t start_step = 0;       // resuming: steps already done (the schedule and windows continue)
  bool progress = true;         // a line on stderr every ~5% of the steps
  /// Mixture-of-Students: a teacher (same vocabulary; not owned) whose next-token
  /// distribution the student also learns, with weight `distill_weight` (TrainableMoeLm::loss).
  TrainableMoeLm* teacher = nullptr;
  double distill_weight = 0.5;
  /// Staged distillation (DeepSpeed-MoE's staged KD): learn from the teacher during the first
  /// `distill_steps` steps only, from the data alone after them (the teacher is not run);
  /// 0: every step.
  int64_t distill_steps = 0;
  /// Called after every `checkpoint_every` steps (0: never) with the steps done so far.
  int64_t checkpoint_every = 0;
  std::function<void(int64_t steps_done)> on_checkpoint;
  /// Planned execution (graph/memory_plan.h): from the second step on, every tensor of the
  /// step lives in one arena laid out by sched/ (the same results, bit for bit); the slack is
  /// the room given to routing-dependent buffers.
  bool memory_plan = false;
  double memory_plan_slack = 0.1;
};

/// Next-token loss of a stream.
struct LmEval {
  double loss = 0.0;          // mean cross-entropy, nats per predicted token
  double perplexity = 0.0;    // exp(loss)
  double mean_experts = 0.0;  // routed experts per token, mean over MoE layers
  double tokens_per_s = 0.0;  // forward throughput
  int64_t tokens = 0;         // predicted tokens
};

struct LmTrainSummary {
  int64_t steps = 0, tokens = 0;  // this call's
  double seconds = 0.0, tokens_per_s = 0.0;
  double final_loss = 0.0;    // mean training loss over the last 10% of the steps
  double mean_experts = 0.0;  // over the last 10% of the steps
  std::vector<std::pair<int64_t, double>> loss_curve;  // (step, training loss), every step
  graph::StepPlanStats memory_plan;                    // with LmTrainOptions::memory_plan
};

/// Trains `model` with `adam` on random windows of `train` (seq_len tokens each; the window
/// of sequence b at step s is drawn from seed, s, b, so a resumed run reads what an
/// uninterrupted one would). Throws Error("lm-train") when the stream is shorter than a window.
LmTrainSummary train_lm(TrainableMoeLm& model, nn::Adam& adam, const std::vector<int32_t>& train,
                        const LmTrainOptions& options);

/// Per-token detail of an evaluation, for paired tests between models on the same tokens and
/// for the study of which tokens take how many experts (`deltamoe sweep-lm`).
struct LmEvalDetail {
  /// Nats of each predicted token: entry w·(seq_len − 1) + i is position i of window w
  /// predicting the token at position i + 1.
  std::vector<float> token_loss;
  /// [layer][w·seq_len + i]: real experts the token at position i of window w was routed to.
  std::vector<std::vector<int32_t>> token_k;
  /// [layer][expert]: tokens routed to each expert.
  std::vector<std::vector<int64_t>> load;
};

/// The loss of `stream` cut into consecutive windows of `seq_len` (a last partial window is
/// dropped), `batch` windows per forward, at most `max_tokens` tokens (0: all). Grad-free.
/// With `detail`, also fills it (per-token losses straight from the loss; counting experts).
/// With `forced_ks` ([layer][w·seq_len + i], at least as long as the evaluated windows),
/// routes each token to its top forced_ks experts (LmTrainForwardOptions::forced_ks).
LmEval evaluate_lm(TrainableMoeLm& model, const std::vector<int32_t>& stream, int64_t seq_len,
                   int64_t batch, int64_t max_tokens = 0, LmEvalDetail* detail = nullptr,
                   const std::vector<std::vector<int32_t>>* forced_ks = nullptr);

/// Writes `model` into the directory `dir` (which must exist; use io::OutputDir for an
/// atomic result): config.json (transformers 4.x Mixtral form, plus deltamoe's own
/// "deltamoe_routing": {"spec": `routing` as given to train-lm, "target_k", "trained": the
/// policy with its adapted parameters as of now, which `generate` and `serve` route with}),
/// model.safetensors (f32), tokenizer.json (`tokenizer_json`) and tokenizer_config.json (eos
/// and bos: `separator_token`). `spec` is what the model's policy was made from.
void save_lm(const TrainableMoeLm& model, const std::string& routing, const moe::PolicySpec& spec,
             const std::string& tokenizer_json, const std::string& separator_token,
             const std::string& dir);

/// The model in the Hugging Face directory `dir` (any float dtype, copied to f32), routing
/// as trained: the policy of config.json's deltamoe_routing "trained" when present (no
/// controller), else the config's top-k. Throws Error("hf") / Error("lm-train") naming what
/// is missing or unsupported.
std::unique_ptr<TrainableMoeLm> load_trainable_lm(const std::string& dir);

/// Writes the optimizer's moment estimates and step count and `steps_done` to `path`
/// (safetensors, atomically): with the model directory, what `train-lm --resume` needs.
void save_train_state(const TrainableMoeLm& model, nn::Adam& adam, int64_t steps_done,
                      const std::string& path);
/// Restores what save_train_state wrote into `adam`; returns the steps done. Throws
/// Error("lm-train") naming the file when a moment is missing or has another shape.
int64_t load_train_state(const TrainableMoeLm& model, nn::Adam& adam, const std::string& path);

}  // namespace deltamoe::models
