// MoE image classifier for the delta-MoE experiments (Fashion-MNIST), trained in C++.
//
// Architecture (tokens per sample T: 1 for the "fc" stem, (side/patch)² for "patch"):
//   fc stem:    x[784] → Linear(784→H) → GELU                       (one token per image)
//   patch stem: 16 patches of 7×7 → Linear(49→H) → GELU → + pos[16,H] (routed per token)
//   L × MoE layer: u = LayerNorm(h); z = u·W_gᵀ [E+M]; p = softmax(z); S = policy(z, p);
//                  y = Σ_{e∈S} w_e · fc2_e(act(fc1_e(u))); h = residual ? h + y : y
//   head:       LayerNorm → (patch: mean over tokens) → Linear(H→10)
// Losses: cross-entropy + α·C·Σ_c f_c·P_c (Switch; C = E + M router outputs) + β·mean
// entropy(p) (top-p) + optional noisy top-k gating (Shazeer 2017) with w·(CV²(importance) +
// CV²(load)).
//
// Checkpoint: M.safetensors (f32, PyTorch names and layouts: Linear weight [out, in]) and
// M.json (MoeClassifierConfig::to_json) beside it. Keys, for layer l and expert e:
//   stem.weight [H, 784 | 49], stem.bias [H], stem.pos [T, H] (patch only),
//   moe.{l}.norm.weight [H], moe.{l}.norm.bias [H], moe.{l}.router.weight [E+M, H],
//   moe.{l}.noise.weight [E+M, H] (noisy gating only),
//   moe.{l}.experts.{e}.fc1.weight [I, H], .fc1.bias [I], .fc2.weight [H, I], .fc2.bias [H],
//   head.norm.weight [H], head.norm.bias [H], head.weight [10, H], head.bias [10].
// Thread-safety: a classifier is used by one thread at a time (routing policies adapt).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "deltamoe/core/tensor.h"
#include "deltamoe/dist/communicator.h"
#include "deltamoe/graph/graph.h"
#include "deltamoe/graph/memory_plan.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/nn/nn.h"

namespace deltamoe::models {

struct MoeClassifierConfig {
  std::string stem = "fc";  // fc | patch
  int64_t input_side = 28;  // images are input_side² pixels
  int64_t patch = 7;        // patch stem: patch side
  int64_t hidden = 256;     // H
  int64_t inter = 256;      // I (expert MLP width)
  int64_t experts = 8;      // E
  int64_t layers = 1;       // MoE layers
  int64_t classes = 10;
  std::string activation = "gelu";  // expert activation: gelu | relu
  bool residual = false;
  bool noisy_gating = false;
  moe::PolicySpec routing;                     // the policy trained with
  std::vector<moe::PolicySpec> layer_routing;  // per layer, adapted state (after training)

  int64_t tokens_per_sample() const;
  /// E + null experts of the policy.
  int64_t router_outputs() const;
  /// FLOPs of one expert on one token (2·H·I per matmul, two matmuls).
  double expert_flops_per_token() const { return 4.0 * static_cast<double>(hidden * inter); }
  /// Throws Error("model") on inconsistent values.
  void validate() const;
  nlohmann::json to_json() const;
  static MoeClassifierConfig from_json(const nlohmann::json& j);
};

nlohmann::json policy_to_json(const moe::PolicySpec& s);
moe::PolicySpec policy_from_json(const nlohmann::json& j);

/// Routing of one MoE layer in one forward pass.
struct LayerRouting {
  moe::RoutingResult routing;                    // per token (sample-major, then token)
  std::vector<int32_t> null_offsets, null_cols;  // null experts chosen (null-experts only)
};

/// Inference copies of the classifier's weights in the engine's packed f32 layout: stem and
/// head as kernels::PackedLinear, each MoE layer as a moe::MoeBlock (the one expert FFN every
/// model uses). Made by MoeClassifier::pack_weights() for a grad-free forward. A snapshot:
/// stale once the parameters change (evaluate() packs afresh on every call).
struct PackedWeights {
  kernels::PackedLinear stem, head;
  std::vector<moe::MoeBlock> blocks;  // one per MoE layer
};

struct ForwardOptions {
  bool training = false;           // noise on, adaptive policies observe the batch
  bool adapt = false;              // adaptive policies observe the batch (calibration, no noise)
  double balance_alpha = 0.0;      // Switch loss weight α
  double entropy_beta = 0.0;       // router entropy weight β
  double noisy_weight = 0.0;       // importance + load loss weight (noisy gating)
  std::mt19937_64* rng = nullptr;  // noise source (noisy gating, dropout; training)
  /// Training only: dropout rate on the stem output and on each MoE layer's output (inverted
  /// dropout: kept units scaled by 1/(1 − rate)). 0 = none.
  double dropout = 0.0;
  /// Per layer: force token budgets (PerTokenKRouting control). Empty = use the policies.
  const std::vector<std::vector<int32_t>>* forced_k = nullptr;
  /// Grad-free graphs only: run the stem, the experts and the head through these packed
  /// weights (kernels::linear; one GEMM per expert over its gathered tokens, bias and GELU
  /// fused) instead of graph ops. Same routing and, up to f32 summation order, same logits.
  const PackedWeights* packed = nullptr;
  /// With `packed`: each MoE layer's experts run expert-parallel over the communicator's
  /// ranks (moe/expert_parallel.h; contiguous placement): every rank runs the rest of the
  /// model on all rows, takes 1/P of the rows through the experts' all-to-all, and the
  /// outputs are all-gathered. Every rank must run the same forward passes. Null: one process.
  dist::Communicator* comm = nullptr;
};

struct ForwardOut {
  graph::Var logits;    // [N, classes]
  graph::Var aux_loss;  // scalar sum of the auxiliary losses (invalid if none)
  std::vector<LayerRouting> layers;
};

class MoeClassifier {
 public:
  /// Random initialisation (PyTorch defaults), deterministic in `seed`.
  MoeClassifier(MoeClassifierConfig config, uint64_t seed);
  /// Loads M.safetensors and M.json (the .json beside `path`). Throws Error("model") naming
  /// the file on a missing or mismatching tensor.
  static MoeClassifier load(const std::string& path);
  /// Writes `path` (safetensors) and the JSON config beside it (atomically), storing each
  /// layer's current adapted policy state.
  void save(const std::string& path) const;
  /// The config file written beside checkpoint `path` (M.safetensors -> M.json).
  static std::string config_path(const std::string& path);

  const MoeClassifierConfig& config() const { return config_; }
  nn::ParameterSet& params() { return params_; }
  const nn::ParameterSet& params() const { return params_; }
  /// The policy used by layer l.
  moe::RoutingPolicy& policy(int64_t l) { return *policies_[static_cast<size_t>(l)]; }
  /// Replaces every layer's policy (inference with another rule). The router must have the
  /// outputs the policy needs (E + nulls); throws Error("model") otherwise.
  void set_policy(const moe::PolicySpec& spec);
  /// One policy per layer (specs.size() == layers), e.g. calibrated per-layer thresholds.
  void set_layer_policies(const std::vector<moe::PolicySpec>& specs);
  /// Restores the per-layer policies saved in the config (layer_routing, else routing).
  void reset_policies();
  /// Records each layer's current adapted policy state (p, thresholds, null bias) in the
  /// config's layer_routing, so reset_policies() and save() keep it. train() calls it.
  void freeze_policies();

  /// Packs the stem, expert and head weights for ForwardOptions::packed.
  PackedWeights pack_weights() const;
  /// MoE layer l's router and experts as moe::MoeWeights (views of the parameters, f32;
  /// fc1/fc2 with biases, GELU or ReLU experts), for moe::MoeBlock.
  moe::MoeWeights moe_weights(int64_t l) const;
  /// Builds the forward pass for images x[N, side²] (f32) into g.
  ForwardOut forward(graph::Graph& g, const Tensor& x, const ForwardOptions& opt);

 private:
  graph::Var moe_layer(graph::Graph& g, int64_t l, graph::Var h, int64_t tokens,
                       const ForwardOptions& opt, LayerRouting& lr, std::vector<graph::Var>& aux);
  /// y[n, out] = x · Wᵀ + b (then GELU when `gelu`) through a packed weight.
  Tensor linear_packed(const Tensor& x, const kernels::PackedLinear& w, const std::string& bias,
                       bool gelu) const;
  /// x[N, side²] → patches [N·T, patch²] (row-major patches, row-major pixels inside).
  Tensor patchify(const Tensor& x) const;

  MoeClassifierConfig config_;
  nn::ParameterSet params_;
  std::vector<std::unique_ptr<moe::RoutingPolicy>> policies_;
};

// ---------------------------------------------------------------- training and evaluation

struct TrainOptions {
  int epochs = 10;
  int64_t batch = 128;
  float lr = 1e-3f;
  float weight_decay = 0.0f;
  bool cosine = true;  // cosine learning-rate decay to 0 over all steps
  uint64_t seed = 1;   // data order and noise
  double balance_alpha = 0.01;
  double entropy_beta = 0.0;
  double noisy_weight = 0.01;
  int64_t val_size = 5000;  // the last val_size training images are held out
  int64_t max_train = 0;    // > 0: use only the first max_train training images
  bool progress = false;    // progress bar on stderr
  // Augmentation of the training batches (square images only; off by default): each image is
  // mirrored left-right with probability 1/2 when augment_flip, and shifted by whole pixels
  // (dx, dy uniform in [−augment_shift, augment_shift], zeros shifted in). Drawn from its
  // own generator seeded by `seed`, so runs stay deterministic.
  bool augment_flip = false;
  int64_t augment_shift = 0;
  int64_t warmup_steps = 0;      // linear learning-rate warm-up over the first steps
  double dropout = 0.0;          // see ForwardOptions::dropout
  float label_smoothing = 0.0f;  // cross-entropy target (1 − ε)·onehot + ε/classes
  /// Planned execution (graph/memory_plan.h): from the second step on, every tensor of the
  /// step lives in one arena laid out by sched/ (the same results, bit for bit); the slack is
  /// the room given to routing-dependent buffers.
  bool memory_plan = false;
  double memory_plan_slack = 0.1;
};

struct EpochStats {
  int epoch = 0;
  double train_loss = 0, train_accuracy = 0, val_accuracy = 0, avg_experts = 0;
  double samples_per_s = 0, seconds = 0;
};

struct TrainSummary {
  std::vector<EpochStats> epochs;
  std::vector<float> step_losses;  // total loss of every step (determinism checks)
  double seconds = 0;
  graph::StepPlanStats memory_plan;  // with TrainOptions::memory_plan
};

struct EvalResult {
  double accuracy = 0;
  double avg_experts = 0;              // mean real experts per token and layer
  double expert_flops_per_sample = 0;  // expert FFN FLOPs actually computed
  double samples_per_s = 0;
  double seconds = 0;
  std::vector<int32_t> predicted;                  // per sample
  std::vector<float> experts_used;                 // per sample: mean over its tokens and layers
  std::vector<std::vector<int32_t>> token_k;       // per layer, per token: experts used
  std::vector<std::vector<int64_t>> load;          // per layer, tokens per expert [E]
  std::vector<std::vector<int64_t>> class_expert;  // [classes][E], summed over layers
};

/// Trains `model` on the first (N − val_size) images of train_x/train_y (or max_train).
TrainSummary train(MoeClassifier& model, const Tensor& train_x, const std::vector<int32_t>& train_y,
                   const TrainOptions& opt);

/// Evaluates on x/y in batches (no gradients, no noise) with the model's current policies
/// (or forced per-token budgets, per layer, indexed by sample·T + token).
EvalResult evaluate(MoeClassifier& model, const Tensor& x, const std::vector<int32_t>& y,
                    int64_t batch = 1000,
                    const std::vector<std::vector<int32_t>>* forced_k = nullptr,
                    dist::Communicator* comm = nullptr);

/// Sets every layer's policy to `spec` and, when spec.target_k > 0, runs the policies'
/// controllers over x (no gradients, `passes` passes in batches of `batch`) so the mean K
/// meets the target; the controllers are then frozen (target_k cleared) for inference.
void calibrate_policy(MoeClassifier& model, const moe::PolicySpec& spec, const Tensor& x,
                      int passes = 3, int64_t batch = 256);

/// Rows [begin, end) of a [N, d] tensor as a new contiguous tensor.
Tensor take_rows(const Tensor& x, int64_t begin, int64_t end);

}  // namespace deltamoe::models
