// The decoder ops of graph/ (RMSNorm, RoPE, causal grouped-query attention): VJPs against
// central finite differences, forwards against naive double-precision formulas written here,
// bad shapes refused, and the memgraph export of a decoder block against the real backward.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/graph/export_memgraph.h"
#include "deltamoe/graph/graph.h"
#include "graph_test_util.h"

using namespace deltamoe;
using namespace deltamoe::graph;
using namespace deltamoe::graph::test;

namespace {

// Naive causal GQA attention of B sequences of T rows, in double.
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    int64_t heads, int64_t kv_heads, int64_t T) {
  const int64_t rows = q.size(0), d = q.size(1) / heads;
  std::vector<double> out(static_cast<size_t>(rows * heads * d), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s0 = r / T * T;  // first row of r's sequence
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads);
      std::vector<double> score;
      double mx = -1e300;
      for (int64_t j = s0; j <= r; ++j) {
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c)
          dot += static_cast<double>(q.data<float>()[r * heads * d + h * d + c]) *
                 k.data<float>()[j * kv_heads * d + g * d + c];
        score.push_back(dot / std::sqrt(static_cast<double>(d)));
        mx = std::max(mx, score.back());
      }
      double sum = 0.0;
      for (double& x : score) sum += (x = std::exp(x - mx));
      for (int64_t j = s0; j <= r; ++j)
        for (int64_t c = 0; c < d; ++c)
          out[static_cast<size_t>(r * heads * d + h * d + c)] +=
              score[static_cast<size_t>(j - s0)] / sum *
              v.data<float>()[j * kv_heads * d + g * d + c];
    }
  }
  return out;
}

}  // namespace

TEST(GraphDecoder, RmsNormGradAndValue) {
  check_grad({rand_tensor({5, 8}, 1), rand_tensor({8}, 2, 0.5f, 1.5f)},
             [](Graph& g, const std::vector<Var>& v) { return g.rms_norm(v[0], v[1], 1e-5f); });
  const Tensor x = rand_tensor({3, 6}, 3), w = rand_tensor({6}, 4);
  Graph g(false);
  const Var y = g.rms_norm(g.input(x), g.input(w), 1e-6f);
  for (int64_t r = 0; r < 3; ++r) {
    double ss = 0.0;
    for (int64_t c = 0; c < 6; ++c)
      ss += static_cast<double>(x.data<float>()[r * 6 + c]) * x.data<float>()[r * 6 + c];
    const double s = 1.0 / std::sqrt(ss / 6.0 + 1e-6);
    for (int64_t c = 0; c < 6; ++c)
      EXPECT_NEAR(g.value(y).data<float>()[r * 6 + c],
                  x.data<float>()[r * 6 + c] * s * w.data<float>()[c], 1e-5);
  }
}

TEST(GraphDecoder, RopeGradAndValue) {
  // 2 sequences of 3 rows, 2 heads of 4.
  check_grad({rand_tensor({6, 8}, 5)},
             [](Graph& g, const std::vector<Var>& v) { return g.rope(v[0], 4, 3, 10000.0); });
  const Tensor x = rand_tensor({6, 8}, 6);
  Graph g(false);
  const Var y = g.rope(g.input(x), 4, 3, 100.0);
  for (int64_t r = 0; r < 6; ++r) {
    const double pos = static_cast<double>(r % 3);
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t i = 0; i < 2; ++i) {
        const double a = pos * std::pow(100.0, -2.0 * static_cast<double>(i) / 4.0);
        const float* xr = x.data<float>() + r * 8 + h * 4;
        const float* yr = g.value(y).data<float>() + r * 8 + h * 4;
        EXPECT_NEAR(yr[i], xr[i] * std::cos(a) - xr[i + 2] * std::sin(a), 1e-5)
            << r << " " << h << " " << i;
        EXPECT_NEAR(yr[i + 2], xr[i + 2] * std::cos(a) + xr[i] * std::sin(a), 1e-5);
      }
  }
}

TEST(GraphDecoder, CausalAttentionGradGqaAndMha) {
  // 2 sequences of 4 rows; 4 query heads on 2 kv heads of 3, then plain multi-head.
  for (const auto& [heads, kv_heads] : {std::pair<int64_t, int64_t>{4, 2}, {2, 2}, {3, 1}}) {
    SCOPED_TRACE(std::to_string(heads) + "/" + std::to_string(kv_heads));
    check_grad({rand_tensor({8, heads * 3}, 7), rand_tensor({8, kv_heads * 3}, 8),
                rand_tensor({8, kv_heads * 3}, 9)},
               [heads = heads, kv_heads = kv_heads](Graph& g, const std::vector<Var>& v) {
                 return g.causal_attention(v[0], v[1], v[2], heads, kv_heads, 4);
               });
  }
}

TEST(GraphDecoder, CausalAttentionValueMatchesNaive) {
  const Tensor q = rand_tensor({10, 4 * 8}, 11, -2.0f, 2.0f),
               k = rand_tensor({10, 2 * 8}, 12, -2.0f, 2.0f), v = rand_tensor({10, 2 * 8}, 13);
  Graph g(false);
  const Var y = g.causal_attention(g.input(q), g.input(k), g.input(v), 4, 2, 5);
  const std::vector<double> want = naive_attention(q, k, v, 4, 2, 5);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(g.value(y).data<float>()[i], want[i], 2e-5) << i;
}

TEST(GraphDecoder, BadShapesThrow) {
  Graph g(false);
  const Var x = g.input(rand_tensor({6, 8}, 1));
  EXPECT_THROW(g.rms_norm(x, g.input(rand_tensor({7}, 2)), 1e-5f), Error);
  EXPECT_THROW(g.rope(x, 3, 3, 1e4), Error);  // odd head_dim
  EXPECT_THROW(g.rope(x, 4, 4, 1e4), Error);  // 6 rows are not sequences of 4
  const Var k = g.input(rand_tensor({6, 4}, 3));
  EXPECT_THROW(g.causal_attention(x, k, k, 3, 1, 3), Error);  // 8 columns for 3 heads
  EXPECT_THROW(g.causal_attention(x, k, k, 2, 1, 4), Error);  // sequences of 4 in 6 rows
  EXPECT_THROW(g.causal_attention(x, k, k, 4, 3, 3), Error);  // 4 heads on 3 kv heads
}

// A pre-norm decoder block (RMSNorm, q/k/v, RoPE, attention, output projection, residual):
// its export is a valid memgraph whose gradient buffers are those the real backward makes.
TEST(GraphDecoder, ExportOfADecoderBlockMatchesRealBackward) {
  const int64_t T = 4, B = 2, H = 8, heads = 2, kv_heads = 1, d = 4;
  std::vector<Tensor> vals = {rand_tensor({H}, 1, 0.5f, 1.5f), rand_tensor({heads * d, H}, 2),
                              rand_tensor({kv_heads * d, H}, 3), rand_tensor({kv_heads * d, H}, 4),
                              rand_tensor({H, heads * d}, 5)};
  std::vector<Tensor> pgrads;
  for (const Tensor& t : vals) pgrads.emplace_back(t.shape());
  Graph g(true);
  std::vector<Var> p;
  for (size_t i = 0; i < vals.size(); ++i) p.push_back(g.param(vals[i], pgrads[i]));
  const Var x = g.input(rand_tensor({B * T, H}, 6));
  const Var h = g.rms_norm(x, p[0], 1e-5f);
  const Var q = g.rope(g.linear(h, p[1]), d, T, 1e4);
  const Var k = g.rope(g.linear(h, p[2]), d, T, 1e4);
  const Var v = g.linear(h, p[3]);
  const Var y = g.add(x, g.linear(g.causal_attention(q, k, v, heads, kv_heads, T), p[4]));
  const Var loss = g.mean(g.mul(y, y));
  const sched::Graph m = export_training_graph(g, loss);
  sched::Graph copy = m;
  EXPECT_NO_THROW(copy.finalize("copy"));
  // The attention's gradient nodes read q, k and v (its probabilities are recomputed).
  std::set<std::string> readers_of_q;
  for (const auto& n : m.nodes)
    for (int32_t i : n.inputs)
      if (i == q.id) readers_of_q.insert(n.op);
  EXPECT_GE(readers_of_q.size(), 2u);  // the attention forward and at least one gradient
  g.backward(loss);
  auto by_name = [&](const std::string& name) {
    for (int32_t v2 = 0; v2 < m.size(); ++v2)
      if (m.nodes[v2].name == name) return v2;
    return -1;
  };
  int64_t grads = 0;
  for (int32_t i = 0; i < g.size(); ++i) {
    const Node& n = g.node(Var{i});
    const int32_t dn = by_name("d(" + m.nodes[i].name + ")");
    const bool has = n.grad.defined() && (n.op != Op::param || n.requires_grad);
    EXPECT_EQ(dn >= 0, has) << m.nodes[i].name;
    if (dn < 0) continue;
    ++grads;
    EXPECT_EQ(m.nodes[dn].size, n.value.nbytes()) << m.nodes[i].name;
  }
  int64_t bases = 0;
  for (int32_t v2 = g.size(); v2 < m.size(); ++v2) bases += m.nodes[v2].view_of < 0;
  EXPECT_EQ(bases, grads);
  EXPECT_GT(grads, 10);
}
