// Routing policies with a per-sample number of experts (delta-MoE), beyond fixed top-k
// (TopKRouting in routing.h). Every policy returns at least one real expert per token and
// reports its choice in RoutingResult (experts_of(t) = real experts used by token t).
//
// Some policies adapt a threshold during training (a PI controller on top-p's p, EMA
// quantiles for per-expert thresholds): those derive from AdaptivePolicy, whose observe()
// the trainer calls after routing each batch. route() stays const and thread-safe; observe()
// and the setters are not (call them from the training thread only, between route() calls).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "deltamoe/moe/routing.h"

namespace deltamoe::moe {

/// A policy whose parameters a trainer may adapt from the routing it observes.
class AdaptivePolicy : public RoutingPolicy {
 public:
  /// Called after route() on a training batch with the same probs (row stride `stride`,
  /// experts + extra_logits()) and its result. Default: nothing to adapt.
  virtual void observe(const float* probs, int64_t tokens, int64_t experts, int64_t stride,
                       const RoutingResult& routed) {}
};

/// Top-p (Huang et al. 2024, "Harder Tasks Need More Experts"): the smallest prefix of the
/// experts sorted by p (descending, ties to the lower index) whose sum is ≥ p_thr, capped at
/// max_k experts (0 = no cap). Optionally a PI controller (DTop-p) moves p_thr after each
/// training batch toward a target mean K*: p_thr = p0 + kp·e + ki·Σe, e = K* − K̄(batch),
/// clamped to [p_min, p_max] with the integral frozen while clamped (anti-windup).
class TopPRouting : public AdaptivePolicy {
 public:
  TopPRouting(double p_thr, bool renormalize, int64_t max_k = 0);
  std::string name() const override;
  bool renormalize() const override { return renormalize_; }
  void route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
             RoutingResult& out) const override;
  void observe(const float* probs, int64_t tokens, int64_t experts, int64_t stride,
               const RoutingResult& routed) override;

  double p() const { return p_; }
  void set_p(double p);
  /// Turns the controller on, starting from the current p.
  void enable_controller(double target_k, double kp = 0.1, double ki = 0.01, double p_min = 0.05,
                         double p_max = 0.999);
  bool controlled() const { return control_; }
  double target_k() const { return target_k_; }

 private:
  double p_;
  bool renormalize_;
  int64_t max_k_;
  bool control_ = false;
  double target_k_ = 0, kp_ = 0, ki_ = 0, p_min_ = 0, p_max_ = 1, p0_ = 0, integral_ = 0;
};

/// Per-expert thresholds (DynMoE / ReMoE style): expert e is on when p_e ≥ θ_e; a token with
/// no expert on gets its argmax expert. Chosen experts are ordered by descending p.
/// With set_target(K*), observe() sets each θ_e to an EMA of the (1 − q)-quantile of p_e over
/// the batch, q = K*/E + c, so that each expert fires on a share q of tokens and the mean K
/// approaches K*; c is an integral correction for the forced-argmax tokens and overlaps
/// (c += gain·(K* − K̄)/E per batch).
class ThresholdRouting : public AdaptivePolicy {
 public:
  /// `thresholds` has one entry per expert (E); all must be finite.
  ThresholdRouting(std::vector<float> thresholds, bool renormalize);
  std::string name() const override;
  bool renormalize() const override { return renormalize_; }
  void route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
             RoutingResult& out) const override;
  void observe(const float* probs, int64_t tokens, int64_t experts, int64_t stride,
               const RoutingResult& routed) override;

  const std::vector<float>& thresholds() const { return theta_; }
  void set_thresholds(std::vector<float> thresholds);
  /// Enables the EMA-quantile update toward mean K = target_k (momentum per batch).
  void set_target(double target_k, double momentum = 0.9, double gain = 0.05);
  double target_k() const { return target_k_; }

 private:
  std::vector<float> theta_;
  bool renormalize_;
  bool adapt_ = false;
  bool initialised_ = false;
  double target_k_ = 0, momentum_ = 0.9, gain_ = 0.05, correction_ = 0;
};

/// AdaMoE null experts: top-k over E real + M null router outputs (extra_logits() = M). Null
/// experts output zero and cost nothing, so the real K = k − (nulls chosen) varies per token.
/// A token that chose only nulls gets its best real expert (always ≥ 1 real expert).
/// Weights: with renormalize, p_e / Σ_{chosen, nulls included} p (nulls keep their share, as
/// in AdaMoE), else p_e. Selection adds `null_bias` to the null logits (weights do not see
/// it); with set_target(K*), observe() moves the bias by gain·(K̄ − K*) per batch, an
/// integral controller that makes nulls more attractive while K̄ is above target.
class NullExpertsRouting : public AdaptivePolicy {
 public:
  NullExpertsRouting(int64_t k, int64_t nulls, bool renormalize, float null_bias = 0.0f);
  void observe(const float* probs, int64_t tokens, int64_t experts, int64_t stride,
               const RoutingResult& routed) override;
  void set_target(double target_k, double gain = 0.05);
  double target_k() const { return target_k_; }
  float null_bias() const { return null_bias_; }
  void set_null_bias(float b) { null_bias_ = b; }
  std::string name() const override;
  int64_t extra_logits() const override { return nulls_; }
  bool renormalize() const override { return renormalize_; }
  int64_t k() const { return k_; }
  void route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
             RoutingResult& out) const override;
  /// As route(), and also lists the null columns (≥ E) each token chose, in CSR form
  /// (null_offsets: tokens + 1 entries), which a trainer needs for the weights' denominator
  /// and the balance loss over all E + M outputs.
  void route_with_nulls(const float* logits, const float* probs, int64_t tokens, int64_t experts,
                        RoutingResult& out, std::vector<int32_t>& null_offsets,
                        std::vector<int32_t>& null_cols) const;

 private:
  int64_t k_, nulls_;
  bool renormalize_;
  float null_bias_;
  bool adapt_ = false;
  double target_k_ = 0, gain_ = 0.05;
};

/// Control for E3: token t uses its top-ks[t] experts (ks set per batch with set_ks, e.g. a
/// delta policy's K histogram shuffled across samples). Not thread-safe across set_ks.
class PerTokenKRouting : public RoutingPolicy {
 public:
  explicit PerTokenKRouting(bool renormalize) : renormalize_(renormalize) {}
  std::string name() const override { return "per-token-k"; }
  bool renormalize() const override { return renormalize_; }
  void set_ks(std::vector<int32_t> ks) { ks_ = std::move(ks); }
  void route(const float* logits, const float* probs, int64_t tokens, int64_t experts,
             RoutingResult& out) const override;

 private:
  bool renormalize_;
  std::vector<int32_t> ks_;
};

/// A policy by name and parameters, as the CLI and checkpoints describe it.
struct PolicySpec {
  std::string kind = "top-k";     // top-k | top-p | threshold | null-experts
  int64_t k = 2;                  // top-k, null-experts (with target_k: 0 → floor(K*) + 1)
  double p = 0.5;                 // top-p threshold
  double target_k = 0;            // > 0: adapt toward this mean K while training
  int64_t nulls = 0;              // null-experts: M (0 → E)
  float null_bias = 0.0f;         // null-experts: added to null logits when selecting
  std::vector<float> thresholds;  // threshold: θ_e (empty → 1/E each)
  bool renormalize = true;
};

/// Builds the policy for `experts` real experts; throws Error("routing") for an unknown kind
/// or bad parameters. Adaptive state (controller on when target_k > 0) starts from the spec.
std::unique_ptr<RoutingPolicy> make_policy(const PolicySpec& spec, int64_t experts);
/// make_policy for one MoE layer of `experts` experts whose router has `nulls` null-expert
/// outputs, as models with per-layer expert counts (pyramid MoE) need: one threshold for all
/// experts (threshold:THETA) applies to a layer of any size, and a null-experts spec without M
/// takes `nulls`. Per-expert thresholds must match the layer. Throws as make_policy.
std::unique_ptr<RoutingPolicy> make_layer_policy(PolicySpec spec, int64_t experts, int64_t nulls);
/// Parses a routing spec as the CLI and the servers take it: "top-k:K" (renormalised,
/// Mixtral), "top-k-raw:K" (weights p as is), "top-p:P" (smallest set with Σp ≥ P,
/// renormalised; delta-MoE), "threshold:θ" or "threshold" (expert e on when p_e ≥ θ, θ = 1/E
/// when omitted), "null-experts:K:M" (top-K over E real + M null outputs, AdaMoE; the router
/// must have E + M outputs). `experts` is E. Throws Error("routing") naming the spec.
PolicySpec parse_policy_spec(const std::string& spec, int64_t experts);
/// make_policy(parse_policy_spec(spec, experts), experts), errors naming the spec.
std::unique_ptr<RoutingPolicy> make_policy(const std::string& spec, int64_t experts);
/// The name of a model's routing whose layers route with `layers` (null entries, dense
/// layers, skipped): the one name when all agree, else the names joined by " | ". "" when
/// there is none.
std::string routing_name(const std::vector<const RoutingPolicy*>& layers);
/// The spec with the policy's current adapted parameters (p, thresholds) written back.
PolicySpec current_spec(const PolicySpec& spec, const RoutingPolicy& policy);

}  // namespace deltamoe::moe
