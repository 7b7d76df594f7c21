// The built-in random serving model, the one-sample-at-a-time reference, routing specs.
#include "deltamoe/serve/model.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/core/tensor.h"
#include "deltamoe/kernels/cpu.h"

namespace deltamoe::serve {

void ServeModel::combine(const float* h, const float* const* outs, const float* w, int64_t k,
                         float* c) const {
  const int64_t d = hidden();
  std::copy(h, h + d, c);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t i = 0; i < d; ++i) c[i] += w[j] * outs[j][i];
}

namespace {

void gelu_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678f));
}

// y[m, N] = x[m, K] · Wᵀ + b through the engine's packed kernels (weights packed once, so a
// single row pays no packing cost: B = 1 is not handicapped). The kernel computes each row
// independently of the others, which is what makes batched and unbatched answers agree.
struct Layer {
  std::vector<float> w, b;
  kernels::PackedLinear packed;
  int64_t out = 0, in = 0;
  void init(int64_t out_features, int64_t in_features, std::mt19937_64& rng) {
    out = out_features;
    in = in_features;
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    std::uniform_real_distribution<float> u(-bound, bound);
    w.resize(static_cast<size_t>(out * in));
    b.resize(static_cast<size_t>(out));
    for (float& v : w) v = u(rng);
    for (float& v : b) v = u(rng);
  }
  void pack() { packed = kernels::PackedLinear(Tensor::wrap(w.data(), {out, in}, DType::f32), DType::f32); }
  void apply(const float* x, int64_t m, float* y) const {
    for (int64_t r = 0; r < m; ++r) std::copy(b.begin(), b.end(), y + r * out);
    kernels::linear_st(x, m, in, packed, 0, out, y, out, /*accumulate=*/true);
  }
};

class RandomModel final : public ServeModel {
 public:
  explicit RandomModel(const RandomModelConfig& c) : cfg_(c) {
    DELTAMOE_CHECK(c.input_dim > 0 && c.hidden > 0 && c.inter > 0 && c.experts > 0 && c.classes > 1,
                   "serve", "random model needs positive shapes");
    std::mt19937_64 rng(c.seed);
    stem_.init(c.hidden, c.input_dim, rng);
    router_.init(c.experts, c.hidden, rng);
    fc1_.resize(static_cast<size_t>(c.experts));
    fc2_.resize(static_cast<size_t>(c.experts));
    for (int64_t e = 0; e < c.experts; ++e) {
      fc1_[e].init(c.inter, c.hidden, rng);
      fc2_[e].init(c.hidden, c.inter, rng);
    }
    head_.init(c.classes, c.hidden, rng);
    // A larger router scale makes the random router confident enough that top-p picks a
    // varying number of experts, as a trained one does.
    for (float& v : router_.w) v *= 4.0f;
    for (Layer* l : {&stem_, &router_, &head_}) l->pack();
    for (int64_t e = 0; e < c.experts; ++e) {
      fc1_[e].pack();
      fc2_[e].pack();
    }
  }
  std::string name() const override {
    std::ostringstream os;
    os << "random-moe(" << cfg_.input_dim << "-" << cfg_.hidden << "-" << cfg_.experts << "x"
       << cfg_.inter << "-" << cfg_.classes << ", seed " << cfg_.seed << ")";
    return os.str();
  }
  int64_t input_dim() const override { return cfg_.input_dim; }
  int64_t hidden() const override { return cfg_.hidden; }
  int64_t experts() const override { return cfg_.experts; }
  int64_t classes() const override { return cfg_.classes; }

  void stem(const float* x, int64_t n, float* h, float* logits) const override {
    std::vector<float> xs(x, x + n * cfg_.input_dim);
    for (float& v : xs) v *= (1.0f / 255.0f);
    stem_.apply(xs.data(), n, h);
    for (int64_t i = 0; i < n * cfg_.hidden; ++i) h[i] = std::max(h[i], 0.0f);
    router_.apply(h, n, logits);
  }
  void expert(int64_t e, const float* rows, int64_t m, float* out) const override {
    DELTAMOE_ASSERT(e >= 0 && e < cfg_.experts);
    std::vector<float> mid(static_cast<size_t>(m * cfg_.inter));
    fc1_[e].apply(rows, m, mid.data());
    gelu_inplace(mid.data(), m * cfg_.inter);
    fc2_[e].apply(mid.data(), m, out);
  }
  void head(const float* c, int64_t n, float* probs) const override {
    std::vector<float> z(static_cast<size_t>(n * cfg_.classes));
    head_.apply(c, n, z.data());
    for (int64_t r = 0; r < n; ++r)
      softmax_row(z.data() + r * cfg_.classes, probs + r * cfg_.classes, cfg_.classes);
  }

 private:
  RandomModelConfig cfg_;
  Layer stem_, router_, head_;
  std::vector<Layer> fc1_, fc2_;
};

// Top-p (Huang et al. 2024): the smallest set of experts, by descending probability, whose
// probabilities sum to at least p; weights renormalised over the set. Serve-local until the
// training issue's policies land in moe/policies.h.
class TopPRouting final : public moe::RoutingPolicy {
 public:
  explicit TopPRouting(double p) : p_(p) {
    DELTAMOE_CHECK(p > 0.0 && p <= 1.0, "serve", "top-p needs 0 < p <= 1, got ", p);
  }
  std::string name() const override { return "top-p(p=" + std::to_string(p_) + ")"; }
  bool renormalize() const override { return true; }
  void route(const float* /*logits*/, const float* probs, int64_t tokens, int64_t experts,
             moe::RoutingResult& out) const override {
    out.clear();
    std::vector<int32_t> order(static_cast<size_t>(experts));
    for (int64_t t = 0; t < tokens; ++t) {
      const float* p = probs + t * experts;
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
      double sum = 0.0;
      for (int64_t j = 0; j < experts; ++j) {
        out.expert_ids.push_back(order[j]);
        sum += p[order[j]];
        if (sum >= p_) break;
      }
      out.offsets.push_back(static_cast<int32_t>(out.expert_ids.size()));
    }
    moe::assign_weights(probs, experts, true, out);
  }

 private:
  double p_;
};

}  // namespace

void softmax_row(const float* x, float* y, int64_t d) {
  const float mx = *std::max_element(x, x + d);
  float s = 0.0f;
  for (int64_t i = 0; i < d; ++i) s += (y[i] = std::exp(x[i] - mx));
  for (int64_t i = 0; i < d; ++i) y[i] /= s;
}

std::shared_ptr<const ServeModel> make_random_model(const RandomModelConfig& config) {
  return std::make_shared<RandomModel>(config);
}

std::unique_ptr<moe::RoutingPolicy> make_routing(const std::string& spec) {
  const auto colon = spec.find(':');
  DELTAMOE_CHECK(colon != std::string::npos, "serve", "routing spec '", spec,
                 "' needs the form NAME:VALUE (top-k:2, top-k-raw:2, top-p:0.5)");
  const std::string kind = spec.substr(0, colon), value = spec.substr(colon + 1);
  double v = 0.0;
  try {
    size_t used = 0;
    v = std::stod(value, &used);
    DELTAMOE_CHECK(used == value.size(), "serve", "bad number '", value, "' in routing spec");
  } catch (const std::logic_error&) {
    fail("serve", "bad number '", value, "' in routing spec '", spec, "'");
  }
  if (kind == "top-k" || kind == "top-k-raw") {
    DELTAMOE_CHECK(v >= 1 && v == std::floor(v), "serve", "top-k needs an integer k >= 1, got ", value);
    return std::make_unique<moe::TopKRouting>(static_cast<int64_t>(v), kind == "top-k");
  }
  if (kind == "top-p") return std::make_unique<TopPRouting>(v);
  fail("serve", "unknown routing policy '", kind, "' (known: top-k, top-k-raw, top-p)");
}

void reference_forward(const ServeModel& model, const moe::RoutingPolicy& policy, const float* x,
                       int64_t n, float* probs, moe::RoutingResult* routing) {
  const int64_t d = model.hidden(), r = model.router_outputs(), e_count = model.experts();
  const int64_t in = model.input_dim(), c = model.classes();
  std::vector<float> h(static_cast<size_t>(d)), logits(static_cast<size_t>(r)),
      p(static_cast<size_t>(r)), comb(static_cast<size_t>(d));
  moe::RoutingResult one;
  if (routing) routing->clear();
  for (int64_t s = 0; s < n; ++s) {
    model.stem(x + s * in, 1, h.data(), logits.data());
    softmax_row(logits.data(), p.data(), r);
    policy.route(logits.data(), p.data(), 1, r, one);
    const int64_t k = one.experts_of(0);
    std::vector<std::vector<float>> outs(static_cast<size_t>(k), std::vector<float>(static_cast<size_t>(d)));
    std::vector<const float*> ptrs;
    for (int64_t j = 0; j < k; ++j) {
      DELTAMOE_CHECK(one.expert_ids[j] < e_count, "serve", "policy chose expert ", one.expert_ids[j]);
      model.expert(one.expert_ids[j], h.data(), 1, outs[j].data());
      ptrs.push_back(outs[j].data());
    }
    model.combine(h.data(), ptrs.data(), one.weights.data(), k, comb.data());
    model.head(comb.data(), 1, probs + s * c);
    if (routing) {
      for (int64_t j = 0; j < k; ++j) {
        routing->expert_ids.push_back(one.expert_ids[j]);
        routing->weights.push_back(one.weights[j]);
      }
      routing->offsets.push_back(static_cast<int32_t>(routing->expert_ids.size()));
    }
  }
}

}  // namespace deltamoe::serve
