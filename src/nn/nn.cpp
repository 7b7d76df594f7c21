#include "deltamoe/nn/nn.h"

#include <cmath>


namespace deltamoe::nn {

Tensor ParameterSet::add(const std::string& name, Shape shape) {
  DELTAMOE_CHECK(!has(name), "nn", "parameter '", name, "' added twice");
  index_[name] = params_.size();
  Tensor v(shape), g(shape);
  params_.push_back({name, v, g});
  return params_.back().value;
}

Tensor& ParameterSet::get(const std::string& name) {
  auto it = index_.find(name);
  DELTAMOE_CHECK(it != index_.end(), "nn", "no parameter '", name, "'");
  return params_[it->second].value;
}
const Tensor& ParameterSet::get(const std::string& name) const {
  auto it = index_.find(name);
  DELTAMOE_CHECK(it != index_.end(), "nn", "no parameter '", name, "'");
  return params_[it->second].value;
}

graph::Var ParameterSet::bind(graph::Graph& g, const std::string& name) {
  auto it = index_.find(name);
  DELTAMOE_CHECK(it != index_.end(), "nn", "no parameter '", name, "'");
  const Parameter& p = params_[it->second];
  return g.param(p.value, p.grad);
}

void ParameterSet::zero_grad() {
  for (Parameter& p : params_) p.grad.fill(0.0f);
}

int64_t ParameterSet::numel() const {
  int64_t n = 0;
  for (const Parameter& p : params_) n += p.value.numel();
  return n;
}

void init_uniform(Tensor& t, float bound, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(-bound, bound);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
}

void init_normal(Tensor& t, float stddev, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, stddev);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = d(rng);
}

void init_linear(Tensor& weight, Tensor* bias, std::mt19937_64& rng) {
  DELTAMOE_CHECK(weight.dim() == 2, "nn", "init_linear: weight ", shape_str(weight.shape()));
  const float bound = 1.0f / std::sqrt(static_cast<float>(weight.size(1)));
  init_uniform(weight, bound, rng);
  if (bias) init_uniform(*bias, bound, rng);
}

Adam::Adam(ParameterSet& params, AdamOptions options) : params_(params), opt_(options) {
  for (const Parameter& p : params_.params()) {
    m_.emplace_back(p.value.shape());
    v_.emplace_back(p.value.shape());
  }
}

namespace {
// The update is memory-bound over millions of parameters per step; restrict pointers and a
// clone for AVX-512 let GCC vectorise the sqrt and division (the generic build is SSE2 only).
__attribute__((target_clones("avx512f", "avx2", "default"))) void adam_kernel(
    float* __restrict w, float* __restrict g, float* __restrict m, float* __restrict v, int64_t n,
    float lr, float b1, float b2, float eps, float wd, float inv_c1, float inv_c2) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float gj = g[j];
    const float mj = b1 * m[j] + (1.0f - b1) * gj;
    const float vj = b2 * v[j] + (1.0f - b2) * gj * gj;
    m[j] = mj;
    v[j] = vj;
    w[j] -= lr * ((mj * inv_c1) / (std::sqrt(vj * inv_c2) + eps) + wd * w[j]);
    g[j] = 0.0f;
  }
}
}  // namespace

void Adam::step(float lr_scale) {
  ++t_;
  const float c1 = 1.0f - std::pow(opt_.beta1, static_cast<float>(t_));
  const float c2 = 1.0f - std::pow(opt_.beta2, static_cast<float>(t_));
  auto& ps = params_.params();
  DELTAMOE_CHECK(ps.size() == m_.size(), "nn", "Adam: parameters were added after the optimizer");
  for (size_t i = 0; i < ps.size(); ++i)
    adam_kernel(ps[i].value.data<float>(), ps[i].grad.data<float>(), m_[i].data<float>(),
                v_[i].data<float>(), ps[i].value.numel(), opt_.lr * lr_scale, opt_.beta1,
                opt_.beta2, opt_.eps, opt_.weight_decay, 1.0f / c1, 1.0f / c2);
}

}  // namespace deltamoe::nn
