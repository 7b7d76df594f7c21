// Parameters, initialisers and Adam against hand-derived values.
#include <gtest/gtest.h>

#include <cmath>

#include "deltamoe/core/error.h"
#include "deltamoe/nn/nn.h"

using namespace deltamoe;

TEST(ParameterSet, AddGetBind) {
  nn::ParameterSet ps;
  Tensor w = ps.add("w", {2, 3});
  w.fill(1.5f);
  EXPECT_EQ(ps.get("w").at({1, 2}), 1.5f);  // the handle aliases the stored parameter
  EXPECT_THROW(ps.add("w", {1}), Error);
  EXPECT_THROW(ps.get("nope"), Error);
  ps.add("b", {3});
  EXPECT_EQ(ps.numel(), 9);
  graph::Graph g;
  graph::Var v = ps.bind(g, "w");
  g.backward(g.sum(v));
  for (float x : ps.params()[0].grad.to_vector()) EXPECT_EQ(x, 1.0f);
  ps.zero_grad();
  for (float x : ps.params()[0].grad.to_vector()) EXPECT_EQ(x, 0.0f);
}

TEST(Init, LinearBounds) {
  std::mt19937_64 rng(3);
  Tensor w({64, 100}), b({64});
  nn::init_linear(w, &b, rng);
  float mx = 0;
  for (float v : w.to_vector()) mx = std::max(mx, std::abs(v));
  EXPECT_LE(mx, 0.1f);
  EXPECT_GT(mx, 0.09f);  // uniform over ±1/√100 reaches close to the bound
}

TEST(Adam, FirstStepIsLrTimesSign) {
  // With bias correction, step 1 moves each weight by lr·g/(|g| + eps) ≈ lr·sign(g).
  nn::ParameterSet ps;
  Tensor w = ps.add("w", {3});
  nn::AdamOptions o;
  o.lr = 0.1f;
  nn::Adam adam(ps, o);
  float* g = ps.params()[0].grad.data<float>();
  g[0] = 2.0f;
  g[1] = -0.5f;
  g[2] = 0.0f;
  adam.step();
  EXPECT_NEAR(w.data<float>()[0], -0.1f, 1e-6);
  EXPECT_NEAR(w.data<float>()[1], 0.1f, 1e-6);
  EXPECT_EQ(w.data<float>()[2], 0.0f);
  EXPECT_EQ(g[0], 0.0f);  // gradients are zeroed
}

TEST(Adam, SecondStepMatchesFormula) {
  nn::ParameterSet ps;
  Tensor w = ps.add("w", {1});
  nn::AdamOptions o;
  o.lr = 0.01f;
  nn::Adam adam(ps, o);
  float* g = ps.params()[0].grad.data<float>();
  g[0] = 1.0f;
  adam.step();
  g[0] = 3.0f;
  adam.step();
  const double m = 0.9 * 0.1 * 1.0 + 0.1 * 3.0;
  const double v = 0.999 * 0.001 * 1.0 + 0.001 * 9.0;
  const double mh = m / (1 - 0.81), vh = v / (1 - 0.999 * 0.999);
  EXPECT_NEAR(w.data<float>()[0], -0.01 - 0.01 * mh / (std::sqrt(vh) + 1e-8), 1e-6);
}

TEST(Adam, MinimisesQuadratic) {
  nn::ParameterSet ps;
  Tensor w = ps.add("w", {4});
  const std::vector<float> target = {1.0f, -2.0f, 0.5f, 3.0f};
  nn::AdamOptions o;
  o.lr = 0.05f;
  nn::Adam adam(ps, o);
  for (int it = 0; it < 2000; ++it) {
    graph::Graph g;
    graph::Var v = ps.bind(g, "w");
    graph::Var d = g.add(v, g.input(Tensor::from({-1.0f, 2.0f, -0.5f, -3.0f}, {4})));
    g.backward(g.sum(g.mul(d, d)));
    adam.step(0.5f * (1.0f + std::cos(3.14159265f * static_cast<float>(it) / 2000.0f)));
  }
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(w.data<float>()[i], target[static_cast<size_t>(i)], 1e-3);
}
