// The MoE decoder's forward pass (see models/moe_lm.h): attention and FFN per layer over the
// token rows of one or several sequences, and per-expert queues across decode steps.
//
// A pass normally runs every row through every layer. With an ExpertQueueRule that holds,
// a decode token may stop at an MoE layer (some of its experts wait for more rows) and
// resume there in a later pass; such a pass has rows at different depths, so each layer
// works on the subset of rows that are at it (a RowSet, gathered contiguous when it is not
// simply all rows).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/models/moe_lm.h"
#include "models/moe_lm_internal.h"

namespace deltamoe::models {

using Clock = std::chrono::steady_clock;

void ExpertQueueRule::check() const {
  DELTAMOE_CHECK(min_rows >= 1 && max_wait_s >= 0.0 && std::isfinite(max_wait_s), "model",
                 "expert queues need B ≥ 1 rows and a finite wait T ≥ 0 (a held token needs a "
                 "deadline), got B = ",
                 min_rows, ", T = ", max_wait_s, " s");
}

void MoeLm::forward(const int32_t* tokens, int64_t n, KvCache& cache, float* logits,
                    bool all_logits, LmStats* stats) const {
  DELTAMOE_CHECK(n >= 1, "model", "forward needs at least one token");
  Pass p;
  p.toks = {tokens};
  p.counts = {n};
  p.caches = {&cache};
  std::vector<float> h;
  if (parallel_ == ParallelMode::ep)
    run_layers_parallel(p, h, stats);
  else
    run_layers(p, h, stats, {});
  const int64_t hd = cfg_.hidden_size, v = cfg_.vocab_size;
  const int64_t first = all_logits ? 0 : n - 1, rows = n - first;
  kernels::linear(h.data() + first * hd, rows, hd, lm_head_, logits, v);
}

int64_t MoeLm::forward_batch(const std::vector<std::vector<int32_t>>& tokens,
                             const std::vector<KvCache*>& caches, float* logits, LmStats* stats,
                             const ExpertQueueRule& queues) const {
  DELTAMOE_CHECK(tokens.size() == caches.size() && !tokens.empty(), "model",
                 "forward_batch: ", tokens.size(), " sequences for ", caches.size(), " caches");
  queues.check();
  DELTAMOE_CHECK(!(cache_ && queues.holds()), "offload",
                 "per-expert queues across steps and an expert cache do not combine (a held "
                 "token would pin its experts between steps)");
  DELTAMOE_CHECK(!(comm_ && queues.holds()), "model",
                 "per-expert queues across steps and --parallel do not combine (ranks would "
                 "have to agree on which tokens wait)");
  for (size_t a = 0; a < caches.size(); ++a)
    for (size_t b = a + 1; b < caches.size(); ++b)
      DELTAMOE_CHECK(caches[a] != caches[b], "model", "forward_batch: sequences ", a, " and ", b,
                     " share one KV cache");
  Pass p;
  for (const auto& t : tokens) {
    DELTAMOE_CHECK(!t.empty(), "model", "forward_batch: a sequence with no tokens");
    p.toks.push_back(t.data());
    p.counts.push_back(static_cast<int64_t>(t.size()));
  }
  p.caches = caches;
  std::vector<float> h;
  if (parallel_ == ParallelMode::ep)
    run_layers_parallel(p, h, stats);
  else
    run_layers(p, h, stats, queues);
  // The LM head for the sequences that finished: their last rows.
  const int64_t hd = cfg_.hidden_size, v = cfg_.vocab_size;
  std::vector<size_t> done;
  for (size_t s = 0; s < tokens.size(); ++s)
    if (!p.stopped[s]) done.push_back(s);
  if (done.empty() || logits == nullptr) return static_cast<int64_t>(done.size());
  std::vector<float> last(done.size() * static_cast<size_t>(hd));
  for (size_t j = 0; j < done.size(); ++j)
    std::memcpy(last.data() + j * static_cast<size_t>(hd),
                h.data() + (p.row0[done[j]] + p.counts[done[j]] - 1) * hd,
                static_cast<size_t>(hd) * sizeof(float));
  if (done.size() == tokens.size()) {
    kernels::linear(last.data(), static_cast<int64_t>(done.size()), hd, lm_head_, logits, v);
  } else {
    std::vector<float> out(done.size() * static_cast<size_t>(v));
    kernels::linear(last.data(), static_cast<int64_t>(done.size()), hd, lm_head_, out.data(), v);
    for (size_t j = 0; j < done.size(); ++j)
      std::memcpy(logits + done[j] * static_cast<size_t>(v),
                  out.data() + j * static_cast<size_t>(v), static_cast<size_t>(v) * sizeof(float));
  }
  return static_cast<int64_t>(done.size());
}

void MoeLm::begin_pass(Pass& p, LmStats* stats) const {
  const size_t seqs = p.toks.size();
  p.row0.resize(seqs);
  p.start.resize(seqs);
  p.resume.assign(seqs, -1);
  p.stopped.assign(seqs, 0);
  p.rows = 0;
  for (size_t s = 0; s < seqs; ++s) {
    p.row0[s] = p.rows;
    p.start[s] = p.caches[s]->length();
    p.rows += p.counts[s];
    DELTAMOE_CHECK(p.start[s] + p.counts[s] <= max_positions_, "model", "sequence of ",
                   p.start[s] + p.counts[s], " tokens exceeds the context of ", max_positions_,
                   " positions (max_position_embeddings)");
    for (int64_t i = 0; i < p.counts[s]; ++i)
      DELTAMOE_CHECK(p.toks[s][i] >= 0 && p.toks[s][i] < cfg_.vocab_size, "model", "token id ",
                     p.toks[s][i], " outside the vocabulary [0, ", cfg_.vocab_size, ")");
    if (const HeldToken* held = p.caches[s]->held()) {
      DELTAMOE_CHECK(p.counts[s] == 1 && p.toks[s][0] == held->token, "model", "sequence ", s,
                     " has token ", held->token, " waiting at layer ", held->layer,
                     " for its experts; it must be passed again, alone");
      p.resume[s] = held->layer;
    }
  }
  for (size_t s = 0; s < seqs; ++s) reserve(*p.caches[s], p.counts[s]);
  if (stats) {
    stats->seq_moe_rows.assign(seqs, 0);
    stats->seq_routed.assign(seqs, 0);
    if (stats->expert_rows.empty())
      stats->expert_rows.assign(static_cast<size_t>(std::max<int64_t>(1, cfg_.num_experts)), 0);
  }
}

void MoeLm::run_layers(Pass& p, std::vector<float>& h, LmStats* stats,
                       const ExpertQueueRule& queues) const {
  const int64_t hd = cfg_.hidden_size;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  begin_pass(p, stats);
  const size_t seqs = p.toks.size();

  // Embedding lookup (any file dtype; rows converted to f32); a held token's row is its
  // residual stream where it stopped.
  const size_t n_all = static_cast<size_t>(p.rows * hd);
  h.assign(n_all, 0.0f);
  for (size_t s = 0; s < seqs; ++s) {
    if (p.resume[s] >= 0) {
      std::memcpy(h.data() + p.row0[s] * hd, p.caches[s]->held()->h.data(),
                  static_cast<size_t>(hd) * 4);
      continue;
    }
    for (int64_t i = 0; i < p.counts[s]; ++i) {
      const Tensor row = embed_.slice(p.toks[s][i], p.toks[s][i] + 1).to(DType::f32);
      std::memcpy(h.data() + (p.row0[s] + i) * hd, row.data<float>(), static_cast<size_t>(hd) * 4);
    }
  }
  p.x.resize(n_all);
  p.y.resize(n_all);
  p.qkv.resize(static_cast<size_t>(p.rows * (q_rows_ + 2 * kv_rows_)));
  p.att.resize(static_cast<size_t>(p.rows * q_rows_));
  p.kblocks.resize(seqs);
  p.vblocks.resize(seqs);
  p.kblocks16.resize(seqs);
  p.vblocks16.resize(seqs);

  const bool any_held =
      std::any_of(p.resume.begin(), p.resume.end(), [](int64_t r) { return r >= 0; });
  for (int64_t l = 0; l < layers(); ++l) {
    const Layer& ly = layers_[static_cast<size_t>(l)];
    // Attention for the rows at this layer, except held tokens resuming here (done before).
    const RowSet att(p, [&](size_t s) { return !p.stopped[s] && p.resume[s] < l; });
    if (att.all) {
      attention(ly, l, p, att, h.data());
    } else if (att.rows > 0) {
      p.hc.resize(static_cast<size_t>(att.rows * hd));
      att.gather(p, h.data(), p.hc.data(), hd);
      attention(ly, l, p, att, p.hc.data());
      att.scatter(p, p.hc.data(), h.data(), hd);
    }
    const RowSet ffs(p, [&](size_t s) { return !p.stopped[s] && p.resume[s] <= l; });
    if (ffs.rows == 0) continue;
    const bool queued = ly.moe && (queues.holds() || any_held);
    float* hb = h.data();
    if (!ffs.all) {
      p.hc.resize(static_cast<size_t>(ffs.rows * hd));
      ffs.gather(p, h.data(), p.hc.data(), hd);
      hb = p.hc.data();
    }
    if (queued)
      ffn_queued(ly, l, p, ffs, hb, stats, queues);
    else if (cache_ && ly.moe)
      ffn_offloaded(ly, l, p, ffs, hb, stats);

    else
      ffn(ly, l, p, ffs, hb, stats);
    if (!ffs.all) ffs.scatter(p, p.hc.data(), h.data(), hd);
  }
  for (size_t s = 0; s < seqs; ++s)
    if (!p.stopped[s]) {
      p.caches[s]->length_ += p.counts[s];
      if (stats) stats->tokens += p.counts[s];
    }
  parallel_for(p.rows, 8, [&](int64_t b, int64_t e) {
    kernels::rms_norm_rows_st(h.data() + b * hd, final_norm_.data<float>(), h.data() + b * hd,
                              e - b, hd, hd, eps);
  });
}

void MoeLm::attention(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h) const {
  const int64_t qkv_n = q_rows_ + 2 * kv_rows_;
  float* qkv = p.qkv.data();
  // x = RMSNorm(h); [q k v] = x·W; q/k norms; RoPE; cache; attend; h += o.
  project_qkv(ly, h, rs.rows, p.x.data(), qkv);
  for (size_t j = 0; j < rs.seqs.size(); ++j)
    for (int64_t i = 0; i < rs.counts[j]; ++i) {
      float* row = qkv + (rs.row0[j] + i) * qkv_n;
      const int64_t pos = rs.start[j] + i;
      rope_row(row, pos);
      store_kv(*rs.caches[j], l, pos, row + q_rows_);
    }
  attend(ly, l, p, {rs.row0, rs.counts, rs.start, rs.caches}, qkv, h);
}

void MoeLm::project_qkv(const Layer& ly, const float* h, int64_t n, float* x, float* qkv) const {
  const int64_t hd = cfg_.hidden_size, d = cfg_.head_dim, heads = heads_;
  const int64_t kvh = kv_heads_, qkv_n = q_rows_ + 2 * kv_rows_;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  parallel_for(n, 8, [&](int64_t b, int64_t e) {
    kernels::rms_norm_rows_st(h + b * hd, ly.input_norm.data<float>(), x + b * hd, e - b, hd, hd,
                              eps);
  });
  kernels::linear_concat(x, n, hd, ly.qkv.data(), ly.qkv.size(), qkv, qkv_n);
  // Under tp the norms over all heads need every rank's share: a collective between the
  // bias and the clipping, which then comes after it.
  const bool full_sliced = cfg_.qk_norm == io::HfConfig::QkNorm::full && sliced_heads();
  const auto clip = [&](float* row) {  // OLMoE clamps after the q/k norms
    const float lim = static_cast<float>(*cfg_.clip_qkv);
    for (int64_t c = 0; c < qkv_n; ++c) row[c] = std::clamp(row[c], -lim, lim);
  };
  parallel_for(n, 4, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float* row = qkv + r * qkv_n;
      if (!ly.qkv_bias.empty())
        for (int64_t c = 0; c < qkv_n; ++c) row[c] += ly.qkv_bias[static_cast<size_t>(c)];
      float* q = row;
      float* k = row + q_rows_;
      if (cfg_.qk_norm == io::HfConfig::QkNorm::per_head) {
        kernels::rms_norm_rows_st(q, ly.q_norm.data(), q, heads, d, d, eps);
        kernels::rms_norm_rows_st(k, ly.k_norm.data(), k, kvh, d, d, eps);
      } else if (cfg_.qk_norm == io::HfConfig::QkNorm::full && !full_sliced) {
        kernels::rms_norm_rows_st(q, ly.q_norm.data(), q, 1, q_rows_, q_rows_, eps);
        kernels::rms_norm_rows_st(k, ly.k_norm.data(), k, 1, kv_rows_, kv_rows_, eps);
      }
      if (cfg_.clip_qkv && !full_sliced) clip(row);
    }
  });
  if (full_sliced) {
    qk_norm_full_sliced(ly, qkv, n);
    if (cfg_.clip_qkv)
      parallel_for(n, 4, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) clip(qkv + r * qkv_n);
      });
  }
}

void MoeLm::qk_norm_full_sliced(const Layer& ly, float* qkv, int64_t n) const {
  const int64_t qkv_n = q_rows_ + 2 * kv_rows_;
  // Per row: this rank's sums of squares of q and of k, then the whole model's.
  std::vector<double> ss(static_cast<size_t>(2 * n), 0.0);
  for (int64_t r = 0; r < n; ++r) {
    const float* row = qkv + r * qkv_n;
    for (int64_t c = 0; c < q_rows_; ++c) ss[2 * r] += static_cast<double>(row[c]) * row[c];
    for (int64_t c = 0; c < kv_rows_; ++c)
      ss[2 * r + 1] += static_cast<double>(row[q_rows_ + c]) * row[q_rows_ + c];
  }
  comm_->all_reduce_sum(ss.data(), 2 * n);
  // A KV head shared by several ranks (more ranks than KV heads) was counted once by each.
  const double kv_copies = static_cast<double>(comm_->size() * kv_heads_) /
                           static_cast<double>(cfg_.num_key_value_heads);
  const double q_all = static_cast<double>(cfg_.num_attention_heads * cfg_.head_dim);
  const double k_all = static_cast<double>(cfg_.num_key_value_heads * cfg_.head_dim);
  const auto eps = static_cast<float>(cfg_.rms_norm_eps);
  // As kernels::rms_norm_rows_st computes it, with the whole model's mean square.
  for (int64_t r = 0; r < n; ++r) {
    float* row = qkv + r * qkv_n;
    const float sq = 1.0f / std::sqrt(static_cast<float>(ss[2 * r] / q_all) + eps);
    const float sk = 1.0f / std::sqrt(static_cast<float>(ss[2 * r + 1] / kv_copies / k_all) + eps);
    for (int64_t c = 0; c < q_rows_; ++c)
      row[c] = ly.q_norm[static_cast<size_t>(c)] * (row[c] * sq);
    for (int64_t c = 0; c < kv_rows_; ++c)
      row[q_rows_ + c] = ly.k_norm[static_cast<size_t>(c)] * (row[q_rows_ + c] * sk);
  }
}

void MoeLm::rope_row(float* qkv_row, int64_t pos) const {
  kernels::rope_st(qkv_row, heads_, rope_, pos);
  kernels::rope_st(qkv_row + q_rows_, kv_heads_, rope_, pos);
}

// A block holds, per layer, K then V, each [kv head][block_tokens][head_dim] (kv_cache.h):
// one head's keys are one sequential stream for attention.
void MoeLm::store_kv(KvCache& c, int64_t l, int64_t pos, const float* kv) const {
  const int64_t bt = c.pool_->block_tokens(), side = bt * kv_rows_, d = cfg_.head_dim;
  const int64_t off = 2 * l * side + (pos % bt) * d;
  void* block = c.base_[static_cast<size_t>(pos / bt)];
  if (kv_dtype_ == DType::f16) {
    uint16_t* kc = static_cast<uint16_t*>(block) + off;
    for (int64_t g = 0; g < kv_heads_; ++g) {
      kernels::f32_to_f16_row(kv + g * d, kc + g * bt * d, d);
      kernels::f32_to_f16_row(kv + kv_rows_ + g * d, kc + side + g * bt * d, d);
    }
    return;
  }
  float* kc = static_cast<float*>(block) + off;
  for (int64_t g = 0; g < kv_heads_; ++g) {
    std::memcpy(kc + g * bt * d, kv + g * d, static_cast<size_t>(d) * 4);
    std::memcpy(kc + side + g * bt * d, kv + kv_rows_ + g * d, static_cast<size_t>(d) * 4);
  }
}

void MoeLm::attend(const Layer& ly, int64_t l, Pass& p, const SeqRows& sr, const float* qkv,
                   float* h) const {
  const int64_t hd = cfg_.hidden_size, d = cfg_.head_dim, heads = heads_;
  const int64_t kvh = kv_heads_, qkv_n = q_rows_ + 2 * kv_rows_;
  const size_t seqs = sr.counts.size();
  int64_t n = 0;
  for (int64_t c : sr.counts) n += c;
  std::vector<kernels::KvBlocks> kv(seqs);
  for (size_t j = 0; j < seqs; ++j) {
    const KvCache& c = *sr.caches[j];
    const int64_t bt = c.pool_->block_tokens(), side = bt * kv_rows_;
    // Layer l's keys and values in every block (T: the cache's element type).
    const auto blocks = [&](auto& kb, auto& vb) {
      using T = std::remove_const_t<
          std::remove_pointer_t<typename std::decay_t<decltype(kb)>::value_type>>;
      kb.resize(c.base_.size());
      vb.resize(c.base_.size());
      for (size_t b = 0; b < c.base_.size(); ++b) {
        kb[b] = static_cast<const T*>(c.base_[b]) + 2 * l * side;
        vb[b] = kb[b] + side;
      }
    };
    if (kv_dtype_ == DType::f16) {
      blocks(p.kblocks16[j], p.vblocks16[j]);
      kv[j] = {nullptr, nullptr, bt, bt * d, p.kblocks16[j].data(), p.vblocks16[j].data()};
    } else {
      blocks(p.kblocks[j], p.vblocks[j]);
      kv[j] = {p.kblocks[j].data(), p.vblocks[j].data(), bt, bt * d};
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  kernels::causal_attention_batch(qkv, qkv_n, kv, d, p.att.data(), q_rows_, sr.row0, sr.counts,
                                  sr.start, heads, kvh, d, scale);
  if (sliced_heads()) {
    // This rank's heads give a partial sum of the output projection.
    float* y = p.y.data();
    kernels::linear(p.att.data(), n, q_rows_, ly.o, y, hd);
    comm_->all_reduce_sum(y, n * hd);
    add_rows(h, y, n * hd);
  } else {
    kernels::linear(p.att.data(), n, q_rows_, ly.o, h, hd, /*accumulate=*/true);
  }
  if (!ly.o_bias.empty())
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < hd; ++c) h[r * hd + c] += ly.o_bias[static_cast<size_t>(c)];
}

void MoeLm::ffn(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h,
                LmStats* stats) const {
  const int64_t hd = cfg_.hidden_size, n = rs.rows;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  float* x = p.x.data();
  float* y = p.y.data();
  // x = RMSNorm(h); h += MoE(x) (or the dense MLP).
  norm_rows(h, ly.post_norm.data<float>(), x, n, hd, eps);
  moe::RoutingResult routing;
  ly.ffn->route(x, n, policy_of(l), routing);
  if (ly.ffn_whole && ffn_choice(l, n).layout == FfnLayout::ep) {
    moe::apply_expert_parallel_replicated(*ly.ffn_whole, placement_[static_cast<size_t>(l)], *comm_,
                                          x, n, routing, y, &ep_stats_);
  } else {
    ly.ffn->apply(x, n, routing, y);
    // Expert slicing: this rank's block gave a partial sum of the FFN's output.
    if (sliced_ffn()) comm_->all_reduce_sum(y, n * hd);
  }
  if (ly.ffn_whole && n > 0) {
    // The experts per token this layer has seen (a running mean over passes), for the choice.
    double& k = k_seen_[static_cast<size_t>(l)];
    k = 0.5 * k + 0.5 * static_cast<double>(routing.expert_ids.size()) / static_cast<double>(n);
  }
  if (ly.moe) count_routing(routing, rs, stats);
  add_rows(h, y, n * hd);
}

void MoeLm::count_routing(moe::RoutingResult& routing, const RowSet& rs, LmStats* stats) {
  const int64_t n = rs.rows;
  if (stats) {
    stats->moe_rows += n;
    stats->routed_experts += static_cast<int64_t>(routing.expert_ids.size());
    std::vector<uint8_t> ran(stats->expert_rows.size(), 0);
    for (int32_t e : routing.expert_ids) {
      ++stats->expert_rows[static_cast<size_t>(e)];
      ran[static_cast<size_t>(e)] = 1;
    }
    stats->expert_runs += std::count(ran.begin(), ran.end(), 1);
    for (int64_t r = 0; r < n; ++r) {
      const size_t s = static_cast<size_t>(rs.seq_of_row[static_cast<size_t>(r)]);
      ++stats->seq_moe_rows[s];
      stats->seq_routed[s] += routing.experts_of(r);
    }
    if (stats->record_routing) stats->routing.push_back(std::move(routing));
  }
}

// The MoE layer with per-expert queues: the rows at this layer are fresh tokens (routed now)
// and held tokens resuming here (routed when they stopped, some experts done). Every not yet
// run (token, expert) pair is a row in its expert's queue; an expert runs its queue when it
// holds a prefill row, B rows, or a row older than T. Tokens with all experts done combine
// them (in expert-index order, as MoeBlock::apply does) and go on; the others are held.
void MoeLm::ffn_queued(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h,
                       LmStats* stats, const ExpertQueueRule& queues) const {
  const int64_t hd = cfg_.hidden_size, n = rs.rows, experts = ly.ffn->experts();
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const Clock::time_point now = Clock::now();
  float* x = p.x.data();
  parallel_for(n, 8, [&](int64_t b, int64_t e) {
    kernels::rms_norm_rows_st(h + b * hd, ly.post_norm.data<float>(), x + b * hd, e - b, hd, hd,
                              eps);
  });
  const auto seq_of = [&](int64_t r) { return static_cast<size_t>(rs.seq_of_row[r]); };
  const auto resumed = [&](int64_t r) { return p.resume[seq_of(r)] == l; };
  // Route the fresh rows.
  std::vector<int64_t> fresh;
  for (int64_t r = 0; r < n; ++r)
    if (!resumed(r)) fresh.push_back(r);
  moe::RoutingResult routing;
  {
    std::vector<float> xf(fresh.size() * static_cast<size_t>(hd));
    for (size_t j = 0; j < fresh.size(); ++j)
      std::memcpy(xf.data() + j * hd, x + fresh[j] * hd, static_cast<size_t>(hd) * 4);
    ly.ffn->route(xf.data(), static_cast<int64_t>(fresh.size()), policy_of(l), routing);
  }
  // Every pair of the layer's rows: expert, gate weight, whether it ran, its output row.
  std::vector<int64_t> pair0(static_cast<size_t>(n) + 1, 0);
  std::vector<int32_t> pe;
  std::vector<float> pw;
  std::vector<uint8_t> pdone;
  std::vector<float> out;
  for (int64_t r = 0, f = 0; r < n; ++r) {
    if (resumed(r)) {
      const HeldToken& ht = *p.caches[seq_of(r)]->held();
      pe.insert(pe.end(), ht.experts.begin(), ht.experts.end());
      pw.insert(pw.end(), ht.weights.begin(), ht.weights.end());
      pdone.insert(pdone.end(), ht.done.begin(), ht.done.end());
      out.insert(out.end(), ht.out.begin(), ht.out.end());
    } else {
      for (int32_t j = routing.offsets[f]; j < routing.offsets[f + 1]; ++j) {
        pe.push_back(routing.expert_ids[j]);
        pw.push_back(routing.weights[j]);
        pdone.push_back(0);
      }
      out.resize(pe.size() * static_cast<size_t>(hd));
      if (stats) {
        ++stats->seq_moe_rows[seq_of(r)];
        stats->seq_routed[seq_of(r)] += routing.experts_of(f);
      }
      ++f;
    }
    pair0[r + 1] = static_cast<int64_t>(pe.size());
  }
  // Which queues run: a prefill row, B rows, or the oldest waiting T.
  std::vector<int64_t> waiting(static_cast<size_t>(experts), 0);
  std::vector<uint8_t> ready(static_cast<size_t>(experts), 0);
  for (int64_t r = 0; r < n; ++r) {
    const size_t s = seq_of(r);
    const double waited =
        resumed(r) ? std::chrono::duration<double>(now - p.caches[s]->held()->since).count() : 0;
    const bool urgent = p.counts[s] > 1 || waited >= queues.max_wait_s;
    for (int64_t j = pair0[r]; j < pair0[r + 1]; ++j) {
      if (pdone[j]) continue;
      ++waiting[pe[j]];
      if (urgent) ready[pe[j]] = 1;
    }
  }
  std::vector<int64_t> run;  // pairs to run now
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = pair0[r]; j < pair0[r + 1]; ++j)
      if (!pdone[j] && (ready[pe[j]] || waiting[pe[j]] >= queues.min_rows)) run.push_back(j);
  if (!run.empty()) {
    std::vector<int64_t> row_of(pe.size());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = pair0[r]; j < pair0[r + 1]; ++j) row_of[j] = r;
    std::vector<float> xr(run.size() * static_cast<size_t>(hd)), yr(xr.size());
    std::vector<int32_t> er(run.size());
    for (size_t a = 0; a < run.size(); ++a) {
      std::memcpy(xr.data() + a * hd, x + row_of[run[a]] * hd, static_cast<size_t>(hd) * 4);
      er[a] = pe[run[a]];
    }
    ly.ffn->run_rows(xr.data(), static_cast<int64_t>(run.size()), er.data(), yr.data());
    std::vector<uint8_t> ran(static_cast<size_t>(experts), 0);
    for (size_t a = 0; a < run.size(); ++a) {
      std::memcpy(out.data() + run[a] * hd, yr.data() + a * hd, static_cast<size_t>(hd) * 4);
      pdone[run[a]] = 1;
      ran[static_cast<size_t>(er[a])] = 1;
      if (stats) ++stats->expert_rows[static_cast<size_t>(er[a])];
    }
    if (stats) stats->expert_runs += std::count(ran.begin(), ran.end(), 1);
  }
  if (stats) {
    stats->moe_rows += static_cast<int64_t>(fresh.size());
    stats->routed_experts += static_cast<int64_t>(routing.expert_ids.size());
    if (stats->record_routing) stats->routing.push_back(routing);
  }
  // Finished rows combine; the others stop here, held in their caches.
  std::vector<int64_t> finished;
  for (int64_t r = 0; r < n; ++r) {
    const bool all_done = std::all_of(pdone.begin() + pair0[r], pdone.begin() + pair0[r + 1],
                                      [](uint8_t d) { return d != 0; });
    KvCache& c = *p.caches[seq_of(r)];
    if (all_done) {
      finished.push_back(r);
      c.held_.reset();
      continue;
    }
    DELTAMOE_ASSERT(p.counts[seq_of(r)] == 1, "a prefill row was held");
    if (!c.held_) {
      c.held_ = std::make_unique<HeldToken>();
      c.held_->since = now;
    }
    HeldToken& ht = *c.held_;
    ht.token = p.toks[seq_of(r)][0];
    ht.layer = l;
    ht.h.assign(h + r * hd, h + (r + 1) * hd);
    ht.experts.assign(pe.begin() + pair0[r], pe.begin() + pair0[r + 1]);
    ht.weights.assign(pw.begin() + pair0[r], pw.begin() + pair0[r + 1]);
    ht.done.assign(pdone.begin() + pair0[r], pdone.begin() + pair0[r + 1]);
    ht.out.assign(out.begin() + pair0[r] * hd, out.begin() + pair0[r + 1] * hd);
    p.stopped[seq_of(r)] = 1;
  }
  if (finished.empty()) return;
  const int64_t m = static_cast<int64_t>(finished.size());
  std::vector<float> xf(static_cast<size_t>(m * hd)), yf(static_cast<size_t>(m * hd), 0.0f);
  std::vector<int32_t> order;
  for (int64_t a = 0; a < m; ++a) {
    const int64_t r = finished[a];
    std::memcpy(xf.data() + a * hd, x + r * hd, static_cast<size_t>(hd) * 4);
    const int64_t j0 = pair0[r];
    moe::combine_in_expert_order(
        pe.data() + j0, pw.data() + j0, static_cast<int32_t>(pair0[r + 1] - j0),
        [&](int32_t j) { return out.data() + (j0 + j) * hd; }, yf.data() + a * hd, hd, order);
  }
  ly.ffn->add_shared(xf.data(), m, yf.data());
  for (int64_t a = 0; a < m; ++a) {
    float* hr = h + finished[a] * hd;
    const float* yr = yf.data() + a * hd;
    for (int64_t c = 0; c < hd; ++c) hr[c] += yr[c];
  }
}

}  // namespace deltamoe::models
