// Export of the training tape to memgraph-v1: exact structure on hand-built tapes, and on a
// tiny MoE classifier a cross-check of the synthesised backward nodes against what the
// engine's real backward() allocates.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "deltamoe/core/error.h"
#include "deltamoe/graph/export_memgraph.h"
#include "deltamoe/models/moe_classifier.h"

namespace {

using namespace deltamoe;
using graph::Var;

Tensor filled(Shape s, float v) {
  Tensor t(s);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = v * static_cast<float>(i % 7 - 3);
  return t;
}

int32_t by_name(const sched::Graph& g, const std::string& name) {
  int32_t found = -1;
  for (int32_t v = 0; v < g.size(); ++v)
    if (g.nodes[static_cast<size_t>(v)].name == name) {
      EXPECT_EQ(found, -1) << "duplicate name " << name;
      found = v;
    }
  return found;
}

std::set<int32_t> ins(const sched::Graph& g, int32_t v) {
  const auto& i = g.nodes[static_cast<size_t>(v)].inputs;
  return {i.begin(), i.end()};
}

TEST(GraphExport, LinearReluMeanExactStructure) {
  graph::Graph g(true);
  Tensor w = filled({3, 4}, 0.1f), wg({3, 4}), b = filled({3}, 0.2f), bg({3});
  Var x = g.input(filled({5, 4}, 0.5f));
  Var wv = g.param(w, wg), bv = g.param(b, bg);
  Var h = g.linear(x, wv, bv);
  Var loss = g.mean(g.relu(h));
  graph::ExportOptions eo;
  eo.param_names = {{w.raw(), "w"}, {b.raw(), "b"}};
  const sched::Graph m = graph::export_training_graph(g, loss, eo);
  // 6 forward nodes + seed + d(relu) + d(linear) + dW + db.
  ASSERT_EQ(m.size(), 11);
  EXPECT_EQ(m.nodes[0].op, "input");
  EXPECT_EQ(m.nodes[0].size, 5u * 4 * 4);
  EXPECT_EQ(m.nodes[1].op, "param");
  EXPECT_EQ(m.nodes[1].name, "w");
  EXPECT_TRUE(m.is_persistent[1] && m.is_persistent[2]);
  EXPECT_EQ(m.nodes[3].op, "linear");
  EXPECT_EQ(m.nodes[3].size, 5u * 3 * 4);
  EXPECT_EQ(ins(m, 3), (std::set<int32_t>{0, 1, 2}));
  const int32_t seed = by_name(m, "d(mean#5)"), drelu = by_name(m, "d(relu#4)"),
                dlin = by_name(m, "d(linear#3)"), dw = by_name(m, "d(w)"), db = by_name(m, "d(b)");
  ASSERT_GE(seed, 0);
  ASSERT_GE(dw, 0);
  ASSERT_GE(db, 0);
  EXPECT_EQ(m.nodes[seed].size, 4u);
  EXPECT_EQ(ins(m, drelu), (std::set<int32_t>{seed}));     // mean's VJP reads dy only
  EXPECT_EQ(ins(m, dlin), (std::set<int32_t>{3, drelu}));  // relu reads its input h
  EXPECT_EQ(ins(m, dw), (std::set<int32_t>{0, dlin}));     // dW = dyᵀ·x
  EXPECT_EQ(ins(m, db), (std::set<int32_t>{dlin}));
  EXPECT_EQ(m.nodes[dw].size, 12u * 4);
  EXPECT_EQ(m.nodes[db].size, 3u * 4);
  // x needs no gradient: no d(input) node. Outputs are exactly the two parameter gradients.
  EXPECT_EQ(by_name(m, "d(input#0)"), -1);
  int outs = 0;
  for (int32_t v = 0; v < m.size(); ++v) outs += m.is_output[v];
  EXPECT_EQ(outs, 2);
  EXPECT_TRUE(m.is_output[dw] && m.is_output[db]);
}

TEST(GraphExport, SecondGradientContributionIsInPlaceView) {
  graph::Graph g(true);
  Tensor w = filled({4}, 0.3f), wg({4});
  Var p = g.param(w, wg);
  Var a = g.relu(p);
  Var loss = g.sum(g.add(a, p));  // p receives two contributions (from add and from relu)
  const sched::Graph m = graph::export_training_graph(g, loss);
  const int32_t first = by_name(m, "d(param0)"), second = by_name(m, "d(param0)+=");
  ASSERT_GE(first, 0);
  ASSERT_GE(second, 0);
  EXPECT_LT(first, second);
  EXPECT_EQ(m.nodes[first].size, 16u);
  EXPECT_EQ(m.nodes[second].size, 0u);
  EXPECT_EQ(m.nodes[second].view_of, first);
  EXPECT_EQ(m.base[second], first);
  EXPECT_TRUE(ins(m, second).count(first));
  // The final (view) node is the output; the buffer stays live through it.
  EXPECT_TRUE(m.is_output[second]);
  EXPECT_FALSE(m.is_output[first]);
  EXPECT_TRUE(m.buffer_output[first]);
}

TEST(GraphExport, RejectsNonScalarLossAndInferenceTape) {
  graph::Graph g(true);
  Var x = g.input(filled({2, 2}, 1.0f));
  EXPECT_THROW(graph::export_training_graph(g, x), Error);
  graph::Graph inf(false);
  Var y = inf.sum(inf.input(filled({2}, 1.0f)));
  EXPECT_THROW(graph::export_training_graph(inf, y), Error);
}

TEST(GraphExport, TinyMoeClassifierMatchesRealBackward) {
  models::MoeClassifierConfig c;
  c.hidden = 16;
  c.inter = 8;
  c.experts = 4;
  c.layers = 2;
  c.routing.kind = "top-k";
  c.routing.k = 2;
  models::MoeClassifier model(c, 3);
  const int64_t batch = 32;
  Tensor x({batch, 784});
  std::vector<int32_t> y(batch);
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = u(rng);
  for (auto& l : y) l = static_cast<int32_t>(rng() % 10);
  models::ForwardOptions fo;
  fo.training = true;
  fo.balance_alpha = 0.01;
  fo.rng = &rng;
  graph::Graph g(true);
  auto out = model.forward(g, x, fo);
  Var loss = g.cross_entropy(out.logits, y);
  if (out.aux_loss.valid()) loss = g.add(loss, out.aux_loss);

  graph::ExportOptions eo;
  for (const auto& p : model.params().params()) eo.param_names.emplace_back(p.value.raw(), p.name);
  const sched::Graph m = graph::export_training_graph(g, loss, eo);
  sched::Graph copy = m;
  EXPECT_NO_THROW(copy.finalize("copy"));
  for (int32_t v = 0; v < m.size(); ++v)
    for (int32_t i : m.nodes[v].inputs) EXPECT_LT(i, v) << "not topological at " << v;

  // Forward nodes are the tape, one to one, sized value + saved bytes.
  int64_t tape_params = 0;
  uint64_t largest = 0;
  for (int32_t i = 0; i < g.size(); ++i) {
    const graph::Node& n = g.node(Var{i});
    uint64_t want = static_cast<uint64_t>(n.value.numel()) * 4;
    if (n.op != graph::Op::param && n.saved.defined())
      want += static_cast<uint64_t>(n.saved.numel()) * 4;
    EXPECT_EQ(m.nodes[i].size, want) << m.nodes[i].name;
    if (n.op == graph::Op::param)
      ++tape_params;
    else
      largest = std::max(largest, want);
  }
  int64_t persistent = 0, params = 0, outputs = 0;
  for (int32_t v = 0; v < m.size(); ++v) {
    persistent += m.is_persistent[v];
    params += m.nodes[v].op == "param";
    outputs += m.is_output[v];
  }
  EXPECT_GT(tape_params, 10);
  EXPECT_EQ(params, tape_params);
  EXPECT_EQ(persistent, tape_params);
  EXPECT_EQ(outputs, tape_params);  // every bound parameter gets a gradient

  // The real backward: every node that gets a gradient has exactly one gradient buffer in the
  // export, of the same byte size, and no other gradient buffers exist.
  g.backward(loss);
  int64_t grads = 0;
  for (int32_t i = 0; i < g.size(); ++i) {
    const graph::Node& n = g.node(Var{i});
    const std::string& label = m.nodes[i].name;
    const int32_t d = by_name(m, "d(" + label + ")");
    const bool has = n.grad.defined() && (n.op != graph::Op::param || n.requires_grad);
    if (n.op == graph::Op::param) {
      ASSERT_GE(d, 0) << label;
    } else {
      EXPECT_EQ(d >= 0, has) << label;
    }
    if (d >= 0) {
      ++grads;
      EXPECT_EQ(m.nodes[d].size, n.value.nbytes()) << label;
      EXPECT_EQ(m.nodes[d].view_of, -1);
    }
  }
  int64_t bases = 0;
  for (int32_t v = static_cast<int32_t>(g.size()); v < m.size(); ++v)
    bases += m.nodes[v].view_of < 0;
  EXPECT_EQ(bases, grads);

  const auto sim = sched::simulate(m, sched::program_order(m));
  EXPECT_GE(sim.peak, largest);
  EXPECT_GT(sim.persistent_bytes, 0u);
  EXPECT_GE(graph::tape_resident_bytes(g, loss), largest);
}

}  // namespace
