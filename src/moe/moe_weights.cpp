#include <cmath>
#include <random>

#include "deltamoe/moe/moe_block.h"

namespace deltamoe::moe {

namespace {
void check_shape(const Tensor& t, const Shape& want, const std::string& what) {
  DELTAMOE_CHECK(t.defined(), "moe", what, " is missing");
  DELTAMOE_CHECK(t.shape() == want, "moe", what, " has shape ", shape_str(t.shape()),
                 ", expected ", shape_str(want));
}

Tensor uniform(Shape shape, float bound, std::mt19937_64& rng) {
  Tensor t(std::move(shape), DType::f32);
  std::uniform_real_distribution<float> dist(-bound, bound);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = dist(rng);
  return t;
}
}  // namespace

void MoeWeights::validate() const {
  const int64_t e = experts();
  DELTAMOE_CHECK(e >= 1, "moe", "a MoE layer needs at least one expert");
  const int64_t h = hidden(), i = inter();
  DELTAMOE_CHECK(h >= 1 && i >= 1, "moe", "hidden and intermediate sizes must be positive");
  DELTAMOE_CHECK(router.defined() && router.dim() == 2 && router.size(0) >= e && router.size(1) == h,
                 "moe", "router has shape ", shape_str(router.shape()), ", expected [", e,
                 " (+ null experts), ", h, "]");
  DELTAMOE_CHECK(static_cast<int64_t>(w2.size()) == e, "moe", "w2 has ", w2.size(),
                 " experts, w1 has ", e);
  const bool swiglu = kind == ExpertKind::swiglu;
  if (swiglu) {
    DELTAMOE_CHECK(static_cast<int64_t>(w3.size()) == e, "moe", "w3 has ", w3.size(),
                   " experts, w1 has ", e);
    DELTAMOE_CHECK(b1.empty() && b2.empty(), "moe", "SwiGLU experts take no biases");
  } else {
    DELTAMOE_CHECK(w3.empty(), "moe", "MLP experts take no w3");
    DELTAMOE_CHECK(b1.empty() || static_cast<int64_t>(b1.size()) == e, "moe", "b1 has ", b1.size(),
                   " experts, expected ", e);
    DELTAMOE_CHECK(b2.empty() || static_cast<int64_t>(b2.size()) == e, "moe", "b2 has ", b2.size(),
                   " experts, expected ", e);
  }
  for (int64_t x = 0; x < e; ++x) {
    const std::string s = "[" + std::to_string(x) + "]";
    check_shape(w1[x], {i, h}, "w1" + s);
    check_shape(w2[x], {h, i}, "w2" + s);
    if (swiglu) check_shape(w3[x], {i, h}, "w3" + s);
    if (!b1.empty()) check_shape(b1[x], {i}, "b1" + s);
    if (!b2.empty()) check_shape(b2[x], {h}, "b2" + s);
  }
  if (has_shared()) {
    const int64_t is = shared_w1.size(0);
    DELTAMOE_CHECK(shared_w1.dim() == 2 && is >= 1, "moe", "shared_w1 has shape ",
                   shape_str(shared_w1.shape()), ", expected [Is, ", h, "]");
    check_shape(shared_w1, {is, h}, "shared_w1");
    check_shape(shared_w3, {is, h}, "shared_w3");
    check_shape(shared_w2, {h, is}, "shared_w2");
    if (shared_gate.defined()) check_shape(shared_gate, {1, h}, "shared_gate");
  } else {
    DELTAMOE_CHECK(!shared_w2.defined() && !shared_w3.defined() && !shared_gate.defined(), "moe",
                   "shared expert tensors given without shared_w1");
  }
}

MoeWeights MoeWeights::random(ExpertKind kind, int64_t experts, int64_t hidden, int64_t inter,
                              uint64_t seed, int64_t extra_router_outputs, bool biases,
                              int64_t shared_inter) {
  std::mt19937_64 rng(seed);
  MoeWeights w;
  w.kind = kind;
  const float bh = 1.0f / std::sqrt(static_cast<float>(hidden));
  const float bi = 1.0f / std::sqrt(static_cast<float>(inter));
  w.router = uniform({experts + extra_router_outputs, hidden}, bh, rng);
  for (int64_t e = 0; e < experts; ++e) {
    w.w1.push_back(uniform({inter, hidden}, bh, rng));
    w.w2.push_back(uniform({hidden, inter}, bi, rng));
    if (kind == ExpertKind::swiglu) w.w3.push_back(uniform({inter, hidden}, bh, rng));
    if (kind != ExpertKind::swiglu && biases) {
      w.b1.push_back(uniform({inter}, bh, rng));
      w.b2.push_back(uniform({hidden}, bi, rng));
    }
  }
  if (shared_inter > 0) {
    const float bs = 1.0f / std::sqrt(static_cast<float>(shared_inter));
    w.shared_w1 = uniform({shared_inter, hidden}, bh, rng);
    w.shared_w3 = uniform({shared_inter, hidden}, bh, rng);
    w.shared_w2 = uniform({hidden, shared_inter}, bs, rng);
    w.shared_gate = uniform({1, hidden}, bh, rng);
  }
  return w;
}

}  // namespace deltamoe::moe
