#include "deltamoe/nn/nn.h"

#include <cmath>

#include "deltamoe/core/parallel.h"

namespace deltamoe::nn {

Tensor& ParameterSet::add(const std::string& name, Shape shape) {
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

void Adam::step(float lr_scale) {
  ++t_;
  const float lr = opt_.lr * lr_scale;
  const float b1 = opt_.beta1, b2 = opt_.beta2, eps = opt_.eps, wd = opt_.weight_decay;
  const float c1 = 1.0f - std::pow(b1, static_cast<float>(t_));
  const float c2 = 1.0f - std::pow(b2, static_cast<float>(t_));
  auto& ps = params_.params();
  DELTAMOE_CHECK(ps.size() == m_.size(), "nn", "Adam: parameters were added after the optimizer");
  for (size_t i = 0; i < ps.size(); ++i) {
    float* w = ps[i].value.data<float>();
    float* g = ps[i].grad.data<float>();
    float* m = m_[i].data<float>();
    float* v = v_[i].data<float>();
    parallel_for(ps[i].value.numel(), 16384, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) {
        m[j] = b1 * m[j] + (1.0f - b1) * g[j];
        v[j] = b2 * v[j] + (1.0f - b2) * g[j] * g[j];
        const float mh = m[j] / c1, vh = v[j] / c2;
        w[j] -= lr * (mh / (std::sqrt(vh) + eps) + wd * w[j]);
        g[j] = 0.0f;
      }
    });
  }
}

}  // namespace deltamoe::nn
