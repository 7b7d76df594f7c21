// Planned execution of training steps (graph/memory_plan): training inside one arena laid out
// by sched/ gives the same losses and weights, bit for bit, as training on the heap (MoE
// classifier with top-k, top-p and noisy gating; the Mixtral and Qwen2-MoE language models);
// routing-dependent buffers that outgrow their slots go to the heap and the plan grows; a
// tape that leaves its plan is detected, and reading a buffer the plan gave away is an error,
// never a wrong value.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/graph/memory_plan.h"
#include "deltamoe/models/lm_train.h"
#include "deltamoe/models/moe_classifier.h"
#include "llm_golden.h"

namespace {

using namespace deltamoe;
using graph::Var;

// Every parameter's value, bit for bit.
void expect_same_params(const nn::ParameterSet& a, const nn::ParameterSet& b) {
  ASSERT_EQ(a.params().size(), b.params().size());
  for (size_t i = 0; i < a.params().size(); ++i) {
    const Tensor &x = a.params()[i].value, &y = b.params()[i].value;
    ASSERT_EQ(x.numel(), y.numel());
    int64_t diff = 0;
    for (int64_t j = 0; j < x.numel(); ++j) diff += x.data<float>()[j] != y.data<float>()[j];
    EXPECT_EQ(diff, 0) << a.params()[i].name;
  }
}

models::MoeClassifierConfig classifier_config(const std::string& routing, bool noisy) {
  models::MoeClassifierConfig c;
  c.stem = "patch";
  c.input_side = 12;
  c.patch = 4;  // 9 tokens per image
  c.hidden = 16;
  c.inter = 24;
  c.experts = 4;
  c.layers = 2;
  c.noisy_gating = noisy;
  c.routing = moe::parse_policy_spec(routing, c.experts);
  return c;
}

TEST(MemoryPlan, ClassifierTrainingInTheArenaIsBitIdentical) {
  set_num_threads(1);
  std::mt19937_64 rng(5);
  const int64_t n = 256;
  Tensor x({n, 144});
  std::vector<int32_t> y(static_cast<size_t>(n));
  std::uniform_real_distribution<float> px(0.0f, 1.0f);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = px(rng);
  for (auto& l : y) l = static_cast<int32_t>(rng() % 10);
  for (const auto& [routing, noisy] : std::vector<std::pair<std::string, bool>>{
           {"top-k:2", false}, {"top-p:0.5", false}, {"top-k:2", true}}) {
    SCOPED_TRACE(routing + (noisy ? " noisy" : ""));
    models::TrainOptions o;
    o.epochs = 2;
    o.batch = 32;
    o.val_size = 0;
    o.lr = 3e-3f;
    models::MoeClassifier heap(classifier_config(routing, noisy), 7),
        planned(classifier_config(routing, noisy), 7);
    const models::TrainSummary a = models::train(heap, x, y, o);
    o.memory_plan = true;
    o.memory_plan_slack = 0.1;
    const models::TrainSummary b = models::train(planned, x, y, o);
    ASSERT_EQ(a.step_losses.size(), 16u);
    EXPECT_EQ(a.step_losses, b.step_losses);
    expect_same_params(heap.params(), planned.params());
    const graph::StepPlanStats& st = b.memory_plan;
    EXPECT_EQ(st.steps, 16);
    EXPECT_GE(st.plans, 1);
    EXPECT_GT(st.planned_steps, 0);  // some steps ran entirely inside the arena
    EXPECT_GT(st.arena_bytes, 0u);
    // Freeing at last use: the arena is well under what the tape holds when nothing is freed.
    EXPECT_LT(st.planned_peak_bytes, st.tape_resident_bytes);
    EXPECT_EQ(a.memory_plan.steps, 0);
  }
}

TEST(MemoryPlan, LanguageModelTrainingInTheArenaIsBitIdentical) {
  set_num_threads(2);
  std::vector<int32_t> stream;
  for (int i = 0; i < 3000; ++i) stream.push_back(static_cast<int32_t>((i * 7 + i / 13) % 40));
  for (const bool qwen2 : {false, true}) {
    SCOPED_TRACE(qwen2 ? "qwen2-moe" : "mixtral");
    io::HfConfig cfg = test::tiny_mixtral(40, 16, 2, 1, 16);
    if (qwen2) cfg = test::as_qwen2_moe(cfg, 8);
    models::TrainableMoeLm heap(cfg, 3), planned(cfg, 3);
    models::LmTrainOptions o;
    o.steps = 12;
    o.batch = 4;
    o.seq_len = 16;
    o.warmup = 2;
    o.progress = false;
    o.balance_alpha = 0.02;
    o.budget_beta = 0.1;
    nn::AdamOptions ao;
    ao.lr = 1e-2f;
    nn::Adam adam_a(heap.params(), ao), adam_b(planned.params(), ao);
    const models::LmTrainSummary a = models::train_lm(heap, adam_a, stream, o);
    o.memory_plan = true;
    const models::LmTrainSummary b = models::train_lm(planned, adam_b, stream, o);
    EXPECT_EQ(a.loss_curve, b.loss_curve);
    expect_same_params(heap.params(), planned.params());
    EXPECT_EQ(b.memory_plan.steps, 12);
    EXPECT_GT(b.memory_plan.planned_steps, 0);
    EXPECT_LT(b.memory_plan.planned_peak_bytes, b.memory_plan.tape_resident_bytes);
  }
}

// A hand-built MoE-like step: x → gather(rows) → linear → relu → scatter back → loss.
struct Step {
  Tensor w = Tensor({6, 6}), wg = Tensor({6, 6});
  Step() {
    for (int64_t i = 0; i < w.numel(); ++i)
      w.data<float>()[i] = 0.1f * static_cast<float>(i % 5 - 2);
  }
  // Runs one step with `rows` gathered (backward through `planner` when given); returns the
  // loss and leaves wg holding the gradient.
  float run(graph::Graph& g, const Tensor& x, const std::vector<int32_t>& rows,
            graph::StepMemoryPlanner* planner = nullptr) {
    wg.fill(0.0f);
    const Var xv = g.input(x), wv = g.param(w, wg);
    const Var h = g.relu(g.linear(g.gather_rows(xv, rows), wv));
    const Var s = g.mean(g.mul(h, h));
    if (planner)
      planner->backward(g, s, {});
    else
      g.backward(s);
    return g.scalar(s);
  }
};

Tensor ramp(int64_t rows) {
  Tensor x({rows, 6});
  for (int64_t i = 0; i < x.numel(); ++i)
    x.data<float>()[i] = 0.05f * static_cast<float>(i % 11) - 0.2f;
  return x;
}

TEST(MemoryPlan, BuffersLargerThanTheirSlotGoToTheHeapAndThePlanGrows) {
  const Tensor x = ramp(20);
  Step ref, run;
  graph::MemoryPlanOptions po;
  po.slack = 0.0;
  graph::StepMemoryPlanner planner(po);
  const std::vector<std::vector<int32_t>> batches = {{0, 1, 2}, {0, 1, 2, 3, 4, 5, 6, 7}, {9, 3}};
  for (size_t s = 0; s < batches.size(); ++s) {
    graph::Graph a(true);
    const float want = ref.run(a, x, batches[s]);
    const std::vector<float> want_g(ref.wg.data<float>(), ref.wg.data<float>() + 36);
    graph::Graph b(true);
    planner.begin(b);
    const float got = run.run(b, x, batches[s], &planner);
    EXPECT_EQ(got, want) << s;
    EXPECT_EQ(std::vector<float>(run.wg.data<float>(), run.wg.data<float>() + 36), want_g) << s;
  }
  const graph::StepPlanStats& st = planner.stats();
  EXPECT_EQ(st.steps, 3);
  EXPECT_EQ(st.plans, 2);          // after the first step, and after the one that overflowed
  EXPECT_GT(st.overflows, 0);      // 8 rows in 3-row slots
  EXPECT_EQ(st.planned_steps, 1);  // the last one fits the grown plan
  EXPECT_EQ(st.diverged_steps, 0);
}

TEST(MemoryPlan, ATapeThatLeavesItsPlanIsDetected) {
  // Plan: a chain of scales (their VJPs read nothing, so each value dies when the next is made).
  Tensor x({64, 1}), w({1, 1}), wg({1, 1});
  for (int64_t i = 0; i < 64; ++i) x.data<float>()[i] = 0.01f * static_cast<float>(i);
  w.data<float>()[0] = 1.5f;
  auto chain = [&](graph::Graph& g, bool extra) {
    const Var a = g.scale(g.input(x), 2.0f), b = g.scale(a, 3.0f), c = g.scale(b, 0.5f),
              d = g.scale(c, 0.25f);
    Var out = g.mul(d, d);
    if (extra) out = g.add(out, a);  // reads a, long given away under the plan
    return g.mean(g.linear(out, g.param(w, wg)));
  };
  graph::StepMemoryPlanner planner;
  {
    graph::Graph g(true);
    planner.begin(g);
    const Var loss = chain(g, false);
    planner.backward(g, loss, {});
  }
  {
    graph::Graph g(true);
    planner.begin(g);
    EXPECT_THROW(
        {
          try {
            chain(g, true);
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("already reused"), std::string::npos) << e.what();
            throw;
          }
        },
        Error);
  }
  // A different but safe tape (a new leaf first) diverges at once and runs on the heap.
  {
    graph::Graph ref(true), g(true);
    const Var l0 = chain(ref, false);
    ref.backward(l0);
    planner.begin(g);
    g.input(x);
    const Var loss = chain(g, false);
    planner.backward(g, loss, {});
    EXPECT_EQ(g.scalar(loss), ref.scalar(l0));
    EXPECT_EQ(planner.stats().diverged_steps, 1);
  }
}

// The release schedule of a recorded step: backward() with it gives the same gradients as
// without, and drops every buffer but the kept ones (which stay readable) by the end.
TEST(MemoryPlan, ABackwardThatFreesAsPlannedGivesTheSameGradients) {
  models::MoeClassifier a(classifier_config("top-k:2", true), 3),
      b(classifier_config("top-k:2", true), 3);
  Tensor x({16, 144});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = static_cast<float>(i % 13) / 13.0f;
  std::vector<int32_t> y(16);
  for (size_t i = 0; i < y.size(); ++i) y[i] = static_cast<int32_t>(i % 10);
  std::vector<float> losses;
  for (models::MoeClassifier* m : {&a, &b}) {
    std::mt19937_64 rng(9);
    models::ForwardOptions fo;
    fo.training = true;
    fo.noisy_weight = 0.01;
    fo.balance_alpha = 0.01;
    fo.rng = &rng;
    graph::Graph g(true);
    const models::ForwardOut out = m->forward(g, x, fo);
    Var loss = g.cross_entropy(out.logits, y);
    if (out.aux_loss.valid()) loss = g.add(loss, out.aux_loss);
    m->params().zero_grad();
    if (m == &b) {
      const graph::MemoryPlan p = graph::plan_step_memory(g, loss, {out.logits});
      EXPECT_FALSE(p.release.values_at_start.empty() && p.release.values_after.empty());
      const graph::BackwardRelease alone = graph::plan_backward_release(g, loss, {out.logits});
      EXPECT_EQ(alone.values_at_start, p.release.values_at_start);
      EXPECT_EQ(alone.values_after, p.release.values_after);
      EXPECT_EQ(alone.grads_after, p.release.grads_after);
      g.backward(loss, &p.release);
      int64_t dropped = 0, alive = 0;
      for (int32_t i = 0; i < g.size(); ++i) {
        const graph::Node& n = g.node(Var{i});
        if (n.op == graph::Op::param || n.op == graph::Op::input) continue;
        (n.value.raw() == nullptr ? dropped : alive) += 1;
        EXPECT_FALSE(n.grad.defined() && i != loss.id) << i;  // every gradient dropped
      }
      EXPECT_GT(dropped, 20);
      EXPECT_EQ(alive, 2);  // the logits and the loss
      EXPECT_NE(g.value(out.logits).raw(), nullptr);
    } else {
      g.backward(loss);
    }
    losses.push_back(g.scalar(loss));
  }
  EXPECT_EQ(losses[0], losses[1]);
  for (size_t i = 0; i < a.params().params().size(); ++i) {
    const Tensor &ga = a.params().params()[i].grad, &gb = b.params().params()[i].grad;
    EXPECT_EQ(ga.to_vector(), gb.to_vector()) << a.params().params()[i].name;
  }
}

TEST(MemoryPlan, ClearErrors) {
  graph::MemoryPlanOptions po;
  po.slack = -1.0;
  EXPECT_THROW(graph::StepMemoryPlanner{po}, Error);
  graph::Graph g(false);
  const Var v = g.mean(g.input(ramp(3)));
  EXPECT_THROW(graph::plan_step_memory(g, v, {}), Error);  // no gradients on this tape
}

}  // namespace
