// The MoE layer forward: router → softmax → policy → dispatch → grouped FFN → combine.
//
// Work is split into tasks of (expert, block of output columns) so that both the prefill
// shapes (many rows per expert) and decode (one row, k experts) keep every core busy: at
// decode the cost is streaming the k active experts' weights, and splitting each expert's
// columns lets all threads stream at once. Tasks are handed out dynamically since experts
// receive very different row counts.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <omp.h>

#include "deltamoe/core/parallel.h"
#include "deltamoe/moe/moe_layer.h"

namespace deltamoe::moe {

namespace {

// Per-thread workspace reused across forward calls (grow-only). A fresh allocation per call
// of the 40 MB a 512-token layer needs would come from mmap and be page-faulted and zeroed by
// the kernel every time, about 7% of the layer's time; keeping it costs that memory once per
// calling thread. Uninitialised on purpose: every byte read is written first in the call.
struct Workspace {
  std::unique_ptr<Storage> owned[3];
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
int64_t interleave_block(int64_t panel) { return panel * std::max<int64_t>(1, 64 / panel); }

struct Task {
  int32_t expert;
  int64_t n_begin, n_end;
};

// Splits each active expert's `n` output columns into column blocks (multiples of `align`)
// so that there are enough tasks to balance `threads` threads. When every expert has only a
// few rows (decode), a task costs about the bytes of weights it streams, and the threads
// finish together only if the last tasks are short: blocks then hold at most
// `max_block_bytes` of weights (`bytes_per_col` per output column).
std::vector<Task> make_tasks(const std::vector<int64_t>& counts, int64_t n, int64_t align, int threads,
                             int64_t bytes_per_col) {
  int64_t active = 0, max_rows = 0;
  for (int64_t c : counts) {
    active += c > 0;
    max_rows = std::max(max_rows, c);
  }
  std::vector<Task> tasks;
  if (active == 0) return tasks;
  constexpr int64_t kMaxBlockBytes = 1 << 20;
  int64_t want_per_expert = std::max<int64_t>(1, (8 * threads + active - 1) / active);
  if (max_rows <= 16 && threads > 1)
    want_per_expert = std::max(want_per_expert, (n * bytes_per_col + kMaxBlockBytes - 1) / kMaxBlockBytes);
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

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}


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
  router_ = std::make_unique<kernels::PackedLinear>(weights.router, DType::f32);
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
  kernels::linear(xp, t_count, h, *router_, logits.data(), r_out);
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
  Workspace& ws = thread_workspace();
  struct Span {
    float* p;
  };
  const Span xs{t_count > 1 ? ws.get(0, static_cast<size_t>(routed * h)) : nullptr};
  const Span act{ws.get(1, static_cast<size_t>(routed * i))};
  const Span out{ws.get(2, static_cast<size_t>(routed * h))};
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

  // Tasks: up projection (+ activation) and down projection per (expert, column block).
  const int64_t n13 = swiglu ? 2 * i : i;
  const int64_t panel13 = w13_[0].panel();
  const int64_t q = swiglu ? interleave_block(panel13) : panel13;
  const int64_t align13 = swiglu ? 2 * q : q;
  const auto tasks_a = make_tasks(counts, n13, align13, threads,
                                  static_cast<int64_t>(w13_[0].weight_bytes()) / n13);
  const int64_t max_block = tasks_a.empty() ? 0 : [&] {
    int64_t m = 0;
    for (const auto& tk : tasks_a) m = std::max(m, (tk.n_end - tk.n_begin) * counts[tk.expert]);
    return m;
  }();
  // 4. Expert FFNs in one parallel region: the up-projection tasks of every expert, then the
  // down-projection tasks, handed out in that order from one counter. A down task waits only
  // for its own expert's up tasks (a per-expert countdown), not for a barrier after all of
  // them, so at decode each thread streams weights without pausing between the two phases.
  const auto tasks_b = make_tasks(counts, h, w2_[0].panel(), threads,
                                  static_cast<int64_t>(w2_[0].weight_bytes()) / h);
  const size_t n_a = tasks_a.size(), n_all = n_a + tasks_b.size();
  std::unique_ptr<std::atomic<int32_t>[]> pending_up(new std::atomic<int32_t>[static_cast<size_t>(experts_)]);
  for (int64_t e = 0; e < experts_; ++e) pending_up[e].store(0, std::memory_order_relaxed);
  for (const Task& tk : tasks_a) pending_up[tk.expert].fetch_add(1, std::memory_order_relaxed);
  std::atomic<size_t> next_task{0};

  auto run_up = [&](const Task& tk, float* tmp) {
    const int64_t e = tk.expert, m = counts[e];
    const float* xe = rows_of(e);
    float* ae = act.p + offsets[e] * i;
    const int64_t width = tk.n_end - tk.n_begin;
    if (swiglu) {
      kernels::linear_st(xe, m, h, w13_[e], tk.n_begin, tk.n_end, tmp - tk.n_begin, width);
      // tmp holds [m, width] laid out as interleave blocks of (gate q | up q).
      for (int64_t b = tk.n_begin; b < tk.n_end;) {
        const int64_t col = b / 2;  // first output column of this block
        const int64_t qq = std::min(q, i - col);
        for (int64_t r = 0; r < m; ++r) {
          const float* row = tmp + r * width + (b - tk.n_begin);
          kernels::swiglu_st(row, row + qq, ae + r * i + col, qq);
        }
        b += 2 * qq;
      }
    } else {
      kernels::linear_st(xe, m, h, w13_[e], tk.n_begin, tk.n_end, ae, i);
      const float* bias = b1_.empty() ? nullptr : b1_[e].data<float>();
      for (int64_t r = 0; r < m; ++r) {
        float* row = ae + r * i + tk.n_begin;
        if (bias)
          for (int64_t c = 0; c < tk.n_end - tk.n_begin; ++c) row[c] += bias[tk.n_begin + c];
        kernels::gelu_st(row, row, tk.n_end - tk.n_begin);
      }
    }
  };
  auto run_down = [&](const Task& tk) {
    const int64_t e = tk.expert, m = counts[e];
    float* oe = out.p + offsets[e] * h;
    kernels::linear_st(act.p + offsets[e] * i, m, i, w2_[e], tk.n_begin, tk.n_end, oe, h);
    if (!b2_.empty()) {
      const float* bias = b2_[e].data<float>();
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = tk.n_begin; c < tk.n_end; ++c) oe[r * h + c] += bias[c];
    }
  };
  const int region_threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(1, n_all)));
#pragma omp parallel num_threads(region_threads)
  {
    std::vector<float> tmp(static_cast<size_t>(swiglu ? max_block : 0));
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
