// Decoder-only MoE language models from Hugging Face directories: Mixtral, Qwen2-MoE,
// Qwen3-MoE and OLMoE through one decoder (RMSNorm → GQA attention with RoPE → RMSNorm →
// moe::MoeBlock or a dense SwiGLU MLP, residuals, final RMSNorm, LM head).
//
// Weight matrices are used in place from the mapped checkpoint when its dtype is the compute
// dtype (LmOptions::layout row_major, the default), else converted once (f32 or bf16; or
// packed into our panel layout with WeightLayout::packed); activations, the router, norms,
// attention and the KV cache are f32. Every MoE layer routes through the one
// MoeBlock with the model's own routing (softmax → top-k → renormalise when norm_topk_prob)
// or any RoutingPolicy the caller sets (delta-MoE budgets per token: top-p, threshold, ...).
//
// Thread-safety: a MoeLm is immutable after load except set_policy(); forward() may be called
// from one thread at a time per KvCache (it uses OpenMP internally). Concurrent forward()
// calls on different caches are safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/dist/communicator.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/llm.h"
#include "deltamoe/models/expert_cache.h"
#include "deltamoe/models/kv_cache.h"
#include "deltamoe/moe/expert_parallel.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/moe/routing.h"

namespace deltamoe::models {

/// Counters of forward passes (accumulated; reset by the caller).
struct LmStats {
  int64_t tokens = 0;          // token rows run through the decoder
  int64_t moe_rows = 0;        // token rows × MoE layers
  int64_t routed_experts = 0;  // (token, expert) pairs routed in MoE layers
  int64_t expert_runs = 0;     // (MoE layer, expert) batches run: each reads its weights once
  /// When set before a call, each MoE layer's routing of that call is appended here (one
  /// entry per MoE layer and call, in layer order; dense layers add none). With per-expert
  /// queues, an entry holds the rows routed at that layer in that call (held tokens were
  /// routed in an earlier call).
  bool record_routing = false;
  std::vector<moe::RoutingResult> routing;
  /// Per routed expert: rows it ran, summed over MoE layers (sized by the first call).
  std::vector<int64_t> expert_rows;
  /// Per sequence of the latest forward_batch call (resized by each call): MoE rows and
  /// routed experts of its tokens routed in that call.
  std::vector<int64_t> seq_moe_rows, seq_routed;
  /// Mean real experts per token and MoE layer.
  double mean_experts() const {
    return moe_rows ? static_cast<double>(routed_experts) / static_cast<double>(moe_rows) : 0.0;
  }
};

/// Per-expert queues across decode steps (seed 000's rule, for tokens): at an MoE layer, an
/// expert runs once `min_rows` rows wait in its queue or its oldest row has waited
/// `max_wait_s`; a decode token whose experts have not all run stops there, held in its KV
/// cache, and goes on in a later forward_batch call (its rows wait in their queues
/// meanwhile). Prefill chunks never wait: an expert with a prefill row runs. The default
/// (min_rows 1) never holds a token: plain continuous batching.
struct ExpertQueueRule {
  int64_t min_rows = 1;     // B
  double max_wait_s = 0.0;  // T, seconds (finite: a held token needs a deadline)
  bool holds() const { return min_rows > 1; }
  /// Throws Error("model") unless B ≥ 1 and T is finite and ≥ 0.
  void check() const;
};

/// How the ranks of a communicator share a model (docs/design.md, "Parallel MoE").
enum class ParallelMode {
  none,  // one process runs everything
  /// Expert parallelism: each MoE layer's routed experts split over the ranks in contiguous
  /// blocks (moe/expert_parallel.h); attention, norms, routers, shared experts and dense
  /// MLPs held by every rank. A pass's token rows are split over the ranks from embedding to
  /// the last layer: each rank attends for its rows (new keys and values all-gathered, every
  /// rank keeps the whole KV cache) and sends them to their experts' ranks by all-to-all; the
  /// rows are all-gathered once after the last layer, for the LM head.
  ep,
  /// Expert slicing (DeepSpeed-MoE): every rank holds a 1/P slice of every expert's
  /// intermediate dimension (and of the shared expert's and dense MLPs'), runs the whole
  /// model's other parts on all rows, and the FFN outputs' partial sums are all-reduced.
  es,
  /// Tensor slicing (Megatron-style) of attention on top of expert slicing: every rank holds
  /// 1/P of the query heads, the key/value heads they read (shared by several ranks when P
  /// exceeds the KV heads) and the matching columns of the output projection, keeps only
  /// those KV heads in its cache, and the attention outputs' partial sums are all-reduced
  /// (OLMoE's q/k norms over all heads all-reduce their sums of squares). FFNs as `es`;
  /// embeddings, norms, routers and the LM head held by every rank. Needs the query heads
  /// divisible by P and the KV heads a multiple or a divisor of P.
  tp,
  /// Attention as tp; each MoE layer's FFN chosen per layer and per pass's row count between
  /// expert slicing (as tp: partial sums all-reduced) and expert parallelism (each rank routes
  /// 1/P of the rows and sends them to their experts' ranks by all-to-all, contiguous expert
  /// blocks; the outputs all-gathered) by a cost model of the run's own communicator
  /// (MoeLm::ffn_choice). Every rank holds both: its slice of every expert and its whole
  /// experts (views of the mapping when the dtype matches, copies otherwise).
  automatic,
};
/// "none" / "ep" / "es" / "tp" / "auto".
const char* parallel_mode_name(ParallelMode m);

/// How one MoE layer's FFN runs under ParallelMode::automatic.
enum class FfnLayout { es, ep };

struct LmOptions {
  LmOptions() = default;
  LmOptions(DType d, kernels::WeightLayout l = kernels::WeightLayout::row_major)  // NOLINT
      : dtype(d), layout(l) {}
  /// Weight dtype for compute: f32, bf16 or int8 (every matrix but the router and the
  /// embeddings quantised at load, one f16 scale per 32 inputs; always the row-major layout).
  DType dtype = DType::f32;
  /// row_major: matrices are used in place from the mapped checkpoint when the file already
  /// has `dtype` (no copy, no packing time; the pages are the file's page cache), converted
  /// row-major copies otherwise. packed: copies in the panel layout of our packed kernels.
  kernels::WeightLayout layout = kernels::WeightLayout::row_major;
  /// Routed experts read on demand into a byte-budgeted cache (models/expert_cache.h)
  /// instead of used from the mapping; off unless enabled(). Needs the row-major layout and
  /// `dtype` equal to the checkpoint's expert dtype.
  ExpertCacheOptions expert_cache;
  /// Parallel layout over `comm`'s ranks (ParallelMode::none: this process alone). Every rank
  /// loads the same model with the same options and makes the same forward calls in the
  /// same order (collectives inside); each rank's logits are the whole model's. Not with an
  /// expert cache or per-expert queues that hold tokens.
  ParallelMode parallel = ParallelMode::none;
  dist::Communicator* comm = nullptr;  // not owned; must outlive the model; set with `parallel`
  /// ParallelMode::automatic: run every MoE layer in this layout instead of the cost model's
  /// choice (for tests and comparisons).
  std::optional<FfnLayout> force_ffn_layout;
  /// What the KV cache stores: f32 (exact), or f16 (half the bytes a decode step reads from
  /// the cache and half the memory per position; values rounded to f16 as written).
  DType kv_dtype = DType::f32;
};

class MoeLm {
 public:
  /// Loads config.json and the safetensors checkpoint of `model_dir` (mapped), validates every
  /// tensor (name, shape) before any compute, and prepares the weights in options.layout
  /// (views of the mapping where the dtype allows). Throws Error("hf"/"model").
  static std::unique_ptr<MoeLm> load(const std::string& model_dir, const LmOptions& options = {});
  /// The compute dtype that keeps `model_dir`'s weights as stored (what `--dtype auto`
  /// picks): bf16 for a bf16 checkpoint, so its matrices are used in place from the mapping
  /// at half the memory of f32; f32 for f32 and f16 ones (no f16 compute path; f16 widens
  /// exactly to f32). Read from the embedding matrix's header entry (checkpoints store their
  /// matrices in one dtype); f32 when the checkpoint has no such tensor, for load() to report.
  /// Maps the files' headers only. Throws Error("hf") on an unreadable directory.
  static DType native_dtype(const std::string& model_dir);
  /// The KV-cache dtype that `--kv-dtype auto` picks for weights of `weight_dtype`: f32 for f32
  /// weights (an exact run stays exact), f16 for bf16 and int8 ones (half the cache's memory
  /// and bytes read per decode step; transformers and vLLM keep a bf16 model's cache in bf16,
  /// llama.cpp in f16).
  static DType auto_kv_dtype(DType weight_dtype) {
    return weight_dtype == DType::f32 ? DType::f32 : DType::f16;
  }
  /// `checkpoint` (the files `weights` view) is needed only with options.expert_cache on.
  MoeLm(const io::HfConfig& config, const io::HfModelWeights& weights, const LmOptions& options,
        const io::HfCheckpoint* checkpoint = nullptr);

  const io::HfConfig& config() const { return cfg_; }
  int64_t vocab_size() const { return cfg_.vocab_size; }
  int64_t layers() const { return cfg_.num_hidden_layers; }
  DType dtype() const { return dtype_; }
  kernels::WeightLayout layout() const { return layout_; }
  /// Bytes of weight matrices used in place from the checkpoint's mapping (row-major layout
  /// with the file's dtype; experts in an expert cache excluded); the rest of weight_bytes()
  /// are copies or cached experts.
  size_t mapped_weight_bytes() const { return mapped_bytes_; }
  /// The expert cache when LmOptions::expert_cache is on, else null. Its stats count the
  /// forward passes since its reset_stats().
  ExpertCache* expert_cache() const { return cache_.get(); }
  ParallelMode parallel() const { return parallel_; }
  /// ParallelMode::automatic's choice for MoE layer `layer` on a pass of `rows` token rows,
  /// with the model's predicted seconds of each layout's communication: es all-reduces
  /// [rows, H] f32; ep sends each routed pair of a rank's rows/P rows whose expert is
  /// elsewhere (H f32 + a 4-byte id) out and its output back by all-to-all and all-gathers
  /// [rows/P, H] per rank, at the layer's experts per token seen so far (the policy's k before
  /// the first pass). Both do the same expert work, evenly split on average (ep's load
  /// imbalance is not modelled). Costs from the collectives measured on the communicator at
  /// load (dist::measure_collective). Throws Error("model") under another mode.
  struct FfnChoice {
    FfnLayout layout = FfnLayout::es;
    double experts_per_token = 0;
    double es_seconds = 0, ep_seconds = 0;
    bool forced = false;
  };
  FfnChoice ffn_choice(int64_t layer, int64_t rows) const;
  /// The collective costs measured at load (ParallelMode::automatic; else empty curves).
  const dist::CollectiveCost& all_reduce_cost() const { return ar_cost_; }
  const dist::CollectiveCost& all_to_all_cost() const { return a2a_cost_; }
  const dist::CollectiveCost& all_gather_cost() const { return ag_cost_; }
  /// The communicator of a parallel layout, else null.
  dist::Communicator* comm() const { return comm_; }
  /// Expert-parallel counters of this rank since the last reset (ParallelMode::ep).
  const moe::ExpertParallelStats& expert_parallel_stats() const { return ep_stats_; }
  void reset_parallel_stats() const;
  /// How many of MoE layer `layer`'s routed experts this process holds prepared (converted,
  /// packed or viewed in place): all of them, except under ParallelMode::ep, where a rank
  /// holds only those its placement gives it (dynamic placement: all). Throws Error("model")
  /// for a layer that is not an MoE layer.
  int64_t held_experts(int64_t layer) const;
  /// Which rank holds which experts of layer `layer` (ParallelMode::ep; contiguous blocks
  /// until balance_placement()).
  const moe::ExpertPlacement& placement(int64_t layer) const;
  /// Places each MoE layer's experts on the ranks by their load (ExpertPlacement::balanced),
  /// measured by routing a calibration prefill of `tokens` token ids drawn uniformly with
  /// `seed` (the same on every rank). Collective; ParallelMode::ep only. Returns the busiest
  /// rank's load over the mean rank's on the calibration routing, averaged over MoE layers:
  /// {contiguous, balanced}. Experts used in place from the mapping that the calibration
  /// read but another rank now holds are let go (mapped pages released, converted copies
  /// freed), and the experts it gained are prepared from the checkpoint (MoeBlock::set_held).
  std::pair<double, double> balance_placement(int64_t tokens, uint64_t seed);
  /// Dynamic placement: each MoE layer of each pass places its experts by that pass's own
  /// load (the ranks' expert counts all-reduced, ExpertPlacement::balanced without equal
  /// counts), so every rank may run any expert: for ranks that share one machine's mapping
  /// of the checkpoint, whose pages are shared, not for ranks whose memory holds 1/P of it.
  /// Turning it on prepares every expert on every rank (their conversions too, if any).
  void set_dynamic_placement(bool on);
  /// How the placement was chosen: "contiguous", "balanced" with its calibration, "dynamic".
  struct PlacementReport {
    std::string kind = "contiguous";
    int64_t calibration_tokens = 0;
    double imbalance_contiguous = 0, imbalance_balanced = 0;  // see balance_placement()
    // memory of the experts other ranks hold after calibration, let go (mapped pages, copies)
    size_t released_bytes = 0;
  };
  const PlacementReport& placement_report() const { return placement_report_; }

  /// The model's own routing of its first MoE layer: top-k, renormalised when
  /// norm_topk_prob, or for a model trained by train-lm its trained policy (config.json's
  /// deltamoe_routing, which may give every layer its own parameters).
  std::shared_ptr<const moe::RoutingPolicy> default_policy() const;
  /// Routing for every MoE layer from now on (null: back to each layer's default).
  void set_policy(std::shared_ptr<const moe::RoutingPolicy> policy);
  /// Routing for every MoE layer from now on, one policy per layer built from `spec` for the
  /// layer's expert count (moe::make_layer_policy: what a pyramid model needs). Throws
  /// Error("routing") for a bad spec, Error("model") for null experts the router lacks.
  void set_policy(const moe::PolicySpec& spec);
  /// The routing of the first MoE layer.
  const moe::RoutingPolicy& policy() const;
  /// The routing of layer l (a dense layer's is top-1 over its single "expert").
  const moe::RoutingPolicy& policy_of(int64_t l) const {
    return *policies_.at(static_cast<size_t>(l));
  }
  /// The routing's name for logs and JSON: the policy's name, or the layers' names joined by
  /// " | " when layers route differently.
  std::string routing_name() const;

  /// Runs `n` tokens of one sequence at positions cache.length() .. + n − 1 and appends them
  /// to the cache. Writes logits [n, V] of every token when all_logits, else [1, V] of the
  /// last one. Throws Error("model") when a token id is out of range or the sequence would
  /// pass max_position_embeddings.
  void forward(const int32_t* tokens, int64_t n, KvCache& cache, float* logits, bool all_logits,
               LmStats* stats = nullptr) const;

  /// Several sequences in one pass (continuous batching's step): sequence s runs tokens[s]
  /// (any count ≥ 1; prefill chunks and single decode tokens mix) against caches[s]; all
  /// token rows share the MoE layers' grouped GEMMs. logits gets [S, V]: the last token of
  /// each sequence.
  ///
  /// With a `queues` rule that holds (ExpertQueueRule), a single decode token may stop at an
  /// MoE layer: its cache then holds it (KvCache::held()), its length is unchanged and its
  /// logits row is left as it was. A cache holding a token must be given that token again
  /// (Error("model") otherwise); it resumes where it stopped. Returns the number of sequences
  /// that finished their tokens (all of them unless some were held). `logits` null: no LM
  /// head (a rank that only mirrors rank 0's steps needs the KV caches, not the logits).
  int64_t forward_batch(const std::vector<std::vector<int32_t>>& tokens,
                        const std::vector<KvCache*>& caches, float* logits,
                        LmStats* stats = nullptr, const ExpertQueueRule& queues = {}) const;

  /// Bytes of weights one decode token reads: attention, norms, router, the shared expert,
  /// `experts_per_token` routed experts per MoE layer, dense MLPs, the LM head (not the
  /// embedding row). For the bandwidth roofline.
  double active_weight_bytes(double experts_per_token) const;
  /// What the KV cache stores (LmOptions::kv_dtype).
  DType kv_dtype() const { return kv_dtype_; }
  /// A pool of KV blocks shaped for this model, of kv_dtype() (max_blocks 0: unbounded).
  std::shared_ptr<KvBlockPool> make_kv_pool(int64_t block_tokens, int64_t max_blocks) const;
  /// Bytes of all packed weights.
  size_t weight_bytes() const;
  /// Bytes of the weights this process holds: weight_bytes() without the experts it does not
  /// hold (ParallelMode::ep: other ranks' experts; held_experts()).
  size_t held_weight_bytes() const;

 private:
  struct Layer {
    Tensor input_norm, post_norm;  // [H] f32
    // packed: one fused [q; k; v] matrix; row-major: q, k, v as in the file. o: [H, heads·d]
    std::vector<kernels::PackedLinear> qkv;
    kernels::PackedLinear o;
    std::vector<float> qkv_bias, o_bias;
    std::vector<float> q_norm, k_norm;
    std::unique_ptr<moe::MoeBlock> ffn;  // MoE block, or a one-expert block for dense MLPs
    // ParallelMode::automatic, MoE layers: the whole experts (ffn holds this rank's slices).
    std::unique_ptr<moe::MoeBlock> ffn_whole;
    bool moe = true;
  };
  struct Pass;    // one forward call's sequences and scratch (moe_lm.cpp)
  struct RowSet;  // a subset of a pass's rows, gathered contiguous (moe_lm.cpp)
  /// Runs the decoder over the pass's tokens into h [rows, H] (final norm applied); sequences
  /// held at a layer get pass.stopped set.
  void run_layers(Pass& p, std::vector<float>& h, LmStats* stats,
                  const ExpertQueueRule& queues) const;
  /// A pass's bookkeeping before its first layer: rows, positions, held tokens, checks of the
  /// tokens and the context, KV blocks reserved, per-sequence stats sized.
  void begin_pass(Pass& p, LmStats* stats) const;
  void attention(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h) const;
  // attention()'s stages. Query rows of several sequences: sequence j has counts[j] rows at
  // row0[j], positions start[j].., its KV in caches[j].
  struct SeqRows {
    const std::vector<int64_t>& row0;
    const std::vector<int64_t>& counts;
    const std::vector<int64_t>& start;
    const std::vector<KvCache*>& caches;
  };
  /// x = RMSNorm(h) and qkv[n, q + 2kv] = x·[Wq Wk Wv] (+ biases, q/k norms, clipping).
  void project_qkv(const Layer& ly, const float* h, int64_t n, float* x, float* qkv) const;
  void rope_row(float* qkv_row, int64_t pos) const;
  /// Writes one position's [k v] (2·kv floats) to layer l of the cache.
  void store_kv(KvCache& c, int64_t l, int64_t pos, const float* kv) const;
  /// Causal attention of the rows' queries over their caches, h[n, H] += o-projection.
  void attend(const Layer& ly, int64_t l, Pass& p, const SeqRows& sr, const float* qkv,
              float* h) const;
  /// run_layers() with the rows split over the ranks (ParallelMode::ep, moe_lm_parallel.cpp).
  void run_layers_parallel(Pass& p, std::vector<float>& h, LmStats* stats) const;
  void ffn(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h, LmStats* stats) const;
  /// ffn() of an MoE layer whose experts are in cache_ (moe_lm_offload.cpp).
  void ffn_offloaded(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h,
                     LmStats* stats) const;
  /// Adds one MoE layer's routing of the rows `rs` to `stats`.
  static void count_routing(moe::RoutingResult& routing, const RowSet& rs, LmStats* stats);
  /// Opens the expert cache over the checkpoint's expert tensors (moe_lm_offload.cpp).
  void open_expert_cache(const io::HfModelWeights& w, const io::HfCheckpoint& ckpt,
                         const ExpertCacheOptions& opts);
  void ffn_queued(const Layer& ly, int64_t l, Pass& p, const RowSet& rs, float* h, LmStats* stats,
                  const ExpertQueueRule& queues) const;
  /// Makes room for `tokens` more positions: a pool when the cache has none, blocks from it.
  /// Throws Error("model") when the pool is out of blocks or has another model's shape.
  void reserve(KvCache& cache, int64_t tokens) const;

  /// Whether the FFN blocks hold slices of the experts (es, tp, automatic).
  /// ParallelMode::ep: which experts of `place` this rank holds (MoeBlock's held flags).
  std::vector<bool> held_mask(const moe::ExpertPlacement& place) const;
  bool sliced_ffn() const {
    return parallel_ == ParallelMode::es || parallel_ == ParallelMode::tp ||
           parallel_ == ParallelMode::automatic;
  }
  /// Whether the attention heads are split over the ranks (tp, automatic).
  bool sliced_heads() const {
    return parallel_ == ParallelMode::tp || parallel_ == ParallelMode::automatic;
  }
  /// q/k norms over all heads (OLMoE) when the heads are split over ranks (tp): the rows'
  /// sums of squares all-reduced, then q/k scaled by the global RMS.
  void qk_norm_full_sliced(const Layer& ly, float* qkv, int64_t n) const;

  io::HfConfig cfg_;
  DType dtype_;
  kernels::WeightLayout layout_;
  size_t mapped_bytes_ = 0;
  // ParallelMode::ep: each MoE layer's expert tensors as loaded (views of the mapped
  // checkpoint; empty for dense layers), from which a changed placement prepares the experts
  // a rank gains.
  std::vector<moe::MoeWeights> expert_sources_;
  // This rank's attention heads (all of them unless tp): query heads [head0_, head0_ + heads_),
  // KV heads [kv_head0_, kv_head0_ + kv_heads_); q_rows_ = heads_·d, kv_rows_ = kv_heads_·d.
  int64_t heads_ = 0, kv_heads_ = 0, head0_ = 0, kv_head0_ = 0;
  int64_t q_rows_ = 0, kv_rows_ = 0;
  DType kv_dtype_ = DType::f32;
  Tensor embed_;       // [V, H] in the file's dtype (row-major: a view; packed: a copy), rows
                       // converted on lookup
  Tensor final_norm_;  // [H] f32
  kernels::PackedLinear lm_head_;
  std::vector<Layer> layers_;
  kernels::RopeTable rope_;  // filled at load for positions [0, max_positions_)
  int64_t max_positions_ = 0;
  // Per layer (a dense layer holds dense_policy_).
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> default_policies_, policies_;
  std::shared_ptr<const moe::RoutingPolicy> dense_policy_;
  std::unique_ptr<ExpertCache> cache_;
  std::vector<int64_t> moe_ordinal_;  // per layer: index among MoE layers, −1 for dense
  ParallelMode parallel_ = ParallelMode::none;
  dist::Communicator* comm_ = nullptr;
  mutable moe::ExpertParallelStats ep_stats_;    // forward() runs on one thread at a time
  std::vector<moe::ExpertPlacement> placement_;  // per layer (ParallelMode::ep, MoE layers)
  PlacementReport placement_report_;
  bool dynamic_placement_ = false;
  // ParallelMode::automatic: measured collective costs, forced layout, and the experts per
  // token seen at each layer (running mean; forward() runs on one thread at a time).
  dist::CollectiveCost ar_cost_, a2a_cost_, ag_cost_;
  std::optional<FfnLayout> force_ffn_layout_;
  mutable std::vector<double> k_seen_;
};

/// Picks the next token from logits[V]: argmax when temperature ≤ 0 (lowest id on ties),
/// else a sample from softmax(logits / temperature) restricted to the smallest set of tokens
/// whose probability reaches top_p (top_p ≥ 1: all).
int32_t sample_token(const float* logits, int64_t vocab, double temperature, double top_p,
                     std::mt19937_64& rng);

}  // namespace deltamoe::models
