// MoE layers whose routed experts live in an ExpertCache (see models/expert_cache.h): the
// cache is opened over the checkpoint's expert tensors, and each MoE layer pins the experts
// its routing needs, prefetches the next MoE layer's predicted experts (pre-gating: the next
// router applied to the current hidden state, each token's most likely expert), waits for
// its own and runs them from their slots. The arithmetic is MoeBlock::apply's, so outputs equal the
// all-resident run's unless substitution drops experts.
#include <algorithm>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/llm.h"
#include "deltamoe/models/moe_lm.h"
#include "models/moe_lm_internal.h"

namespace deltamoe::models {

namespace {

constexpr const char* kComp = "offload";

std::vector<int32_t> distinct(const std::vector<int32_t>& ids) {
  std::vector<int32_t> out(ids);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Drops each token's routed experts that are not resident, scaling the kept weights so they
// sum as before; a token with none resident keeps its highest-weight expert (it waits).
// Returns the pairs dropped.
int64_t substitute(moe::RoutingResult& r, const std::vector<uint8_t>& resident) {
  moe::RoutingResult out;
  out.offsets.push_back(0);
  int64_t dropped = 0;
  for (int64_t t = 0; t < r.tokens(); ++t) {
    const int32_t b = r.offsets[static_cast<size_t>(t)], e = r.offsets[static_cast<size_t>(t) + 1];
    float all = 0.0f, kept = 0.0f;
    int32_t top = -1;
    for (int32_t j = b; j < e; ++j) {
      all += r.weights[static_cast<size_t>(j)];
      if (resident[static_cast<size_t>(r.expert_ids[static_cast<size_t>(j)])])
        kept += r.weights[static_cast<size_t>(j)];
      if (top < 0 || r.weights[static_cast<size_t>(j)] > r.weights[static_cast<size_t>(top)])
        top = j;
    }
    for (int32_t j = b; j < e; ++j) {
      const bool res = resident[static_cast<size_t>(r.expert_ids[static_cast<size_t>(j)])];
      const bool keep = kept > 0.0f ? res : j == top;
      if (!keep) {
        ++dropped;
        continue;
      }
      out.expert_ids.push_back(r.expert_ids[static_cast<size_t>(j)]);
      out.weights.push_back(kept > 0.0f ? r.weights[static_cast<size_t>(j)] * (all / kept)
                                        : r.weights[static_cast<size_t>(j)]);
    }
    out.offsets.push_back(static_cast<int32_t>(out.expert_ids.size()));
  }
  r = std::move(out);
  return dropped;
}

}  // namespace

void MoeLm::open_expert_cache(const io::HfModelWeights& w, const io::HfCheckpoint& ckpt,
                              const ExpertCacheOptions& opts) {
  DELTAMOE_CHECK(layout_ == kernels::WeightLayout::row_major && dtype_ != DType::int8, kComp,
                 "--expert-cache reads experts as the file stores them: it needs "
                 "--weight-layout mapped and --dtype f32 or bf16 (not ",
                 dtype_name(dtype_), ", ",
                 layout_ == kernels::WeightLayout::packed ? "packed" : "mapped", ")");
  std::vector<std::array<io::FileExtent, 3>> extents;
  std::array<Shape, 3> shapes;
  int64_t moe_layers = 0;
  moe_ordinal_.assign(layers_.size(), -1);
  for (size_t l = 0; l < layers_.size(); ++l) {
    if (!layers_[l].moe) continue;
    moe_ordinal_[l] = moe_layers++;
    for (const io::HfFfnWeights& e : w.layers[l].experts) {
      for (const Tensor* t : {&e.gate, &e.up, &e.down})
        DELTAMOE_CHECK(t->dtype() == dtype_, kComp,
                       "--expert-cache reads experts as the file stores them (",
                       dtype_name(t->dtype()), "); run with --dtype ", dtype_name(t->dtype()));
      extents.push_back({ckpt.locate(e.gate), ckpt.locate(e.up), ckpt.locate(e.down)});
      shapes = {e.gate.shape(), e.up.shape(), e.down.shape()};
    }
  }
  DELTAMOE_CHECK(moe_layers > 0, kComp, "the model has no MoE layer: nothing to offload");
  cache_ = std::make_unique<ExpertCache>(moe_layers, cfg_.num_experts, dtype_, shapes,
                                         std::move(extents), opts);
  for (const Layer& ly : layers_)
    if (ly.moe)
      mapped_bytes_ -= std::min(
          mapped_bytes_, static_cast<size_t>(ly.ffn->experts()) * ly.ffn->expert_weight_bytes());
}

void MoeLm::ffn_offloaded(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h,
                          LmStats* stats) const {
  const int64_t hd = cfg_.hidden_size, n = rs.rows, experts = ly.ffn->experts();
  const int64_t ml = moe_ordinal_[static_cast<size_t>(l)];
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const ExpertCacheOptions& opts = cache_->options();
  float* x = p.x.data();
  float* y = p.y.data();
  norm_rows(h, ly.post_norm.data<float>(), x, n, hd, eps);
  moe::RoutingResult routing;
  std::vector<float> probs;  // the router policy's statistics only
  ly.ffn->route(x, n, policy_of(l), routing,
                opts.policy == ExpertCachePolicy::router ? &probs : nullptr);
  std::vector<int32_t> needed = distinct(routing.expert_ids);

  // How well the previous MoE layer predicted this one.
  if (p.predicted_layer == ml) {
    int64_t used = 0;
    for (int32_t e : p.predicted) used += std::binary_search(needed.begin(), needed.end(), e);
    cache_->record_prediction(static_cast<int64_t>(p.predicted.size()), used,
                              static_cast<int64_t>(needed.size()));
    p.predicted_layer = -1;
  }

  std::vector<int32_t> dropped;
  if (cache_->substitute()) {
    std::vector<uint8_t> resident(static_cast<size_t>(experts), 0);
    for (int32_t e : needed) resident[static_cast<size_t>(e)] = cache_->ready(ml, e);
    const int64_t subs = substitute(routing, resident);
    if (subs > 0) {
      cache_->record_substitutions(subs);
      const std::vector<int32_t> kept = distinct(routing.expert_ids);
      std::set_difference(needed.begin(), needed.end(), kept.begin(), kept.end(),
                          std::back_inserter(dropped));
      needed = kept;
    }
  }

  cache_->begin(ml, needed, probs.empty() ? nullptr : probs.data(), n);
  struct Unpin {
    ExpertCache* c;
    int64_t l;
    const std::vector<int32_t>& e;
    ~Unpin() { c->end(l, e); }
  } unpin{cache_.get(), ml, needed};
  // Experts dropped by substitution are read in the background for the tokens to come.
  if (!dropped.empty()) cache_->prefetch(ml, dropped);

  // Pre-gating: the next MoE layer's router on this hidden state, normalised as that layer
  // will normalise its FFN input.
  if (opts.prefetch) {
    size_t next = static_cast<size_t>(l) + 1;
    while (next < layers_.size() && !layers_[next].moe) ++next;
    if (next < layers_.size()) {
      const Layer& nl = layers_[next];
      std::vector<float> xn(static_cast<size_t>(n * hd));
      norm_rows(h, nl.post_norm.data<float>(), xn.data(), n, hd, eps);
      moe::RoutingResult pred;
      // Each token's most likely expert only: the top-1 guess is right more often (90% against
      // 77% for the full top-k on the study's model) and a wrong guess costs a whole expert's
      // read; measured faster than predicting all k (docs/experiments/offload.md).
      static const moe::TopKRouting most_likely(1, true);
      nl.ffn->route(xn.data(), n, most_likely, pred);
      p.predicted = distinct(pred.expert_ids);
      p.predicted_layer = moe_ordinal_[next];
      cache_->prefetch(p.predicted_layer, p.predicted);
    }
  }

  std::vector<moe::ExpertMatrices> mats(static_cast<size_t>(experts));
  for (int32_t e : needed) mats[static_cast<size_t>(e)] = cache_->wait(ml, e);
  ly.ffn->apply_external(x, n, routing, y, mats.data());
  count_routing(routing, rs, stats);
  add_rows(h, y, n * hd);
}

}  // namespace deltamoe::models
