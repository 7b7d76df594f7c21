// TrainableMoeLm: the Mixtral forward on a graph::Graph tape (see moe_lm_train.h).
#include "deltamoe/models/moe_lm_train.h"

#include <utility>

#include "deltamoe/core/error.h"
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
  DELTAMOE_CHECK(c.arch == io::HfArch::mixtral, kComp, "only MixtralForCausalLM is trainable, got ",
                 c.architecture);
  DELTAMOE_CHECK(!c.attention_bias && !c.o_proj_bias && c.qk_norm == io::HfConfig::QkNorm::none &&
                     c.shared_expert_intermediate_size == 0 && !c.clip_qkv,
                 kComp,
                 "config has attention biases, q/k norms, a shared expert or clip_qkv, "
                 "which the trainable Mixtral does not have");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    DELTAMOE_CHECK(c.is_moe_layer(l), kComp, "layer ", l, " is dense; every layer must be MoE");
}

std::string TrainableMoeLm::layer_prefix(int64_t l) const {
  return "model.layers." + std::to_string(l) + ".";
}

void TrainableMoeLm::add_params() {
  for (const auto& spec : io::hf_tensor_specs(cfg_, DType::f32, io::HfExpertLayout::per_expert))
    params_.add(spec.name, spec.shape);
  policy_ = moe::make_policy(std::string(cfg_.norm_topk_prob ? "top-k:" : "top-k-raw:") +
                                 std::to_string(cfg_.num_experts_per_tok),
                             cfg_.num_experts);
}

TrainableMoeLm::TrainableMoeLm(const io::HfConfig& config, uint64_t seed) : cfg_(config) {
  check_config();
  add_params();
  std::mt19937_64 rng(seed);
  for (auto& p : params_.params()) {
    if (p.name.find("norm") != std::string::npos)
      p.value.fill(1.0f);
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
    const std::string p = layer_prefix(l), a = p + "self_attn.", m = p + "block_sparse_moe.";
    const std::pair<const char*, const Tensor*> dense[] = {
        {"input_layernorm.weight", &ly.input_norm},
        {"post_attention_layernorm.weight", &ly.post_attn_norm},
        {"self_attn.q_proj.weight", &ly.q},
        {"self_attn.k_proj.weight", &ly.k},
        {"self_attn.v_proj.weight", &ly.v},
        {"self_attn.o_proj.weight", &ly.o},
        {"block_sparse_moe.gate.weight", &ly.router}};
    for (const auto& [name, t] : dense) copy_into(params_.get(p + name), *t, p + name);
    DELTAMOE_CHECK(static_cast<int64_t>(ly.experts.size()) == cfg_.num_experts, kComp, "layer ", l,
                   " has ", ly.experts.size(), " experts, config ", cfg_.num_experts);
    for (int64_t e = 0; e < cfg_.num_experts; ++e) {
      const io::HfFfnWeights& f = ly.experts[static_cast<size_t>(e)];
      const std::string x = m + "experts." + std::to_string(e) + ".";
      copy_into(params_.get(x + "w1.weight"), f.gate, x + "w1");
      copy_into(params_.get(x + "w3.weight"), f.up, x + "w3");
      copy_into(params_.get(x + "w2.weight"), f.down, x + "w2");
    }
  }
  copy_into(params_.get("model.norm.weight"), w.final_norm, "model.norm");
  if (!cfg_.tie_word_embeddings) copy_into(params_.get("lm_head.weight"), w.lm_head, "lm_head");
}

void TrainableMoeLm::set_policy(std::shared_ptr<moe::RoutingPolicy> policy) {
  DELTAMOE_CHECK(policy != nullptr, kComp, "no routing policy");
  DELTAMOE_CHECK(policy->extra_logits() == 0, kComp, "routing ", policy->name(),
                 " needs router outputs beyond the experts (null experts), which a Mixtral "
                 "router does not have");
  policy_ = std::move(policy);
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
  const int64_t hd = c.head_dim, E = c.num_experts;
  LmTrainForward out;
  const Var embed = params_.bind(g, "model.embed_tokens.weight");
  Var x = g.gather_rows(embed, tokens);
  std::vector<Var> aux;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l), a = p + "self_attn.", m = p + "block_sparse_moe.";
    const Var h = g.rms_norm(x, params_.bind(g, p + "input_layernorm.weight"), eps);
    const Var q =
        g.rope(g.linear(h, params_.bind(g, a + "q_proj.weight")), hd, seq_len, c.rope_theta);
    const Var k =
        g.rope(g.linear(h, params_.bind(g, a + "k_proj.weight")), hd, seq_len, c.rope_theta);
    const Var v = g.linear(h, params_.bind(g, a + "v_proj.weight"));
    const Var att =
        g.causal_attention(q, k, v, c.num_attention_heads, c.num_key_value_heads, seq_len);
    x = g.add(x, g.linear(att, params_.bind(g, a + "o_proj.weight")));

    const Var u = g.rms_norm(x, params_.bind(g, p + "post_attention_layernorm.weight"), eps);
    const Var z = g.linear(u, params_.bind(g, m + "gate.weight"));
    const Var prob = g.softmax(z);
    moe::RoutingResult rr;
    policy_->route(g.value(z).data<float>(), g.value(prob).data<float>(), n, E, rr);
    if (g.grad_enabled())
      if (auto* ad = dynamic_cast<moe::AdaptivePolicy*>(policy_.get()))
        ad->observe(g.value(prob).data<float>(), n, E, E, rr);
    const Var w = g.gate_weights(prob, rr.offsets, rr.expert_ids, policy_->renormalize());
    const Var y = detail::combine_experts(g, u, w, rr, n, E, [&](int64_t e, Var xe) {
      const std::string ex = m + "experts." + std::to_string(e) + ".";
      const Var gate = g.silu(g.linear(xe, params_.bind(g, ex + "w1.weight")));
      const Var up = g.linear(xe, params_.bind(g, ex + "w3.weight"));
      return g.linear(g.mul(gate, up), params_.bind(g, ex + "w2.weight"));
    });
    if (y.valid()) x = g.add(x, y);
    if (g.grad_enabled() && opt.balance_alpha > 0)
      aux.push_back(detail::switch_balance_loss(g, prob, rr, {}, E, opt.balance_alpha));
    out.routing.push_back(std::move(rr));
  }
  const Var hf = g.rms_norm(x, params_.bind(g, "model.norm.weight"), eps);
  out.logits = g.linear(hf, c.tie_word_embeddings ? embed : params_.bind(g, "lm_head.weight"));
  for (const Var& v : aux) out.aux_loss = out.aux_loss.valid() ? g.add(out.aux_loss, v) : v;
  return out;
}

Var TrainableMoeLm::loss(graph::Graph& g, const LmTrainForward& fwd,
                         const std::vector<int32_t>& tokens, int64_t seq_len) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  DELTAMOE_CHECK(seq_len > 1 && n % seq_len == 0, kComp,
                 "next-token loss needs sequences of at least 2 tokens, got ", seq_len);
  std::vector<int32_t> rows, labels;
  for (int64_t i = 0; i < n; ++i)
    if (i % seq_len != seq_len - 1) {
      rows.push_back(static_cast<int32_t>(i));
      labels.push_back(tokens[static_cast<size_t>(i + 1)]);
    }
  Var l = g.cross_entropy(g.gather_rows(fwd.logits, rows), labels);
  if (fwd.aux_loss.valid()) l = g.add(l, fwd.aux_loss);
  return l;
}

}  // namespace deltamoe::models
