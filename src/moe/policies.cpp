#include "deltamoe/moe/policies.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "deltamoe/core/error.h"

namespace deltamoe::moe {

namespace {

// Indices of x[0..d) by value descending, ties to the lower index.
void sort_desc(const float* x, int64_t d, std::vector<int32_t>& order) {
  order.resize(static_cast<size_t>(d));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [x](int32_t a, int32_t b) { return x[a] > x[b]; });
}

std::string fmt(double v) {
  std::ostringstream os;
  os.precision(4);
  os << v;
  return os.str();
}

}  // namespace

// ---------------------------------------------------------------- top-p

TopPRouting::TopPRouting(double p_thr, bool renormalize, int64_t max_k)
    : p_(p_thr), renormalize_(renormalize), max_k_(max_k) {
  DELTAMOE_CHECK(p_thr > 0.0 && p_thr <= 1.0, "routing", "top-p needs 0 < p <= 1, got ", p_thr);
  DELTAMOE_CHECK(max_k >= 0, "routing", "top-p max_k must be >= 0, got ", max_k);
}

std::string TopPRouting::name() const {
  std::string s = "top-p(p=" + fmt(p_);
  if (control_) s += ", target_k=" + fmt(target_k_);
  return s + (renormalize_ ? ", renorm)" : ")");
}

void TopPRouting::set_p(double p) {
  DELTAMOE_CHECK(p > 0.0 && p <= 1.0, "routing", "top-p needs 0 < p <= 1, got ", p);
  p_ = p;
}

void TopPRouting::enable_controller(double target_k, double kp, double ki, double p_min,
                                    double p_max) {
  DELTAMOE_CHECK(target_k >= 1.0, "routing", "top-p target K must be >= 1, got ", target_k);
  DELTAMOE_CHECK(p_min > 0 && p_min < p_max && p_max <= 1.0, "routing", "top-p controller range [",
                 p_min, ", ", p_max, "] is empty");
  control_ = true;
  target_k_ = target_k;
  kp_ = kp;
  ki_ = ki;
  p_min_ = p_min;
  p_max_ = p_max;
  p0_ = p_;
  integral_ = 0.0;
}

void TopPRouting::route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
                        RoutingResult& out) const {
  out.clear();
  out.offsets.resize(static_cast<size_t>(tokens) + 1);
  const int64_t cap = max_k_ > 0 ? std::min(max_k_, experts) : experts;
  // Sums in float fall a few ulps short of 1: p = 1 must still mean "all experts", not "all
  // but the float error", so the comparison allows for it.
  const float thr = static_cast<float>(p_) - 1e-6f;
  std::vector<int32_t> order;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* p = probs + t * experts;
    sort_desc(p, experts, order);
    float cum = 0.0f;
    for (int64_t j = 0; j < cap; ++j) {
      out.expert_ids.push_back(order[static_cast<size_t>(j)]);
      cum += p[order[static_cast<size_t>(j)]];
      if (cum >= thr) break;
    }
    out.offsets[static_cast<size_t>(t) + 1] = static_cast<int32_t>(out.expert_ids.size());
  }
  assign_weights(probs, experts, renormalize_, out);
}

void TopPRouting::observe(const float*, int64_t tokens, int64_t, int64_t,
                          const RoutingResult& routed) {
  if (!control_ || tokens == 0) return;
  const double err = target_k_ - routed.mean_experts();
  const double next_integral = integral_ + err;
  double p = p0_ + kp_ * err + ki_ * next_integral;
  if (p > p_max_ || p < p_min_) {
    // Anti-windup: keep the integral where it was while the output saturates.
    p = std::clamp(p0_ + kp_ * err + ki_ * integral_, p_min_, p_max_);
  } else {
    integral_ = next_integral;
  }
  p_ = p;
}

// ---------------------------------------------------------------- threshold

ThresholdRouting::ThresholdRouting(std::vector<float> thresholds, bool renormalize)
    : renormalize_(renormalize) {
  set_thresholds(std::move(thresholds));
}

void ThresholdRouting::set_thresholds(std::vector<float> thresholds) {
  DELTAMOE_CHECK(!thresholds.empty(), "routing", "threshold policy needs one threshold per expert");
  for (float t : thresholds)
    DELTAMOE_CHECK(std::isfinite(t), "routing", "threshold policy: non-finite threshold ", t);
  theta_ = std::move(thresholds);
}

std::string ThresholdRouting::name() const {
  std::string s = "threshold(E=" + std::to_string(theta_.size());
  if (adapt_) s += ", target_k=" + fmt(target_k_);
  return s + (renormalize_ ? ", renorm)" : ")");
}

void ThresholdRouting::set_target(double target_k, double momentum, double gain) {
  DELTAMOE_CHECK(target_k >= 1.0 && target_k <= static_cast<double>(theta_.size()), "routing",
                 "threshold target K must be in [1, ", theta_.size(), "], got ", target_k);
  DELTAMOE_CHECK(momentum >= 0.0 && momentum < 1.0, "routing", "EMA momentum must be in [0, 1)");
  adapt_ = true;
  target_k_ = target_k;
  momentum_ = momentum;
  gain_ = gain;
  correction_ = 0.0;
  initialised_ = false;
}

void ThresholdRouting::route(const float*, const float* probs, int64_t tokens, int64_t experts,
                             RoutingResult& out) const {
  DELTAMOE_CHECK(static_cast<int64_t>(theta_.size()) == experts, "routing", "threshold policy has ",
                 theta_.size(), " thresholds for ", experts, " experts");
  out.clear();
  out.offsets.resize(static_cast<size_t>(tokens) + 1);
  std::vector<int32_t> order;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* p = probs + t * experts;
    sort_desc(p, experts, order);
    size_t taken = 0;
    for (int32_t e : order)
      if (p[e] >= theta_[static_cast<size_t>(e)]) {
        out.expert_ids.push_back(e);
        ++taken;
      }
    if (taken == 0) out.expert_ids.push_back(order[0]);
    out.offsets[static_cast<size_t>(t) + 1] = static_cast<int32_t>(out.expert_ids.size());
  }
  assign_weights(probs, experts, renormalize_, out);
}

void ThresholdRouting::observe(const float* probs, int64_t tokens, int64_t experts, int64_t stride,
                               const RoutingResult& routed) {
  if (!adapt_ || tokens == 0) return;
  const double e_count = static_cast<double>(experts);
  correction_ += gain_ * (target_k_ - routed.mean_experts()) / e_count;
  correction_ = std::clamp(correction_, -1.0, 1.0);
  const double share = std::clamp(target_k_ / e_count + correction_, 0.0, 1.0);
  std::vector<float> col(static_cast<size_t>(tokens));
  for (int64_t e = 0; e < experts; ++e) {
    for (int64_t t = 0; t < tokens; ++t) col[static_cast<size_t>(t)] = probs[t * stride + e];
    // The (1 − share)-quantile: the value that `share` of the batch is at or above.
    const int64_t above = std::clamp<int64_t>(
        static_cast<int64_t>(std::llround(share * static_cast<double>(tokens))), 0, tokens);
    float q;
    if (above == 0) {
      q = *std::max_element(col.begin(), col.end()) + 1e-6f;
    } else {
      std::nth_element(col.begin(), col.begin() + (above - 1), col.end(), std::greater<float>());
      q = col[static_cast<size_t>(above - 1)];
    }
    float& th = theta_[static_cast<size_t>(e)];
    th = initialised_ ? static_cast<float>(momentum_ * th + (1.0 - momentum_) * q) : q;
  }
  initialised_ = true;
}

// ---------------------------------------------------------------- null experts

NullExpertsRouting::NullExpertsRouting(int64_t k, int64_t nulls, bool renormalize, float null_bias)
    : k_(k), nulls_(nulls), renormalize_(renormalize), null_bias_(null_bias) {
  DELTAMOE_CHECK(k >= 1, "routing", "null-experts needs k >= 1, got ", k);
  DELTAMOE_CHECK(nulls >= 1, "routing", "null-experts needs at least one null expert, got ", nulls);
}

std::string NullExpertsRouting::name() const {
  std::string s = "null-experts(k=" + std::to_string(k_) + ", nulls=" + std::to_string(nulls_);
  if (adapt_) s += ", target_k=" + fmt(target_k_);
  return s + (renormalize_ ? ", renorm)" : ")");
}

void NullExpertsRouting::set_target(double target_k, double gain) {
  DELTAMOE_CHECK(target_k >= 1.0 && target_k <= static_cast<double>(k_), "routing",
                 "null-experts target K must be in [1, k=", k_, "], got ", target_k);
  adapt_ = true;
  target_k_ = target_k;
  gain_ = gain;
}

void NullExpertsRouting::observe(const float*, int64_t tokens, int64_t, int64_t,
                                 const RoutingResult& routed) {
  if (!adapt_ || tokens == 0) return;
  null_bias_ += static_cast<float>(gain_ * (routed.mean_experts() - target_k_));
  null_bias_ = std::clamp(null_bias_, -20.0f, 20.0f);
}

void NullExpertsRouting::route(const float* logits, const float* probs, int64_t tokens,
                               int64_t experts, RoutingResult& out) const {
  std::vector<int32_t> no, nc;
  route_with_nulls(logits, probs, tokens, experts, out, no, nc);
}

void NullExpertsRouting::route_with_nulls(const float* logits, const float* probs, int64_t tokens,
                                          int64_t experts, RoutingResult& out,
                                          std::vector<int32_t>& null_offsets,
                                          std::vector<int32_t>& null_cols) const {
  const int64_t all = experts + nulls_;
  DELTAMOE_CHECK(k_ <= all, "routing", "null-experts with k=", k_, " but only ", all, " outputs");
  out.clear();
  out.offsets.resize(static_cast<size_t>(tokens) + 1);
  out.null_chosen.assign(static_cast<size_t>(tokens), 0);
  null_offsets.assign(static_cast<size_t>(tokens) + 1, 0);
  null_cols.clear();
  std::vector<int32_t> order;
  std::vector<float> z(static_cast<size_t>(all));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* p = probs + t * all;
    std::copy(logits + t * all, logits + (t + 1) * all, z.begin());
    for (int64_t c = experts; c < all; ++c) z[static_cast<size_t>(c)] += null_bias_;
    sort_desc(z.data(), all, order);
    size_t real = 0;
    for (int64_t j = 0; j < k_; ++j) {
      const int32_t c = order[static_cast<size_t>(j)];
      if (c < experts) {
        out.expert_ids.push_back(c);
        ++real;
      } else {
        null_cols.push_back(c);
        ++out.null_chosen[static_cast<size_t>(t)];
      }
    }
    if (real == 0) {
      for (int32_t c : order)
        if (c < experts) {
          out.expert_ids.push_back(c);
          break;
        }
    }
    out.offsets[static_cast<size_t>(t) + 1] = static_cast<int32_t>(out.expert_ids.size());
    null_offsets[static_cast<size_t>(t) + 1] = static_cast<int32_t>(null_cols.size());
    // Weights over the chosen set, nulls included in the denominator.
    float den = 0.0f;
    for (int32_t j = out.offsets[t]; j < out.offsets[t + 1]; ++j) den += p[out.expert_ids[j]];
    for (int32_t j = null_offsets[t]; j < null_offsets[t + 1]; ++j) den += p[null_cols[j]];
    out.weights.resize(out.expert_ids.size());
    for (int32_t j = out.offsets[t]; j < out.offsets[t + 1]; ++j)
      out.weights[j] =
          renormalize_ ? p[out.expert_ids[j]] / std::max(den, 1e-30f) : p[out.expert_ids[j]];
  }
}

// ---------------------------------------------------------------- per-token k (control)

void PerTokenKRouting::route(const float* logits, const float* probs, int64_t tokens,
                             int64_t experts, RoutingResult& out) const {
  DELTAMOE_CHECK(static_cast<int64_t>(ks_.size()) >= tokens, "routing", "per-token-k has ",
                 ks_.size(), " budgets for ", tokens, " tokens");
  out.clear();
  out.offsets.resize(static_cast<size_t>(tokens) + 1);
  std::vector<int32_t> order;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t k = std::clamp<int64_t>(ks_[static_cast<size_t>(t)], 1, experts);
    sort_desc(logits + t * experts, experts, order);
    for (int64_t j = 0; j < k; ++j) out.expert_ids.push_back(order[static_cast<size_t>(j)]);
    out.offsets[static_cast<size_t>(t) + 1] = static_cast<int32_t>(out.expert_ids.size());
  }
  assign_weights(probs, experts, renormalize_, out);
}

// ---------------------------------------------------------------- factory

std::unique_ptr<RoutingPolicy> make_policy(const PolicySpec& spec, int64_t experts) {
  DELTAMOE_CHECK(experts >= 1, "routing", "policy for ", experts, " experts");
  if (spec.kind == "top-k") {
    DELTAMOE_CHECK(spec.k >= 1 && spec.k <= experts, "routing", "top-k needs 1 <= k <= ", experts,
                   ", got ", spec.k);
    return std::make_unique<TopKRouting>(spec.k, spec.renormalize);
  }
  if (spec.kind == "top-p") {
    auto p = std::make_unique<TopPRouting>(spec.p, spec.renormalize);
    if (spec.target_k > 0) p->enable_controller(spec.target_k);
    return p;
  }
  if (spec.kind == "threshold") {
    std::vector<float> th = spec.thresholds;
    if (th.empty()) th.assign(static_cast<size_t>(experts), 1.0f / static_cast<float>(experts));
    DELTAMOE_CHECK(static_cast<int64_t>(th.size()) == experts, "routing", "threshold policy has ",
                   th.size(), " thresholds for ", experts, " experts");
    auto p = std::make_unique<ThresholdRouting>(std::move(th), spec.renormalize);
    if (spec.target_k > 0) p->set_target(spec.target_k);
    return p;
  }
  if (spec.kind == "null-experts") {
    const int64_t m = spec.nulls > 0 ? spec.nulls : experts;
    int64_t k = spec.k;
    if (spec.target_k > 0 && k <= 0) k = static_cast<int64_t>(std::floor(spec.target_k)) + 1;
    DELTAMOE_CHECK(k >= 1 && k <= experts + m, "routing",
                   "null-experts needs 1 <= k <= ", experts + m, ", got ", k);
    auto p = std::make_unique<NullExpertsRouting>(k, m, spec.renormalize, spec.null_bias);
    if (spec.target_k > 0) p->set_target(spec.target_k);
    return p;
  }
  fail("routing", "unknown routing policy '", spec.kind,
       "' (expected top-k, top-p, threshold or null-experts)");
}

PolicySpec current_spec(const PolicySpec& spec, const RoutingPolicy& policy) {
  PolicySpec s = spec;
  if (auto* tp = dynamic_cast<const TopPRouting*>(&policy)) s.p = tp->p();
  if (auto* th = dynamic_cast<const ThresholdRouting*>(&policy)) s.thresholds = th->thresholds();
  if (auto* ne = dynamic_cast<const NullExpertsRouting*>(&policy)) {
    s.nulls = ne->extra_logits();
    s.k = ne->k();
    s.null_bias = ne->null_bias();
  }
  return s;
}

namespace {
double parse_number(const std::string& value, const std::string& spec) {
  try {
    size_t used = 0;
    const double v = std::stod(value, &used);
    DELTAMOE_CHECK(used == value.size(), "routing", "bad number '", value, "' in routing spec '",
                   spec, "'");
    return v;
  } catch (const std::logic_error&) {
    fail("routing", "bad number '", value, "' in routing spec '", spec, "'");
  }
}

}  // namespace

PolicySpec parse_policy_spec(const std::string& spec, int64_t experts) {
  std::vector<std::string> parts;
  for (size_t b = 0;;) {
    const size_t c = spec.find(':', b);
    parts.push_back(spec.substr(b, c == std::string::npos ? std::string::npos : c - b));
    if (c == std::string::npos) break;
    b = c + 1;
  }
  const std::string& kind = parts[0];
  const auto need = [&](size_t lo, size_t hi, const char* form) {
    DELTAMOE_CHECK(parts.size() >= lo && parts.size() <= hi, "routing", "routing spec '", spec,
                   "' needs the form ", form);
  };
  const auto integer = [&](const std::string& v, const char* what) {
    const double x = parse_number(v, spec);
    DELTAMOE_CHECK(x >= 1 && x == std::floor(x), "routing", what, " needs an integer >= 1, got ",
                   v);
    return static_cast<int64_t>(x);
  };
  PolicySpec s;
  s.kind = kind;
  if (kind == "top-k" || kind == "top-k-raw") {
    need(2, 2, "top-k:K");
    s.kind = "top-k";
    s.k = integer(parts[1], "top-k");
    s.renormalize = kind == "top-k";
  } else if (kind == "top-p") {
    need(2, 2, "top-p:P");
    s.p = parse_number(parts[1], spec);
    DELTAMOE_CHECK(s.p > 0.0 && s.p <= 1.0, "routing", "top-p needs 0 < p <= 1, got ", parts[1]);
  } else if (kind == "threshold") {
    need(1, 2, "threshold or threshold:THETA");
    const double theta =
        parts.size() == 2 ? parse_number(parts[1], spec) : 1.0 / static_cast<double>(experts);
    s.thresholds.assign(static_cast<size_t>(experts), static_cast<float>(theta));
  } else if (kind == "null-experts") {
    need(3, 3, "null-experts:K:M (M null experts, as the model was trained with)");
    s.k = integer(parts[1], "null-experts k");
    s.nulls = integer(parts[2], "null-experts M");
  } else {
    fail("routing", "unknown routing policy '", kind,
         "' (known: top-k:K, top-k-raw:K, top-p:P, threshold[:THETA], null-experts:K:M)");
  }
  return s;
}

std::unique_ptr<RoutingPolicy> make_policy(const std::string& spec, int64_t experts) {
  const PolicySpec s = parse_policy_spec(spec, experts);
  try {
    return make_policy(s, experts);
  } catch (const Error& e) {
    fail("routing", "routing spec '", spec, "': ", e.what());
  }
}

std::unique_ptr<RoutingPolicy> make_layer_policy(PolicySpec spec, int64_t experts, int64_t nulls) {
  auto& th = spec.thresholds;
  if (spec.kind == "threshold" && !th.empty() && static_cast<int64_t>(th.size()) != experts &&
      std::all_of(th.begin(), th.end(), [&](float t) { return t == th[0]; }))
    th.assign(static_cast<size_t>(experts), th[0]);
  if (spec.kind == "null-experts" && spec.nulls <= 0 && nulls > 0) spec.nulls = nulls;
  return make_policy(spec, experts);
}

std::string routing_name(const std::vector<const RoutingPolicy*>& layers) {
  std::vector<std::string> names;
  for (const RoutingPolicy* p : layers)
    if (p) names.push_back(p->name());
  if (names.empty()) return "";
  if (std::all_of(names.begin(), names.end(), [&](const std::string& n) { return n == names[0]; }))
    return names[0];
  std::string out = names[0];
  for (size_t i = 1; i < names.size(); ++i) out += " | " + names[i];
  return out;
}

}  // namespace deltamoe::moe
