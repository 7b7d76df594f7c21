#include "deltamoe/models/moe_classifier.h"
#include "deltamoe/moe/expert_parallel.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "graph/graph_impl.h"
#include "models/data_shim.h"
#include "models/graph_moe.h"
#include "models/policy_json.h"

namespace deltamoe::models {

using graph::Var;

// ---------------------------------------------------------------- config

int64_t MoeClassifierConfig::tokens_per_sample() const {
  if (stem == "fc") return 1;
  const int64_t per_side = input_side / patch;
  return per_side * per_side;
}

int64_t MoeClassifierConfig::router_outputs() const {
  if (routing.kind == "null-experts")
    return experts + (routing.nulls > 0 ? routing.nulls : experts);
  return experts;
}

void MoeClassifierConfig::validate() const {
  DELTAMOE_CHECK(stem == "fc" || stem == "patch", "model", "stem must be fc or patch, got '", stem,
                 "'");
  DELTAMOE_CHECK(stem == "fc" || (patch > 0 && input_side % patch == 0), "model", "patch ", patch,
                 " does not divide the image side ", input_side);
  DELTAMOE_CHECK(hidden > 0 && inter > 0 && experts >= 1 && layers >= 1 && classes >= 2, "model",
                 "bad sizes: hidden ", hidden, " inter ", inter, " experts ", experts, " layers ",
                 layers, " classes ", classes);
  DELTAMOE_CHECK(activation == "gelu" || activation == "relu", "model",
                 "activation must be gelu or relu, got '", activation, "'");
  DELTAMOE_CHECK(layer_routing.empty() || static_cast<int64_t>(layer_routing.size()) == layers,
                 "model", "layer_routing has ", layer_routing.size(), " entries for ", layers,
                 " layers");
}

nlohmann::json MoeClassifierConfig::to_json() const {
  nlohmann::json j = {{"format", "deltamoe-moe-classifier-v1"},
                      {"stem", stem},
                      {"input_side", input_side},
                      {"patch", patch},
                      {"hidden", hidden},
                      {"inter", inter},
                      {"experts", experts},
                      {"layers", layers},
                      {"classes", classes},
                      {"activation", activation},
                      {"residual", residual},
                      {"noisy_gating", noisy_gating},
                      {"router_outputs", router_outputs()},
                      {"tokens_per_sample", tokens_per_sample()}};
  j["routing"] = policy_to_json(routing);
  j["layer_routing"] = nlohmann::json::array();
  for (const auto& s : layer_routing) j["layer_routing"].push_back(policy_to_json(s));
  return j;
}

MoeClassifierConfig MoeClassifierConfig::from_json(const nlohmann::json& j) {
  MoeClassifierConfig c;
  try {
    c.stem = j.value("stem", c.stem);
    c.input_side = j.value("input_side", c.input_side);
    c.patch = j.value("patch", c.patch);
    c.hidden = j.at("hidden").get<int64_t>();
    c.inter = j.at("inter").get<int64_t>();
    c.experts = j.at("experts").get<int64_t>();
    c.layers = j.at("layers").get<int64_t>();
    c.classes = j.value("classes", c.classes);
    c.activation = j.value("activation", c.activation);
    c.residual = j.value("residual", c.residual);
    c.noisy_gating = j.value("noisy_gating", c.noisy_gating);
    if (j.contains("routing")) c.routing = policy_from_json(j["routing"]);
    if (j.contains("layer_routing"))
      for (const auto& s : j["layer_routing"]) c.layer_routing.push_back(policy_from_json(s));
  } catch (const nlohmann::json::exception& e) {
    fail("model", "bad classifier config: ", e.what());
  }
  c.validate();
  return c;
}

// ---------------------------------------------------------------- model

namespace {
std::string lp(int64_t l, const std::string& rest) {
  return "moe." + std::to_string(l) + "." + rest;
}
std::string ep(int64_t l, int64_t e, const std::string& rest) {
  return lp(l, "experts." + std::to_string(e) + "." + rest);
}
}  // namespace

MoeClassifier::MoeClassifier(MoeClassifierConfig config, uint64_t seed)
    : config_(std::move(config)) {
  config_.validate();
  const auto& c = config_;
  std::mt19937_64 rng(seed);
  const int64_t in = c.stem == "fc" ? c.input_side * c.input_side : c.patch * c.patch;
  Tensor sw = params_.add("stem.weight", {c.hidden, in});
  Tensor sb = params_.add("stem.bias", {c.hidden});
  nn::init_linear(sw, &sb, rng);
  if (c.stem == "patch") {
    Tensor pos = params_.add("stem.pos", {c.tokens_per_sample(), c.hidden});
    nn::init_normal(pos, 0.02f, rng);
  }
  const int64_t outs = c.router_outputs();
  for (int64_t l = 0; l < c.layers; ++l) {
    params_.add(lp(l, "norm.weight"), {c.hidden}).fill(1.0f);
    params_.add(lp(l, "norm.bias"), {c.hidden});
    Tensor rw = params_.add(lp(l, "router.weight"), {outs, c.hidden});
    nn::init_linear(rw, nullptr, rng);
    if (c.noisy_gating)
      params_.add(lp(l, "noise.weight"), {outs, c.hidden});  // zero: noise starts at softplus(0)
    for (int64_t e = 0; e < c.experts; ++e) {
      Tensor w1 = params_.add(ep(l, e, "fc1.weight"), {c.inter, c.hidden});
      Tensor b1 = params_.add(ep(l, e, "fc1.bias"), {c.inter});
      nn::init_linear(w1, &b1, rng);
      Tensor w2 = params_.add(ep(l, e, "fc2.weight"), {c.hidden, c.inter});
      Tensor b2 = params_.add(ep(l, e, "fc2.bias"), {c.hidden});
      nn::init_linear(w2, &b2, rng);
    }
  }
  params_.add("head.norm.weight", {c.hidden}).fill(1.0f);
  params_.add("head.norm.bias", {c.hidden});
  Tensor hw = params_.add("head.weight", {c.classes, c.hidden});
  Tensor hb = params_.add("head.bias", {c.classes});
  nn::init_linear(hw, &hb, rng);
  reset_policies();
}

void MoeClassifier::reset_policies() {
  policies_.clear();
  for (int64_t l = 0; l < config_.layers; ++l) {
    const moe::PolicySpec& s = config_.layer_routing.empty()
                                   ? config_.routing
                                   : config_.layer_routing[static_cast<size_t>(l)];
    policies_.push_back(moe::make_policy(s, config_.experts));
  }
}

void MoeClassifier::set_policy(const moe::PolicySpec& spec) {
  set_layer_policies(std::vector<moe::PolicySpec>(static_cast<size_t>(config_.layers), spec));
}

void MoeClassifier::set_layer_policies(const std::vector<moe::PolicySpec>& specs) {
  DELTAMOE_CHECK(static_cast<int64_t>(specs.size()) == config_.layers, "model", specs.size(),
                 " policies for ", config_.layers, " layers");
  std::vector<std::unique_ptr<moe::RoutingPolicy>> next;
  for (const auto& s : specs) {
    auto p = moe::make_policy(s, config_.experts);
    DELTAMOE_CHECK(config_.experts + p->extra_logits() == config_.router_outputs(), "model",
                   "policy ", p->name(), " needs ", config_.experts + p->extra_logits(),
                   " router outputs but the model has ", config_.router_outputs());
    next.push_back(std::move(p));
  }
  policies_ = std::move(next);
}

void MoeClassifier::freeze_policies() {
  std::vector<moe::PolicySpec> specs;
  for (int64_t l = 0; l < config_.layers; ++l)
    specs.push_back(moe::current_spec(config_.routing, *policies_[static_cast<size_t>(l)]));
  config_.layer_routing = specs;
}

void MoeClassifier::save(const std::string& path) const {
  MoeClassifierConfig c = config_;
  c.layer_routing.clear();
  for (int64_t l = 0; l < c.layers; ++l)
    c.layer_routing.push_back(moe::current_spec(c.routing, *policies_[static_cast<size_t>(l)]));
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& p : params_.params()) tensors.emplace_back(p.name, p.value);
  detail::save_tensors(path, tensors);
  const std::string jp = config_path(path);
  const std::string tmp = jp + ".tmp";
  {
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    DELTAMOE_CHECK(f != nullptr, "model", "cannot write ", tmp);
    const std::string text = c.to_json().dump(2) + "\n";
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    DELTAMOE_CHECK(std::fclose(f) == 0 && ok, "model", "cannot write ", tmp);
  }
  std::filesystem::rename(tmp, jp);
}

std::string MoeClassifier::config_path(const std::string& path) {
  std::filesystem::path p(path);
  p.replace_extension(".json");
  return p.string();
}

MoeClassifier MoeClassifier::load(const std::string& path) {
  const std::string jp = config_path(path);
  DELTAMOE_CHECK(std::filesystem::exists(jp), "model", "config ", jp,
                 " not found (a checkpoint is ", path, " plus its .json beside it)");
  nlohmann::json j;
  try {
    std::ifstream f(jp);
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail("model", jp, ": ", e.what());
  }
  MoeClassifier m(MoeClassifierConfig::from_json(j), 0);
  auto tensors = detail::load_tensors(path);
  for (auto& p : m.params_.params()) {
    auto it = tensors.find(p.name);
    DELTAMOE_CHECK(it != tensors.end(), "model", path, ": missing tensor '", p.name, "'");
    DELTAMOE_CHECK(it->second.shape() == p.value.shape(), "model", path, ": tensor '", p.name,
                   "' has shape ", shape_str(it->second.shape()), ", expected ",
                   shape_str(p.value.shape()));
    const auto v = it->second.to_vector();
    // A NaN or infinite weight would be served silently (every prediction class 0, null
    // probabilities): refuse it here, naming the tensor.
    for (size_t i = 0; i < v.size(); ++i)
      DELTAMOE_CHECK(std::isfinite(v[i]), "model", path, ": tensor '", p.name,
                     "' has a non-finite value (", v[i], ") at element ", i);
    std::copy(v.begin(), v.end(), p.value.data<float>());
  }
  return m;
}

Tensor MoeClassifier::patchify(const Tensor& x) const {
  const int64_t n = x.size(0), side = config_.input_side, ps = config_.patch, per = side / ps;
  Tensor out({n * per * per, ps * ps});
  const float* xp = x.data<float>();
  float* op = out.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t py = 0; py < per; ++py)
      for (int64_t px = 0; px < per; ++px) {
        float* dst = op + ((i * per + py) * per + px) * ps * ps;
        for (int64_t y = 0; y < ps; ++y)
          for (int64_t xx = 0; xx < ps; ++xx)
            dst[y * ps + xx] = xp[i * side * side + (py * ps + y) * side + px * ps + xx];
      }
  return out;
}

Var MoeClassifier::moe_layer(graph::Graph& g, int64_t l, Var h, int64_t tokens,
                             const ForwardOptions& opt, LayerRouting& lr, std::vector<Var>& aux) {
  const auto& c = config_;
  const int64_t e_count = c.experts, outs = c.router_outputs();
  Var u =
      g.layer_norm(h, params_.bind(g, lp(l, "norm.weight")), params_.bind(g, lp(l, "norm.bias")));
  Var clean = g.linear(u, params_.bind(g, lp(l, "router.weight")));
  Var z = clean;
  Var noise_std;
  if (c.noisy_gating && opt.training) {
    // Shazeer 2017: z = clean + ε·(softplus(u·W_noise) + 0.01), ε ~ N(0, 1).
    DELTAMOE_CHECK(opt.rng != nullptr, "model", "noisy gating needs a random source in training");
    Var raw = g.linear(u, params_.bind(g, lp(l, "noise.weight")));
    Tensor floor_eps({tokens, outs});
    floor_eps.fill(0.01f);
    noise_std = g.add(g.softplus(raw), g.input(floor_eps));
    Tensor eps({tokens, outs});
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t i = 0; i < eps.numel(); ++i) eps.data<float>()[i] = nd(*opt.rng);
    z = g.add(clean, g.mul(noise_std, g.input(eps)));
  }
  Var p = g.softmax(z);
  const float* zp = g.value(z).data<float>();
  const float* pp = g.value(p).data<float>();
  moe::RoutingPolicy& pol = *policies_[static_cast<size_t>(l)];
  if (opt.forced_k && !opt.forced_k->empty()) {
    detail::route_forced((*opt.forced_k)[static_cast<size_t>(l)], true, zp, pp, tokens, e_count,
                         outs, lr.routing);
    lr.null_offsets.clear();
    lr.null_cols.clear();
  } else if (auto* ne = dynamic_cast<moe::NullExpertsRouting*>(&pol)) {
    ne->route_with_nulls(zp, pp, tokens, e_count, lr.routing, lr.null_offsets, lr.null_cols);
  } else {
    DELTAMOE_CHECK(pol.extra_logits() == 0 && outs == e_count, "model", "policy ", pol.name(),
                   " does not match a router with ", outs, " outputs");
    pol.route(zp, pp, tokens, e_count, lr.routing);
    lr.null_offsets.clear();
    lr.null_cols.clear();
  }
  if (opt.training || opt.adapt)
    if (auto* ad = dynamic_cast<moe::AdaptivePolicy*>(&pol))
      ad->observe(pp, tokens, e_count, outs, lr.routing);

  const auto& rr = lr.routing;
  Var w = g.gate_weights(p, rr.offsets, rr.expert_ids, pol.renormalize(), lr.null_offsets,
                         lr.null_cols);

  Var y;
  if (opt.packed != nullptr && !g.grad_enabled()) {
    const Tensor& uv = g.value(u);
    Tensor yv({tokens, c.hidden});
    const moe::MoeBlock& block = opt.packed->blocks[static_cast<size_t>(l)];
    if (opt.comm && opt.comm->size() > 1)
      // Experts split over the ranks: each rank's slice of the rows through the all-to-all,
      // the slices all-gathered.
      moe::apply_expert_parallel_replicated(
          block, moe::ExpertPlacement::contiguous(block.experts(), opt.comm->size()), *opt.comm,
          uv.data<float>(), tokens, rr, yv.data<float>(), nullptr, g.value(w).data<float>());
    else
      block.apply(uv.data<float>(), tokens, rr, yv.data<float>(), g.value(w).data<float>());
    y = g.input(yv);
  } else {
    y = detail::combine_experts(g, u, w, rr, tokens, e_count, [&](int64_t e, Var xe) {
      Var a = g.linear(xe, params_.bind(g, ep(l, e, "fc1.weight")),
                       params_.bind(g, ep(l, e, "fc1.bias")));
      a = c.activation == "gelu" ? g.gelu(a) : g.relu(a);
      return g.linear(a, params_.bind(g, ep(l, e, "fc2.weight")),
                      params_.bind(g, ep(l, e, "fc2.bias")));
    });
  }

  if (g.grad_enabled()) {
    if (opt.balance_alpha > 0)
      aux.push_back(detail::switch_balance_loss(g, p, rr, lr.null_cols, outs, opt.balance_alpha));
    if (opt.entropy_beta > 0) {
      // mean_t H(p_t) = −(1/T)·Σ p·log p
      Var ent = g.sum(g.mul(p, g.log_softmax(z)));
      aux.push_back(
          g.scale(ent, static_cast<float>(-opt.entropy_beta / static_cast<double>(tokens))));
    }
    if (noise_std.valid() && opt.noisy_weight > 0) {
      Var importance = g.scatter_cols(w, rr.expert_ids, e_count);
      const int64_t k = std::clamp<int64_t>(c.routing.k, 1, outs - 1);
      Var load = g.noisy_load(clean, z, noise_std, k);
      aux.push_back(g.scale(g.add(g.cv_squared(importance), g.cv_squared(load)),
                            static_cast<float>(opt.noisy_weight)));
    }
  }
  return c.residual ? g.add(h, y) : y;
}

namespace {
// Inverted dropout as a product with a constant mask (0 or 1/(1 − rate)); the mask comes from
// the training generator, so runs stay deterministic.
Var dropout(graph::Graph& g, Var h, double rate, std::mt19937_64& rng) {
  const Tensor& hv = g.value(h);
  Tensor mask(hv.shape());
  float* m = mask.data<float>();
  const float keep = static_cast<float>(1.0 / (1.0 - rate));
  // 24-bit uniforms from each 64-bit draw, two per draw.
  const uint64_t cut = static_cast<uint64_t>(rate * static_cast<double>(1u << 24));
  const int64_t n = mask.numel();
  for (int64_t i = 0; i < n; i += 2) {
    const uint64_t r = rng();
    m[i] = (r & 0xFFFFFFu) >= cut ? keep : 0.0f;
    if (i + 1 < n) m[i + 1] = ((r >> 32) & 0xFFFFFFu) >= cut ? keep : 0.0f;
  }
  return g.mul(h, g.input(mask));
}
}  // namespace

moe::MoeWeights MoeClassifier::moe_weights(int64_t l) const {
  const auto& c = config_;
  moe::MoeWeights w;
  w.kind = c.activation == "gelu" ? moe::ExpertKind::gelu_mlp : moe::ExpertKind::relu_mlp;
  w.router = params_.get(lp(l, "router.weight"));
  for (int64_t e = 0; e < c.experts; ++e) {
    w.w1.push_back(params_.get(ep(l, e, "fc1.weight")));
    w.b1.push_back(params_.get(ep(l, e, "fc1.bias")));
    w.w2.push_back(params_.get(ep(l, e, "fc2.weight")));
    w.b2.push_back(params_.get(ep(l, e, "fc2.bias")));
  }
  return w;
}

PackedWeights MoeClassifier::pack_weights() const {
  PackedWeights pw;
  pw.stem = kernels::PackedLinear(params_.get("stem.weight"), DType::f32);
  pw.head = kernels::PackedLinear(params_.get("head.weight"), DType::f32);
  for (int64_t l = 0; l < config_.layers; ++l) pw.blocks.emplace_back(moe_weights(l), DType::f32);
  return pw;
}

Tensor MoeClassifier::linear_packed(const Tensor& x, const kernels::PackedLinear& w,
                                    const std::string& bias, bool gelu) const {
  const int64_t n = x.size(0), out = w.out_features();
  Tensor y = graph::uninit_tensor({n, out});
  kernels::linear(x.data<float>(), n, x.size(1), w, y.data<float>(), out);
  const float* __restrict b = params_.get(bias).data<float>();
  float* __restrict yp = y.data<float>();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < out; ++j) yp[r * out + j] += b[j];
  if (gelu) graph::gelu_forward(yp, yp, n * out);
  return y;
}

ForwardOut MoeClassifier::forward(graph::Graph& g, const Tensor& x, const ForwardOptions& opt) {
  const auto& c = config_;
  DELTAMOE_CHECK(x.dim() == 2 && x.size(1) == c.input_side * c.input_side, "model", "input ",
                 shape_str(x.shape()), " is not [N, ", c.input_side * c.input_side, "]");
  const int64_t n = x.size(0), tps = c.tokens_per_sample(), tokens = n * tps;
  ForwardOut out;
  Var h;
  const bool packed = opt.packed != nullptr && !g.grad_enabled();
  if (packed) {
    h = g.input(
        linear_packed(c.stem == "fc" ? x : patchify(x), opt.packed->stem, "stem.bias", true));
    if (c.stem == "patch") h = g.add_rows_tiled(h, params_.bind(g, "stem.pos"));
  } else if (c.stem == "fc") {
    h = g.gelu(g.linear(g.input(x), params_.bind(g, "stem.weight"), params_.bind(g, "stem.bias")));
  } else {
    h = g.gelu(g.linear(g.input(patchify(x)), params_.bind(g, "stem.weight"),
                        params_.bind(g, "stem.bias")));
    h = g.add_rows_tiled(h, params_.bind(g, "stem.pos"));
  }
  std::vector<Var> aux;
  const bool drop = opt.training && opt.dropout > 0.0;
  DELTAMOE_CHECK(!drop || (opt.rng != nullptr && opt.dropout < 1.0), "model", "dropout ",
                 opt.dropout, " needs a rate below 1 and a random source");
  if (drop) h = dropout(g, h, opt.dropout, *opt.rng);
  out.layers.resize(static_cast<size_t>(c.layers));
  for (int64_t l = 0; l < c.layers; ++l) {
    h = moe_layer(g, l, h, tokens, opt, out.layers[static_cast<size_t>(l)], aux);
    if (drop) h = dropout(g, h, opt.dropout, *opt.rng);
  }
  h = g.layer_norm(h, params_.bind(g, "head.norm.weight"), params_.bind(g, "head.norm.bias"));
  if (tps > 1) h = g.mean_groups(h, tps);
  out.logits = packed ? g.input(linear_packed(g.value(h), opt.packed->head, "head.bias", false))
                      : g.linear(h, params_.bind(g, "head.weight"), params_.bind(g, "head.bias"));
  for (Var a : aux) out.aux_loss = out.aux_loss.valid() ? g.add(out.aux_loss, a) : a;
  return out;
}

}  // namespace deltamoe::models
