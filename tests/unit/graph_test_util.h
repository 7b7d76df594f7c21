// Test helpers for graph/: random tensors and the finite-difference gradient check every op's
// VJP is held to.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "deltamoe/graph/graph.h"

namespace deltamoe::graph::test {

inline Tensor rand_tensor(Shape shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  Tensor t(std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = d(rng);
  return t;
}

using Builder = std::function<Var(Graph&, const std::vector<Var>&)>;

// L = Σ r ⊙ f(params) with a fixed random r, so every output element's VJP is exercised with
// a different weight. Returns L for the current parameter values.
inline double loss_of(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                      const Builder& build, uint64_t r_seed, bool backward) {
  Graph g(backward);
  std::vector<Var> vars;
  for (size_t i = 0; i < params.size(); ++i) vars.push_back(g.param(params[i], grads[i]));
  Var y = build(g, vars);
  Tensor r = rand_tensor(g.value(y).shape(), r_seed);
  Var loss = g.sum(g.mul(y, g.input(r)));
  if (backward) g.backward(loss);
  // Re-add in double for the finite differences (the f32 sum is rounded).
  const auto yv = g.value(y).to_vector();
  double s = 0.0;
  for (size_t i = 0; i < yv.size(); ++i) s += static_cast<double>(yv[i]) * r.data<float>()[i];
  return s;
}

inline void check_grad(std::vector<Tensor> params, const Builder& build, float eps = 2e-3f,
                       float tol = 1e-2f) {
  std::vector<Tensor> grads;
  for (const Tensor& p : params) grads.emplace_back(p.shape());
  loss_of(params, grads, build, 99, true);
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    float* p = params[i].data<float>();
    for (int64_t j = 0; j < params[i].numel(); ++j) {
      const float orig = p[j];
      p[j] = orig + eps;
      const double lp = loss_of(params, grads, build, 99, false);
      p[j] = orig - eps;
      const double lm = loss_of(params, grads, build, 99, false);
      p[j] = orig;
      const double num = (lp - lm) / (2.0 * eps);
      const double ana = grads[i].data<float>()[j];
      EXPECT_NEAR(ana, num, tol * std::max(1.0, std::abs(num)))
          << "param " << i << " element " << j;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

}  // namespace deltamoe::graph::test
