// Every graph op's VJP against central finite differences of its forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "deltamoe/graph/graph.h"
#include "graph_test_util.h"

using namespace deltamoe;
using namespace deltamoe::graph;
using namespace deltamoe::graph::test;

TEST(GraphGrad, Linear) {
  check_grad({rand_tensor({5, 4}, 1), rand_tensor({3, 4}, 2), rand_tensor({3}, 3)},
             [](Graph& g, const std::vector<Var>& v) { return g.linear(v[0], v[1], v[2]); });
}

TEST(GraphGrad, LinearNoBias) {
  check_grad({rand_tensor({2, 6}, 1), rand_tensor({4, 6}, 2)},
             [](Graph& g, const std::vector<Var>& v) { return g.linear(v[0], v[1]); });
}

TEST(GraphGrad, Activations) {
  // Keep relu inputs away from its kink so central differences are exact.
  Tensor x = rand_tensor({4, 5}, 4, -2.0f, 2.0f);
  for (int64_t i = 0; i < x.numel(); ++i)
    if (std::abs(x.data<float>()[i]) < 0.05f) x.data<float>()[i] = 0.3f;
  check_grad({x.clone()}, [](Graph& g, const std::vector<Var>& v) { return g.relu(v[0]); });
  check_grad({x.clone()}, [](Graph& g, const std::vector<Var>& v) { return g.gelu(v[0]); });
  check_grad({x.clone()}, [](Graph& g, const std::vector<Var>& v) { return g.silu(v[0]); });
  check_grad({x.clone()}, [](Graph& g, const std::vector<Var>& v) { return g.softplus(v[0]); });
  check_grad({x.clone()}, [](Graph& g, const std::vector<Var>& v) { return g.sigmoid(v[0]); });
  check_grad({x.clone()}, [](Graph& g, const std::vector<Var>& v) { return g.scale(v[0], -2.5f); });
}

TEST(GraphGrad, GeluMatchesErfFormula) {
  Graph g(false);
  Var x = g.input(Tensor::from({-3.0f, -0.5f, 0.0f, 0.7f, 2.0f}, {5}));
  const auto y = g.value(g.gelu(x)).to_vector();
  const float xs[] = {-3.0f, -0.5f, 0.0f, 0.7f, 2.0f};
  for (int i = 0; i < 5; ++i)
    EXPECT_NEAR(y[i], 0.5 * xs[i] * (1.0 + std::erf(xs[i] / std::sqrt(2.0))), 1e-6);
}

TEST(GraphGrad, GeluVectorisedMatchesErfOnARange) {
  // 1001 points (not a multiple of 16: exercises the masked tail) over [-10, 10]; values and
  // the gradient dy·(Φ(x) + x·φ(x)) against double-precision formulas.
  const int64_t n = 1001;
  Tensor x({n}), dyt({n});
  for (int64_t i = 0; i < n; ++i) {
    x.data<float>()[i] = -10.0f + 20.0f * static_cast<float>(i) / static_cast<float>(n - 1);
    dyt.data<float>()[i] = 0.5f + 0.001f * static_cast<float>(i);
  }
  Tensor dx({n});
  Graph g(true);
  Var xv = g.param(x, dx);
  Var y = g.gelu(xv);
  g.backward(g.sum(g.mul(y, g.input(dyt))));
  const auto yv = g.value(y).to_vector();
  for (int64_t i = 0; i < n; ++i) {
    const double v = x.data<float>()[i];
    const double cdf = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    EXPECT_NEAR(yv[static_cast<size_t>(i)], v * cdf, 2e-6 * std::max(1.0, std::abs(v))) << v;
    EXPECT_NEAR(dx.data<float>()[i], dyt.data<float>()[i] * (cdf + v * pdf), 2e-6) << v;
  }
}

TEST(GraphGrad, AddMulTiled) {
  check_grad({rand_tensor({3, 4}, 5), rand_tensor({3, 4}, 6)},
             [](Graph& g, const std::vector<Var>& v) { return g.add(v[0], v[1]); });
  check_grad({rand_tensor({3, 4}, 5), rand_tensor({3, 4}, 6)},
             [](Graph& g, const std::vector<Var>& v) { return g.mul(v[0], v[1]); });
  check_grad({rand_tensor({3, 4}, 5)},  // same var twice: gradients must add
             [](Graph& g, const std::vector<Var>& v) { return g.mul(v[0], v[0]); });
  check_grad({rand_tensor({6, 4}, 7), rand_tensor({3, 4}, 8)},
             [](Graph& g, const std::vector<Var>& v) { return g.add_rows_tiled(v[0], v[1]); });
}

TEST(GraphGrad, Reductions) {
  check_grad({rand_tensor({3, 4}, 9)},
             [](Graph& g, const std::vector<Var>& v) { return g.sum(v[0]); });
  check_grad({rand_tensor({3, 4}, 9)},
             [](Graph& g, const std::vector<Var>& v) { return g.mean(v[0]); });
  check_grad({rand_tensor({3, 4}, 9)},
             [](Graph& g, const std::vector<Var>& v) { return g.mean_cols(v[0]); });
  check_grad({rand_tensor({6, 4}, 9)},
             [](Graph& g, const std::vector<Var>& v) { return g.mean_groups(v[0], 3); });
  check_grad({rand_tensor({5}, 10, 0.5f, 2.0f)},
             [](Graph& g, const std::vector<Var>& v) { return g.cv_squared(v[0]); });
  check_grad({rand_tensor({4}, 11)}, [](Graph& g, const std::vector<Var>& v) {
    return g.dot_const(v[0], {1.0f, -2.0f, 0.5f, 3.0f});
  });
}

TEST(GraphGrad, SoftmaxFamily) {
  check_grad({rand_tensor({3, 5}, 12, -2.0f, 2.0f)},
             [](Graph& g, const std::vector<Var>& v) { return g.softmax(v[0]); });
  check_grad({rand_tensor({3, 5}, 13, -2.0f, 2.0f)},
             [](Graph& g, const std::vector<Var>& v) { return g.log_softmax(v[0]); });
  check_grad({rand_tensor({4, 5}, 14, -2.0f, 2.0f)}, [](Graph& g, const std::vector<Var>& v) {
    return g.cross_entropy(v[0], {0, 4, 2, 2});
  });
  check_grad({rand_tensor({4, 5}, 14, -2.0f, 2.0f)}, [](Graph& g, const std::vector<Var>& v) {
    return g.cross_entropy(v[0], {0, 4, 2, 2}, 0.1f);
  });
}

TEST(GraphGrad, CrossEntropyValue) {
  Graph g(false);
  Var l = g.input(Tensor::from({1.0f, 2.0f, 3.0f, 0.0f, 0.0f, 0.0f}, {2, 3}));
  std::vector<float> rows;
  const float ce = g.scalar(g.cross_entropy(l, {2, 0}, 0.0f, &rows));
  const double e1 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double e2 = std::log(3.0);
  EXPECT_NEAR(ce, (e1 + e2) / 2, 1e-6);
  ASSERT_EQ(rows.size(), 2u);  // the per-row losses, on request
  EXPECT_NEAR(rows[0], e1, 1e-6);
  EXPECT_NEAR(rows[1], e2, 1e-6);
}

TEST(GraphGrad, CrossEntropyLabelSmoothingValue) {
  // Target (1 − ε)·onehot + ε/d: loss = Σ_c −q_c·log p_c, averaged over rows.
  const double eps = 0.2;
  const std::vector<float> lv = {1.0f, 2.0f, 3.0f, 0.5f, -1.0f, 0.0f};
  const std::vector<int32_t> labels = {2, 0};
  Graph g(false);
  const float ce =
      g.scalar(g.cross_entropy(g.input(Tensor::from(lv, {2, 3})), labels, static_cast<float>(eps)));
  double want = 0.0;
  for (int r = 0; r < 2; ++r) {
    double z = 0.0;
    for (int c = 0; c < 3; ++c)
      z += std::exp(static_cast<double>(lv[static_cast<size_t>(r * 3 + c)]));
    for (int c = 0; c < 3; ++c) {
      const double q = (c == labels[static_cast<size_t>(r)] ? 1.0 - eps : 0.0) + eps / 3.0;
      want -= q * (lv[static_cast<size_t>(r * 3 + c)] - std::log(z));
    }
  }
  EXPECT_NEAR(ce, want / 2.0, 1e-6);
}

TEST(GraphGrad, LayerNorm) {
  check_grad({rand_tensor({3, 6}, 15, -2.0f, 2.0f), rand_tensor({6}, 16, 0.5f, 1.5f),
              rand_tensor({6}, 17)},
             [](Graph& g, const std::vector<Var>& v) { return g.layer_norm(v[0], v[1], v[2]); });
}

TEST(GraphGrad, GatherRows) {
  check_grad({rand_tensor({4, 3}, 18)}, [](Graph& g, const std::vector<Var>& v) {
    return g.gather_rows(v[0], {2, 0, 2, 3});
  });
}

TEST(GraphGrad, GateWeights) {
  // Token 0 uses columns {1, 3}, token 1 {0}, token 2 {2, 0, 4}; token 1 also counts null
  // column 4 in its denominator.
  const std::vector<int32_t> off = {0, 2, 3, 6}, cols = {1, 3, 0, 2, 0, 4};
  auto probs = [](Graph& g, Var z) { return g.softmax(z); };
  check_grad({rand_tensor({3, 5}, 19, -1.0f, 1.0f)}, [&](Graph& g, const std::vector<Var>& v) {
    return g.gate_weights(probs(g, v[0]), off, cols, true);
  });
  check_grad({rand_tensor({3, 5}, 20, -1.0f, 1.0f)}, [&](Graph& g, const std::vector<Var>& v) {
    return g.gate_weights(probs(g, v[0]), off, cols, false);
  });
  check_grad({rand_tensor({3, 5}, 21, -1.0f, 1.0f)}, [&](Graph& g, const std::vector<Var>& v) {
    return g.gate_weights(probs(g, v[0]), off, cols, true, {0, 0, 1, 1}, {4});
  });
}

TEST(GraphGrad, GateWeightsValues) {
  Graph g(false);
  Var p = g.input(Tensor::from({0.1f, 0.2f, 0.3f, 0.4f}, {1, 4}));
  const auto w = g.value(g.gate_weights(p, {0, 2}, {3, 1}, true, {0, 1}, {2})).to_vector();
  EXPECT_NEAR(w[0], 0.4 / 0.9, 1e-6);
  EXPECT_NEAR(w[1], 0.2 / 0.9, 1e-6);
}

TEST(GraphGrad, ScatterAddRows) {
  const std::vector<int32_t> rows = {1, 0, 1}, widx = {2, 0, 1};
  check_grad({rand_tensor({3, 4}, 22), rand_tensor({3, 4}, 23), rand_tensor({3}, 24)},
             [&](Graph& g, const std::vector<Var>& v) {
               return g.scatter_add_rows(v[0], v[1], v[2], rows, widx, 3);
             });
  check_grad({rand_tensor({3, 4}, 25), rand_tensor({3}, 26)},
             [&](Graph& g, const std::vector<Var>& v) {
               return g.scatter_add_rows({}, v[0], v[1], rows, widx, 2);
             });
}

TEST(GraphGrad, ScatterCols) {
  check_grad({rand_tensor({5}, 27)}, [](Graph& g, const std::vector<Var>& v) {
    return g.scatter_cols(v[0], {0, 3, 3, 1, 0}, 4);
  });
}

TEST(GraphGrad, NoisyLoad) {
  Tensor noisy = rand_tensor({4, 5}, 28, -2.0f, 2.0f);
  check_grad({rand_tensor({4, 5}, 29), rand_tensor({4, 5}, 30, 0.5f, 1.5f)},
             [&](Graph& g, const std::vector<Var>& v) {
               return g.noisy_load(v[0], g.input(noisy), v[1], 2);
             });
}

// The whole MoE dispatch/combine chain: router → softmax → gates → per-expert gather,
// linear, gelu → weighted scatter-add, checked end to end.
TEST(GraphGrad, MoeChain) {
  const std::vector<int32_t> off = {0, 2, 3, 5}, cols = {1, 0, 1, 0, 1};
  check_grad({rand_tensor({3, 4}, 31), rand_tensor({2, 4}, 32), rand_tensor({4, 4}, 33),
              rand_tensor({4, 4}, 34)},
             [&](Graph& g, const std::vector<Var>& v) {
               Var p = g.softmax(g.linear(v[0], v[1]));
               Var w = g.gate_weights(p, off, cols, true);
               // expert 0 gets entries 1, 3 (tokens 0, 2); expert 1 gets 0, 2, 4 (tokens 0, 1, 2)
               Var h0 = g.gelu(g.linear(g.gather_rows(v[0], {0, 2}), v[2]));
               Var h1 = g.gelu(g.linear(g.gather_rows(v[0], {0, 1, 2}), v[3]));
               Var y = g.scatter_add_rows({}, h0, w, {0, 2}, {1, 3}, 3);
               return g.scatter_add_rows(y, h1, w, {0, 1, 2}, {0, 2, 4}, 3);
             });
}

TEST(Graph, BadShapesThrow) {
  Graph g;
  Var a = g.input(Tensor({2, 3}));
  Var b = g.input(Tensor({3, 2}));
  EXPECT_THROW(g.add(a, b), Error);
  EXPECT_THROW(g.linear(a, b), Error);
  EXPECT_THROW(g.cross_entropy(a, {0, 3}), Error);
  EXPECT_THROW(g.gather_rows(a, {2}), Error);
  EXPECT_THROW(g.backward(a), Error);
}

TEST(Graph, InferenceGraphHasNoGrad) {
  Graph g(false);
  Tensor w({2, 2}), gw({2, 2});
  Var p = g.param(w, gw);
  EXPECT_FALSE(g.node(p).requires_grad);
  EXPECT_THROW(g.backward(g.sum(p)), Error);
}
