// Expert sets of each delta-MoE policy on hand-made probabilities, and the controllers.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "deltamoe/core/error.h"
#include "deltamoe/moe/policies.h"

using namespace deltamoe;
using namespace deltamoe::moe;

namespace {

std::vector<float> softmax_rows(const std::vector<float>& z, int64_t d) {
  std::vector<float> p(z.size());
  for (size_t r = 0; r < z.size() / d; ++r) {
    float m = -1e30f, s = 0;
    for (int64_t c = 0; c < d; ++c) m = std::max(m, z[r * d + c]);
    for (int64_t c = 0; c < d; ++c) s += (p[r * d + c] = std::exp(z[r * d + c] - m));
    for (int64_t c = 0; c < d; ++c) p[r * d + c] /= s;
  }
  return p;
}

std::vector<int32_t> experts_of(const RoutingResult& r, int64_t t) {
  return {r.expert_ids.begin() + r.offsets[t], r.expert_ids.begin() + r.offsets[t + 1]};
}

using V = std::vector<int32_t>;

// A stream of router outputs with varying confidence: logits scaled by a per-token
// temperature so some tokens are peaked (K small) and others flat (K large).
std::vector<float> synthetic_logits(std::mt19937_64& rng, int64_t tokens, int64_t d) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> temp(0.5f, 4.0f);
  std::vector<float> z(static_cast<size_t>(tokens * d));
  for (int64_t t = 0; t < tokens; ++t) {
    const float s = temp(rng);
    for (int64_t c = 0; c < d; ++c) z[t * d + c] = s * n(rng);
  }
  return z;
}

}  // namespace

TEST(TopP, ExactSets) {
  // Rows: [0.5 0.3 0.15 0.05], [0.1 0.2 0.3 0.4], [0.25 0.25 0.25 0.25]
  const std::vector<float> p = {0.5f, 0.3f, 0.15f, 0.05f, 0.1f,  0.2f,
                                0.3f, 0.4f, 0.25f, 0.25f, 0.25f, 0.25f};
  RoutingResult r;
  TopPRouting(0.5, true).route(p.data(), p.data(), 3, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({0}));
  EXPECT_EQ(experts_of(r, 1), V({3, 2}));
  EXPECT_EQ(experts_of(r, 2), V({0, 1}));  // ties to the lower index
  TopPRouting(0.6, true).route(p.data(), p.data(), 3, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({0, 1}));
  EXPECT_EQ(experts_of(r, 1), V({3, 2}));
  EXPECT_EQ(experts_of(r, 2), V({0, 1, 2}));
  TopPRouting(0.9, true).route(p.data(), p.data(), 3, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({0, 1, 2}));
  EXPECT_EQ(experts_of(r, 1), V({3, 2, 1}));
  TopPRouting(1.0, false).route(p.data(), p.data(), 3, 4, r);
  for (int t = 0; t < 3; ++t) EXPECT_EQ(r.experts_of(t), 4);
  EXPECT_NEAR(r.weights[0], 0.5f, 1e-7);                          // not renormalised
  TopPRouting(1.0, false, 2).route(p.data(), p.data(), 3, 4, r);  // cap
  for (int t = 0; t < 3; ++t) EXPECT_EQ(r.experts_of(t), 2);
  TopPRouting(0.6, true).route(p.data(), p.data(), 3, 4, r);
  EXPECT_NEAR(r.weights[0], 0.5 / 0.8, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.3 / 0.8, 1e-6);
  EXPECT_NEAR(r.mean_experts(), 7.0 / 3.0, 1e-12);
}

TEST(TopP, PrefixThatJustReachesP) {
  // 0.5 + 0.3 = 0.8 reaches p = 0.8 exactly: two experts, not three.
  const std::vector<float> p = {0.5f, 0.3f, 0.15f, 0.05f};
  RoutingResult r;
  TopPRouting(0.8, true).route(p.data(), p.data(), 1, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({0, 1}));
}

TEST(TopP, ControllerReachesTargetK) {
  std::mt19937_64 rng(7);
  const int64_t e = 8, tokens = 256;
  for (double target : {1.25, 2.0, 3.0}) {
    TopPRouting pol(0.3, true);
    pol.enable_controller(target);
    const double p_start = pol.p();
    double k_sum = 0;
    int k_n = 0;
    for (int step = 0; step < 600; ++step) {
      auto z = synthetic_logits(rng, tokens, e);
      auto p = softmax_rows(z, e);
      RoutingResult r;
      pol.route(z.data(), p.data(), tokens, e, r);
      pol.observe(p.data(), tokens, e, e, r);
      if (step >= 400) {
        k_sum += r.mean_experts();
        ++k_n;
      }
    }
    EXPECT_NEAR(k_sum / k_n, target, 0.1) << "target " << target;
    if (target >= 2.0) {
      EXPECT_GT(pol.p(), p_start);
    }
  }
}

TEST(Threshold, ExactSets) {
  const std::vector<float> p = {0.4f,  0.35f, 0.2f, 0.05f, 0.26f, 0.25f,
                                0.25f, 0.24f, 0.1f, 0.1f,  0.1f,  0.7f};
  RoutingResult r;
  ThresholdRouting pol({0.3f, 0.3f, 0.3f, 0.3f}, true);
  pol.route(p.data(), p.data(), 3, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({0, 1}));
  EXPECT_EQ(experts_of(r, 1), V({0}));  // none passes: argmax
  EXPECT_EQ(experts_of(r, 2), V({3}));
  EXPECT_NEAR(r.weights[0], 0.4 / 0.75, 1e-6);
  ThresholdRouting per_expert({0.5f, 0.1f, 0.1f, 0.9f}, false);
  per_expert.route(p.data(), p.data(), 3, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({1, 2}));
  EXPECT_EQ(experts_of(r, 1), V({1, 2}));
  EXPECT_EQ(experts_of(r, 2), V({1, 2}));  // ties by lower index; 0.7 < 0.9, 0.1 < 0.5
  EXPECT_THROW(ThresholdRouting({0.1f, 0.2f}, true).route(p.data(), p.data(), 3, 4, r), Error);
}

TEST(Threshold, EmaQuantileHitsTargetK) {
  std::mt19937_64 rng(11);
  const int64_t e = 8, tokens = 256;
  for (double target : {1.25, 1.5, 2.0, 3.0}) {
    ThresholdRouting pol(std::vector<float>(e, 0.125f), true);
    pol.set_target(target);
    double k_sum = 0;
    int k_n = 0;
    for (int step = 0; step < 400; ++step) {
      auto z = synthetic_logits(rng, tokens, e);
      auto p = softmax_rows(z, e);
      RoutingResult r;
      pol.route(z.data(), p.data(), tokens, e, r);
      pol.observe(p.data(), tokens, e, e, r);
      if (step >= 250) {
        k_sum += r.mean_experts();
        ++k_n;
      }
    }
    EXPECT_NEAR(k_sum / k_n, target, 0.1) << "target " << target;
  }
}

TEST(NullExperts, ExactSets) {
  // E = 3 real, M = 2 null, k = 2. Columns 3 and 4 are null.
  const std::vector<float> z = {3, 0, 0, 2, 1,  // expert 0 + null 3 → K = 1
                                0, 0, 0, 3, 2,  // both null → forced best real (0, tie) → K = 1
                                1, 2, 3, 0, 0};  // experts 2, 1 → K = 2
  const auto p = softmax_rows(z, 5);
  NullExpertsRouting pol(2, 2, true);
  EXPECT_EQ(pol.extra_logits(), 2);
  RoutingResult r;
  std::vector<int32_t> no, nc;
  pol.route_with_nulls(z.data(), p.data(), 3, 3, r, no, nc);
  EXPECT_EQ(experts_of(r, 0), V({0}));
  EXPECT_EQ(experts_of(r, 1), V({0}));
  EXPECT_EQ(experts_of(r, 2), V({2, 1}));
  EXPECT_EQ(r.null_chosen, V({1, 2, 0}));
  EXPECT_EQ(no, V({0, 1, 3, 3}));
  EXPECT_EQ(nc, V({3, 3, 4}));
  // Token 0: weight p0 / (p0 + p3).
  EXPECT_NEAR(r.weights[0], p[0] / (p[0] + p[3]), 1e-6);
  EXPECT_NEAR(r.weights[2] + r.weights[3], 1.0, 1e-6);
  // A large null bias makes nulls win everywhere: every token falls back to one real expert.
  pol.set_null_bias(100.0f);
  pol.route(z.data(), p.data(), 3, 3, r);
  EXPECT_EQ(r.expert_ids.size(), 3u);
}

TEST(NullExperts, BiasControllerReachesTargetK) {
  std::mt19937_64 rng(13);
  const int64_t e = 8, m = 8, tokens = 256;
  NullExpertsRouting pol(3, m, true);
  pol.set_target(1.5);
  double k_sum = 0;
  int k_n = 0;
  for (int step = 0; step < 600; ++step) {
    auto z = synthetic_logits(rng, tokens, e + m);
    auto p = softmax_rows(z, e + m);
    RoutingResult r;
    pol.route(z.data(), p.data(), tokens, e, r);
    pol.observe(p.data(), tokens, e, e + m, r);
    if (step >= 400) {
      k_sum += r.mean_experts();
      ++k_n;
    }
  }
  EXPECT_NEAR(k_sum / k_n, 1.5, 0.1);
}

TEST(PerTokenK, UsesGivenBudgets) {
  const std::vector<float> z = {1, 2, 3, 4, 4, 3, 2, 1};
  const auto p = softmax_rows(z, 4);
  PerTokenKRouting pol(true);
  pol.set_ks({3, 1});
  RoutingResult r;
  pol.route(z.data(), p.data(), 2, 4, r);
  EXPECT_EQ(experts_of(r, 0), V({3, 2, 1}));
  EXPECT_EQ(experts_of(r, 1), V({0}));
}

TEST(Factory, BuildsAndRejects) {
  PolicySpec s;
  s.kind = "top-p";
  s.p = 0.7;
  auto pol = make_policy(s, 8);
  EXPECT_NE(pol->name().find("top-p"), std::string::npos);
  s.kind = "null-experts";
  s.k = 0;
  s.target_k = 1.5;
  auto ne = make_policy(s, 8);
  EXPECT_EQ(ne->extra_logits(), 8);
  EXPECT_EQ(dynamic_cast<NullExpertsRouting&>(*ne).k(), 2);
  s.kind = "bogus";
  EXPECT_THROW(make_policy(s, 8), Error);
  s.kind = "top-k";
  s.k = 9;
  EXPECT_THROW(make_policy(s, 8), Error);
  s.kind = "top-p";
  s.p = 0.0;
  EXPECT_THROW(make_policy(s, 8), Error);
}
