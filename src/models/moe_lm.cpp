// The MoE decoder (see models/moe_lm.h): load, pack, forward.
#include "deltamoe/models/moe_lm.h"

#include <malloc.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"

namespace deltamoe::models {

namespace {

// Positions the RoPE table is built for at load; longer contexts are refused with a clear
// error rather than silently computed with a table grown under concurrent readers.
constexpr int64_t kMaxRopePositions = 65536;

std::vector<float> to_floats(const Tensor& t) {
  return t.defined() ? t.to_vector() : std::vector<float>{};
}

// [q; k; v] as one [rows, H] f32 tensor, so one packed GEMM yields all three projections.
Tensor concat_rows(const std::vector<Tensor>& parts) {
  int64_t rows = 0;
  const int64_t cols = parts[0].size(1);
  for (const Tensor& p : parts) rows += p.size(0);
  Tensor out({rows, cols}, DType::f32);
  float* dst = out.data<float>();
  for (const Tensor& p : parts) {
    const Tensor f = p.dtype() == DType::f32 && p.is_contiguous() ? p : p.to(DType::f32);
    std::memcpy(dst, f.data<float>(), f.nbytes());
    dst += f.numel();
  }
  return out;
}

// A dense SwiGLU MLP as a one-expert MoE block: the router always picks expert 0 with weight
// 1, so the one expert-FFN implementation also runs the dense layers.
moe::MoeWeights dense_as_moe(const io::HfFfnWeights& f, int64_t hidden) {
  moe::MoeWeights w;
  w.kind = moe::ExpertKind::swiglu;
  w.router = Tensor({1, hidden}, DType::f32);
  w.w1.push_back(f.gate);
  w.w3.push_back(f.up);
  w.w2.push_back(f.down);
  return w;
}

}  // namespace

std::unique_ptr<MoeLm> MoeLm::load(const std::string& model_dir, const LmOptions& options) {
  const io::HfConfig cfg = io::HfConfig::load(model_dir);
  const io::HfCheckpoint ckpt = io::HfCheckpoint::open(model_dir);
  std::unique_ptr<MoeLm> m;
  {
    const io::HfModelWeights w = io::load_hf_weights(cfg, ckpt);
    m = std::make_unique<MoeLm>(cfg, w, options);
  }
  // Packing freed many temporaries of a few MB; glibc keeps such freed heap memory resident
  // unless told to give it back.
  malloc_trim(0);
  return m;
}

MoeLm::MoeLm(const io::HfConfig& config, const io::HfModelWeights& w, const LmOptions& options)
    : cfg_(config),
      dtype_(options.dtype),
      layout_(options.layout),
      rope_(config.head_dim, config.rope_theta) {
  DELTAMOE_CHECK(dtype_ == DType::f32 || dtype_ == DType::bf16, "model",
                 "weights can be packed as f32 or bf16, not ", dtype_name(dtype_));
  const int64_t h = cfg_.hidden_size, d = cfg_.head_dim;
  q_rows_ = cfg_.num_attention_heads * d;
  kv_rows_ = cfg_.num_key_value_heads * d;
  const bool rows = layout_ == kernels::WeightLayout::row_major;
  // A matrix as the kernels take it: in place (row-major, the file's dtype), a converted
  // row-major copy, or a packed copy. Counts the bytes left in the mapping.
  const auto prepare = [&](const Tensor& t) {
    kernels::PackedLinear p =
        rows ? kernels::PackedLinear::row_major(t, dtype_) : kernels::PackedLinear(t, dtype_);
    if (p.in_place()) mapped_bytes_ += p.weight_bytes();
    return p;
  };
  final_norm_ = w.final_norm.to(DType::f32);
  lm_head_ = prepare(w.lm_head);
  max_positions_ = std::min<int64_t>(
      cfg_.max_position_embeddings > 0 ? cfg_.max_position_embeddings : kMaxRopePositions,
      kMaxRopePositions);
  rope_.ensure(max_positions_);
  default_policy_ =
      std::make_shared<moe::TopKRouting>(cfg_.num_experts_per_tok, cfg_.norm_topk_prob);
  policy_ = default_policy_;
  dense_policy_ = std::make_shared<moe::TopKRouting>(1, true);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const io::HfLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    Layer ly;
    ly.input_norm = lw.input_norm.to(DType::f32);
    ly.post_norm = lw.post_attn_norm.to(DType::f32);
    if (rows) {
      // One allocation for whatever has to be converted (no 2 MiB rounding per matrix).
      auto att = kernels::PackedLinear::row_major_all({lw.q, lw.k, lw.v, lw.o}, dtype_);
      for (const auto& p : att) mapped_bytes_ += p.in_place() ? p.weight_bytes() : 0;
      ly.o = std::move(att[3]);
      att.pop_back();
      ly.qkv = std::move(att);
    } else {
      ly.qkv.push_back(kernels::PackedLinear(concat_rows({lw.q, lw.k, lw.v}), dtype_));
      ly.o = kernels::PackedLinear(lw.o, dtype_);
    }
    if (lw.q_bias.defined()) {
      ly.qkv_bias = to_floats(lw.q_bias);
      for (const Tensor* b : {&lw.k_bias, &lw.v_bias}) {
        const auto v = to_floats(*b);
        ly.qkv_bias.insert(ly.qkv_bias.end(), v.begin(), v.end());
      }
    }
    ly.o_bias = to_floats(lw.o_bias);
    ly.q_norm = to_floats(lw.q_norm);
    ly.k_norm = to_floats(lw.k_norm);
    ly.moe = lw.moe;
    if (lw.moe) {
      moe::MoeWeights mw;
      mw.kind = moe::ExpertKind::swiglu;
      mw.router = lw.router;
      for (const auto& e : lw.experts) {
        mw.w1.push_back(e.gate);
        mw.w3.push_back(e.up);
        mw.w2.push_back(e.down);
      }
      if (lw.shared.gate.defined()) {
        mw.shared_w1 = lw.shared.gate;
        mw.shared_w3 = lw.shared.up;
        mw.shared_w2 = lw.shared.down;
        mw.shared_gate = lw.shared_gate;
      }
      ly.ffn = std::make_unique<moe::MoeBlock>(mw, dtype_, layout_);
    } else {
      ly.ffn = std::make_unique<moe::MoeBlock>(dense_as_moe(lw.dense, h), dtype_, layout_);
    }
    mapped_bytes_ += ly.ffn->in_place_weight_bytes();
    layers_.push_back(std::move(ly));
  }
  // The embedding is looked up in the file's dtype: a view while the checkpoint stays mapped
  // anyway; a copy (packed layout, or row-major with every matrix converted) lets the
  // mapping go, so resident memory is the weights alone, not also the file pages they were
  // read from.
  embed_ = rows && mapped_bytes_ > 0 ? w.embed : w.embed.clone();
}

void MoeLm::set_policy(std::shared_ptr<const moe::RoutingPolicy> policy) {
  if (!policy) {
    policy_ = default_policy_;
    return;
  }
  DELTAMOE_CHECK(
      policy->extra_logits() == 0, "model", "routing ", policy->name(),
      " needs null-expert router outputs, which a Hugging Face checkpoint does not have");
  policy_ = std::move(policy);
}

std::shared_ptr<KvBlockPool> MoeLm::make_kv_pool(int64_t block_tokens, int64_t max_blocks) const {
  return std::make_shared<KvBlockPool>(layers(), kv_rows_, block_tokens, max_blocks);
}

void MoeLm::reserve(KvCache& c, int64_t tokens) const {
  if (!c.pool_) c.pool_ = make_kv_pool(kDefaultKvBlockTokens, 0);
  KvBlockPool& pool = *c.pool_;
  DELTAMOE_CHECK(pool.layers() == layers() && pool.row() == kv_rows_, "model",
                 "KV cache belongs to another model (", pool.layers(), " layers of ", pool.row(),
                 " floats per position; this model has ", layers(), " of ", kv_rows_, ")");
  for (int64_t need = c.blocks_needed(tokens); need > 0; --need) {
    const auto [id, mem] = pool.acquire();
    DELTAMOE_CHECK(id >= 0, "model", "KV cache full: all ", pool.max_blocks(), " blocks of ",
                   pool.block_tokens(), " positions are in use");
    c.ids_.push_back(id);
    c.base_.push_back(mem);
  }
}

double MoeLm::active_weight_bytes(double experts_per_token) const {
  double b = static_cast<double>(lm_head_.weight_bytes());
  for (const Layer& ly : layers_) {
    for (const auto& p : ly.qkv) b += static_cast<double>(p.weight_bytes());
    b += static_cast<double>(ly.o.weight_bytes());
    b += static_cast<double>(ly.ffn->dense_weight_bytes());
    b += (ly.moe ? experts_per_token : 1.0) * static_cast<double>(ly.ffn->expert_weight_bytes());
  }
  return b;
}

size_t MoeLm::weight_bytes() const {
  size_t b = lm_head_.weight_bytes();
  for (const Layer& ly : layers_) {
    for (const auto& p : ly.qkv) b += p.weight_bytes();
    b += ly.o.weight_bytes() + ly.ffn->dense_weight_bytes() +
         static_cast<size_t>(ly.ffn->experts()) * ly.ffn->expert_weight_bytes();
  }
  return b;
}

void MoeLm::forward(const int32_t* tokens, int64_t n, KvCache& cache, float* logits,
                    bool all_logits, LmStats* stats) const {
  DELTAMOE_CHECK(n >= 1, "model", "forward needs at least one token");
  std::vector<float> h;
  run_layers({tokens}, {n}, {&cache}, h, stats);
  const int64_t hd = cfg_.hidden_size, v = cfg_.vocab_size;
  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  kernels::linear(h.data() + first * hd, rows, hd, lm_head_, logits, v);
}

void MoeLm::forward_batch(const std::vector<std::vector<int32_t>>& tokens,
                          const std::vector<KvCache*>& caches, float* logits,
                          LmStats* stats) const {
  DELTAMOE_CHECK(tokens.size() == caches.size() && !tokens.empty(), "model",
                 "forward_batch: ", tokens.size(), " sequences for ", caches.size(), " caches");
  for (size_t a = 0; a < caches.size(); ++a)
    for (size_t b = a + 1; b < caches.size(); ++b)
      DELTAMOE_CHECK(caches[a] != caches[b], "model", "forward_batch: sequences ", a, " and ", b,
                     " share one KV cache");
  std::vector<const int32_t*> ptrs;
  std::vector<int64_t> counts;
  for (const auto& t : tokens) {
    DELTAMOE_CHECK(!t.empty(), "model", "forward_batch: a sequence with no tokens");
    ptrs.push_back(t.data());
    counts.push_back(static_cast<int64_t>(t.size()));
  }
  std::vector<float> h;
  run_layers(ptrs, counts, caches, h, stats);
  const int64_t hd = cfg_.hidden_size;
  std::vector<float> last(tokens.size() * static_cast<size_t>(hd));
  int64_t row = 0;
  for (size_t s = 0; s < tokens.size(); ++s) {
    row += counts[s];
    std::memcpy(last.data() + s * static_cast<size_t>(hd), h.data() + (row - 1) * hd,
                static_cast<size_t>(hd) * sizeof(float));
  }
  kernels::linear(last.data(), static_cast<int64_t>(tokens.size()), hd, lm_head_, logits,
                  cfg_.vocab_size);
}

void MoeLm::run_layers(const std::vector<const int32_t*>& toks, const std::vector<int64_t>& counts,
                       const std::vector<KvCache*>& caches, std::vector<float>& h,
                       LmStats* stats) const {
  const int64_t hd = cfg_.hidden_size, d = cfg_.head_dim, heads = cfg_.num_attention_heads;
  const int64_t kvh = cfg_.num_key_value_heads, qkv_n = q_rows_ + 2 * kv_rows_;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const size_t seqs = toks.size();
  std::vector<int64_t> row0(seqs), start(seqs);
  int64_t t_count = 0;
  for (size_t s = 0; s < seqs; ++s) {
    row0[s] = t_count;
    start[s] = caches[s]->length();
    t_count += counts[s];
    DELTAMOE_CHECK(start[s] + counts[s] <= max_positions_, "model", "sequence of ",
                   start[s] + counts[s], " tokens exceeds the context of ", max_positions_,
                   " positions (max_position_embeddings)");
    for (int64_t i = 0; i < counts[s]; ++i)
      DELTAMOE_CHECK(toks[s][i] >= 0 && toks[s][i] < cfg_.vocab_size, "model", "token id ",
                     toks[s][i], " outside the vocabulary [0, ", cfg_.vocab_size, ")");
  }
  for (size_t s = 0; s < seqs; ++s) reserve(*caches[s], counts[s]);

  // Embedding lookup (any file dtype; rows converted to f32).
  h.assign(static_cast<size_t>(t_count * hd), 0.0f);
  for (size_t s = 0; s < seqs; ++s)
    for (int64_t i = 0; i < counts[s]; ++i) {
      const Tensor row = embed_.slice(toks[s][i], toks[s][i] + 1).to(DType::f32);
      std::memcpy(h.data() + (row0[s] + i) * hd, row.data<float>(), static_cast<size_t>(hd) * 4);
    }

  std::vector<float> x(static_cast<size_t>(t_count * hd)),
      qkv(static_cast<size_t>(t_count * qkv_n));
  std::vector<float> att(static_cast<size_t>(t_count * q_rows_)),
      y(static_cast<size_t>(t_count * hd));
  std::vector<std::vector<const float*>> kblocks(seqs), vblocks(seqs);
  std::vector<kernels::KvBlocks> kv(seqs);
  moe::RoutingResult routing;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t l = 0; l < layers(); ++l) {
    const Layer& ly = layers_[static_cast<size_t>(l)];
    // Attention: x = RMSNorm(h); [q k v] = x·W; q/k norms; RoPE; cache; attend; h += o.
    parallel_for(t_count, 8, [&](int64_t b, int64_t e) {
      kernels::rms_norm_rows_st(h.data() + b * hd, ly.input_norm.data<float>(), x.data() + b * hd,
                                e - b, hd, hd, eps);
    });
    for (int64_t p = 0, col = 0; p < static_cast<int64_t>(ly.qkv.size()); ++p) {
      kernels::linear(x.data(), t_count, hd, ly.qkv[p], qkv.data() + col, qkv_n);
      col += ly.qkv[p].out_features();
    }
    parallel_for(t_count, 4, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* row = qkv.data() + r * qkv_n;
        if (!ly.qkv_bias.empty())
          for (int64_t c = 0; c < qkv_n; ++c) row[c] += ly.qkv_bias[static_cast<size_t>(c)];
        float* q = row;
        float* k = row + q_rows_;
        if (cfg_.qk_norm == io::HfConfig::QkNorm::per_head) {
          kernels::rms_norm_rows_st(q, ly.q_norm.data(), q, heads, d, d, eps);
          kernels::rms_norm_rows_st(k, ly.k_norm.data(), k, kvh, d, d, eps);
        } else if (cfg_.qk_norm == io::HfConfig::QkNorm::full) {
          kernels::rms_norm_rows_st(q, ly.q_norm.data(), q, 1, q_rows_, q_rows_, eps);
          kernels::rms_norm_rows_st(k, ly.k_norm.data(), k, 1, kv_rows_, kv_rows_, eps);
        }
        if (cfg_.clip_qkv) {  // OLMoE clamps after the q/k norms
          const float lim = static_cast<float>(*cfg_.clip_qkv);
          for (int64_t c = 0; c < qkv_n; ++c) row[c] = std::clamp(row[c], -lim, lim);
        }
      }
    });
    for (size_t s = 0; s < seqs; ++s) {
      KvCache& c = *caches[s];
      const int64_t bt = c.pool_->block_tokens(), side = bt * kv_rows_;
      for (int64_t i = 0; i < counts[s]; ++i) {
        float* row = qkv.data() + (row0[s] + i) * qkv_n;
        const int64_t pos = start[s] + i;
        kernels::rope_st(row, heads, rope_, pos);
        kernels::rope_st(row + q_rows_, kvh, rope_, pos);
        float* kc = c.base_[static_cast<size_t>(pos / bt)] + 2 * l * side + (pos % bt) * kv_rows_;
        std::memcpy(kc, row + q_rows_, static_cast<size_t>(kv_rows_) * 4);
        std::memcpy(kc + side, row + q_rows_ + kv_rows_, static_cast<size_t>(kv_rows_) * 4);
      }
      auto& kb = kblocks[s];
      auto& vb = vblocks[s];
      kb.resize(c.base_.size());
      vb.resize(c.base_.size());
      for (size_t b = 0; b < c.base_.size(); ++b) {
        kb[b] = c.base_[b] + 2 * l * side;
        vb[b] = kb[b] + side;
      }
      kv[s] = {kb.data(), vb.data(), bt};
    }
    kernels::causal_attention_batch(qkv.data(), qkv_n, kv, kv_rows_, att.data(), q_rows_, row0,
                                    counts, start, heads, kvh, d, scale);
    kernels::linear(att.data(), t_count, q_rows_, ly.o, h.data(), hd, /*accumulate=*/true);
    if (!ly.o_bias.empty())
      for (int64_t r = 0; r < t_count; ++r)
        for (int64_t c = 0; c < hd; ++c)
          h[static_cast<size_t>(r * hd + c)] += ly.o_bias[static_cast<size_t>(c)];

    // FFN: x = RMSNorm(h); h += MoE(x) (or the dense MLP).
    parallel_for(t_count, 8, [&](int64_t b, int64_t e) {
      kernels::rms_norm_rows_st(h.data() + b * hd, ly.post_norm.data<float>(), x.data() + b * hd,
                                e - b, hd, hd, eps);
    });
    ly.ffn->route(x.data(), t_count, ly.moe ? *policy_ : *dense_policy_, routing);
    ly.ffn->apply(x.data(), t_count, routing, y.data());
    if (stats && ly.moe) {
      stats->moe_rows += t_count;
      stats->routed_experts += static_cast<int64_t>(routing.expert_ids.size());
      if (stats->record_routing) stats->routing.push_back(routing);
    }
    parallel_for(t_count * hd, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) h[static_cast<size_t>(i)] += y[static_cast<size_t>(i)];
    });
  }
  for (size_t s = 0; s < seqs; ++s) caches[s]->length_ += counts[s];
  if (stats) stats->tokens += t_count;
  parallel_for(t_count, 8, [&](int64_t b, int64_t e) {
    kernels::rms_norm_rows_st(h.data() + b * hd, final_norm_.data<float>(), h.data() + b * hd,
                              e - b, hd, hd, eps);
  });
}

int32_t sample_token(const float* logits, int64_t vocab, double temperature, double top_p,
                     std::mt19937_64& rng) {
  DELTAMOE_CHECK(vocab >= 1, "sample", "empty vocabulary");
  if (temperature <= 0.0) {
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return static_cast<int32_t>(best);
  }
  std::vector<double> p(static_cast<size_t>(vocab));
  double mx = logits[0];
  for (int64_t i = 1; i < vocab; ++i) mx = std::max<double>(mx, logits[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i)
    sum += p[static_cast<size_t>(i)] = std::exp((logits[i] - mx) / temperature);
  if (top_p >= 1.0) {
    // No nucleus to cut: walking the ids in order samples the same distribution as walking
    // them by probability, without sorting the vocabulary every token.
    double u = std::uniform_real_distribution<double>(0.0, sum)(rng);
    for (int64_t i = 0; i < vocab; ++i) {
      u -= p[static_cast<size_t>(i)];
      if (u <= 0.0) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(vocab - 1);
  }
  // The nucleus: the most probable ids (ties: lower id first) until their mass reaches top_p.
  // Sorting only a prefix, grown 4x at a time, finds it without sorting the whole vocabulary
  // (a nucleus is usually a few dozen tokens).
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  const auto more_likely = [&](int32_t a, int32_t b) {
    return p[static_cast<size_t>(a)] > p[static_cast<size_t>(b)] ||
           (p[static_cast<size_t>(a)] == p[static_cast<size_t>(b)] && a < b);
  };
  size_t keep = ids.size(), sorted = 0;
  double acc = 0.0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i == sorted) {
      const size_t upto = std::min(ids.size(), std::max<size_t>(64, 4 * sorted));
      std::partial_sort(ids.begin() + static_cast<std::ptrdiff_t>(sorted),
                        ids.begin() + static_cast<std::ptrdiff_t>(upto), ids.end(), more_likely);
      sorted = upto;
    }
    acc += p[static_cast<size_t>(ids[i])] / sum;
    if (acc >= top_p) {
      keep = i + 1;
      break;
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += p[static_cast<size_t>(ids[i])];
  double u = std::uniform_real_distribution<double>(0.0, kept)(rng);
  for (size_t i = 0; i < keep; ++i) {
    u -= p[static_cast<size_t>(ids[i])];
    if (u <= 0.0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace deltamoe::models
