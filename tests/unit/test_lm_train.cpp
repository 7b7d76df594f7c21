// Training TrainableMoeLm (models/lm_train): a model written by `train-lm` loads in
// transformers with the same logits (golden, python/make_golden_train_lm.py) and in the
// inference path; training lowers the loss; a resumed run equals an uninterrupted one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/io/tokenizer_train.h"
#include "deltamoe/models/kv_cache.h"
#include "deltamoe/models/lm_train.h"
#include "deltamoe/models/moe_lm.h"
#include "llm_golden.h"

using namespace deltamoe;
using namespace deltamoe::models;

namespace {

const std::string kGolden = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden";

io::HfConfig tiny(int64_t vocab) {
  return test::tiny_mixtral(vocab, 16, 2, 1, 16);
}

// A stream with structure to learn: a repeated phrase of 12 tokens with noise every 7th.
std::vector<int32_t> patterned_stream(int64_t n, int32_t vocab) {
  std::vector<int32_t> s;
  for (int64_t i = 0; i < n; ++i)
    s.push_back(i % 7 == 6 ? static_cast<int32_t>((i * 31) % vocab)
                           : static_cast<int32_t>((i % 12) * 3 % vocab));
  return s;
}

// Options of the short runs below: `steps` steps of 8 windows of 16 tokens, no progress.
LmTrainOptions short_run(int64_t steps) {
  LmTrainOptions o;
  o.steps = steps;
  o.batch = 8;
  o.seq_len = 16;
  o.warmup = 4;
  o.progress = false;
  return o;
}

}  // namespace

// Mixtral top-2 (train_lm) and PR-MoE residual as Qwen2-MoE (train_lm_residual: a shared
// expert with its gate, q/k/v biases, raw top-1 weights).
TEST(LmTrain, CheckpointLoadsInTransformersWithTheSameLogits) {
  set_num_threads(2);
  for (const std::string& dir : {kGolden + "/train_lm", kGolden + "/train_lm_residual"}) {
    SCOPED_TRACE(dir);
    const io::HfConfig cfg = io::HfConfig::load(dir);
    TrainableMoeLm lm(cfg, io::load_hf_weights(cfg, io::HfCheckpoint::open(dir)));
    const auto inf = MoeLm::load(dir, {DType::f32});
    const auto tok = io::Tokenizer::load(dir);
    const auto golden = io::SafetensorsFile::open(dir + "/golden.safetensors");
    const char* prompts[] = {"The meaning of life is", "A fortune cookie says:\nYou will",
                             "Q: Why?\nA:"};
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE(prompts[i]);
      const auto ids = test::ids_of(golden.get("prompt." + std::to_string(i)));
      EXPECT_EQ(tok->encode(prompts[i]), ids);  // transformers' tokenizer gave these ids
      const int64_t T = static_cast<int64_t>(ids.size()), V = cfg.vocab_size;
      const Tensor want = golden.get("logits." + std::to_string(i));
      graph::Graph g(false);
      const float* got = g.value(lm.forward(g, ids, T).logits).data<float>();
      std::vector<float> ref(static_cast<size_t>(T * V));
      KvCache cache;
      inf->forward(ids.data(), T, cache, ref.data(), true);
      float d_hf = 0, d_inf = 0;
      for (int64_t j = 0; j < T * V; ++j) {
        d_hf = std::max(d_hf, std::fabs(got[j] - want.data<float>()[j]));
        d_inf = std::max(d_inf, std::fabs(ref[static_cast<size_t>(j)] - want.data<float>()[j]));
      }
      EXPECT_LT(d_hf, 1e-4f);
      EXPECT_LT(d_inf, 1e-4f);
    }
  }
}

TEST(LmTrain, TrainingLowersTheLoss) {
  set_num_threads(1);
  TrainableMoeLm lm(tiny(40), 3);
  const auto stream = patterned_stream(4000, 40);
  const LmEval before = evaluate_lm(lm, stream, 16, 8);
  nn::AdamOptions ao;
  ao.lr = 1e-2f;
  nn::Adam adam(lm.params(), ao);
  LmTrainOptions o;
  o.steps = 60;
  o.batch = 8;
  o.seq_len = 16;
  o.warmup = 5;
  o.progress = false;
  const LmTrainSummary s = train_lm(lm, adam, stream, o);
  const LmEval after = evaluate_lm(lm, stream, 16, 8);
  EXPECT_EQ(s.steps, 60);
  EXPECT_EQ(s.tokens, 60 * 8 * 16);
  EXPECT_NEAR(before.loss, std::log(40.0), 0.3);  // near uniform at init
  EXPECT_LT(after.loss, before.loss - 1.0);
  EXPECT_LT(s.loss_curve.back().second, s.loss_curve.front().second - 1.0);
  EXPECT_NEAR(after.perplexity, std::exp(after.loss), 1e-6 * after.perplexity);
  EXPECT_DOUBLE_EQ(after.mean_experts, 2.0);
  EXPECT_EQ(after.tokens, (4000 / 16) * 15);
}

// 6 steps, or 3 steps + state saved + a fresh model and optimizer restored + 3 more: the same
// weights bit for bit (same thread count).
TEST(LmTrain, ResumedRunEqualsUninterrupted) {
  set_num_threads(1);
  const auto stream = patterned_stream(2000, 40);
  LmTrainOptions o;
  o.steps = 6;
  o.batch = 4;
  o.seq_len = 8;
  o.warmup = 2;
  o.progress = false;
  TrainableMoeLm a(tiny(40), 9);
  nn::Adam adam_a(a.params(), {});
  train_lm(a, adam_a, stream, o);

  TrainableMoeLm b(tiny(40), 9);
  nn::Adam adam_b(b.params(), {});
  const std::string dir = testing::TempDir() + "/lm_resume";
  std::filesystem::create_directories(dir);
  LmTrainOptions first = o;  // the 6-step schedule, stopped after its step-3 checkpoint
  bool saved = false;
  first.checkpoint_every = 3;
  first.on_checkpoint = [&](int64_t done) {
    save_lm(b, "top-k:2", moe::parse_policy_spec("top-k:2", 4),
            io::make_synthetic_tokenizer_json(300), "<s>", dir);
    save_train_state(b, adam_b, done, dir + "/state.safetensors");
    saved = true;
    throw Error("test", "stop here");  // the run is interrupted right after its checkpoint
  };
  EXPECT_THROW(train_lm(b, adam_b, stream, first), Error);
  ASSERT_TRUE(saved);
  const io::HfConfig cfg = io::HfConfig::load(dir);
  TrainableMoeLm c(cfg, io::load_hf_weights(cfg, io::HfCheckpoint::open(dir)));
  nn::Adam adam_c(c.params(), {});
  LmTrainOptions rest = o;
  rest.start_step = load_train_state(c, adam_c, dir + "/state.safetensors");
  EXPECT_EQ(rest.start_step, 3);
  EXPECT_EQ(adam_c.steps(), 3);
  train_lm(c, adam_c, stream, rest);
  for (size_t i = 0; i < a.params().params().size(); ++i) {
    const Tensor& x = a.params().params()[i].value;
    const Tensor& y = c.params().params()[i].value;
    for (int64_t j = 0; j < x.numel(); ++j)
      ASSERT_EQ(x.data<float>()[j], y.data<float>()[j]) << a.params().params()[i].name << " " << j;
  }
  EXPECT_THROW(load_train_state(c, adam_c, dir + "/config.json"), Error);
}

TEST(LmTrain, TokenStreamAndErrors) {
  const auto tok = io::Tokenizer::from_json(io::train_bpe({"a b c", "a b"}, {}).tokenizer_json);
  const auto s = token_stream(*tok, {"a b", "c"}, 0);
  ASSERT_FALSE(s.empty());
  EXPECT_EQ(std::count(s.begin(), s.end(), 0), 2);
  EXPECT_EQ(s.back(), 0);
  TrainableMoeLm lm(tiny(40), 1);
  nn::Adam adam(lm.params(), {});
  LmTrainOptions o;
  o.seq_len = 16;
  o.progress = false;
  EXPECT_THROW(train_lm(lm, adam, std::vector<int32_t>(10, 1), o), Error);  // shorter than a window
  EXPECT_THROW(evaluate_lm(lm, std::vector<int32_t>(10, 1), 16, 4), Error);
}

// evaluate_lm's per-token detail (what `sweep-lm` pairs and buckets): the per-token losses
// (from the cross-entropy's rows) average to the loss and come one per predicted token; the
// per-token expert counts and the load agree with the policy; forcing every token to k experts is
// top-k.
TEST(LmTrain, EvaluationDetailAndForcedExperts) {
  set_num_threads(1);
  TrainableMoeLm lm(tiny(40), 5);
  const auto stream = patterned_stream(1000, 40);
  const int64_t T = 16, windows = 1000 / T, L = 2, E = 4;
  // A peaked router (as after training), so that top-p gives tokens different budgets.
  for (int64_t l = 0; l < L; ++l) {
    Tensor& w =
        lm.params().get("model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight");
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= 100.0f;
  }
  lm.set_policy(moe::make_policy("top-p:0.6", E));
  LmEvalDetail d;
  const LmEval e = evaluate_lm(lm, stream, T, 8, 0, &d);
  ASSERT_EQ(static_cast<int64_t>(d.token_loss.size()), windows * (T - 1));
  double sum = 0;
  for (float l : d.token_loss) sum += l;
  EXPECT_NEAR(sum / static_cast<double>(d.token_loss.size()), e.loss, 1e-5);
  ASSERT_EQ(static_cast<int64_t>(d.token_k.size()), L);
  ASSERT_EQ(static_cast<int64_t>(d.load.size()), L);
  double k_mean = 0;
  bool varies = false;
  for (int64_t l = 0; l < L; ++l) {
    ASSERT_EQ(static_cast<int64_t>(d.token_k[l].size()), windows * T);
    int64_t routed = 0, loaded = 0;
    for (int32_t k : d.token_k[l]) {
      EXPECT_GE(k, 1);
      EXPECT_LE(k, E);
      routed += k;
      varies |= k != d.token_k[l][0];
    }
    for (int64_t c : d.load[l]) loaded += c;
    EXPECT_EQ(routed, loaded);
    k_mean += static_cast<double>(routed) / static_cast<double>(windows * T * L);
  }
  EXPECT_TRUE(varies);
  EXPECT_NEAR(k_mean, e.mean_experts, 1e-9);

  // Forced: every token at k = 1 and 3 equals the top-k policy's evaluation.
  for (int32_t k : {1, 3}) {
    const std::vector<std::vector<int32_t>> ks(L, std::vector<int32_t>(windows * T, k));
    const LmEval forced = evaluate_lm(lm, stream, T, 8, 0, nullptr, &ks);
    lm.set_policy(moe::make_policy("top-k:" + std::to_string(k), E));
    const LmEval topk = evaluate_lm(lm, stream, T, 8);
    lm.set_policy(moe::make_policy("top-p:0.6", E));
    EXPECT_NEAR(forced.loss, topk.loss, 1e-6);
    EXPECT_DOUBLE_EQ(forced.mean_experts, k);
  }
  // The model's own per-token K replayed through forced_ks reproduces its loss.
  const LmEval replay = evaluate_lm(lm, stream, T, 8, 0, nullptr, &d.token_k);
  EXPECT_NEAR(replay.loss, e.loss, 1e-6);
  const std::vector<std::vector<int32_t>> short_ks(L, std::vector<int32_t>(T, 1));
  EXPECT_THROW(evaluate_lm(lm, stream, T, 8, 0, nullptr, &short_ks), Error);
}

// Mixture-of-Students' loss: against a teacher with the student's own weights, the
// distillation term is the student's entropy and its gradient vanishes (softmax − teacher =
// 0); against another teacher, the gradient of the mixed loss matches finite differences;
// distilling a trained teacher into a 1-layer student brings the student's distribution
// toward the teacher's.
TEST(LmTrain, DistillationLoss) {
  set_num_threads(1);
  const std::vector<int32_t> tokens = {1, 5, 9, 3, 2, 7, 7, 0, 15, 4, 6, 8, 3, 3, 1, 2};
  const int64_t T = 8;
  io::HfConfig cfg = tiny(16);
  TrainableMoeLm student(cfg, 3), same(cfg, 3), other(cfg, 4);
  std::mt19937_64 rng(5);
  for (auto* m : {&student, &same, &other})
    for (auto& p : m->params().params())
      if (p.name.find("norm") == std::string::npos) nn::init_normal(p.value, 0.3f, rng);
  for (size_t i = 0; i < student.params().params().size(); ++i)
    same.params().params()[i].value = student.params().params()[i].value.clone();
  // Self-distillation, weight 1: loss = mean entropy of the student's softmax; gradient 0.
  {
    const std::vector<float> q = same.teacher_distribution(tokens, T);
    double entropy = 0;
    for (float p : q) entropy -= p > 0 ? p * std::log(static_cast<double>(p)) : 0.0;
    entropy /= static_cast<double>(tokens.size() - tokens.size() / T);
    student.params().zero_grad();
    graph::Graph g(true);
    const auto fwd = student.forward(g, tokens, T);
    const graph::Var l = student.loss(g, fwd, tokens, T, &q, 1.0);
    g.backward(l);
    EXPECT_NEAR(g.scalar(l), entropy, 1e-4);
    float worst = 0;
    for (const auto& p : student.params().params())
      for (int64_t i = 0; i < p.grad.numel(); ++i)
        worst = std::max(worst, std::fabs(p.grad.data<float>()[i]));
    EXPECT_LT(worst, 1e-4f);
  }
  // Another teacher, weight 0.3: analytic gradient against central differences.
  const std::vector<float> q = other.teacher_distribution(tokens, T);
  auto loss_at = [&](bool backward) {
    graph::Graph g(backward);
    const auto fwd = student.forward(g, tokens, T);
    const graph::Var l = student.loss(g, fwd, tokens, T, &q, 0.3);
    if (backward) g.backward(l);
    return static_cast<double>(g.scalar(l));
  };
  student.params().zero_grad();
  loss_at(true);
  int checked = 0;
  for (auto& p : student.params().params()) {
    const std::string& name = p.name;
    // Parameters after the last routing decision: a ±ε there cannot flip an expert choice
    // (the gradient through the rest of the model is checked in test_moe_lm_train.cpp).
    if (name != "lm_head.weight" && name != "model.norm.weight") continue;
    {
      for (int64_t j = 0; j < p.value.numel(); j += std::max<int64_t>(1, p.value.numel() / 6)) {
        float* v = p.value.data<float>() + j;
        const float orig = *v, eps = 1e-2f;
        *v = orig + eps;
        const double lp = loss_at(false);
        *v = orig - eps;
        const double lm = loss_at(false);
        *v = orig;
        const double num = (lp - lm) / (2 * eps), ana = p.grad.data<float>()[j];
        EXPECT_NEAR(ana, num, 2e-2 * std::max(1.0, std::fabs(num)) + 2e-4)
            << name << "[" << j << "]";
        ++checked;
      }
    }
  }
  EXPECT_GE(checked, 10);
  EXPECT_THROW(
      {
        graph::Graph g(false);
        const auto fwd = student.forward(g, tokens, T);
        const std::vector<float> short_q(10, 0.1f);
        student.loss(g, fwd, tokens, T, &short_q, 0.5);
      },
      Error);
}

// Pyramid MoE (2 experts in layer 0, 4 in layer 1: deltamoe_layer_experts) trained with top-p
// and one controller per layer: each layer's p adapts to its own router, the saved config
// keeps both (trained_layers) and the per-layer counts, and the inference path and a reloaded
// trainable model compute the trained model's logits.
TEST(LmTrain, PyramidWithPerLayerControllersSavesAndLoads) {
  set_num_threads(1);
  io::HfConfig c = tiny(40);
  c.layer_experts = {2, 4};
  c = io::HfConfig::parse(io::hf_config_to_json(c), "pyramid");
  ASSERT_EQ(c.layer_experts, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(c.experts_in_layer(0), 2);
  EXPECT_EQ(c.experts_in_layer(1), 4);
  int64_t routers = 0, experts = 0;
  for (const auto& s : io::hf_tensor_specs(c, DType::f32, io::HfExpertLayout::per_expert)) {
    if (s.name.find("block_sparse_moe.gate.weight") != std::string::npos) {
      const bool first = s.name.find("layers.0.") != std::string::npos;
      EXPECT_EQ(s.shape, (Shape{first ? 2 : 4, 16})) << s.name;
      ++routers;
    }
    experts += s.name.find(".w1.weight") != std::string::npos;
  }
  EXPECT_EQ(routers, 2);
  EXPECT_EQ(experts, 6);

  TrainableMoeLm lm(c, 5);
  moe::PolicySpec spec = moe::parse_policy_spec("top-p:0.5", 4);
  spec.target_k = 1.5;
  lm.set_policy(spec);
  ASSERT_NE(lm.layer_policies()[0], lm.layer_policies()[1]);  // one controller per layer
  const auto stream = patterned_stream(3000, 40);
  nn::Adam adam(lm.params(), {});
  LmTrainOptions o = short_run(300);
  train_lm(lm, adam, stream, o);
  const double p0 = dynamic_cast<const moe::TopPRouting&>(*lm.layer_policy(0)).p();
  const double p1 = dynamic_cast<const moe::TopPRouting&>(*lm.layer_policy(1)).p();
  // Layer 0 (2 experts) needs a higher p than layer 1 (4) for the same K: a shared
  // controller gives both one p (measured: 0.58 and 0.40).
  EXPECT_GT(p0, p1 + 0.05);
  LmEvalDetail detail;
  evaluate_lm(lm, stream, 16, 8, 0, &detail);
  ASSERT_EQ(detail.load.size(), 2u);
  EXPECT_EQ(detail.load[0].size(), 2u);
  EXPECT_EQ(detail.load[1].size(), 4u);
  for (size_t l = 0; l < 2; ++l) {
    double k = 0;
    for (int32_t x : detail.token_k[l]) k += x;
    k /= static_cast<double>(detail.token_k[l].size());
    EXPECT_NEAR(k, 1.5, 0.2) << "layer " << l;  // each layer's own controller reaches K*
  }

  const std::string dir = testing::TempDir() + "/lm_pyramid";
  std::filesystem::create_directories(dir);
  save_lm(lm, "top-p:0.5", spec, io::make_synthetic_tokenizer_json(300), "<s>", dir);
  const io::HfConfig saved = io::HfConfig::load(dir);
  EXPECT_EQ(saved.layer_experts, c.layer_experts);
  const auto inf = MoeLm::load(dir, {DType::f32});
  const auto back = load_trainable_lm(dir);
  EXPECT_EQ(inf->routing_name(), back->routing_name());
  EXPECT_NE(inf->routing_name().find(" | "), std::string::npos) << inf->routing_name();
  EXPECT_DOUBLE_EQ(dynamic_cast<const moe::TopPRouting&>(inf->policy_of(1)).p(), p1);
  {
    // A spec given at run time is built per layer: one threshold for 2 and for 4 experts.
    const auto other = MoeLm::load(dir, {DType::f32});
    other->set_policy(moe::parse_policy_spec("threshold:0.3", 4));
    EXPECT_EQ(dynamic_cast<const moe::ThresholdRouting&>(other->policy_of(0)).thresholds(),
              std::vector<float>(2, 0.3f));
    EXPECT_EQ(dynamic_cast<const moe::ThresholdRouting&>(other->policy_of(1)).thresholds(),
              std::vector<float>(4, 0.3f));
    std::vector<float> l(40);
    KvCache kv;
    const int32_t t = 1;
    other->forward(&t, 1, kv, l.data(), false);
    EXPECT_TRUE(std::isfinite(l[0]));
  }
  const std::vector<int32_t> ids(stream.begin(), stream.begin() + 16);
  graph::Graph g(false), gb(false);
  const float* want = g.value(lm.forward(g, ids, 16).logits).data<float>();
  const float* again = gb.value(back->forward(gb, ids, 16).logits).data<float>();
  std::vector<float> got(16 * 40);
  KvCache cache;
  inf->forward(ids.data(), 16, cache, got.data(), true);
  float d_inf = 0, d_back = 0;
  for (size_t j = 0; j < got.size(); ++j) {
    d_inf = std::max(d_inf, std::fabs(got[j] - want[j]));
    d_back = std::max(d_back, std::fabs(again[j] - want[j]));
  }
  EXPECT_LT(d_inf, 1e-4f);
  EXPECT_EQ(d_back, 0.0f);
}

// The budget loss (router entropy, top-p's dynamic loss) makes routers confident: the same
// top-p:0.6 model trained with it routes fewer experts per token than without it.
TEST(LmTrain, BudgetLossLowersTopPExperts) {
  set_num_threads(1);
  const auto stream = patterned_stream(3000, 40);
  double k[2];
  for (int with = 0; with < 2; ++with) {
    TrainableMoeLm lm(tiny(40), 7);
    lm.set_policy(moe::parse_policy_spec("top-p:0.6", 4));
    nn::Adam adam(lm.params(), {});
    LmTrainOptions o = short_run(80);
    o.budget_beta = with ? 0.1 : 0.0;
    train_lm(lm, adam, stream, o);
    k[with] = evaluate_lm(lm, stream, 16, 8).mean_experts;
  }
  EXPECT_LT(k[1], k[0] - 0.2);  // measured: 2.97 without, 2.12 with
}

// AdaMoE null experts in the language model: the router has E + M outputs
// (deltamoe_null_experts), null-experts:K:M with a target holds the real experts per token
// between 1 and K, and the saved model computes the same logits in the inference path.
TEST(LmTrain, NullExpertsTrainSaveAndLoad) {
  set_num_threads(1);
  io::HfConfig c = tiny(40);
  c.null_experts = 4;
  c = io::HfConfig::parse(io::hf_config_to_json(c), "nulls");
  ASSERT_EQ(c.null_experts, 4);
  EXPECT_EQ(c.router_outputs(1), 8);
  TrainableMoeLm lm(c, 5);
  EXPECT_EQ(lm.params().get("model.layers.0.block_sparse_moe.gate.weight").shape(), (Shape{8, 16}));
  EXPECT_EQ(lm.policy().extra_logits(), 4);  // the default: null-experts top-k
  EXPECT_THROW(lm.set_policy(moe::make_policy("top-k:2", 4)), Error);  // router has nulls
  moe::PolicySpec spec = moe::parse_policy_spec("null-experts:3:4", 4);
  spec.target_k = 1.5;
  lm.set_policy(spec);
  const auto stream = patterned_stream(3000, 40);
  nn::Adam adam(lm.params(), {});
  LmTrainOptions o = short_run(200);
  const LmEval before = evaluate_lm(lm, stream, 16, 8);
  train_lm(lm, adam, stream, o);
  const LmEval after = evaluate_lm(lm, stream, 16, 8);
  EXPECT_LT(after.loss, before.loss - 1.0);
  EXPECT_NEAR(after.mean_experts, 1.5, 0.3);  // real experts only; nulls cost nothing

  const std::string dir = testing::TempDir() + "/lm_nulls";
  std::filesystem::create_directories(dir);
  save_lm(lm, "null-experts:3:4", spec, io::make_synthetic_tokenizer_json(300), "<s>", dir);
  EXPECT_EQ(io::HfConfig::load(dir).null_experts, 4);
  const auto inf = MoeLm::load(dir, {DType::f32});
  // The controller's adapted null bias is what the model routes with.
  const float bias = dynamic_cast<const moe::NullExpertsRouting&>(lm.policy()).null_bias();
  EXPECT_NE(bias, 0.0f);
  EXPECT_EQ(dynamic_cast<const moe::NullExpertsRouting&>(inf->policy_of(1)).null_bias(),
            dynamic_cast<const moe::NullExpertsRouting&>(*lm.layer_policy(1)).null_bias());
  EXPECT_THROW(inf->set_policy(moe::make_policy("top-k:2", 4)), Error);
  const std::vector<int32_t> ids(stream.begin(), stream.begin() + 16);
  graph::Graph g(false);
  const float* want = g.value(lm.forward(g, ids, 16).logits).data<float>();
  std::vector<float> got(16 * 40);
  KvCache cache;
  inf->forward(ids.data(), 16, cache, got.data(), true);
  float d = 0;
  for (size_t j = 0; j < got.size(); ++j) d = std::max(d, std::fabs(got[j] - want[j]));
  EXPECT_LT(d, 1e-4f);
}

// Staged distillation: distilling for the first 2 of 4 steps equals distilling a 4-step
// schedule for 2 steps, stopping, and resuming the last 2 without the teacher (bit for bit),
// and differs from distilling every step.
TEST(LmTrain, StagedDistillationStopsUsingTheTeacher) {
  set_num_threads(1);
  const auto stream = patterned_stream(2000, 40);
  TrainableMoeLm teacher(tiny(40), 2);
  LmTrainOptions o = short_run(4);
  o.teacher = &teacher;
  auto weights = [](const TrainableMoeLm& m) {
    std::vector<float> w;
    for (const auto& p : m.params().params())
      w.insert(w.end(), p.value.data<float>(), p.value.data<float>() + p.value.numel());
    return w;
  };
  TrainableMoeLm staged(tiny(40), 9), all(tiny(40), 9), split(tiny(40), 9);
  nn::Adam a_staged(staged.params(), {}), a_all(all.params(), {}), a_split(split.params(), {});
  LmTrainOptions os = o;
  os.distill_steps = 2;
  train_lm(staged, a_staged, stream, os);
  train_lm(all, a_all, stream, o);
  LmTrainOptions first = o;
  first.checkpoint_every = 2;
  first.on_checkpoint = [](int64_t) { throw Error("test", "stop"); };
  EXPECT_THROW(train_lm(split, a_split, stream, first), Error);
  LmTrainOptions rest = o;
  rest.teacher = nullptr;
  rest.start_step = 2;
  train_lm(split, a_split, stream, rest);
  EXPECT_EQ(weights(staged), weights(split));
  EXPECT_NE(weights(staged), weights(all));
}
