// The model interface the serving runtime needs: an MoE classifier split into the pieces that
// the per-expert queues schedule separately.
//
//   x[n, input_dim] (pixels 0..255)
//     → stem(x) = h[n, D] and router logits[n, R]           (R = experts + null experts)
//     → softmax(logits) → RoutingPolicy → experts S(x) with gate weights w
//     → expert(e, h[S⁻¹(e)]) = y_e[m, D]                     (one batched call per expert)
//     → combine(h, {y_e}, w) = c[D]                          (per sample, in routing order)
//     → head(c[n, D]) = probabilities[n, C]
//
// Every call works on a batch of rows and must be row-independent: row i of the output
// depends only on row i of the input (this is what makes batched and unbatched answers agree).
// Thread-safety: every method is const and must be safe to call concurrently from several
// threads (the runtime runs different experts, and different batches of one expert, at once).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "deltamoe/moe/routing.h"

namespace deltamoe::serve {

class ServeModel {
 public:
  virtual ~ServeModel() = default;
  /// Short description for logs and /healthz, e.g. "random-moe(784-256-8x256-10)".
  virtual std::string name() const = 0;
  /// Input features per sample (784 for 28×28 images).
  virtual int64_t input_dim() const = 0;
  /// Width D of the hidden state the experts read and write.
  virtual int64_t hidden() const = 0;
  /// Real experts E.
  virtual int64_t experts() const = 0;
  /// Router outputs R ≥ E (R − E null experts, which cost nothing and output zero).
  virtual int64_t router_outputs() const { return experts(); }
  /// Classes C.
  virtual int64_t classes() const = 0;

  /// h[n, D] and router logits[n, R] from raw pixels x[n, input_dim] in 0..255 (the model
  /// does its own normalisation). All buffers caller-owned, row-major, contiguous.
  virtual void stem(const float* x, int64_t n, float* h, float* logits) const = 0;
  /// out[m, D] = expert e applied to rows[m, D]; e in [0, E). One batched call (GEMMs).
  virtual void expert(int64_t e, const float* rows, int64_t m, float* out) const = 0;
  /// c[D] for one sample from its stem output h[D] and its k expert outputs outs[j][D] with
  /// gate weights w[j], j in routing order (k may be 0). The default is the residual sum
  /// c = h + Σ_j w[j]·outs[j], accumulated in j order.
  virtual void combine(const float* h, const float* const* outs, const float* w, int64_t k,
                       float* c) const;
  /// probs[n, C] (softmax of the class logits) from combined states c[n, D].
  virtual void head(const float* c, int64_t n, float* probs) const = 0;
};

/// Shapes of the built-in random model (the classifier: 784 → 256 stem, E MLP experts
/// 256 → 256 → 256 with GELU, 10 classes).
struct RandomModelConfig {
  int64_t input_dim = 784;
  int64_t hidden = 256;
  int64_t inter = 256;
  int64_t experts = 8;
  int64_t classes = 10;
  uint64_t seed = 1;
};

/// A model with deterministic random weights (uniform ±1/sqrt(fan_in), like nn.Linear), so
/// the server runs and is tested without a trained checkpoint. GEMMs go through the engine's
/// packed f32 kernels (kernels::linear_st), weights packed once.
std::shared_ptr<const ServeModel> make_random_model(const RandomModelConfig& config = {});

/// Numerically stable softmax of logits[d] into probs[d] (may alias). The runtime and the
/// reference both use it, so their routing inputs are identical.
void softmax_row(const float* logits, float* probs, int64_t d);

/// Loads a trained checkpoint (safetensors + its JSON config) as a serving model. Throws
/// Error("serve") naming the path on any problem.
std::shared_ptr<const ServeModel> load_serve_model(const std::string& path);

/// Reference forward pass of `model` one sample at a time, with no queues: probs[n, C] and the
/// experts of each sample (CSR in `routing`). Used by tests and by `deltamoe serve --check`.
void reference_forward(const ServeModel& model, const moe::RoutingPolicy& policy, const float* x,
                       int64_t n, float* probs, moe::RoutingResult* routing = nullptr);

/// Builds a routing policy from a spec: "top-k:K" (renormalised, Mixtral), "top-k-raw:K"
/// (weights p as is), "top-p:P" (smallest set with Σp ≥ P, renormalised; delta-MoE).
/// Throws Error("serve") on a bad spec.
std::unique_ptr<moe::RoutingPolicy> make_routing(const std::string& spec);

}  // namespace deltamoe::serve
