// TrainableMoeLm: the Mixtral forward on a graph::Graph tape (see moe_lm_train.h).
#include "deltamoe/models/moe_lm_train.h"

#include <algorithm>
#include <utility>

#include "deltamoe/core/error.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/moe/policies.h"
#include "models/graph_moe.h"

namespace deltamoe::models {

namespace {

constexpr const char* kComp = "lm-train";
using graph::Var;

// Copies `src` (any float dtype, contiguous) into the f32 parameter `dst` of the same shape.
void copy_into(Tensor& dst, const Tensor& src, const std::string& name) {
  DELTAMOE_CHECK(src.defined() && src.shape() == dst.shape(), kComp, "weight ", name, " has shape ",
                 src.defined() ? shape_str(src.shape()) : std::string("(absent)"), ", expected ",
                 shape_str(dst.shape()));
  const Tensor f = src.to(DType::f32);
  std::copy(f.data<float>(), f.data<float>() + f.numel(), dst.data<float>());
}

}  // namespace

void TrainableMoeLm::check_config() const {
  const io::HfConfig& c = cfg_;
  const bool qwen2 = c.arch == io::HfArch::qwen2_moe;
  DELTAMOE_CHECK(c.arch == io::HfArch::mixtral || qwen2, kComp,
                 "only MixtralForCausalLM and Qwen2MoeForCausalLM are trainable, got ",
                 c.architecture);
  DELTAMOE_CHECK(!c.o_proj_bias && c.qk_norm == io::HfConfig::QkNorm::none && !c.clip_qkv &&
                     (qwen2 || (!c.attention_bias && c.shared_expert_intermediate_size == 0)),
                 kComp,
                 "config has an o_proj bias, q/k norms or clip_qkv (or a Mixtral with attention "
                 "biases or a shared expert), which the trainable model does not have");
  if (!qwen2)
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      DELTAMOE_CHECK(c.is_moe_layer(l), kComp, "layer ", l,
                     " is dense; every Mixtral layer is MoE");
}

std::string TrainableMoeLm::layer_prefix(int64_t l) const {
  return "model.layers." + std::to_string(l) + ".";
}

TrainableMoeLm::Names TrainableMoeLm::names(int64_t l) const {
  // The names io::hf_tensor_specs gives (per-expert layout): Mixtral's block_sparse_moe with
  // w1 / w3 / w2, or the mlp. prefix with gate_proj / up_proj / down_proj.
  const bool mixtral = cfg_.arch == io::HfArch::mixtral;
  return Names{layer_prefix(l) + (mixtral ? "block_sparse_moe." : "mlp."),
               mixtral ? "w1.weight" : "gate_proj.weight", mixtral ? "w3.weight" : "up_proj.weight",
               mixtral ? "w2.weight" : "down_proj.weight"};
}

void TrainableMoeLm::add_params() {
  for (const auto& spec : io::hf_tensor_specs(cfg_, DType::f32, io::HfExpertLayout::per_expert))
    params_.add(spec.name, spec.shape);
  moe::PolicySpec top_k;  // or null-experts top-k when the router has null outputs
  top_k.kind = cfg_.null_experts > 0 ? "null-experts" : "top-k";
  top_k.k = cfg_.num_experts_per_tok;
  top_k.nulls = cfg_.null_experts;
  top_k.renormalize = cfg_.norm_topk_prob;
  set_policy(top_k);
}

TrainableMoeLm::TrainableMoeLm(const io::HfConfig& config, uint64_t seed) : cfg_(config) {
  check_config();
  add_params();
  std::mt19937_64 rng(seed);
  for (auto& p : params_.params()) {
    if (p.name.find("norm") != std::string::npos)
      p.value.fill(1.0f);
    else if (p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, ".bias") == 0)
      p.value.fill(0.0f);
    else
      nn::init_normal(p.value, 0.02f, rng);
  }
}

TrainableMoeLm::TrainableMoeLm(const io::HfConfig& config, const io::HfModelWeights& w)
    : cfg_(config) {
  check_config();
  add_params();
  copy_into(params_.get("model.embed_tokens.weight"), w.embed, "embed_tokens");
  DELTAMOE_CHECK(static_cast<int64_t>(w.layers.size()) == cfg_.num_hidden_layers, kComp,
                 w.layers.size(), " layers of weights for ", cfg_.num_hidden_layers);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const io::HfLayerWeights& ly = w.layers[static_cast<size_t>(l)];
    const std::string p = layer_prefix(l);
    auto copy = [&](const std::string& name, const Tensor& t) {
      copy_into(params_.get(p + name), t, p + name);
    };
    copy("input_layernorm.weight", ly.input_norm);
    copy("post_attention_layernorm.weight", ly.post_attn_norm);
    copy("self_attn.q_proj.weight", ly.q);
    copy("self_attn.k_proj.weight", ly.k);
    copy("self_attn.v_proj.weight", ly.v);
    copy("self_attn.o_proj.weight", ly.o);
    if (cfg_.attention_bias) {
      copy("self_attn.q_proj.bias", ly.q_bias);
      copy("self_attn.k_proj.bias", ly.k_bias);
      copy("self_attn.v_proj.bias", ly.v_bias);
    }
    const Names nm = names(l);
    auto copy_ffn = [&](const std::string& prefix, const io::HfFfnWeights& f) {
      copy_into(params_.get(prefix + nm.gate), f.gate, prefix + nm.gate);
      copy_into(params_.get(prefix + nm.up), f.up, prefix + nm.up);
      copy_into(params_.get(prefix + nm.down), f.down, prefix + nm.down);
    };
    if (!cfg_.is_moe_layer(l)) {
      copy_ffn(p + "mlp.", ly.dense);
      continue;
    }
    copy_into(params_.get(nm.moe + "gate.weight"), ly.router, nm.moe + "gate.weight");
    const int64_t E = cfg_.experts_in_layer(l);
    DELTAMOE_CHECK(static_cast<int64_t>(ly.experts.size()) == E, kComp, "layer ", l, " has ",
                   ly.experts.size(), " experts, config ", E);
    for (int64_t e = 0; e < E; ++e)
      copy_ffn(nm.moe + "experts." + std::to_string(e) + ".", ly.experts[static_cast<size_t>(e)]);
    if (cfg_.shared_expert_intermediate_size > 0) {
      copy_ffn(nm.moe + "shared_expert.", ly.shared);
      copy_into(params_.get(nm.moe + "shared_expert_gate.weight"), ly.shared_gate,
                nm.moe + "shared_expert_gate.weight");
    }
  }
  copy_into(params_.get("model.norm.weight"), w.final_norm, "model.norm");
  if (!cfg_.tie_word_embeddings) copy_into(params_.get("lm_head.weight"), w.lm_head, "lm_head");
}

namespace {

void check_policy(const moe::RoutingPolicy* policy, int64_t null_experts) {
  DELTAMOE_CHECK(policy != nullptr, kComp, "no routing policy");
  DELTAMOE_CHECK(policy->extra_logits() == null_experts, kComp, "routing ", policy->name(),
                 " needs ", policy->extra_logits(),
                 " null-expert router outputs, the model's router has ", null_experts,
                 " (config deltamoe_null_experts; train-lm --routing null-experts:K:M)");
}

}  // namespace

void TrainableMoeLm::set_policy(std::shared_ptr<moe::RoutingPolicy> policy) {
  check_policy(policy.get(), cfg_.null_experts);
  std::vector<std::shared_ptr<moe::RoutingPolicy>> all(static_cast<size_t>(cfg_.num_hidden_layers));
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    if (cfg_.is_moe_layer(l)) all[static_cast<size_t>(l)] = policy;
  policies_ = std::move(all);
}

void TrainableMoeLm::set_policy(const moe::PolicySpec& spec) {
  std::vector<std::shared_ptr<moe::RoutingPolicy>> all(static_cast<size_t>(cfg_.num_hidden_layers));
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    if (cfg_.is_moe_layer(l))
      all[static_cast<size_t>(l)] =
          moe::make_layer_policy(spec, cfg_.experts_in_layer(l), cfg_.null_experts);
  set_layer_policies(std::move(all));
}

void TrainableMoeLm::set_layer_policies(std::vector<std::shared_ptr<moe::RoutingPolicy>> policies) {
  DELTAMOE_CHECK(static_cast<int64_t>(policies.size()) == cfg_.num_hidden_layers, kComp,
                 policies.size(), " layer policies for ", cfg_.num_hidden_layers, " layers");
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
    if (cfg_.is_moe_layer(l))
      check_policy(policies[static_cast<size_t>(l)].get(), cfg_.null_experts);
    else
      policies[static_cast<size_t>(l)].reset();
  policies_ = std::move(policies);
}

std::string TrainableMoeLm::routing_name() const {
  std::vector<const moe::RoutingPolicy*> all;
  for (const auto& p : policies_) all.push_back(p.get());
  return moe::routing_name(all);
}

const moe::RoutingPolicy& TrainableMoeLm::policy() const {
  for (const auto& p : policies_)
    if (p) return *p;
  fail(kComp, "the model has no MoE layer, so no routing policy");
}

LmTrainForward TrainableMoeLm::forward(graph::Graph& g, const std::vector<int32_t>& tokens,
                                       int64_t seq_len, const LmTrainForwardOptions& opt) {
  const io::HfConfig& c = cfg_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  DELTAMOE_CHECK(seq_len > 0 && n > 0 && n % seq_len == 0, kComp, n,
                 " tokens are not whole sequences of ", seq_len);
  for (int64_t i = 0; i < n; ++i)
    DELTAMOE_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size, kComp, "token ", tokens[i],
                   " at position ", i, " is outside the vocabulary [0, ", c.vocab_size, ")");
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int64_t hd = c.head_dim;
  LmTrainForward out;
  const Var embed = params_.bind(g, "model.embed_tokens.weight");
  Var x = g.gather_rows(embed, tokens);
  std::vector<Var> aux;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l), a = p + "self_attn.";
    const Names nm = names(l);
    auto proj = [&](const Var& in, const std::string& name) {
      return g.linear(in, params_.bind(g, a + name + ".weight"),
                      c.attention_bias ? params_.bind(g, a + name + ".bias") : Var{});
    };
    auto swiglu = [&](const Var& in, const std::string& prefix) {
      const Var gate = g.silu(g.linear(in, params_.bind(g, prefix + nm.gate)));
      const Var up = g.linear(in, params_.bind(g, prefix + nm.up));
      return g.linear(g.mul(gate, up), params_.bind(g, prefix + nm.down));
    };
    const Var h = g.rms_norm(x, params_.bind(g, p + "input_layernorm.weight"), eps);
    const Var q = g.rope(proj(h, "q_proj"), hd, seq_len, c.rope_theta);
    const Var k = g.rope(proj(h, "k_proj"), hd, seq_len, c.rope_theta);
    const Var v = proj(h, "v_proj");
    const Var att =
        g.causal_attention(q, k, v, c.num_attention_heads, c.num_key_value_heads, seq_len);
    x = g.add(x, g.linear(att, params_.bind(g, a + "o_proj.weight")));

    const Var u = g.rms_norm(x, params_.bind(g, p + "post_attention_layernorm.weight"), eps);
    if (!c.is_moe_layer(l)) {
      x = g.add(x, swiglu(u, p + "mlp."));
      out.routing.emplace_back();  // a dense layer routes nothing
      continue;
    }
    const int64_t E = c.experts_in_layer(l), outs = c.router_outputs(l);
    moe::RoutingPolicy& policy = *policies_[static_cast<size_t>(l)];
    const Var z = g.linear(u, params_.bind(g, nm.moe + "gate.weight"));
    const Var prob = g.softmax(z);  // over the experts and the null experts
    const float* zp = g.value(z).data<float>();
    const float* pp = g.value(prob).data<float>();
    moe::RoutingResult rr;
    std::vector<int32_t> null_offsets, null_cols;  // the null experts each token chose
    if (opt.forced_ks) {
      DELTAMOE_CHECK(static_cast<int64_t>(opt.forced_ks->size()) == c.num_hidden_layers &&
                         static_cast<int64_t>((*opt.forced_ks)[l].size()) == n,
                     kComp, "forced experts per token: need ", c.num_hidden_layers, " layers of ",
                     n, " entries");
      detail::route_forced((*opt.forced_ks)[static_cast<size_t>(l)], policy.renormalize(), zp, pp,
                           n, E, outs, rr);
    } else if (auto* ne = dynamic_cast<moe::NullExpertsRouting*>(&policy)) {
      ne->route_with_nulls(zp, pp, n, E, rr, null_offsets, null_cols);
    } else {
      policy.route(zp, pp, n, E, rr);
    }
    if (g.grad_enabled() && !opt.forced_ks)
      if (auto* ad = dynamic_cast<moe::AdaptivePolicy*>(&policy)) ad->observe(pp, n, E, outs, rr);
    const Var w = g.gate_weights(prob, rr.offsets, rr.expert_ids, policy.renormalize(),
                                 null_offsets, null_cols);
    const Var y = detail::combine_experts(g, u, w, rr, n, E, [&](int64_t e, Var xe) {
      return swiglu(xe, nm.moe + "experts." + std::to_string(e) + ".");
    });
    if (y.valid()) x = g.add(x, y);
    if (c.shared_expert_intermediate_size > 0) {
      // Qwen2-MoE's shared expert, every token, scaled by sigmoid(shared_expert_gate · u).
      const Var s = swiglu(u, nm.moe + "shared_expert.");
      const Var sg = g.sigmoid(g.linear(u, params_.bind(g, nm.moe + "shared_expert_gate.weight")));
      std::vector<int32_t> rows(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      x = g.scatter_add_rows(x, s, sg, rows, rows, n);
    }
    // The auxiliary losses are part of the loss whenever asked for (training asks; evaluation
    // does not), so that a grad-free forward computes the same loss as a recorded one.
    if (opt.balance_alpha > 0)
      aux.push_back(detail::switch_balance_loss(g, prob, rr, null_cols, outs, opt.balance_alpha));
    if (opt.budget_beta > 0)
      aux.push_back(detail::router_entropy_loss(g, prob, g.log_softmax(z), opt.budget_beta));
    out.routing.push_back(std::move(rr));
  }
  const Var hf = g.rms_norm(x, params_.bind(g, "model.norm.weight"), eps);
  out.logits = g.linear(hf, c.tie_word_embeddings ? embed : params_.bind(g, "lm_head.weight"));
  for (const Var& v : aux) out.aux_loss = out.aux_loss.valid() ? g.add(out.aux_loss, v) : v;
  return out;
}

namespace {

// Rows of the logits that predict a next token: every position but each sequence's last.
std::vector<int32_t> predicting_rows(int64_t n, int64_t seq_len) {
  std::vector<int32_t> rows;
  for (int64_t i = 0; i < n; ++i)
    if (i % seq_len != seq_len - 1) rows.push_back(static_cast<int32_t>(i));
  return rows;
}

}  // namespace

Var TrainableMoeLm::loss(graph::Graph& g, const LmTrainForward& fwd,
                         const std::vector<int32_t>& tokens, int64_t seq_len,
                         const std::vector<float>* teacher_probs, double distill_weight,
                         std::vector<float>* token_nats) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  DELTAMOE_CHECK(seq_len > 1 && n % seq_len == 0, kComp,
                 "next-token loss needs sequences of at least 2 tokens, got ", seq_len);
  const std::vector<int32_t> rows = predicting_rows(n, seq_len);
  std::vector<int32_t> labels;
  for (int32_t r : rows) labels.push_back(tokens[static_cast<size_t>(r + 1)]);
  const Var logits = g.gather_rows(fwd.logits, rows);
  Var l = g.cross_entropy(logits, labels, 0.0f, token_nats);
  if (teacher_probs && distill_weight > 0) {
    DELTAMOE_CHECK(teacher_probs->size() == rows.size() * static_cast<size_t>(cfg_.vocab_size),
                   kComp, "teacher distribution of ", teacher_probs->size(), " values for ",
                   rows.size(), " positions of vocabulary ", cfg_.vocab_size);
    const Var kd = g.scale(g.dot_const(g.log_softmax(logits), *teacher_probs),
                           -1.0f / static_cast<float>(rows.size()));
    l = g.add(g.scale(l, static_cast<float>(1.0 - distill_weight)),
              g.scale(kd, static_cast<float>(distill_weight)));
  }
  if (fwd.aux_loss.valid()) l = g.add(l, fwd.aux_loss);
  return l;
}

std::vector<float> TrainableMoeLm::teacher_distribution(const std::vector<int32_t>& tokens,
                                                        int64_t seq_len) {
  graph::Graph g(false);
  const LmTrainForward fwd = forward(g, tokens, seq_len);
  const Tensor& logits = g.value(fwd.logits);
  const int64_t V = cfg_.vocab_size;
  const std::vector<int32_t> rows = predicting_rows(static_cast<int64_t>(tokens.size()), seq_len);
  std::vector<float> q(rows.size() * static_cast<size_t>(V));
  for (size_t r = 0; r < rows.size(); ++r)
    std::copy_n(logits.data<float>() + static_cast<int64_t>(rows[r]) * V, V,
                q.data() + r * static_cast<size_t>(V));
  kernels::softmax_rows_st(q.data(), q.data(), static_cast<int64_t>(rows.size()), V);
  return q;
}

}  // namespace deltamoe::models
