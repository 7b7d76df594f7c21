// The MoE layer forward: router → softmax → policy → dispatch → grouped FFN → combine.
//
// Work is split into tasks of (expert, block of output columns) so that both the prefill
// shapes (many rows per expert) and decode (one row, k experts) keep every core busy: at
// decode the cost is streaming the k active experts' weights, and splitting each expert's
// columns lets all threads stream at once. Tasks are handed out dynamically since experts
// receive very different row counts.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <omp.h>

#include "deltamoe/core/parallel.h"
#include "deltamoe/moe/moe_layer.h"

namespace deltamoe::moe {

namespace {

// Uninitialised aligned scratch (zero-filling 16 MB per call would be wasted bandwidth).
struct Scratch {
  explicit Scratch(size_t n)
      : p(static_cast<float*>(std::aligned_alloc(kAlignment, std::max<size_t>(kAlignment, ((n * 4 + kAlignment - 1) / kAlignment) * kAlignment)))) {
    if (!p) fail("moe", "out of memory allocating ", n * 4, " bytes of scratch");
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* p;
};

// Rows per interleave block of the fused [w1; w3] matrix: block j holds w1 rows
// [jQ, jQ+q) then w3 rows [jQ, jQ+q), so one contiguous column range yields both the gate
// and the up projection of the same q columns and SwiGLU is applied while they are hot.
int64_t interleave_block(int64_t panel) { return panel * std::max<int64_t>(1, 64 / panel); }

struct Task {
  int32_t expert;
  int64_t n_begin, n_end;
};

// Splits each active expert's `n` output columns into column blocks (multiples of `align`)
// so that there are enough tasks to balance `threads` threads.
std::vector<Task> make_tasks(const std::vector<int64_t>& counts, int64_t n, int64_t align, int threads) {
  int64_t active = 0;
  for (int64_t c : counts) active += c > 0;
  std::vector<Task> tasks;
  if (active == 0) return tasks;
  const int64_t want_per_expert = std::max<int64_t>(1, (8 * threads + active - 1) / active);
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

float gelu_scalar(float v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); }

}  // namespace

MoeLayer::MoeLayer(const MoeWeights& weights, DType dtype)
    : kind_(weights.kind), dtype_(dtype) {
  weights.validate();
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16, "moe",
                 "expert weights must be packed as f32 or bf16, not ", dtype_name(dtype));
  experts_ = weights.experts();
  hidden_ = weights.hidden();
  inter_ = weights.inter();
  router_outputs_ = weights.router.size(0);
  router_ = weights.router.to(DType::f32);
  const int64_t h = hidden_, i = inter_;
  for (int64_t e = 0; e < experts_; ++e) {
    if (kind_ == ExpertKind::swiglu) {
      const kernels::PackedLinear probe(Tensor({1, 1}, DType::f32), dtype);
      const int64_t q = interleave_block(probe.panel());
      Tensor w13({2 * i, h}, DType::f32);
      const Tensor w1 = weights.w1[e].to(DType::f32), w3 = weights.w3[e].to(DType::f32);
      float* dst = w13.data<float>();
      const float* s1 = w1.data<float>();
      const float* s3 = w3.data<float>();
      for (int64_t j = 0; j < i; j += q) {
        const int64_t rows = std::min(q, i - j);
        std::memcpy(dst + (2 * j) * h, s1 + j * h, static_cast<size_t>(rows * h) * 4);
        std::memcpy(dst + (2 * j + rows) * h, s3 + j * h, static_cast<size_t>(rows * h) * 4);
      }
      w13_.emplace_back(w13, dtype);
      DELTAMOE_ASSERT(q % w13_.back().panel() == 0, "interleave block ", q, " vs panel ",
                      w13_.back().panel());
    } else {
      w13_.emplace_back(weights.w1[e], dtype);
      if (!weights.b1.empty()) b1_.push_back(weights.b1[e].to(DType::f32));
      if (!weights.b2.empty()) b2_.push_back(weights.b2[e].to(DType::f32));
    }
    w2_.emplace_back(weights.w2[e], dtype);
  }
}

size_t MoeLayer::expert_weight_bytes() const {
  return w13_.empty() ? 0 : w13_[0].weight_bytes() + w2_[0].weight_bytes();
}

double MoeLayer::expert_flops(int64_t routed) const {
  const double gemms = kind_ == ExpertKind::swiglu ? 3.0 : 2.0;
  return gemms * 2.0 * static_cast<double>(routed) * static_cast<double>(hidden_) *
         static_cast<double>(inter_);
}

Tensor MoeLayer::forward(const Tensor& x_in, const RoutingPolicy& policy, MoeStats* stats) const {
  DELTAMOE_CHECK(x_in.dim() == 2 && x_in.size(1) == hidden_, "moe", "input has shape ",
                 shape_str(x_in.shape()), ", expected [tokens, ", hidden_, "]");
  DELTAMOE_CHECK(experts_ + policy.extra_logits() == router_outputs_, "moe", "policy ",
                 policy.name(), " needs ", experts_ + policy.extra_logits(),
                 " router outputs, the layer has ", router_outputs_);
  const Tensor x = (x_in.dtype() == DType::f32 && x_in.is_contiguous()) ? x_in : x_in.to(DType::f32);
  const int64_t t_count = x.size(0), h = hidden_, i = inter_, r_out = router_outputs_;
  Tensor y({t_count, h}, DType::f32);
  if (t_count == 0) {
    if (stats) {
      stats->routing.clear();
      stats->tokens_per_expert.assign(static_cast<size_t>(experts_), 0);
    }
    return y;
  }
  const float* xp = x.data<float>();
  const int threads = num_threads();

  // 1. Router logits and softmax.
  std::vector<float> logits(static_cast<size_t>(t_count * r_out));
  std::vector<float> probs(logits.size());
  kernels::sgemm(false, true, t_count, r_out, h, 1.0f, xp, h, router_.data<float>(), h, 0.0f,
                 logits.data(), r_out);
  kernels::softmax_rows_st(logits.data(), probs.data(), t_count, r_out);

  // 2. Routing.
  RoutingResult local;
  RoutingResult& routing = stats ? stats->routing : local;
  policy.route(logits.data(), probs.data(), t_count, experts_, routing);
  DELTAMOE_ASSERT(routing.tokens() == t_count, "policy ", policy.name(), " routed ",
                  routing.tokens(), " of ", t_count, " tokens");

  // 3. Dispatch: stable permutation of (token, expert) pairs grouped by expert.
  const int64_t routed = static_cast<int64_t>(routing.expert_ids.size());
  std::vector<int64_t> counts(static_cast<size_t>(experts_), 0);
  for (int32_t e : routing.expert_ids) {
    DELTAMOE_ASSERT(e >= 0 && e < experts_, "policy ", policy.name(), " chose expert ", e);
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
  if (stats) stats->tokens_per_expert = counts;
  if (routed == 0) return y;

  const bool swiglu = kind_ == ExpertKind::swiglu;
  Scratch xs(static_cast<size_t>(routed * h));
  Scratch act(static_cast<size_t>(routed * i));
  Scratch out(static_cast<size_t>(routed * h));
  // Gathering one row per token is only worth it when an expert has several rows; for a
  // single token every expert reads x directly.
  const bool gather = t_count > 1;
  if (gather) {
    parallel_for(routed, 64, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        std::memcpy(xs.p + r * h, xp + token_of_row[r] * h, static_cast<size_t>(h) * 4);
    });
  }
  auto rows_of = [&](int64_t e) { return gather ? xs.p + offsets[e] * h : xp; };

  // 4a. Up projection (+ activation) per (expert, column block).
  const int64_t n13 = swiglu ? 2 * i : i;
  const int64_t panel13 = w13_[0].panel();
  const int64_t q = swiglu ? interleave_block(panel13) : panel13;
  const int64_t align13 = swiglu ? 2 * q : q;
  const auto tasks_a = make_tasks(counts, n13, align13, threads);
  const int64_t max_block = tasks_a.empty() ? 0 : [&] {
    int64_t m = 0;
    for (const auto& tk : tasks_a) m = std::max(m, (tk.n_end - tk.n_begin) * counts[tk.expert]);
    return m;
  }();
  {
    BlasThreadsGuard single_blas(1);
#pragma omp parallel num_threads(threads)
    {
      std::vector<float> tmp(static_cast<size_t>(swiglu ? max_block : 0));
#pragma omp for schedule(dynamic, 1)
      for (size_t ti = 0; ti < tasks_a.size(); ++ti) {
        const Task& tk = tasks_a[ti];
        const int64_t e = tk.expert, m = counts[e];
        const float* xe = rows_of(e);
        float* ae = act.p + offsets[e] * i;
        const int64_t width = tk.n_end - tk.n_begin;
        if (swiglu) {
          kernels::linear_st(xe, m, h, w13_[e], tk.n_begin, tk.n_end, tmp.data() - tk.n_begin, width);
          // tmp holds [m, width] laid out as interleave blocks of (gate q | up q).
          for (int64_t b = tk.n_begin; b < tk.n_end;) {
            const int64_t col = b / 2;  // first output column of this block
            const int64_t qq = std::min(q, i - col);
            for (int64_t r = 0; r < m; ++r) {
              const float* row = tmp.data() + r * width + (b - tk.n_begin);
              kernels::swiglu_st(row, row + qq, ae + r * i + col, qq);
            }
            b += 2 * qq;
          }
        } else {
          kernels::linear_st(xe, m, h, w13_[e], tk.n_begin, tk.n_end, ae, i);
          const float* bias = b1_.empty() ? nullptr : b1_[e].data<float>();
          for (int64_t r = 0; r < m; ++r) {
            float* row = ae + r * i;
            for (int64_t c = tk.n_begin; c < tk.n_end; ++c) {
              const float v = row[c] + (bias ? bias[c] : 0.0f);
              row[c] = gelu_scalar(v);
            }
          }
        }
      }
    }

    // 4b. Down projection per (expert, column block).
    const auto tasks_b = make_tasks(counts, h, w2_[0].panel(), threads);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (size_t ti = 0; ti < tasks_b.size(); ++ti) {
      const Task& tk = tasks_b[ti];
      const int64_t e = tk.expert, m = counts[e];
      float* oe = out.p + offsets[e] * h;
      kernels::linear_st(act.p + offsets[e] * i, m, i, w2_[e], tk.n_begin, tk.n_end, oe, h);
      if (!b2_.empty()) {
        const float* bias = b2_[e].data<float>();
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = tk.n_begin; c < tk.n_end; ++c) oe[r * h + c] += bias[c];
      }
    }
  }

  // 5. Combine: each token sums its experts' rows in routing order (deterministic).
  float* yp = y.data<float>();
  parallel_for(t_count, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* yt = yp + t * h;
      for (int32_t j = routing.offsets[t]; j < routing.offsets[t + 1]; ++j)
        kernels::axpy_st(routing.weights[j], out.p + pos_of_pair[j] * h, yt, h);
    }
  });
  return y;
}

}  // namespace deltamoe::moe
