// The MoE decoder (see models/moe_lm.h): load, pack, forward.
#include "deltamoe/models/moe_lm.h"

#include <malloc.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "models/policy_json.h"

namespace deltamoe::models {

namespace {

// Positions the RoPE table is built for at load; longer contexts are refused with a clear
// error rather than silently computed with a table grown under concurrent readers.
constexpr int64_t kMaxRopePositions = 65536;

std::vector<float> to_floats(const Tensor& t) {
  return t.defined() ? t.to_vector() : std::vector<float>{};
}

// [q; k; v] as one [rows, H] tensor, so one packed GEMM yields all three projections: in the
// parts' own dtype when they share one and are contiguous (bf16 stays bf16: no f32 temporary
// to pack from), f32 otherwise.
Tensor concat_rows(const std::vector<Tensor>& parts) {
  int64_t rows = 0;
  const int64_t cols = parts[0].size(1);
  bool keep = true;
  for (const Tensor& p : parts) {
    rows += p.size(0);
    keep = keep && p.dtype() == parts[0].dtype() && p.is_contiguous();
  }
  const DType dt = keep ? parts[0].dtype() : DType::f32;
  Tensor out({rows, cols}, dt);
  auto* dst = static_cast<char*>(out.raw());
  for (const Tensor& p : parts) {
    const Tensor f = keep ? p : p.to(DType::f32);
    std::memcpy(dst, f.raw(), f.nbytes());
    dst += f.nbytes();
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

// Columns [c0, c1) of a contiguous 2-D tensor, as a new contiguous tensor of its dtype.
Tensor columns(const Tensor& t, int64_t c0, int64_t c1) {
  DELTAMOE_ASSERT(t.dim() == 2 && t.is_contiguous() && 0 <= c0 && c0 < c1 && c1 <= t.size(1),
                  "columns [", c0, ", ", c1, ") of ", shape_str(t.shape()));
  const int64_t n = t.size(0), k = t.size(1), w = c1 - c0;
  const size_t es = dtype_size(t.dtype());
  Tensor out({n, w}, t.dtype());
  const auto* src = static_cast<const char*>(t.raw());
  auto* dst = static_cast<char*>(out.raw());
  for (int64_t r = 0; r < n; ++r)
    std::memcpy(dst + static_cast<size_t>(r * w) * es, src + static_cast<size_t>(r * k + c0) * es,
                static_cast<size_t>(w) * es);
  return out;
}

// Expert slicing: this rank's share [i0, i1) of every expert's intermediate dimension (and of
// the shared expert's): gate and up rows (views), down columns (copies). The rank's block
// computes a partial sum of the layer's output; the ranks' partials add up to it, gate
// weights and the shared expert's sigmoid gate included, since both scale the down projection.
moe::MoeWeights slice_experts(const moe::MoeWeights& w, int rank, int ranks, bool release) {
  moe::MoeWeights s = w;
  const auto cut = [&](const Tensor& gate, const Tensor& up, const Tensor& down, Tensor& g2,
                       Tensor& u2, Tensor& d2) {
    const int64_t inter = gate.size(0);
    DELTAMOE_CHECK(inter >= ranks, "model", "--parallel es splits each expert's ", inter,
                   " intermediate rows over ", ranks, " ranks: fewer rows than ranks");
    const int64_t i0 = dist::split_begin(inter, rank, ranks),
                  i1 = dist::split_begin(inter, rank + 1, ranks);
    g2 = gate.slice(i0, i1);
    u2 = up.slice(i0, i1);
    d2 = columns(down, i0, i1);
    // Copying the columns read every page of the mapped matrix; only the copy is used.
    if (release) down.release_pages();
  };
  for (size_t e = 0; e < w.w1.size(); ++e)
    cut(w.w1[e], w.w3[e], w.w2[e], s.w1[e], s.w3[e], s.w2[e]);
  if (w.has_shared())
    cut(w.shared_w1, w.shared_w3, w.shared_w2, s.shared_w1, s.shared_w3, s.shared_w2);
  return s;
}

}  // namespace

std::unique_ptr<MoeLm> MoeLm::load(const std::string& model_dir, const LmOptions& options) {
  const io::HfConfig cfg = io::HfConfig::load(model_dir);
  const io::HfCheckpoint ckpt = io::HfCheckpoint::open(model_dir);
  std::unique_ptr<MoeLm> m;
  {
    const io::HfModelWeights w = io::load_hf_weights(cfg, ckpt);
    m = std::make_unique<MoeLm>(cfg, w, options, &ckpt);
  }
  // Packing freed many temporaries of a few MB; glibc keeps such freed heap memory resident
  // unless told to give it back.
  malloc_trim(0);
  return m;
}

DType MoeLm::native_dtype(const std::string& model_dir) {
  const io::HfCheckpoint ckpt = io::HfCheckpoint::open(model_dir);
  const std::string embed = "model.embed_tokens.weight";
  if (!ckpt.has(embed)) return DType::f32;
  return ckpt.entry(embed).dtype == DType::bf16 ? DType::bf16 : DType::f32;
}

MoeLm::MoeLm(const io::HfConfig& config, const io::HfModelWeights& w, const LmOptions& options,
             const io::HfCheckpoint* checkpoint)
    : cfg_(config),
      dtype_(options.dtype),
      // int8 weights exist in the row-major layout only (a quantised copy).
      layout_(options.dtype == DType::int8 ? kernels::WeightLayout::row_major : options.layout),
      rope_(config.head_dim, config.rope_theta) {
  DELTAMOE_CHECK(dtype_ == DType::f32 || dtype_ == DType::bf16 || dtype_ == DType::int8, "model",
                 "weights can be f32, bf16 or int8, not ", dtype_name(dtype_));
  DELTAMOE_CHECK(options.kv_dtype == DType::f32 || options.kv_dtype == DType::f16, "model",
                 "the KV cache can be f32 or f16, not ", dtype_name(options.kv_dtype));
  kv_dtype_ = options.kv_dtype;
  parallel_ = options.parallel;
  if (parallel_ != ParallelMode::none) {
    DELTAMOE_CHECK(options.comm, "model", "--parallel ", parallel_mode_name(parallel_),
                   " needs a communicator");
    DELTAMOE_CHECK(!options.expert_cache.enabled(), "model", "--parallel ",
                   parallel_mode_name(parallel_), " and an expert cache do not combine yet");
    comm_ = options.comm;
  }
  DELTAMOE_CHECK(!options.force_ffn_layout || parallel_ == ParallelMode::automatic, "model",
                 "a forced FFN layout needs --parallel auto, not ", parallel_mode_name(parallel_));
  force_ffn_layout_ = options.force_ffn_layout;
  // Expert slicing: each rank's blocks hold its slice of every FFN (dense MLPs too).
  const auto sliced = [&](const moe::MoeWeights& full) {
    // Under auto the whole experts stay in use beside the slices: their pages stay too.
    return sliced_ffn() ? slice_experts(full, comm_->rank(), comm_->size(),
                                        parallel_ != ParallelMode::automatic)
                        : full;
  };
  const int64_t h = cfg_.hidden_size, d = cfg_.head_dim;
  heads_ = cfg_.num_attention_heads;
  kv_heads_ = cfg_.num_key_value_heads;
  if (sliced_heads()) {
    const int64_t ranks = comm_->size(), rank = comm_->rank();
    DELTAMOE_CHECK(heads_ % ranks == 0 && (kv_heads_ % ranks == 0 || ranks % kv_heads_ == 0),
                   "model", "--parallel ", parallel_mode_name(parallel_),
                   " splits attention heads over ", ranks, " ranks: needs ", heads_,
                   " query heads divisible by ", ranks, " and ", kv_heads_,
                   " KV heads a multiple or a divisor of ", ranks);
    // Query heads in equal contiguous blocks; the KV heads those read (GQA: query head i reads
    // KV head i / group): a block of KV heads, or one KV head that several ranks share.
    const int64_t group = cfg_.num_attention_heads / cfg_.num_key_value_heads;
    heads_ = cfg_.num_attention_heads / ranks;
    head0_ = rank * heads_;
    kv_head0_ = head0_ / group;
    kv_heads_ = (head0_ + heads_ - 1) / group + 1 - kv_head0_;
  }
  q_rows_ = heads_ * d;
  kv_rows_ = kv_heads_ * d;
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
  // A model trained by train-lm routes as it was trained (each layer's final parameters).
  dense_policy_ = std::make_shared<moe::TopKRouting>(1, true);
  auto trained = trained_layer_policies(cfg_);
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    std::shared_ptr<const moe::RoutingPolicy> p = dense_policy_;
    if (cfg_.is_moe_layer(l))
      p = !trained.empty() ? std::shared_ptr<const moe::RoutingPolicy>(
                                 std::move(trained[static_cast<size_t>(l)]))
          : cfg_.null_experts > 0
              ? std::shared_ptr<const moe::RoutingPolicy>(std::make_shared<moe::NullExpertsRouting>(
                    cfg_.num_experts_per_tok, cfg_.null_experts, cfg_.norm_topk_prob))
              : std::make_shared<moe::TopKRouting>(cfg_.num_experts_per_tok, cfg_.norm_topk_prob);
    DELTAMOE_CHECK(p->extra_logits() == (cfg_.is_moe_layer(l) ? cfg_.null_experts : 0), "hf",
                   "config.json: the routing of layer ", l, " (", p->name(), ") needs ",
                   p->extra_logits(), " null experts, deltamoe_null_experts is ",
                   cfg_.null_experts);
    default_policies_.push_back(std::move(p));
  }
  policies_ = default_policies_;
  // Expert placement and the expert cache assume one expert count for every layer.
  DELTAMOE_CHECK((cfg_.layer_experts.empty() && cfg_.null_experts == 0) ||
                     (parallel_ != ParallelMode::ep && parallel_ != ParallelMode::automatic &&
                      !options.expert_cache.enabled()),
                 "model",
                 "per-layer expert counts (deltamoe_layer_experts) and null experts "
                 "(deltamoe_null_experts) run with --parallel none or tp and without "
                 "--expert-cache");
  if (parallel_ == ParallelMode::ep)
    expert_sources_.resize(static_cast<size_t>(cfg_.num_hidden_layers));
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    const io::HfLayerWeights& lw = w.layers[static_cast<size_t>(l)];
    Layer ly;
    ly.input_norm = lw.input_norm.to(DType::f32);
    ly.post_norm = lw.post_attn_norm.to(DType::f32);
    // This rank's heads: rows of q, k, v (views), columns of o (a copy) under tp.
    const bool all_heads = !sliced_heads();
    const int64_t q0 = head0_ * d, q1 = q0 + q_rows_, k0 = kv_head0_ * d, k1 = k0 + kv_rows_;
    const Tensor q = all_heads ? lw.q : lw.q.slice(q0, q1);
    const Tensor k = all_heads ? lw.k : lw.k.slice(k0, k1);
    const Tensor v = all_heads ? lw.v : lw.v.slice(k0, k1);
    const Tensor o = all_heads ? lw.o : columns(lw.o, q0, q1);
    const auto part = [&](const Tensor& t, int64_t b, int64_t e) {
      std::vector<float> f = to_floats(t);
      return all_heads || f.empty() ? f : std::vector<float>(f.begin() + b, f.begin() + e);
    };
    if (rows) {
      // One allocation for whatever has to be converted (no 2 MiB rounding per matrix).
      auto att = kernels::PackedLinear::row_major_all({q, k, v, o}, dtype_);
      for (const auto& p : att) mapped_bytes_ += p.in_place() ? p.weight_bytes() : 0;
      ly.o = std::move(att[3]);
      if (!all_heads) lw.o.release_pages();  // its columns were copied
      att.pop_back();
      ly.qkv = std::move(att);
    } else {
      ly.qkv.push_back(kernels::PackedLinear(concat_rows({q, k, v}), dtype_));
      for (const Tensor* t : {&q, &k, &v}) t->release_pages();  // copied
      ly.o = kernels::PackedLinear(o, dtype_);
    }
    if (lw.q_bias.defined()) {
      ly.qkv_bias = part(lw.q_bias, q0, q1);
      for (const Tensor* b : {&lw.k_bias, &lw.v_bias}) {
        const auto kv = part(*b, k0, k1);
        ly.qkv_bias.insert(ly.qkv_bias.end(), kv.begin(), kv.end());
      }
    }
    ly.o_bias = to_floats(lw.o_bias);
    // Per-head norms ([d]) apply to any head; OLMoE's norms over all heads are sliced.
    const bool full_norm = cfg_.qk_norm == io::HfConfig::QkNorm::full;
    ly.q_norm = full_norm ? part(lw.q_norm, q0, q1) : to_floats(lw.q_norm);
    ly.k_norm = full_norm ? part(lw.k_norm, k0, k1) : to_floats(lw.k_norm);
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
      // Expert parallelism: this rank prepares the experts of its contiguous block only
      // (balance_placement() may trade some later).
      // --parallel auto's ep layout runs the same contiguous blocks (its placement is never
      // rebalanced): its whole experts are this rank's block, beside its slices of all.
      std::vector<bool> held;
      if (parallel_ == ParallelMode::ep || parallel_ == ParallelMode::automatic)
        held = held_mask(moe::ExpertPlacement::contiguous(cfg_.num_experts, comm_->size()));
      if (parallel_ == ParallelMode::ep) expert_sources_[static_cast<size_t>(l)] = mw;
      ly.ffn = std::make_unique<moe::MoeBlock>(
          sliced(mw), dtype_, layout_, parallel_ == ParallelMode::ep ? held : std::vector<bool>());
      if (parallel_ == ParallelMode::automatic) {
        ly.ffn_whole = std::make_unique<moe::MoeBlock>(mw, dtype_, layout_, held);
        // The held experts' slices are views inside their whole matrices: counted once (about:
        // the slices' bytes split evenly over the experts).
        const auto mine = moe::ExpertPlacement::contiguous(cfg_.num_experts, comm_->size())
                              .experts_of(comm_->rank());
        mapped_bytes_ += ly.ffn_whole->in_place_weight_bytes();
        mapped_bytes_ -=
            ly.ffn->in_place_weight_bytes() * mine.size() / static_cast<size_t>(cfg_.num_experts);
      }
    } else {
      ly.ffn = std::make_unique<moe::MoeBlock>(sliced(dense_as_moe(lw.dense, h)), dtype_, layout_);
    }
    mapped_bytes_ += ly.ffn->in_place_weight_bytes();
    layers_.push_back(std::move(ly));
  }
  // The embedding is looked up in the file's dtype: a view while the checkpoint stays mapped
  // anyway; a copy (packed layout, or row-major with every matrix converted) lets the
  // mapping go, so resident memory is the weights alone, not also the file pages they were
  // read from.
  embed_ = rows && mapped_bytes_ > 0 ? w.embed : w.embed.clone();
  if (embed_.storage() != w.embed.storage()) w.embed.release_pages();  // copied
  if (parallel_ == ParallelMode::automatic) {
    // The cost model's inputs, on this run's communicator: sizes from a decode row to a
    // 512-token prefill of the reference model.
    const std::vector<int64_t> sizes = {4 << 10, 64 << 10, 1 << 20, 4 << 20};
    ar_cost_ = dist::measure_collective(*comm_, dist::Collective::all_reduce, sizes, 5);
    a2a_cost_ = dist::measure_collective(*comm_, dist::Collective::all_to_all, sizes, 5);
    ag_cost_ = dist::measure_collective(*comm_, dist::Collective::all_gather, sizes, 5);
    k_seen_.assign(static_cast<size_t>(cfg_.num_hidden_layers),
                   static_cast<double>(cfg_.num_experts_per_tok));
  }
  if (parallel_ == ParallelMode::ep || parallel_ == ParallelMode::automatic) {
    placement_.resize(static_cast<size_t>(cfg_.num_hidden_layers));
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l)
      if (layers_[static_cast<size_t>(l)].moe)
        placement_[static_cast<size_t>(l)] =
            moe::ExpertPlacement::contiguous(cfg_.num_experts, comm_->size());
  }
  if (options.expert_cache.enabled()) {
    DELTAMOE_CHECK(checkpoint, "offload", "an expert cache needs the checkpoint's files");
    open_expert_cache(w, *checkpoint, options.expert_cache);
  }
}

void MoeLm::set_policy(std::shared_ptr<const moe::RoutingPolicy> policy) {
  if (!policy) {
    policies_ = default_policies_;
    return;
  }
  DELTAMOE_CHECK(policy->extra_logits() == cfg_.null_experts, "model", "routing ", policy->name(),
                 " needs ", policy->extra_logits(), " null-expert router outputs, the model has ",
                 cfg_.null_experts, " (deltamoe_null_experts)");
  for (int64_t l = 0; l < layers(); ++l)
    if (layers_[static_cast<size_t>(l)].moe) policies_[static_cast<size_t>(l)] = policy;
}

void MoeLm::set_policy(const moe::PolicySpec& spec) {
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> built = policies_;
  for (int64_t l = 0; l < layers(); ++l) {
    if (!layers_[static_cast<size_t>(l)].moe) continue;
    std::shared_ptr<const moe::RoutingPolicy> p =
        moe::make_layer_policy(spec, cfg_.experts_in_layer(l), cfg_.null_experts);
    DELTAMOE_CHECK(p->extra_logits() == cfg_.null_experts, "model", "routing ", p->name(),
                   " needs ", p->extra_logits(), " null-expert router outputs, the model has ",
                   cfg_.null_experts, " (deltamoe_null_experts)");
    built[static_cast<size_t>(l)] = std::move(p);
  }
  policies_ = std::move(built);
}

std::shared_ptr<const moe::RoutingPolicy> MoeLm::default_policy() const {
  for (int64_t l = 0; l < layers(); ++l)
    if (layers_[static_cast<size_t>(l)].moe) return default_policies_[static_cast<size_t>(l)];
  return dense_policy_;
}

const moe::RoutingPolicy& MoeLm::policy() const {
  for (int64_t l = 0; l < layers(); ++l)
    if (layers_[static_cast<size_t>(l)].moe) return *policies_[static_cast<size_t>(l)];
  return *dense_policy_;
}

std::string MoeLm::routing_name() const {
  std::vector<const moe::RoutingPolicy*> moe_layers;
  for (int64_t l = 0; l < layers(); ++l)
    if (layers_[static_cast<size_t>(l)].moe)
      moe_layers.push_back(policies_[static_cast<size_t>(l)].get());
  return moe_layers.empty() ? dense_policy_->name() : moe::routing_name(moe_layers);
}

std::shared_ptr<KvBlockPool> MoeLm::make_kv_pool(int64_t block_tokens, int64_t max_blocks) const {
  return std::make_shared<KvBlockPool>(layers(), kv_rows_, block_tokens, max_blocks, kv_dtype_);
}

void MoeLm::reserve(KvCache& c, int64_t tokens) const {
  if (!c.pool_) c.pool_ = make_kv_pool(kDefaultKvBlockTokens, 0);
  KvBlockPool& pool = *c.pool_;
  DELTAMOE_CHECK(pool.layers() == layers() && pool.row() == kv_rows_ && pool.dtype() == kv_dtype_,
                 "model", "KV cache belongs to another model (", pool.layers(), " layers of ",
                 pool.row(), " ", dtype_name(pool.dtype()), " values per position; this model has ",
                 layers(), " of ", kv_rows_, " ", dtype_name(kv_dtype_), ")");
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

size_t MoeLm::held_weight_bytes() const {
  size_t b = weight_bytes();
  for (const Layer& ly : layers_)
    b -= static_cast<size_t>(ly.ffn->experts() - ly.ffn->held_experts()) *
         ly.ffn->expert_weight_bytes();
  return b;
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
