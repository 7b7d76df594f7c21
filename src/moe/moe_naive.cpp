// The naive reference: the Hugging Face MixtralSparseMoeBlock written as plain loops over
// tokens and their experts. Deliberately shares no kernel with MoeBlock (only the routing
// policy, which is the thing under test in neither).
#include <algorithm>
#include <cmath>
#include <vector>

#include "deltamoe/moe/moe_block.h"

namespace deltamoe::moe {

namespace {
// y[n] = W[n, :] · x  (+ b[n])
// y[n] = W[n, :] · x  (+ b[n]); W is read in place when it is contiguous f32.
void matvec(const Tensor& w, const float* x, const Tensor* b, std::vector<float>& y) {
  const int64_t n = w.size(0), k = w.size(1);
  Tensor wf = (w.dtype() == DType::f32 && w.is_contiguous()) ? w : w.to(DType::f32);
  const float* wv = wf.data<float>();
  y.assign(static_cast<size_t>(n), 0.0f);
  for (int64_t r = 0; r < n; ++r) {
    float acc = 0.0f;
    for (int64_t c = 0; c < k; ++c) acc += wv[r * k + c] * x[c];
    y[r] = acc + (b ? b->at({r}) : 0.0f);
  }
}
}  // namespace

Tensor moe_forward_naive(const MoeWeights& weights, const Tensor& x_in, const RoutingPolicy& policy,
                         MoeStats* stats) {
  weights.validate();
  const int64_t e_count = weights.experts(), h = weights.hidden();
  const int64_t r_out = weights.router.size(0);
  DELTAMOE_CHECK(x_in.dim() == 2 && x_in.size(1) == h, "moe", "input has shape ",
                 shape_str(x_in.shape()), ", expected [tokens, ", h, "]");
  DELTAMOE_CHECK(e_count + policy.extra_logits() == r_out, "moe", "policy needs ",
                 e_count + policy.extra_logits(), " router outputs, weights have ", r_out);
  const std::vector<float> x = x_in.to_vector();
  const int64_t t_count = x_in.size(0);
  Tensor y({t_count, h}, DType::f32);
  float* yp = y.data<float>();

  std::vector<float> logits(static_cast<size_t>(t_count * r_out)), probs(logits.size());
  std::vector<float> row;
  for (int64_t t = 0; t < t_count; ++t) {
    matvec(weights.router, x.data() + t * h, nullptr, row);
    double mx = row[0];
    for (float v : row) mx = std::max<double>(mx, v);
    double sum = 0.0;
    for (float v : row) sum += std::exp(v - mx);
    for (int64_t e = 0; e < r_out; ++e) {
      logits[t * r_out + e] = row[e];
      probs[t * r_out + e] = static_cast<float>(std::exp(row[e] - mx) / sum);
    }
  }
  RoutingResult local;
  RoutingResult& routing = stats ? stats->routing : local;
  policy.route(logits.data(), probs.data(), t_count, e_count, routing);
  if (stats) stats->tokens_per_expert.assign(static_cast<size_t>(e_count), 0);

  std::vector<float> a, b, hidden;
  for (int64_t t = 0; t < t_count; ++t) {
    const float* xt = x.data() + t * h;
    for (int32_t j = routing.offsets[t]; j < routing.offsets[t + 1]; ++j) {
      const int32_t e = routing.expert_ids[j];
      if (stats) ++stats->tokens_per_expert[e];
      if (weights.kind == ExpertKind::swiglu) {
        matvec(weights.w1[e], xt, nullptr, a);
        matvec(weights.w3[e], xt, nullptr, b);
        for (size_t c = 0; c < a.size(); ++c) a[c] = a[c] / (1.0f + std::exp(-a[c])) * b[c];
      } else {
        matvec(weights.w1[e], xt, weights.b1.empty() ? nullptr : &weights.b1[e], a);
        if (weights.kind == ExpertKind::gelu_mlp) {
          for (float& v : a) v = 0.5f * v * (1.0f + std::erf(v / std::sqrt(2.0f)));
        } else {
          for (float& v : a) v = std::max(v, 0.0f);
        }
      }
      matvec(weights.w2[e], a.data(), weights.b2.empty() ? nullptr : &weights.b2[e], hidden);
      for (int64_t c = 0; c < h; ++c) yp[t * h + c] += routing.weights[j] * hidden[c];
    }
    if (weights.has_shared()) {  // Qwen2MoeSparseMoeBlock: + sigmoid(x·w_sg) · shared(x)
      matvec(weights.shared_w1, xt, nullptr, a);
      matvec(weights.shared_w3, xt, nullptr, b);
      for (size_t c = 0; c < a.size(); ++c) a[c] = a[c] / (1.0f + std::exp(-a[c])) * b[c];
      matvec(weights.shared_w2, a.data(), nullptr, hidden);
      float s = 1.0f;
      if (weights.shared_gate.defined()) {
        std::vector<float> z;
        matvec(weights.shared_gate, xt, nullptr, z);
        s = 1.0f / (1.0f + std::exp(-z[0]));
      }
      for (int64_t c = 0; c < h; ++c) yp[t * h + c] += s * hidden[c];
    }
  }
  return y;
}

}  // namespace deltamoe::moe
