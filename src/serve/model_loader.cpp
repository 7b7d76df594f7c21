// Trained checkpoints (`deltamoe train`: M.safetensors + M.json) as serving models.
//
// The computation mirrors models::MoeClassifier::forward for the fc stem (one token per image):
//   h = GELU(x/255 · W_stemᵀ + b);  per layer l: u = LN_l(h), logits = u·W_gᵀ,
//   y = Σ_j w_j · fc2(act(fc1(u)));  h = residual ? h + y : y;   probs = softmax(head(LN(h)))
// with the weights packed once for the engine's kernels (kernels::linear_st, row-independent),
// so predictions and experts used match `deltamoe eval` on the same checkpoint and policy.
#include <algorithm>
#include <filesystem>
#include <sstream>

#include "deltamoe/core/error.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/models/moe_classifier.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/serve/model.h"
#include "serve/layers.h"

namespace deltamoe::serve {

namespace {

using detail::PackedLayer;

std::vector<float> values(const nn::ParameterSet& ps, const std::string& name) {
  const Tensor& t = ps.get(name);
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

class TrainedModel final : public ServeModel {
 public:
  TrainedModel(const std::string& path, const models::MoeClassifier& m)
      : path_(path), cfg_(m.config()) {
    DELTAMOE_CHECK(cfg_.stem == "fc", "serve", path, ": the ", cfg_.stem,
                   " stem routes several tokens per image; the server serves fc-stem models only");
    const auto& ps = m.params();
    const int64_t h = cfg_.hidden, in = cfg_.input_side * cfg_.input_side;
    stem_.set(values(ps, "stem.weight"), values(ps, "stem.bias"), h, in);
    layers_.resize(static_cast<size_t>(cfg_.layers));
    for (int64_t l = 0; l < cfg_.layers; ++l) {
      Layer& ly = layers_[static_cast<size_t>(l)];
      const std::string pre = "moe." + std::to_string(l) + ".";
      ly.norm_w = values(ps, pre + "norm.weight");
      ly.norm_b = values(ps, pre + "norm.bias");
      ly.router.set(values(ps, pre + "router.weight"), {}, cfg_.router_outputs(), h);
      ly.experts = std::make_unique<moe::MoeBlock>(m.moe_weights(l), DType::f32);
      const moe::PolicySpec& spec =
          cfg_.layer_routing.empty() ? cfg_.routing : cfg_.layer_routing[static_cast<size_t>(l)];
      policies_.push_back(
          std::shared_ptr<const moe::RoutingPolicy>(moe::make_policy(spec, cfg_.experts)));
    }
    head_norm_w_ = values(ps, "head.norm.weight");
    head_norm_b_ = values(ps, "head.norm.bias");
    head_.set(values(ps, "head.weight"), values(ps, "head.bias"), cfg_.classes, h);
  }

  std::string name() const override {
    std::ostringstream os;
    os << "trained-moe(" << std::filesystem::path(path_).filename().string() << ": 784-"
       << cfg_.hidden << ", " << cfg_.layers << "x[" << cfg_.experts << "x" << cfg_.inter << " "
       << cfg_.activation << "]" << (cfg_.residual ? " residual" : "") << ", " << cfg_.classes
       << " classes, trained with " << policies_[0]->name() << ")";
    return os.str();
  }
  int64_t input_dim() const override { return cfg_.input_side * cfg_.input_side; }
  int64_t hidden() const override { return cfg_.hidden; }
  int64_t layers() const override { return cfg_.layers; }
  int64_t experts() const override { return cfg_.experts; }
  int64_t router_outputs() const override { return cfg_.router_outputs(); }
  int64_t classes() const override { return cfg_.classes; }
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> default_policies() const override {
    return policies_;
  }

  void stem(const float* x, int64_t n, float* h) const override {
    const int64_t in = input_dim();
    std::vector<float> xs(static_cast<size_t>(n * in));
    // The same scaling as the IDX loader the model was trained on (io::load_fashion_mnist).
    for (int64_t i = 0; i < n * in; ++i) xs[i] = x[i] * (1.0f / 255.0f);
    stem_.apply(xs.data(), n, h);
    kernels::gelu_st(h, h, n * cfg_.hidden);
  }
  void gate(int64_t l, const float* h, int64_t n, float* u, float* logits) const override {
    const Layer& ly = layers_[static_cast<size_t>(l)];
    kernels::layer_norm_rows_st(h, ly.norm_w.data(), ly.norm_b.data(), u, nullptr, n, cfg_.hidden,
                                1e-5f);
    ly.router.apply(u, n, logits);
  }
  void expert(int64_t l, int64_t e, const float* rows, int64_t m, float* out) const override {
    layers_[static_cast<size_t>(l)].experts->expert_st(e, rows, m, out);
  }
  void combine(int64_t /*l*/, const float* h, const float* const* outs, const int32_t* ids,
               const float* w, int64_t k, float* h_out) const override {
    // The training graph adds w·y onto zeros expert by expert in expert-index order
    // (scatter_add_rows), then the residual; the same order here reproduces its rounding.
    const int64_t d = cfg_.hidden;
    int64_t order[64];
    DELTAMOE_ASSERT(k <= 64);
    for (int64_t j = 0; j < k; ++j) order[j] = j;
    std::sort(order, order + k, [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    std::fill(h_out, h_out + d, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const float s = w[order[j]];
      const float* y = outs[order[j]];
      for (int64_t i = 0; i < d; ++i) h_out[i] += s * y[i];
    }
    if (cfg_.residual)
      for (int64_t i = 0; i < d; ++i) h_out[i] = h[i] + h_out[i];
  }
  void head(const float* h, int64_t n, float* probs) const override {
    std::vector<float> u(static_cast<size_t>(n * cfg_.hidden)),
        z(static_cast<size_t>(n * cfg_.classes));
    kernels::layer_norm_rows_st(h, head_norm_w_.data(), head_norm_b_.data(), u.data(), nullptr, n,
                                cfg_.hidden, 1e-5f);
    head_.apply(u.data(), n, z.data());
    kernels::softmax_rows_st(z.data(), probs, n, cfg_.classes);
  }

 private:
  struct Layer {
    std::vector<float> norm_w, norm_b;
    PackedLayer router;
    std::unique_ptr<moe::MoeBlock> experts;
  };
  std::string path_;
  models::MoeClassifierConfig cfg_;
  PackedLayer stem_, head_;
  std::vector<Layer> layers_;
  std::vector<float> head_norm_w_, head_norm_b_;
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> policies_;
};

}  // namespace

std::shared_ptr<const ServeModel> load_serve_model(const std::string& path) {
  DELTAMOE_CHECK(std::filesystem::exists(path), "serve", "model file '", path, "' does not exist");
  try {
    const models::MoeClassifier m = models::MoeClassifier::load(path);
    return std::make_shared<TrainedModel>(path, m);
  } catch (const Error& e) {
    fail("serve", "cannot load '", path, "': ", e.what());
  }
}

}  // namespace deltamoe::serve
