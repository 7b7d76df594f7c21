// The model interface the serving runtime needs: an MoE classifier with L MoE layers, split
// into the pieces that the per-expert queues schedule separately.
//
//   x[n, input_dim] (pixels 0..255)
//     → stem(x) = h[n, D]                                     (the residual stream)
//     for each MoE layer l = 0 .. L-1:
//       → gate(l, h) = u[n, D] (what the experts read) and router logits[n, R]
//       → softmax(logits) → RoutingPolicy of layer l → experts S(x) with gate weights w
//       → expert(l, e, u[S⁻¹(e)]) = y_e[m, D]                (one batched call per expert)
//       → combine(l, h, {y_e}, w) = h'[D]                    (per sample, in routing order)
//     → head(h) = probabilities[n, C]
//
// Every call works on a batch of rows and must be row-independent: row i of the output
// depends only on row i of the input (this is what makes batched and unbatched answers agree).
// Thread-safety: every method is const and must be safe to call concurrently from several
// threads (the runtime runs different experts, and different batches of one expert, at once).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  /// MoE layers L (each with its own E experts and router).
  virtual int64_t layers() const { return 1; }
  /// Real experts E per layer.
  virtual int64_t experts() const = 0;
  /// Router outputs R ≥ E (R − E null experts, which cost nothing and output zero).
  virtual int64_t router_outputs() const { return experts(); }
  /// Classes C.
  virtual int64_t classes() const = 0;
  /// The routing the model was trained with, one policy per layer (the server's default).
  virtual std::vector<std::shared_ptr<const moe::RoutingPolicy>> default_policies() const = 0;

  /// h[n, D] from raw pixels x[n, input_dim] in 0..255 (the model does its own
  /// normalisation). All buffers caller-owned, row-major, contiguous.
  virtual void stem(const float* x, int64_t n, float* h) const = 0;
  /// Layer l's expert input u[n, D] and router logits[n, R] from the residual stream h[n, D].
  virtual void gate(int64_t l, const float* h, int64_t n, float* u, float* logits) const = 0;
  /// out[m, D] = expert e of layer l applied to rows[m, D]; e in [0, E). One batched call.
  virtual void expert(int64_t l, int64_t e, const float* rows, int64_t m, float* out) const = 0;
  /// The next residual state h_out[D] (not aliasing h) of one sample from its state h[D] and
  /// its k expert outputs outs[j][D] from experts ids[j] with gate weights w[j], j in routing
  /// order (k may be 0). The default is the residual sum h + Σ_j w[j]·outs[j] in j order.
  virtual void combine(int64_t l, const float* h, const float* const* outs, const int32_t* ids,
                       const float* w, int64_t k, float* h_out) const;
  /// probs[n, C] (softmax of the class logits) from the final states h[n, D].
  virtual void head(const float* h, int64_t n, float* probs) const = 0;
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

/// Loads a checkpoint written by `deltamoe train` (M.safetensors + M.json beside it: fc stem,
/// L MoE layers of LayerNorm + router + E experts, LayerNorm + linear head) as a serving
/// model; weights packed once for the engine's kernels. default_policies() are the
/// per-layer policies stored in the checkpoint (adapted thresholds included). Throws
/// Error("serve") naming the path on any problem (missing files, patch stem).
std::shared_ptr<const ServeModel> load_serve_model(const std::string& path);

/// Reference forward pass of `model` one sample at a time, with no queues: probs[n, C] and
/// the experts of each sample, per layer (CSR in (*routing)[l]). `policies` has one entry
/// per layer (or one for all layers). Used by tests.
void reference_forward(const ServeModel& model,
                       const std::vector<std::shared_ptr<const moe::RoutingPolicy>>& policies,
                       const float* x, int64_t n, float* probs,
                       std::vector<moe::RoutingResult>* routing = nullptr);

}  // namespace deltamoe::serve
