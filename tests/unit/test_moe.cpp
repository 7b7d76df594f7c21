// MoE layer vs the naive per-token reference (and, in MoeGolden, vs PyTorch).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "deltamoe/core/parallel.h"
#include "deltamoe/moe/moe_block.h"

using namespace deltamoe;
using namespace deltamoe::moe;

namespace {

Tensor random_input(int64_t t, int64_t h, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  Tensor x({t, h});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = d(rng);
  return x;
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const auto va = a.to_vector(), vb = b.to_vector();
  float m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::abs(va[i] - vb[i]));
  return m;
}

float max_abs(const Tensor& a) {
  float m = 0;
  for (float v : a.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// A policy with a per-token number of experts: token t uses (t % 3) + 1 experts, chosen as
// the top ones; a few tokens use none (t % 7 == 6) to cover empty rows.
class VariableKPolicy : public RoutingPolicy {
 public:
  std::string name() const override { return "variable-k(test)"; }
  bool renormalize() const override { return false; }
  void route(const float* logits, const float*, int64_t tokens, int64_t experts,
             RoutingResult& out) const override {
    out.clear();
    TopKRouting all(experts, false);
    RoutingResult full;
    std::vector<float> dummy(static_cast<size_t>(tokens * experts), 0.5f);
    all.route(logits, dummy.data(), tokens, experts, full);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t k = (t % 7 == 6) ? 0 : std::min<int64_t>(experts, t % 3 + 1);
      for (int64_t j = 0; j < k; ++j) {
        out.expert_ids.push_back(full.expert_ids[t * experts + j]);
        out.weights.push_back(0.25f + 0.5f * static_cast<float>(j));
      }
      out.offsets.push_back(static_cast<int32_t>(out.expert_ids.size()));
    }
  }
};

// Sends every token to one fixed expert (an expert with all tokens, the others with none).
class OneExpertPolicy : public RoutingPolicy {
 public:
  explicit OneExpertPolicy(int32_t e) : e_(e) {}
  std::string name() const override { return "one-expert(test)"; }
  bool renormalize() const override { return true; }
  void route(const float*, const float* probs, int64_t tokens, int64_t experts,
             RoutingResult& out) const override {
    out.clear();
    for (int64_t t = 0; t < tokens; ++t) {
      out.expert_ids.push_back(e_);
      out.offsets.push_back(static_cast<int32_t>(t + 1));
    }
    assign_weights(probs, experts, true, out);
  }

 private:
  int32_t e_;
};

struct Case {
  ExpertKind kind;
  int64_t tokens, hidden, inter, experts, k;
  bool renorm;
};

}  // namespace

class MoeVsNaive : public ::testing::TestWithParam<Case> {};

TEST_P(MoeVsNaive, F32MatchesReference) {
  const Case c = GetParam();
  set_num_threads(2);
  const auto w = MoeWeights::random(c.kind, c.experts, c.hidden, c.inter, 42 + c.tokens, 0,
                                    c.kind == ExpertKind::gelu_mlp);
  const MoeBlock layer(w, DType::f32);
  const TopKRouting policy(c.k, c.renorm);
  const Tensor x = random_input(c.tokens, c.hidden, 7 + c.experts);
  MoeStats s1, s2;
  const Tensor y = layer.forward(x, policy, &s1);
  const Tensor ref = moe_forward_naive(w, x, policy, &s2);
  EXPECT_LE(max_abs_diff(y, ref), 1e-4f * std::max(1.0f, max_abs(ref)));
  EXPECT_EQ(s1.tokens_per_expert, s2.tokens_per_expert);
  int64_t total = 0;
  for (int64_t n : s1.tokens_per_expert) total += n;
  EXPECT_EQ(total, c.tokens * c.k);  // dropless
  EXPECT_DOUBLE_EQ(s1.mean_experts(), c.tokens ? static_cast<double>(c.k) : 0.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeVsNaive,
                         ::testing::Values(Case{ExpertKind::swiglu, 1, 64, 48, 8, 2, true},
                                           Case{ExpertKind::swiglu, 16, 64, 48, 8, 2, true},
                                           Case{ExpertKind::swiglu, 37, 96, 80, 8, 3, false},
                                           Case{ExpertKind::swiglu, 128, 128, 200, 16, 4, true},
                                           Case{ExpertKind::swiglu, 5, 33, 17, 32, 8,
                                                true},  // most experts get 0-1 tokens
                                           Case{ExpertKind::swiglu, 64, 256, 128, 4, 4,
                                                true},  // every expert gets all tokens
                                           Case{ExpertKind::swiglu, 3, 1024, 512, 32, 8,
                                                true},  // default-size experts
                                           Case{ExpertKind::gelu_mlp, 1, 64, 48, 8, 1, true},
                                           Case{ExpertKind::gelu_mlp, 50, 100, 70, 8, 2, true},
                                           Case{ExpertKind::gelu_mlp, 200, 64, 256, 8, 8, false},
                                           Case{ExpertKind::swiglu, 0, 64, 48, 8, 2, true}),
                         [](const ::testing::TestParamInfo<Case>& param_info) {
                           const Case& c = param_info.param;
                           return std::string(c.kind == ExpertKind::swiglu ? "swiglu" : "gelu") +
                                  "_T" + std::to_string(c.tokens) + "_H" +
                                  std::to_string(c.hidden) + "_I" + std::to_string(c.inter) + "_E" +
                                  std::to_string(c.experts) + "_k" + std::to_string(c.k) +
                                  (c.renorm ? "_renorm" : "");
                         });

TEST(Moe, Bf16WeightsMatchReferenceOnRoundedWeights) {
  set_num_threads(2);
  auto w = MoeWeights::random(ExpertKind::swiglu, 8, 128, 96, 3);
  // The reference sees the same bf16-rounded expert weights; activations are rounded to bf16
  // inside the kernel, so the tolerance is that of bf16 inputs with f32 accumulation.
  for (auto* v : {&w.w1, &w.w2, &w.w3})
    for (auto& t : *v) t = t.to(DType::bf16).to(DType::f32);
  const MoeBlock layer(w, DType::bf16);
  const TopKRouting policy(2, true);
  const Tensor x = random_input(40, 128, 9);
  const Tensor ref = moe_forward_naive(w, x, policy);
  EXPECT_LE(max_abs_diff(layer.forward(x, policy), ref), 2e-2f * max_abs(ref));
}

// A block holding some experts only (expert parallelism: a rank's share) runs those exactly as
// the block holding all, in every dtype and layout; set_held() trades experts (those gained
// prepared from the weights, those let go freed) with the same results, and a block holding
// none still knows the experts' shape.
TEST(Moe, HeldExpertsRunAsInTheWholeBlock) {
  set_num_threads(2);
  for (const auto kind : {ExpertKind::swiglu, ExpertKind::gelu_mlp}) {
    const auto w = MoeWeights::random(kind, 6, 64, 48, 21, 0, kind != ExpertKind::swiglu);
    for (const auto dtype : {DType::f32, DType::bf16, DType::int8}) {
      for (const auto layout : {kernels::WeightLayout::packed, kernels::WeightLayout::row_major}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) +
                     (layout == kernels::WeightLayout::packed ? " packed" : " row-major"));
        const MoeBlock whole(w, dtype, layout);
        MoeBlock part(w, dtype, layout, {true, false, true, false, false, true});
        EXPECT_EQ(part.held_experts(), 3);
        EXPECT_EQ(part.expert_weight_bytes(), whole.expert_weight_bytes());
        const Tensor x = random_input(10, 64, 3);
        const auto same_rows = [&](const std::vector<int32_t>& experts) {
          std::vector<float> a(experts.size() * 64), b(a.size());
          whole.run_rows(x.data<float>(), static_cast<int64_t>(experts.size()), experts.data(),
                         a.data());
          part.run_rows(x.data<float>(), static_cast<int64_t>(experts.size()), experts.data(),
                        b.data());
          EXPECT_EQ(a, b);
        };
        same_rows({0, 2, 5, 5, 0, 2, 2, 0, 5, 5});
        EXPECT_TRUE(part.holds(2));
        EXPECT_FALSE(part.holds(1));
        // One expert's copies (f32 row-major: views of tensors in memory, nothing to free).
        const size_t copy = dtype == DType::f32 && layout == kernels::WeightLayout::row_major
                                ? 0
                                : whole.expert_weight_bytes();
        EXPECT_EQ(part.set_held(w, {false, true, true, false, true, true}), copy);
        EXPECT_EQ(part.held_experts(), 4);
        EXPECT_FALSE(part.holds(0));
        same_rows({1, 2, 4, 5, 5, 4, 2, 1, 1, 4});
        EXPECT_EQ(part.set_held(w, {false, false, false, false, false, false}), 4 * copy);
        EXPECT_EQ(part.held_experts(), 0);
        EXPECT_EQ(part.expert_weight_bytes(), 0u);
        EXPECT_THROW(part.set_held(w, {true}), Error);
        EXPECT_THROW(MoeBlock(w, dtype, layout, {true, false}), Error);
      }
    }
  }
}

// int8 weights: the layer (row-major int8 copies whatever layout is asked) stays within the
// quantisation error of the f32 reference, with few rows per expert (integer dot kernel) and
// many (≥ 32 rows: dequantised OpenBLAS path), and reads about a quarter of f32's bytes.
TEST(Moe, Int8WeightsWithinQuantisationErrorOnBothPaths) {
  set_num_threads(2);
  const auto w = MoeWeights::random(ExpertKind::swiglu, 8, 128, 96, 4);
  const MoeBlock layer(w, DType::int8);
  EXPECT_EQ(layer.layout(), kernels::WeightLayout::row_major);
  EXPECT_LT(layer.expert_weight_bytes(), MoeBlock(w, DType::f32).expert_weight_bytes() * 3 / 10);
  const TopKRouting policy(2, true);
  for (int64_t tokens : {3, 200}) {  // 0-1 rows per expert; ~50 rows per expert
    const Tensor x = random_input(tokens, 128, 11);
    const Tensor ref = moe_forward_naive(w, x, policy);
    const Tensor y = layer.forward(x, policy);
    double d = 0, a = 0;
    for (int64_t i = 0; i < ref.numel(); ++i) {
      d += std::fabs(y.data<float>()[i] - ref.data<float>()[i]);
      a += std::fabs(ref.data<float>()[i]);
    }
    // Measured: mean 1.3e-2, max 1.4e-2 relative; a wrong scale or block is of order 1.
    EXPECT_LE(d / a, 3e-2) << tokens << " tokens";
    EXPECT_LE(max_abs_diff(y, ref), 6e-2f * max_abs(ref)) << tokens << " tokens";
    EXPECT_GT(max_abs_diff(y, ref), 0.0f) << "int8 gave exactly the f32 result";
  }
}

TEST(Moe, VariableExpertsPerTokenIncludingNone) {
  set_num_threads(2);
  const auto w = MoeWeights::random(ExpertKind::swiglu, 8, 64, 40, 5);
  const MoeBlock layer(w, DType::f32);
  const VariableKPolicy policy;
  const Tensor x = random_input(29, 64, 11);
  MoeStats s;
  const Tensor y = layer.forward(x, policy, &s);
  const Tensor ref = moe_forward_naive(w, x, policy);
  EXPECT_LE(max_abs_diff(y, ref), 1e-4f * std::max(1.0f, max_abs(ref)));
  EXPECT_EQ(s.routing.experts_of(6), 0);
  EXPECT_EQ(s.routing.experts_of(2), 3);
  for (int64_t c = 0; c < 64; ++c) EXPECT_EQ(y.at({6, c}), 0.0f);  // a token with no expert
}

TEST(Moe, AllTokensToOneExpert) {
  set_num_threads(2);
  const auto w = MoeWeights::random(ExpertKind::swiglu, 8, 64, 40, 6);
  const MoeBlock layer(w, DType::f32);
  const OneExpertPolicy policy(5);
  const Tensor x = random_input(300, 64, 12);
  MoeStats s;
  const Tensor y = layer.forward(x, policy, &s);
  EXPECT_EQ(s.tokens_per_expert[5], 300);
  EXPECT_EQ(s.tokens_per_expert[0], 0);
  EXPECT_LE(max_abs_diff(y, moe_forward_naive(w, x, policy)), 1e-4f * std::max(1.0f, max_abs(y)));
}

TEST(Moe, SingleThreadEqualsMultiThreadBitwise) {
  const auto w = MoeWeights::random(ExpertKind::swiglu, 16, 128, 64, 8);
  const MoeBlock layer(w, DType::f32);
  const TopKRouting policy(4, true);
  const Tensor x = random_input(77, 128, 13);
  set_num_threads(1);
  const auto a = layer.forward(x, policy).to_vector();
  set_num_threads(2);
  const auto b = layer.forward(x, policy).to_vector();
  EXPECT_EQ(a, b);
}

TEST(Moe, BadInputsGiveClearErrors) {
  const auto w = MoeWeights::random(ExpertKind::swiglu, 4, 32, 16, 1);
  const MoeBlock layer(w, DType::f32);
  EXPECT_THROW(layer.forward(Tensor({3, 31}), TopKRouting(2, true)), Error);
  EXPECT_THROW(layer.forward(Tensor({3, 32}), TopKRouting(5, true)), Error);
  EXPECT_THROW(TopKRouting(0, true), Error);
  EXPECT_THROW(MoeBlock(w, DType::i32), Error);
  auto bad = w;
  bad.w2[2] = Tensor({32, 17});
  try {
    bad.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w2[2]"), std::string::npos) << e.what();
  }
}

TEST(MoeBlock, ReluExpertsMatchReference) {
  set_num_threads(2);
  const auto w = MoeWeights::random(ExpertKind::relu_mlp, 8, 64, 48, 21, 0, /*biases=*/true);
  const MoeBlock block(w, DType::f32);
  const TopKRouting policy(2, true);
  const Tensor x = random_input(33, 64, 22);
  const Tensor ref = moe_forward_naive(w, x, policy);
  EXPECT_LE(max_abs_diff(block.forward(x, policy), ref), 1e-4f * std::max(1.0f, max_abs(ref)));
}

TEST(MoeBlock, GatedSharedExpertMatchesReference) {
  set_num_threads(2);
  for (const int64_t tokens : {1, 19, 130}) {
    SCOPED_TRACE(tokens);
    const auto w = MoeWeights::random(ExpertKind::swiglu, 8, 96, 40, 31 + tokens, 0, false,
                                      /*shared_inter=*/160);
    const MoeBlock block(w, DType::f32);
    EXPECT_TRUE(block.has_shared());
    const TopKRouting policy(2, false);  // Qwen2-MoE's norm_topk_prob = false
    const Tensor x = random_input(tokens, 96, 32);
    const Tensor y = block.forward(x, policy);
    const Tensor ref = moe_forward_naive(w, x, policy);
    EXPECT_LE(max_abs_diff(y, ref), 1e-4f * std::max(1.0f, max_abs(ref)));
    // The shared expert really contributes: without it the output differs.
    auto routed_only = w;
    routed_only.shared_w1 = routed_only.shared_w2 = routed_only.shared_w3 =
        routed_only.shared_gate = Tensor();
    EXPECT_GT(max_abs_diff(MoeBlock(routed_only, DType::f32).forward(x, policy), ref), 1e-3f);
  }
}

// Row-major layout (weights used in place, as from a mapped checkpoint): every expert kind,
// the shared expert, few rows (dot kernels) and many rows per expert (OpenBLAS), against the
// naive reference; deterministic across thread counts; expert_st equals the grouped path.
TEST(MoeBlock, RowMajorLayoutMatchesReference) {
  using kernels::WeightLayout;
  struct RmCase {
    ExpertKind kind;
    int64_t tokens, shared;
    bool biases;
  };
  for (const RmCase& c : {RmCase{ExpertKind::swiglu, 1, 0, false},
                          {ExpertKind::swiglu, 37, 0, false},
                          {ExpertKind::swiglu, 300, 0, false},
                          {ExpertKind::swiglu, 130, 160, false},
                          {ExpertKind::gelu_mlp, 90, 0, true},
                          {ExpertKind::relu_mlp, 5, 0, true}}) {
    SCOPED_TRACE("kind " + std::to_string(static_cast<int>(c.kind)) + " tokens " +
                 std::to_string(c.tokens));
    set_num_threads(2);
    const auto w = MoeWeights::random(c.kind, 8, 96, 200, 51 + c.tokens, 0, c.biases, c.shared);
    const MoeBlock block(w, DType::f32, WeightLayout::row_major);
    EXPECT_EQ(block.layout(), WeightLayout::row_major);
    // f32 weights are used in place: every expert (and shared expert) matrix.
    const size_t shared_bytes = static_cast<size_t>(3 * c.shared * 96 * 4);
    EXPECT_EQ(block.in_place_weight_bytes(), 8 * block.expert_weight_bytes() + shared_bytes);
    const TopKRouting policy(2, c.shared == 0);
    const Tensor x = random_input(c.tokens, 96, 52);
    MoeStats st;
    const Tensor y = block.forward(x, policy, &st);
    const Tensor ref = moe_forward_naive(w, x, policy);
    EXPECT_LE(max_abs_diff(y, ref), 1e-4f * std::max(1.0f, max_abs(ref)));
    set_num_threads(1);
    EXPECT_EQ(block.forward(x, policy).to_vector(), y.to_vector());
    set_num_threads(2);
    if (c.shared == 0 && c.tokens > 1) {
      // One expert's rows through expert_st equal the grouped path's (no shared expert).
      const OneExpertPolicy one(3);
      const Tensor yo = block.forward(x, one);
      Tensor out({c.tokens, 96});
      block.expert_st(3, x.data<float>(), c.tokens, out.data<float>());
      EXPECT_LE(max_abs_diff(out, yo), 1e-5f * std::max(1.0f, max_abs(yo)));
    }
  }
  // bf16: f32 weights are converted (not in place) and match the reference on rounded weights.
  auto w = MoeWeights::random(ExpertKind::swiglu, 8, 128, 96, 3);
  for (auto* v : {&w.w1, &w.w2, &w.w3})
    for (auto& t : *v) t = t.to(DType::bf16).to(DType::f32);
  const MoeBlock converted(w, DType::bf16, WeightLayout::row_major);
  EXPECT_EQ(converted.in_place_weight_bytes(), 0u);
  const TopKRouting policy(2, true);
  for (int64_t tokens : {3, 200}) {
    const Tensor x = random_input(tokens, 128, 9);
    const Tensor ref = moe_forward_naive(w, x, policy);
    EXPECT_LE(max_abs_diff(converted.forward(x, policy), ref), 2e-2f * max_abs(ref));
  }
  // bf16 weights with bf16 compute are used in place.
  auto wb = w;
  for (auto* v : {&wb.w1, &wb.w2, &wb.w3})
    for (auto& t : *v) t = t.to(DType::bf16);
  const MoeBlock in_place(wb, DType::bf16, WeightLayout::row_major);
  EXPECT_EQ(in_place.in_place_weight_bytes(), 8 * in_place.expert_weight_bytes());
  const Tensor x = random_input(40, 128, 10);
  EXPECT_EQ(max_abs_diff(in_place.forward(x, policy), converted.forward(x, policy)), 0.0f);
}

TEST(MoeBlock, StagesComposeToForwardAndExpertMatchesGroupedPath) {
  set_num_threads(2);
  const auto w = MoeWeights::random(ExpertKind::swiglu, 8, 64, 40, 41);
  const MoeBlock block(w, DType::f32);
  const TopKRouting policy(2, true);
  const Tensor x = random_input(25, 64, 42);
  RoutingResult r;
  std::vector<float> probs;
  block.route(x.data<float>(), 25, policy, r, &probs);
  ASSERT_EQ(r.tokens(), 25);
  ASSERT_EQ(probs.size(), 25u * 8u);
  Tensor y({25, 64});
  std::vector<int64_t> counts;
  block.apply(x.data<float>(), 25, r, y.data<float>(), nullptr, &counts);
  EXPECT_EQ(max_abs_diff(y, block.forward(x, policy)), 0.0f);
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  EXPECT_EQ(total, 50);
  // Explicit gate weights replace the routing's: doubling them doubles the output.
  std::vector<float> doubled(r.weights);
  for (float& v : doubled) v *= 2.0f;
  Tensor y2({25, 64});
  block.apply(x.data<float>(), 25, r, y2.data<float>(), doubled.data());
  for (int64_t i = 0; i < y.numel(); ++i)
    EXPECT_NEAR(y2.data<float>()[i], 2.0f * y.data<float>()[i], 1e-5f);
  // expert_st on one expert's rows equals the grouped path: token 0 through its experts.
  Tensor out({1, 64});
  std::vector<float> manual(64, 0.0f);
  std::vector<int32_t> ids(r.expert_ids.begin() + r.offsets[0],
                           r.expert_ids.begin() + r.offsets[1]);
  std::vector<float> ws(r.weights.begin() + r.offsets[0], r.weights.begin() + r.offsets[1]);
  std::vector<size_t> order = {0, 1};
  if (ids[1] < ids[0]) order = {1, 0};
  for (size_t j : order) {
    block.expert_st(ids[j], x.data<float>(), 1, out.data<float>());
    for (int64_t c = 0; c < 64; ++c) manual[static_cast<size_t>(c)] += ws[j] * out.data<float>()[c];
  }
  for (int64_t c = 0; c < 64; ++c) EXPECT_NEAR(manual[static_cast<size_t>(c)], y.at({0, c}), 1e-5f);
}

TEST(Routing, TopKRenormalisesAndBreaksTiesLow) {
  const float logits[] = {1.0f, 3.0f, 3.0f, 0.0f};
  const float probs[] = {0.1f, 0.4f, 0.4f, 0.1f};
  RoutingResult r;
  TopKRouting(2, true).route(logits, probs, 1, 4, r);
  ASSERT_EQ(r.expert_ids, (std::vector<int32_t>{1, 2}));
  EXPECT_FLOAT_EQ(r.weights[0], 0.5f);
  TopKRouting(3, false).route(logits, probs, 1, 4, r);
  EXPECT_EQ(r.expert_ids, (std::vector<int32_t>{1, 2, 0}));
  EXPECT_FLOAT_EQ(r.weights[2], 0.1f);
}

// ---- golden tensors from PyTorch (python/make_golden_moe.py) ----

#include "deltamoe/io/safetensors.h"

namespace {
struct Golden {
  MoeWeights weights;
  Tensor x, y, topk_idx, topk_w;
  int64_t k;
  bool renorm;
};

Golden load_golden(const io::SafetensorsFile& f, const std::string& c) {
  const auto& md = f.metadata();
  Golden g;
  const int64_t experts = std::stoll(md.at(c + ".experts"));
  g.k = std::stoll(md.at(c + ".top_k"));
  g.renorm = md.at(c + ".renormalize") == "true";
  g.weights.kind =
      md.at(c + ".expert_kind") == "swiglu" ? ExpertKind::swiglu : ExpertKind::gelu_mlp;
  g.weights.router = f.get(c + ".router").clone();
  for (int64_t e = 0; e < experts; ++e) {
    const std::string s = "." + std::to_string(e);
    g.weights.w1.push_back(f.get(c + ".w1" + s).clone());
    g.weights.w2.push_back(f.get(c + ".w2" + s).clone());
    if (g.weights.kind == ExpertKind::swiglu) {
      g.weights.w3.push_back(f.get(c + ".w3" + s).clone());
    } else {
      g.weights.b1.push_back(f.get(c + ".b1" + s).clone());
      g.weights.b2.push_back(f.get(c + ".b2" + s).clone());
    }
  }
  g.x = f.get(c + ".x").clone();
  g.y = f.get(c + ".y").clone();
  g.topk_idx = f.get(c + ".topk_idx").to(DType::f32);
  g.topk_w = f.get(c + ".topk_w").clone();
  return g;
}
}  // namespace

TEST(MoeGolden, MatchesPyTorchMixtralBlock) {
  const auto f = io::SafetensorsFile::open(std::string(DELTAMOE_SOURCE_DIR) +
                                           "/tests/golden/moe_golden.safetensors");
  set_num_threads(2);
  int cases = 0;
  for (const std::string c : {"swiglu", "gelu", "swiglu_k3"}) {
    SCOPED_TRACE(c);
    const Golden g = load_golden(f, c);
    const TopKRouting policy(g.k, g.renorm);
    MoeStats stats;
    const Tensor y = MoeBlock(g.weights, DType::f32).forward(g.x, policy, &stats);
    EXPECT_LE(max_abs_diff(y, g.y), 1e-4f);  // the bound for f32
    EXPECT_LE(max_abs_diff(moe_forward_naive(g.weights, g.x, policy), g.y), 1e-4f);
    // Same experts and weights, token by token, as torch.topk.
    const auto idx = g.topk_idx.to_vector(), w = g.topk_w.to_vector();
    ASSERT_EQ(stats.routing.expert_ids.size(), idx.size());
    for (size_t j = 0; j < idx.size(); ++j) {
      EXPECT_EQ(stats.routing.expert_ids[j], static_cast<int32_t>(idx[j])) << "pair " << j;
      EXPECT_NEAR(stats.routing.weights[j], w[j], 1e-6f) << "pair " << j;
    }
    // bf16 weights: within bf16 rounding of the f32 golden output.
    const Tensor yb = MoeBlock(g.weights, DType::bf16).forward(g.x, policy);
    EXPECT_LE(max_abs_diff(yb, g.y), 1e-2f * std::max(1.0f, max_abs(g.y)));
    const std::string empty = f.metadata().at(c + ".empty_experts");
    if (!empty.empty()) {
      EXPECT_EQ(stats.tokens_per_expert[std::stoi(empty)], 0);
    }
    ++cases;
  }
  EXPECT_EQ(cases, 3);
}
