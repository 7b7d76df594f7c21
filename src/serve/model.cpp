// The built-in random serving model, the one-sample-at-a-time reference, routing specs.
#include "deltamoe/serve/model.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/policies.h"
#include "serve/layers.h"

namespace deltamoe::serve {

void ServeModel::combine(int64_t /*l*/, const float* h, const float* const* outs,
                         const int32_t* /*ids*/, const float* w, int64_t k, float* h_out) const {
  const int64_t d = hidden();
  std::copy(h, h + d, h_out);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t i = 0; i < d; ++i) h_out[i] += w[j] * outs[j][i];
}

namespace {

using detail::PackedLayer;

std::vector<float> uniform(int64_t n, float bound, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-bound, bound);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = u(rng);
  return v;
}

// nn.Linear-style init (uniform ±1/sqrt(fan_in)) of an out×in layer, weights scaled by `scale`.
void init_layer(PackedLayer& l, int64_t out, int64_t in, std::mt19937_64& rng, float scale = 1.0f) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(in));
  auto w = uniform(out * in, bound, rng);
  auto b = uniform(out, bound, rng);
  for (float& v : w) v *= scale;
  l.set(std::move(w), std::move(b), out, in);
}

// One MoE layer, residual, experts read h directly: x → relu(stem) → h + Σ w·expert(h) → head.
class RandomModel final : public ServeModel {
 public:
  explicit RandomModel(const RandomModelConfig& c) : cfg_(c) {
    DELTAMOE_CHECK(c.input_dim > 0 && c.hidden > 0 && c.inter > 0 && c.experts > 0 && c.classes > 1,
                   "serve", "random model needs positive shapes");
    std::mt19937_64 rng(c.seed);
    init_layer(stem_, c.hidden, c.input_dim, rng);
    // A larger router scale makes the random router confident enough that top-p picks a
    // varying number of experts, as a trained one does.
    init_layer(router_, c.experts, c.hidden, rng, 4.0f);
    moe::MoeWeights w;
    w.kind = moe::ExpertKind::gelu_mlp;
    w.router = Tensor::wrap(router_.w.data(), {c.experts, c.hidden}, DType::f32);
    for (int64_t e = 0; e < c.experts; ++e) {
      PackedLayer fc1, fc2;
      init_layer(fc1, c.inter, c.hidden, rng);
      init_layer(fc2, c.hidden, c.inter, rng);
      w.w1.push_back(Tensor::from(fc1.w, {c.inter, c.hidden}));
      w.b1.push_back(Tensor::from(fc1.b, {c.inter}));
      w.w2.push_back(Tensor::from(fc2.w, {c.hidden, c.inter}));
      w.b2.push_back(Tensor::from(fc2.b, {c.hidden}));
    }
    experts_ = std::make_unique<moe::MoeBlock>(w, DType::f32);
    init_layer(head_, c.classes, c.hidden, rng);
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
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> default_policies() const override {
    return {std::make_shared<moe::TopKRouting>(2, true)};
  }

  void stem(const float* x, int64_t n, float* h) const override {
    std::vector<float> xs(x, x + n * cfg_.input_dim);
    for (float& v : xs) v *= (1.0f / 255.0f);
    stem_.apply(xs.data(), n, h);
    for (int64_t i = 0; i < n * cfg_.hidden; ++i) h[i] = std::max(h[i], 0.0f);
  }
  void gate(int64_t /*l*/, const float* h, int64_t n, float* u, float* logits) const override {
    std::copy(h, h + n * cfg_.hidden, u);
    router_.apply(h, n, logits);
  }
  void expert(int64_t /*l*/, int64_t e, const float* rows, int64_t m, float* out) const override {
    experts_->expert_st(e, rows, m, out);
  }
  void head(const float* h, int64_t n, float* probs) const override {
    std::vector<float> z(static_cast<size_t>(n * cfg_.classes));
    head_.apply(h, n, z.data());
    for (int64_t r = 0; r < n; ++r)
      softmax_row(z.data() + r * cfg_.classes, probs + r * cfg_.classes, cfg_.classes);
  }

 private:
  RandomModelConfig cfg_;
  PackedLayer stem_, router_, head_;
  std::unique_ptr<moe::MoeBlock>
      experts_;  // the router above is the model's; the block runs experts
};

}  // namespace

void softmax_row(const float* x, float* y, int64_t d) {
  kernels::softmax_rows_st(x, y, 1, d);
}

std::shared_ptr<const ServeModel> make_random_model(const RandomModelConfig& config) {
  return std::make_shared<RandomModel>(config);
}

void reference_forward(const ServeModel& model,
                       const std::vector<std::shared_ptr<const moe::RoutingPolicy>>& policies,
                       const float* x, int64_t n, float* probs,
                       std::vector<moe::RoutingResult>* routing) {
  const int64_t d = model.hidden(), r = model.router_outputs(), e_count = model.experts();
  const int64_t in = model.input_dim(), c = model.classes(), layers = model.layers();
  DELTAMOE_CHECK(policies.size() == 1 || static_cast<int64_t>(policies.size()) == layers, "serve",
                 policies.size(), " policies for ", layers, " layers");
  std::vector<float> h(static_cast<size_t>(d)), u(static_cast<size_t>(d)),
      next(static_cast<size_t>(d)), logits(static_cast<size_t>(r)), p(static_cast<size_t>(r));
  moe::RoutingResult one;
  if (routing) {
    routing->assign(static_cast<size_t>(layers), moe::RoutingResult{});
    for (auto& rr : *routing) rr.clear();
  }
  for (int64_t s = 0; s < n; ++s) {
    model.stem(x + s * in, 1, h.data());
    for (int64_t l = 0; l < layers; ++l) {
      const auto& policy = *policies[policies.size() == 1 ? 0 : static_cast<size_t>(l)];
      model.gate(l, h.data(), 1, u.data(), logits.data());
      softmax_row(logits.data(), p.data(), r);
      policy.route(logits.data(), p.data(), 1, e_count, one);
      const int64_t k = one.experts_of(0);
      std::vector<std::vector<float>> outs(static_cast<size_t>(k),
                                           std::vector<float>(static_cast<size_t>(d)));
      std::vector<const float*> ptrs;
      for (int64_t j = 0; j < k; ++j) {
        DELTAMOE_CHECK(one.expert_ids[j] >= 0 && one.expert_ids[j] < e_count, "serve",
                       "policy chose expert ", one.expert_ids[j]);
        model.expert(l, one.expert_ids[j], u.data(), 1, outs[j].data());
        ptrs.push_back(outs[j].data());
      }
      model.combine(l, h.data(), ptrs.data(), one.expert_ids.data(), one.weights.data(), k,
                    next.data());
      h.swap(next);
      if (routing) {
        auto& rr = (*routing)[static_cast<size_t>(l)];
        for (int64_t j = 0; j < k; ++j) {
          rr.expert_ids.push_back(one.expert_ids[j]);
          rr.weights.push_back(one.weights[j]);
        }
        rr.offsets.push_back(static_cast<int32_t>(rr.expert_ids.size()));
      }
    }
    model.head(h.data(), 1, probs + s * c);
  }
}

}  // namespace deltamoe::serve
