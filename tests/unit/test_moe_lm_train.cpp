// TrainableMoeLm (the Mixtral forward on the training tape): its logits against transformers'
// golden logits and the inference path (MoeLm) on the same checkpoint; sequences in a batch
// independent; the gradient of the whole loss against finite differences; clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/models/kv_cache.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/models/moe_lm_train.h"
#include "deltamoe/moe/policies.h"
#include "llm_golden.h"

using namespace deltamoe;
using namespace deltamoe::models;
using deltamoe::test::golden_dir;
using deltamoe::test::ids_of;

namespace {

// A tiny Mixtral config (vocab 16, hidden 8, 2 layers, 2+1 heads of 4, 4 experts top-2).
io::HfConfig tiny_config(bool tied) {
  return test::tiny_mixtral(16, 8, 2, 1, 6, tied);
}

// The same with Qwen2-MoE's parts: q/k/v biases, a shared expert (intermediate 5) with its
// sigmoid gate in the MoE layer 1, layer 0 dense (mlp_only_layers), raw top-2 weights.
io::HfConfig tiny_qwen2_config() {
  return test::as_qwen2_moe(tiny_config(false), 5);
}

}  // namespace

// Logits of every position equal transformers' (1e-3, as the inference path is held to) and
// the inference path's (MoeLm, all_logits) on the same checkpoint: Mixtral, and Qwen2-MoE
// (q/k/v biases, a shared expert with its gate, a dense layer, tied embeddings).
TEST(LmTrainForward, MatchesTransformersAndTheInferencePath) {
  set_num_threads(2);
  for (const char* family : {"mixtral", "qwen2_moe"}) {
    SCOPED_TRACE(family);
    const std::string dir = golden_dir(family);
    const io::HfConfig cfg = io::HfConfig::load(dir);
    const io::HfCheckpoint ck = io::HfCheckpoint::open(dir);
    TrainableMoeLm lm(cfg, io::load_hf_weights(cfg, ck));
    const auto inf = MoeLm::load(dir, {DType::f32});
    const auto golden = io::SafetensorsFile::open(dir + "/golden.safetensors");
    const int64_t V = cfg.vocab_size;
    for (int i = 0; i < 3; ++i) {
      SCOPED_TRACE("prompt " + std::to_string(i));
      const auto prompt = ids_of(golden.get("prompt." + std::to_string(i)));
      const int64_t T = static_cast<int64_t>(prompt.size());
      graph::Graph g(false);
      const auto fwd = lm.forward(g, prompt, T);
      const float* got = g.value(fwd.logits).data<float>();
      const Tensor want = golden.get("logits." + std::to_string(i)).to(DType::f32);
      ASSERT_EQ(want.numel(), T * V);
      std::vector<float> ref(static_cast<size_t>(T * V));
      KvCache cache;
      inf->forward(prompt.data(), T, cache, ref.data(), /*all_logits=*/true);
      float d_hf = 0, d_inf = 0, scale = 0;
      for (int64_t j = 0; j < T * V; ++j) {
        d_hf = std::max(d_hf, std::fabs(got[j] - want.data<float>()[j]));
        d_inf = std::max(d_inf, std::fabs(got[j] - ref[static_cast<size_t>(j)]));
        scale = std::max(scale, std::fabs(want.data<float>()[j]));
      }
      EXPECT_GT(scale, 0.1f);
      EXPECT_LT(d_hf, 1e-3f);
      EXPECT_LT(d_inf, 1e-4f);
    }
  }
}

// Two sequences in one batch give each one's logits alone (attention and RoPE stay inside a
// sequence).
TEST(LmTrainForward, SequencesInABatchAreIndependent) {
  TrainableMoeLm lm(tiny_config(false), 5);
  const std::vector<int32_t> a = {1, 5, 9, 3, 2}, b = {7, 7, 0, 15, 4};
  std::vector<int32_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  graph::Graph g(false), ga(false), gb(false);
  const float* all = g.value(lm.forward(g, both, 5).logits).data<float>();
  const float* la = ga.value(lm.forward(ga, a, 5).logits).data<float>();
  const float* lb = gb.value(lm.forward(gb, b, 5).logits).data<float>();
  for (int64_t j = 0; j < 5 * 16; ++j) {
    EXPECT_NEAR(all[j], la[j], 1e-6f) << j;
    EXPECT_NEAR(all[5 * 16 + j], lb[j], 1e-6f) << j;
  }
}

// d loss / d parameter by backward() against central differences, for sampled elements of
// every kind of parameter, tied and untied heads, null experts, with the balance and budget
// losses on. The routing is
// the same at ±eps for the sampled elements (a flip would be a discontinuity; checked).
TEST(LmTrainForward, LossGradientMatchesFiniteDifferences) {
  for (int variant = 0; variant < 4; ++variant) {
    const bool tied = variant == 1, qwen2 = variant == 2, nulls = variant == 3;
    SCOPED_TRACE(qwen2 ? "qwen2-moe" : tied ? "tied" : nulls ? "null experts" : "untied");
    io::HfConfig cfg = qwen2 ? tiny_qwen2_config() : tiny_config(tied);
    if (nulls) cfg.null_experts = 2;  // router [4 + 2, H]; null-experts:2:2, renormalised
    TrainableMoeLm lm(cfg, 11);
    // Larger weights than the 0.02 init so that the loss moves measurably.
    std::mt19937_64 rng(3);
    for (auto& p : lm.params().params())
      if (p.name.find("norm") == std::string::npos) nn::init_normal(p.value, 0.4f, rng);
    const std::vector<int32_t> tokens = {1, 5, 9, 3, 2, 7, 7, 0, 15, 4, 6, 8};
    LmTrainForwardOptions opt;
    opt.balance_alpha = 0.05;
    opt.budget_beta = 0.5;  // the router-entropy budget loss, large enough to matter
    auto loss_at = [&](bool backward, std::vector<moe::RoutingResult>* routing) {
      graph::Graph g(backward);
      const auto fwd = lm.forward(g, tokens, 4, opt);
      if (routing) *routing = fwd.routing;
      const graph::Var l = lm.loss(g, fwd, tokens, 4);
      if (backward) g.backward(l);
      return static_cast<double>(g.scalar(l));
    };
    lm.params().zero_grad();
    std::vector<moe::RoutingResult> base;
    loss_at(true, &base);
    int checked = 0;
    for (auto& p : lm.params().params()) {
      const bool pick = p.name.find("embed") != std::string::npos ||
                        p.name.find("layers.1.") != std::string::npos ||
                        p.name.find(".bias") != std::string::npos ||
                        p.name.find("shared_expert") != std::string::npos ||
                        p.name.find("layers.0.mlp.") != std::string::npos ||
                        p.name.find("lm_head") != std::string::npos ||
                        p.name == "model.norm.weight";
      if (!pick) continue;
      for (int64_t j = 0; j < p.value.numel(); j += std::max<int64_t>(1, p.value.numel() / 5)) {
        float* v = p.value.data<float>() + j;
        const float orig = *v, eps = 1e-2f;
        std::vector<moe::RoutingResult> rp, rm;
        *v = orig + eps;
        const double lp = loss_at(false, &rp);
        *v = orig - eps;
        const double lm_ = loss_at(false, &rm);
        *v = orig;
        bool same = true;
        for (size_t l = 0; l < base.size(); ++l)
          same = same && rp[l].expert_ids == base[l].expert_ids &&
                 rm[l].expert_ids == base[l].expert_ids;
        if (!same) continue;
        const double num = (lp - lm_) / (2.0 * eps), ana = p.grad.data<float>()[j];
        EXPECT_NEAR(ana, num, 2e-2 * std::max(1.0, std::fabs(num)) + 2e-4)
            << p.name << "[" << j << "]";
        ++checked;
      }
    }
    EXPECT_GT(checked, 40);
  }
}

TEST(LmTrainForward, ClearErrors) {
  TrainableMoeLm lm(tiny_config(false), 1);
  graph::Graph g(false);
  EXPECT_THROW(lm.forward(g, {1, 2, 3}, 2), Error);      // not whole sequences
  EXPECT_THROW(lm.forward(g, {1, 2, 16, 3}, 2), Error);  // token outside the vocabulary
  EXPECT_THROW(lm.set_policy(moe::make_policy("null-experts:2:4", 4)), Error);
  const io::HfConfig olmoe = io::HfConfig::load(golden_dir("olmoe"));
  try {
    TrainableMoeLm bad(olmoe, 1);
    ADD_FAILURE() << "an OLMoE config was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MixtralForCausalLM"), std::string::npos) << e.what();
  }
}
