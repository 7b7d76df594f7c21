// The MoE block: router → softmax → policy → dispatch → grouped FFN → combine (+ shared expert).
//
// Work is split into tasks of (expert, block of output columns) so that both the prefill
// shapes (many rows per expert) and decode (one row, k experts) keep every core busy: at
// decode the cost is streaming the k active experts' weights, each task one long sequential
// read (whole experts when there are enough for the threads). Tasks are handed out
// dynamically since experts receive very different row counts.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <omp.h>

#include "deltamoe/core/parallel.h"
#include "deltamoe/moe/moe_block.h"

namespace deltamoe::moe {

namespace {

// Per-thread workspace reused across forward calls (grow-only). A fresh allocation per call
// of the 40 MB a 512-token layer needs would come from mmap and be page-faulted and zeroed by
// the kernel every time, about 7% of the layer's time; keeping it costs that memory once per
// calling thread. Uninitialised on purpose: every byte read is written first in the call.
struct Workspace {
  std::unique_ptr<Storage> owned[5];
  float* get(int slot, size_t floats) {
    if (!owned[slot] || owned[slot]->bytes() < floats * 4)
      owned[slot] = std::make_unique<Storage>(std::max<size_t>(floats * 4, kAlignment));
    return static_cast<float*>(owned[slot]->data());
  }
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

// Rows per interleave block of the fused [w1; w3] matrix: block j holds w1 rows
// [jQ, jQ+q) then w3 rows [jQ, jQ+q), so one contiguous column range yields both the gate
// and the up projection of the same q columns and SwiGLU is applied while they are hot.
int64_t interleave_block(int64_t panel) {
  return panel * std::max<int64_t>(1, 64 / panel);
}

struct Task {
  int32_t expert;
  int64_t n_begin, n_end;
};

// Splits each active expert's `n` output columns into column blocks (multiples of `align`)
// so that there are enough tasks to balance `threads` threads. When every expert has only a
// few rows (decode), a task costs about the bytes of weights it streams and long tasks stream
// faster (each is one sequential read the prefetchers follow): about two tasks per thread,
// whole experts where there are enough of them (1.7% more tokens/s at decode than blocks of
// at most 1 MiB, chunks of one run alternated; the up tasks of an expert are two matrices).
std::vector<Task> make_tasks(const std::vector<int64_t>& counts, int64_t n, int64_t align,
                             int threads) {
  int64_t active = 0, max_rows = 0;
  for (int64_t c : counts) {
    active += c > 0;
    max_rows = std::max(max_rows, c);
  }
  std::vector<Task> tasks;
  if (active == 0) return tasks;
  const int64_t per_thread = max_rows <= 16 ? 2 : 8;
  const int64_t want_per_expert =
      std::max<int64_t>(1, (per_thread * threads + active - 1) / active);
  int64_t block = (n + want_per_expert - 1) / want_per_expert;
  block = std::max(align, ((block + align - 1) / align) * align);
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] == 0) continue;
    for (int64_t b = 0; b < n; b += block)
      tasks.push_back({static_cast<int32_t>(e), b, std::min(n, b + block)});
  }
  // Heaviest first so the dynamic schedule ends evenly.
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& a, const Task& b) {
    return counts[a.expert] * (a.n_end - a.n_begin) > counts[b.expert] * (b.n_end - b.n_begin);
  });
  return tasks;
}

// Rows per interleave block for packed weights of `dtype`.
int64_t interleave_block_for(DType dtype) {
  const kernels::PackedLinear probe(Tensor({1, 1}, DType::f32), dtype);
  return interleave_block(probe.panel());
}

// [w1; w3] as one matrix whose rows alternate in interleave blocks of q (see above): in the
// weights' own dtype when both have the same one and are contiguous (bf16 stays bf16, so
// packing needs no f32 temporary), f32 otherwise. f32 views of a mapped checkpoint are read
// in place.
Tensor interleave_swiglu(const Tensor& w1_in, const Tensor& w3_in, int64_t q) {
  const int64_t i = w1_in.size(0), h = w1_in.size(1);
  const bool keep =
      w1_in.dtype() == w3_in.dtype() && w1_in.is_contiguous() && w3_in.is_contiguous();
  const DType dt = keep ? w1_in.dtype() : DType::f32;
  const Tensor w1 = keep ? w1_in : w1_in.to(DType::f32), w3 = keep ? w3_in : w3_in.to(DType::f32);
  Tensor w13({2 * i, h}, dt);
  const size_t row_bytes = static_cast<size_t>(h) * dtype_size(dt);
  auto* dst = static_cast<char*>(w13.raw());
  const auto* s1 = static_cast<const char*>(w1.raw());
  const auto* s3 = static_cast<const char*>(w3.raw());
  for (int64_t j = 0; j < i; j += q) {
    const int64_t rows = std::min(q, i - j);
    std::memcpy(dst + 2 * j * row_bytes, s1 + j * row_bytes, rows * row_bytes);
    std::memcpy(dst + (2 * j + rows) * row_bytes, s3 + j * row_bytes, rows * row_bytes);
  }
  return w13;
}

// SwiGLU over the interleaved output of a fused [w1; w3] product: `tmp` holds rows of
// `width` columns starting at fused column `n_begin` (a multiple of 2q); writes the
// activations of the matching output columns into act (row stride `ld`).
void swiglu_interleaved(const float* tmp, int64_t m, int64_t width, int64_t n_begin, int64_t q,
                        int64_t inter, float* act, int64_t ld) {
  for (int64_t b = n_begin; b < n_begin + width;) {
    const int64_t col = b / 2;  // first output column of this block
    const int64_t qq = std::min(q, inter - col);
    for (int64_t r = 0; r < m; ++r) {
      const float* row = tmp + r * width + (b - n_begin);
      kernels::swiglu_st(row, row + qq, act + r * ld + col, qq);
    }
    b += 2 * qq;
  }
}

// Row-major SwiGLU: act[r, nb:ne] = silu(x·w1ᵀ) * (x·w3ᵀ) over columns [nb, ne), with the
// gate and up products of those columns side by side in tmp (m x 2(ne - nb) floats).
void swiglu_pair(const float* x, int64_t m, int64_t ldx, const kernels::PackedLinear& w1,
                 const kernels::PackedLinear& w3, int64_t nb, int64_t ne, float* tmp, float* act,
                 int64_t ld) {
  const int64_t width = ne - nb;
  kernels::linear_st_pair(x, m, ldx, w1, w3, nb, ne, tmp - nb, tmp + width - nb, 2 * width);
  for (int64_t r = 0; r < m; ++r) {
    const float* row = tmp + r * 2 * width;
    kernels::swiglu_st(row, row + width, act + r * ld + nb, width);
  }
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

MoeBlock::MoeBlock(const MoeWeights& weights, DType dtype, kernels::WeightLayout layout,
                   const std::vector<bool>& held)
    : kind_(weights.kind),
      dtype_(dtype),
      // int8 weights exist in the row-major layout only (a quantised copy).
      layout_(dtype == DType::int8 ? kernels::WeightLayout::row_major : layout) {
  weights.validate();
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::int8, "moe",
                 "expert weights must be f32, bf16 or int8, not ", dtype_name(dtype));
  experts_ = weights.experts();
  hidden_ = weights.hidden();
  inter_ = weights.inter();
  router_outputs_ = weights.router.size(0);
  DELTAMOE_CHECK(held.empty() || static_cast<int64_t>(held.size()) == experts_, "moe",
                 "a held-experts mask of ", held.size(), " entries for ", experts_, " experts");
  router_ = std::make_unique<kernels::PackedLinear>(weights.router, DType::f32);
  for (int64_t e = 0; e < experts_ && kind_ != ExpertKind::swiglu; ++e) {
    if (!weights.b1.empty()) b1_.push_back(weights.b1[e].to(DType::f32));
    if (!weights.b2.empty()) b2_.push_back(weights.b2[e].to(DType::f32));
  }
  const bool rows = layout_ == kernels::WeightLayout::row_major;
  w13_.resize(static_cast<size_t>(experts_));
  w2_.resize(static_cast<size_t>(experts_));
  if (rows && kind_ == ExpertKind::swiglu) w3_.resize(static_cast<size_t>(experts_));
  std::vector<int64_t> ids;
  for (int64_t e = 0; e < experts_; ++e)
    if (held.empty() || held[static_cast<size_t>(e)]) ids.push_back(e);
  build_experts(weights, ids);
  if (!weights.has_shared()) return;
  shared_inter_ = weights.shared_w1.size(0);
  if (weights.shared_gate.defined()) shared_gate_ = weights.shared_gate.to_vector();
  if (rows) {
    using kernels::PackedLinear;
    shared13_ = PackedLinear::row_major(weights.shared_w1, dtype);
    shared3_ = PackedLinear::row_major(weights.shared_w3, dtype);
    shared2_ = PackedLinear::row_major(weights.shared_w2, dtype);
  } else {
    const int64_t q = interleave_block_for(dtype);
    shared13_ =
        kernels::PackedLinear(interleave_swiglu(weights.shared_w1, weights.shared_w3, q), dtype);
    weights.shared_w1.release_pages();
    weights.shared_w3.release_pages();
    shared2_ = kernels::PackedLinear(weights.shared_w2, dtype);
  }
}

void MoeBlock::build_experts(const MoeWeights& weights, const std::vector<int64_t>& ids) {
  using kernels::PackedLinear;
  if (ids.empty()) return;
  const auto pick = [&](const std::vector<Tensor>& ws) {
    std::vector<Tensor> out;
    for (int64_t e : ids) out.push_back(ws[static_cast<size_t>(e)]);
    return out;
  };
  const auto place = [&](std::vector<PackedLinear> built, std::vector<PackedLinear>& slots) {
    DELTAMOE_ASSERT(built.size() == ids.size(), "built ", built.size(), " of ", ids.size());
    for (size_t j = 0; j < ids.size(); ++j)
      slots[static_cast<size_t>(ids[j])] = std::move(built[j]);
  };
  if (layout_ == kernels::WeightLayout::row_major) {
    // One allocation per kind for whatever has to be converted (no 2 MiB rounding per matrix).
    place(PackedLinear::row_major_all(pick(weights.w1), dtype_), w13_);
    if (kind_ == ExpertKind::swiglu)
      place(PackedLinear::row_major_all(pick(weights.w3), dtype_), w3_);
    place(PackedLinear::row_major_all(pick(weights.w2), dtype_), w2_);
  } else {
    // All the experts' matrices of one kind in one allocation (PackedLinear::pack_all): no
    // per-matrix rounding to 2 MiB pages. Built in slices of experts to bound the f32
    // temporaries of the interleaved [w1; w3].
    constexpr size_t kSlice = 8;
    const int64_t q = interleave_block_for(dtype_);
    std::vector<PackedLinear> w13;
    for (size_t j0 = 0; j0 < ids.size(); j0 += kSlice) {
      const size_t n = std::min(kSlice, ids.size() - j0);
      std::vector<Tensor> src(n);
      parallel_for(static_cast<int64_t>(n), 1, [&](int64_t b, int64_t e) {
        for (int64_t j = b; j < e; ++j) {
          const auto x = static_cast<size_t>(ids[j0 + static_cast<size_t>(j)]);
          if (kind_ != ExpertKind::swiglu) {
            src[static_cast<size_t>(j)] = weights.w1[x];
            continue;
          }
          src[static_cast<size_t>(j)] = interleave_swiglu(weights.w1[x], weights.w3[x], q);
          weights.w1[x].release_pages();  // read once (PackedLinear's rule for its sources)
          weights.w3[x].release_pages();
        }
      });
      for (auto& p : PackedLinear::pack_all(src, dtype_)) w13.push_back(std::move(p));
    }
    for (const auto& p : w13)
      DELTAMOE_ASSERT(kind_ != ExpertKind::swiglu || q % p.panel() == 0, "interleave block ", q,
                      " vs panel ", p.panel());
    place(std::move(w13), w13_);
    place(PackedLinear::pack_all(pick(weights.w2), dtype_), w2_);
  }
  if (ref_ < 0 || ids.front() < ref_) ref_ = ids.front();
}

bool MoeBlock::holds(int64_t e) const {
  DELTAMOE_ASSERT(e >= 0 && e < experts_, "expert ", e, " of ", experts_);
  return w2_[static_cast<size_t>(e)].out_features() > 0;
}

int64_t MoeBlock::held_experts() const {
  int64_t n = 0;
  for (int64_t e = 0; e < experts_; ++e) n += holds(e) ? 1 : 0;
  return n;
}

size_t MoeBlock::set_held(const MoeWeights& weights, const std::vector<bool>& held) {
  DELTAMOE_CHECK(static_cast<int64_t>(held.size()) == experts_ && weights.experts() == experts_ &&
                     weights.hidden() == hidden_ && weights.inter() == inter_ &&
                     weights.kind == kind_,
                 "moe", "set_held: ", held.size(), " held flags and weights of ", weights.experts(),
                 " experts for a block of ", experts_);
  std::vector<int64_t> gained;
  size_t let_go = 0;
  bool dropped = false;
  for (int64_t e = 0; e < experts_; ++e) {
    const auto x = static_cast<size_t>(e);
    if (held[x] && !holds(e)) gained.push_back(e);
    if (held[x] || !holds(e)) continue;
    dropped = true;
    for (auto* group : {&w13_, &w3_, &w2_}) {
      if (group->empty()) continue;
      kernels::PackedLinear& p = (*group)[x];
      let_go += p.in_place() ? p.release_pages() : p.weight_bytes();
      p = kernels::PackedLinear();
    }
  }
  if (gained.empty() && !dropped) return 0;
  build_experts(weights, gained);
  // The kept experts' copies share allocations with those let go: gather every held copy
  // into one new allocation per kind, and the old ones go with their last user.
  for (auto* group : {&w13_, &w3_, &w2_})
    if (!group->empty()) *group = kernels::PackedLinear::copy_all(*group);
  ref_ = -1;
  for (int64_t e = 0; e < experts_ && ref_ < 0; ++e)
    if (holds(e)) ref_ = e;
  return let_go;
}

size_t MoeBlock::expert_weight_bytes() const {
  if (ref_ < 0) return 0;
  const auto r = static_cast<size_t>(ref_);
  return w13_[r].weight_bytes() + (w3_.empty() ? 0 : w3_[r].weight_bytes()) + w2_[r].weight_bytes();
}

size_t MoeBlock::in_place_weight_bytes() const {
  size_t b = 0;
  for (const auto* group : {&w13_, &w3_, &w2_})
    for (const auto& p : *group) b += p.in_place() ? p.weight_bytes() : 0;
  for (const auto* p : {&shared13_, &shared3_, &shared2_})
    b += p->in_place() ? p->weight_bytes() : 0;
  return b;
}

size_t MoeBlock::dense_weight_bytes() const {
  return router_->weight_bytes() + shared13_.weight_bytes() + shared3_.weight_bytes() +
         shared2_.weight_bytes() + shared_gate_.size() * sizeof(float);
}

double MoeBlock::expert_flops(int64_t routed) const {
  const double gemms = kind_ == ExpertKind::swiglu ? 3.0 : 2.0;
  return gemms * 2.0 * static_cast<double>(routed) * static_cast<double>(hidden_) *
         static_cast<double>(inter_);
}

Tensor MoeBlock::forward(const Tensor& x_in, const RoutingPolicy& policy, MoeStats* stats) const {
  DELTAMOE_CHECK(x_in.dim() == 2 && x_in.size(1) == hidden_, "moe", "input has shape ",
                 shape_str(x_in.shape()), ", expected [tokens, ", hidden_, "]");
  const Tensor x =
      (x_in.dtype() == DType::f32 && x_in.is_contiguous()) ? x_in : x_in.to(DType::f32);
  const int64_t t_count = x.size(0);
  Tensor y({t_count, hidden_}, DType::f32);
  RoutingResult local;
  RoutingResult& routing = stats ? stats->routing : local;
  route(x.data<float>(), t_count, policy, routing);
  apply(x.data<float>(), t_count, routing, y.data<float>(), nullptr,
        stats ? &stats->tokens_per_expert : nullptr);
  return y;
}

void MoeBlock::route(const float* x, int64_t t_count, const RoutingPolicy& policy,
                     RoutingResult& out, std::vector<float>* probs_out) const {
  DELTAMOE_CHECK(experts_ + policy.extra_logits() == router_outputs_, "moe", "policy ",
                 policy.name(), " needs ", experts_ + policy.extra_logits(),
                 " router outputs, the layer has ", router_outputs_);
  if (t_count == 0) {
    out.clear();
    if (probs_out) probs_out->clear();
    return;
  }
  const int64_t r_out = router_outputs_;
  std::vector<float> logits(static_cast<size_t>(t_count * r_out));
  std::vector<float> local;
  std::vector<float>& probs = probs_out ? *probs_out : local;
  probs.resize(logits.size());
  kernels::linear(x, t_count, hidden_, *router_, logits.data(), r_out);
  kernels::softmax_rows_st(logits.data(), probs.data(), t_count, r_out);
  policy.route(logits.data(), probs.data(), t_count, experts_, out);
  DELTAMOE_ASSERT(out.tokens() == t_count, "policy ", policy.name(), " routed ", out.tokens(),
                  " of ", t_count, " tokens");
}

void MoeBlock::expert_st(int64_t e, const float* rows, int64_t m, float* out) const {
  DELTAMOE_ASSERT(holds(e), "expert ", e, " is not held by this block");
  if (m == 0) return;
  const int64_t h = hidden_, i = inter_;
  thread_local std::vector<float> tmp, act;
  act.resize(static_cast<size_t>(m * i));
  if (kind_ == ExpertKind::swiglu && !w3_.empty()) {
    tmp.resize(static_cast<size_t>(m * 2 * i));
    swiglu_pair(rows, m, h, w13_[e], w3_[e], 0, i, tmp.data(), act.data(), i);
  } else if (kind_ == ExpertKind::swiglu) {
    tmp.resize(static_cast<size_t>(m * 2 * i));
    kernels::linear_st(rows, m, h, w13_[e], 0, 2 * i, tmp.data(), 2 * i);
    swiglu_interleaved(tmp.data(), m, 2 * i, 0, interleave_block(w13_[e].panel()), i, act.data(),
                       i);
  } else {
    kernels::linear_st(rows, m, h, w13_[e], 0, i, act.data(), i);
    const float* bias = b1_.empty() ? nullptr : b1_[e].data<float>();
    for (int64_t r = 0; r < m; ++r) {
      float* row = act.data() + r * i;
      if (bias)
        for (int64_t c = 0; c < i; ++c) row[c] += bias[c];
      if (kind_ == ExpertKind::gelu_mlp) {
        kernels::gelu_st(row, row, i);
      } else {
        for (int64_t c = 0; c < i; ++c) row[c] = row[c] > 0.0f ? row[c] : 0.0f;
      }
    }
  }
  kernels::linear_st(act.data(), m, i, w2_[e], 0, h, out, h);
  if (!b2_.empty()) {
    const float* bias = b2_[e].data<float>();
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < h; ++c) out[r * h + c] += bias[c];
  }
}

void MoeBlock::run_shared(const float* x, int64_t t_count, float* y) const {
  const int64_t h = hidden_, is = shared_inter_;
  Workspace& ws = thread_workspace();
  float* tmp = ws.get(3, static_cast<size_t>(t_count * 2 * is));
  float* act = ws.get(4, static_cast<size_t>(t_count * (is + h)));
  float* out = act + t_count * is;
  if (layout_ == kernels::WeightLayout::row_major) {
    // Gate and up side by side in one parallel region (copies share the weights).
    const kernels::PackedLinear up[2] = {shared13_, shared3_};
    kernels::linear_concat(x, t_count, h, up, 2, tmp, 2 * is);
    parallel_for(t_count, 8, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        kernels::swiglu_st(tmp + t * 2 * is, tmp + t * 2 * is + is, act + t * is, is);
    });
  } else {
    kernels::linear(x, t_count, h, shared13_, tmp, 2 * is);
    const int64_t q = interleave_block(shared13_.panel());
    parallel_for(t_count, 8, [&](int64_t b, int64_t e) {
      swiglu_interleaved(tmp + b * 2 * is, e - b, 2 * is, 0, q, is, act + b * is, is);
    });
  }
  kernels::linear(act, t_count, is, shared2_, out, h);
  parallel_for(t_count, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float s = 1.0f;
      if (!shared_gate_.empty()) {
        float z = 0.0f;
        for (int64_t c = 0; c < h; ++c) z += shared_gate_[static_cast<size_t>(c)] * x[t * h + c];
        s = 1.0f / (1.0f + std::exp(-z));
      }
      kernels::axpy_st(s, out + t * h, y + t * h, h);
    }
  });
}

void MoeBlock::apply(const float* x, int64_t tokens, const RoutingResult& routing, float* y,
                     const float* weights, std::vector<int64_t>* tokens_per_expert) const {
  apply_routed(x, tokens, routing, y, weights, tokens_per_expert);
  add_shared(x, tokens, y);
}

void MoeBlock::run_rows(const float* x, int64_t rows, const int32_t* experts, float* out) const {
  RoutingResult r;
  r.offsets.resize(static_cast<size_t>(rows) + 1);
  for (int64_t j = 0; j <= rows; ++j) r.offsets[static_cast<size_t>(j)] = static_cast<int32_t>(j);
  r.expert_ids.assign(experts, experts + rows);
  // Weight 1 into a zeroed row: each output is exactly its expert's result.
  r.weights.assign(static_cast<size_t>(rows), 1.0f);
  apply_routed(x, rows, r, out, nullptr, nullptr);
}

void MoeBlock::add_shared(const float* x, int64_t tokens, float* y) const {
  if (shared_inter_ > 0 && tokens > 0) run_shared(x, tokens, y);
}

void MoeBlock::apply_external(const float* x, int64_t tokens, const RoutingResult& routing,
                              float* y, const ExpertMatrices* matrices) const {
  DELTAMOE_CHECK(layout_ == kernels::WeightLayout::row_major && kind_ == ExpertKind::swiglu, "moe",
                 "experts held outside the block need a row-major swiglu block");
  DELTAMOE_ASSERT(matrices != nullptr, "apply_external without matrices");
  for (int32_t e : routing.expert_ids) {
    DELTAMOE_ASSERT(e >= 0 && e < experts_, "routing chose expert ", e, " of ", experts_);
    const ExpertMatrices& m = matrices[e];
    DELTAMOE_ASSERT(m.w1 && m.w3 && m.w2, "expert ", e, " has no matrices");
    DELTAMOE_ASSERT(m.w1->dtype() == dtype_ && m.w1->out_features() == inter_ &&
                        m.w1->in_features() == hidden_ && m.w2->out_features() == hidden_,
                    "expert ", e, "'s matrices do not match the block");
  }
  apply_routed(x, tokens, routing, y, nullptr, nullptr, matrices);
  add_shared(x, tokens, y);
}

void MoeBlock::apply_routed(const float* xp, int64_t t_count, const RoutingResult& routing,
                            float* yp, const float* weights,
                            std::vector<int64_t>* tokens_per_expert,
                            const ExpertMatrices* external) const {
  const int64_t h = hidden_, i = inter_;
  DELTAMOE_ASSERT(routing.tokens() == t_count || (t_count == 0 && routing.offsets.empty()),
                  "routing has ", routing.tokens(), " tokens, input ", t_count);
  const float* gate_w = weights ? weights : routing.weights.data();
  const auto w13 = [&](int64_t e) -> const kernels::PackedLinear& {
    return external ? *external[e].w1 : w13_[static_cast<size_t>(e)];
  };
  const auto w3 = [&](int64_t e) -> const kernels::PackedLinear& {
    return external ? *external[e].w3 : w3_[static_cast<size_t>(e)];
  };
  const auto w2 = [&](int64_t e) -> const kernels::PackedLinear& {
    return external ? *external[e].w2 : w2_[static_cast<size_t>(e)];
  };
  std::fill(yp, yp + t_count * h, 0.0f);
  std::vector<int64_t> counts(static_cast<size_t>(experts_), 0);
  if (t_count == 0) {
    if (tokens_per_expert) *tokens_per_expert = counts;
    return;
  }
  const int threads = num_threads();

  // Dispatch: stable permutation of (token, expert) pairs grouped by expert.
  const int64_t routed = static_cast<int64_t>(routing.expert_ids.size());
  for (int32_t e : routing.expert_ids) {
    DELTAMOE_ASSERT(e >= 0 && e < experts_, "routing chose expert ", e, " of ", experts_);
    DELTAMOE_ASSERT(external || holds(e), "routing chose expert ", e, ", not held here");
    ++counts[static_cast<size_t>(e)];
  }
  std::vector<int64_t> offsets(static_cast<size_t>(experts_) + 1, 0);
  for (int64_t e = 0; e < experts_; ++e) offsets[e + 1] = offsets[e] + counts[e];
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  std::vector<int64_t> pos_of_pair(static_cast<size_t>(routed));  // CSR pair -> permuted row
  std::vector<int64_t> token_of_row(static_cast<size_t>(routed));
  for (int64_t t = 0; t < t_count; ++t) {
    for (int32_t j = routing.offsets[t]; j < routing.offsets[t + 1]; ++j) {
      const int64_t row = fill[routing.expert_ids[j]]++;
      pos_of_pair[j] = row;
      token_of_row[row] = t;
    }
  }
  if (tokens_per_expert) *tokens_per_expert = counts;

  if (routed > 0) {
    DELTAMOE_ASSERT(ref_ >= 0, "a block that holds no expert was given routed rows");
    const bool swiglu = kind_ == ExpertKind::swiglu;
    Workspace& ws = thread_workspace();
    // Gathering one row per token is only worth it when an expert has several rows; for a
    // single token every expert reads x directly.
    const bool gather = t_count > 1;
    // Row strides of the gathered rows and the activations that the row-major kernels read
    // in place rather than copying them to such a stride.
    const int64_t ldxs = kernels::padded_row_stride(h), lda = kernels::padded_row_stride(i);
    float* const xs = gather ? ws.get(0, static_cast<size_t>(routed * ldxs)) : nullptr;
    float* const act = ws.get(1, static_cast<size_t>(routed * lda));
    float* const out = ws.get(2, static_cast<size_t>(routed * h));
    if (gather) {
      parallel_for(routed, 64, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r)
          std::memcpy(xs + r * ldxs, xp + token_of_row[r] * h, static_cast<size_t>(h) * 4);
      });
    }
    auto rows_of = [&](int64_t e) { return gather ? xs + offsets[e] * ldxs : xp; };
    const int64_t ldx_rows = gather ? ldxs : h;

    // Tasks: up projection (+ activation) and down projection per (expert, column block).
    // Row-major swiglu computes w1 and w3 over the same column range of I (pair = 2);
    // packed swiglu runs the fused interleaved [w1; w3] over 2I columns.
    const bool pair = swiglu && !w3_.empty();
    const int64_t n13 = swiglu && !pair ? 2 * i : i;
    int64_t max_rows = 0;
    for (int64_t c : counts) max_rows = std::max(max_rows, c);
    const int64_t panel13 = w13_[static_cast<size_t>(ref_)].column_align(max_rows);
    const int64_t q = swiglu && !pair ? interleave_block(panel13) : panel13;
    const int64_t align13 = swiglu && !pair ? 2 * q : q;
    const auto tasks_a = make_tasks(counts, n13, align13, threads);
    int64_t max_block = 0;
    for (const auto& tk : tasks_a)
      max_block = std::max(max_block, (tk.n_end - tk.n_begin) * counts[tk.expert]);
    // Up- and down-projection tasks in one parallel region, handed out in that order from
    // one counter. A down task waits only for its own expert's up tasks (a per-expert
    // countdown), not for a barrier after all of them, so at decode each thread streams
    // weights without pausing between the two phases.
    const kernels::PackedLinear& ref2 = w2_[static_cast<size_t>(ref_)];
    const auto tasks_b = make_tasks(counts, h, ref2.column_align(max_rows), threads);
    const size_t n_a = tasks_a.size(), n_all = n_a + tasks_b.size();
    std::unique_ptr<std::atomic<int32_t>[]> pending_up(
        new std::atomic<int32_t>[static_cast<size_t>(experts_)]);
    for (int64_t e = 0; e < experts_; ++e) pending_up[e].store(0, std::memory_order_relaxed);
    for (const Task& tk : tasks_a) pending_up[tk.expert].fetch_add(1, std::memory_order_relaxed);
    std::atomic<size_t> next_task{0};

    auto run_up = [&](const Task& tk, float* tmp) {
      const int64_t e = tk.expert, m = counts[e];
      const float* xe = rows_of(e);
      float* ae = act + offsets[e] * lda;
      const int64_t width = tk.n_end - tk.n_begin;
      if (pair) {
        swiglu_pair(xe, m, ldx_rows, w13(e), w3(e), tk.n_begin, tk.n_end, tmp, ae, lda);
        return;
      }
      if (swiglu) {
        kernels::linear_st(xe, m, ldx_rows, w13(e), tk.n_begin, tk.n_end, tmp - tk.n_begin, width);
        swiglu_interleaved(tmp, m, width, tk.n_begin, q, i, ae, lda);
        return;
      }
      kernels::linear_st(xe, m, ldx_rows, w13(e), tk.n_begin, tk.n_end, ae, lda);
      const float* bias = b1_.empty() ? nullptr : b1_[e].data<float>();
      for (int64_t r = 0; r < m; ++r) {
        float* row = ae + r * lda + tk.n_begin;
        if (bias)
          for (int64_t c = 0; c < width; ++c) row[c] += bias[tk.n_begin + c];
        if (kind_ == ExpertKind::gelu_mlp) {
          kernels::gelu_st(row, row, width);
        } else {
          for (int64_t c = 0; c < width; ++c) row[c] = row[c] > 0.0f ? row[c] : 0.0f;
        }
      }
    };
    auto run_down = [&](const Task& tk) {
      const int64_t e = tk.expert, m = counts[e];
      float* oe = out + offsets[e] * h;
      kernels::linear_st(act + offsets[e] * lda, m, lda, w2(e), tk.n_begin, tk.n_end, oe, h);
      if (!b2_.empty()) {
        const float* bias = b2_[e].data<float>();
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = tk.n_begin; c < tk.n_end; ++c) oe[r * h + c] += bias[c];
      }
    };
    const int region_threads = static_cast<int>(
        std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(1, n_all)));
    // Row-major experts with many rows call OpenBLAS inside this region: one thread each.
    const BlasThreadsGuard blas(1);
#pragma omp parallel num_threads(region_threads)
    {
      std::vector<float> tmp(static_cast<size_t>(swiglu ? (pair ? 2 : 1) * max_block : 0));
      for (;;) {
        const size_t ti = next_task.fetch_add(1, std::memory_order_relaxed);
        if (ti >= n_all) break;
        if (ti < n_a) {
          run_up(tasks_a[ti], tmp.data());
          pending_up[tasks_a[ti].expert].fetch_sub(1, std::memory_order_release);
        } else {
          const Task& tk = tasks_b[ti - n_a];
          // Every up task was handed out before any down task, to a thread that finishes it
          // without waiting, so this wait always ends.
          while (pending_up[tk.expert].load(std::memory_order_acquire) != 0) cpu_relax();
          run_down(tk);
        }
      }
    }

    // Combine: each token sums its experts' rows in expert-index order.
    parallel_for(t_count, 16, [&](int64_t b, int64_t e) {
      std::vector<int32_t> order;
      for (int64_t t = b; t < e; ++t) {
        const int32_t j0 = routing.offsets[t];
        combine_in_expert_order(
            routing.expert_ids.data() + j0, gate_w + j0, routing.offsets[t + 1] - j0,
            [&](int32_t a) { return out + pos_of_pair[j0 + a] * h; }, yp + t * h, h, order);
      }
    });
  }
}

}  // namespace deltamoe::moe
