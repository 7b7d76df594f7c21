// Graph builders: each op checks its inputs, computes its value eagerly and records what its
// VJP (src/graph/vjp.cpp) needs.
#include "deltamoe/graph/graph.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>

#include "deltamoe/core/parallel.h"
#include "graph/graph_impl.h"

namespace deltamoe::graph {

const char* op_name(Op op) {
  switch (op) {
    case Op::input:
      return "input";
    case Op::param:
      return "param";
    case Op::linear:
      return "linear";
    case Op::relu:
      return "relu";
    case Op::gelu:
      return "gelu";
    case Op::silu:
      return "silu";
    case Op::softplus:
      return "softplus";
    case Op::sigmoid:
      return "sigmoid";
    case Op::add:
      return "add";
    case Op::mul:
      return "mul";
    case Op::scale:
      return "scale";
    case Op::add_rows_tiled:
      return "add_rows_tiled";
    case Op::sum:
      return "sum";
    case Op::mean:
      return "mean";
    case Op::mean_cols:
      return "mean_cols";
    case Op::mean_groups:
      return "mean_groups";
    case Op::softmax:
      return "softmax";
    case Op::log_softmax:
      return "log_softmax";
    case Op::cross_entropy:
      return "cross_entropy";
    case Op::layer_norm:
      return "layer_norm";
    case Op::gather_rows:
      return "gather_rows";
    case Op::gate_weights:
      return "gate_weights";
    case Op::scatter_add_rows:
      return "scatter_add_rows";
    case Op::dot_const:
      return "dot_const";
    case Op::cv_squared:
      return "cv_squared";
    case Op::scatter_cols:
      return "scatter_cols";
    case Op::noisy_load:
      return "noisy_load";
    case Op::rms_norm:
      return "rms_norm";
    case Op::rope:
      return "rope";
    case Op::causal_attention:
      return "causal_attention";
  }
  return "?";
}

namespace {

void check_f32(const Tensor& t, const char* what) {
  DELTAMOE_CHECK(t.defined() && t.dtype() == DType::f32 && t.is_contiguous(), "graph", what,
                 " must be a defined contiguous f32 tensor");
}

// The elementwise kernels are memory-bound; 16k elements per chunk keeps the fork cheap.
constexpr int64_t kGrain = 16384;

}  // namespace

Tensor uninit_tensor(const Shape& shape) {
  const int64_t n = shape_numel(shape);
  const size_t bytes =
      (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  DELTAMOE_CHECK(p != nullptr, "graph", "out of memory allocating ", shape_str(shape));
  std::shared_ptr<const void> keep(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  return Tensor::wrap(p, shape, DType::f32, std::move(keep));
}

void gelu_forward(const float* x, float* y, int64_t n) {
  kernels::gelu_st(x, y, n);
}
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n) {
  kernels::gelu_grad_acc_st(x, dy, dx, n);
}
float sigmoid(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}
float softplus_fwd(float x) {
  return x > 20.0f ? x : std::log1p(std::exp(x));
}
float normal_cdf(float x) {
  return 0.5f * std::erfc(-x * 0.70710678118654752f);
}
float normal_pdf(float x) {
  return 0.39894228040143268f * std::exp(-0.5f * x * x);
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

const Node& Graph::node(Var v) const {
  DELTAMOE_ASSERT(v.id >= 0 && v.id < static_cast<int32_t>(nodes_.size()), "bad var ", v.id);
  return nodes_[static_cast<size_t>(v.id)];
}
Node& Graph::mut(Var v) {
  DELTAMOE_ASSERT(v.id >= 0 && v.id < static_cast<int32_t>(nodes_.size()), "bad var ", v.id);
  return nodes_[static_cast<size_t>(v.id)];
}

Var Graph::push(Node n) {
  if (grad_enabled_ && n.op != Op::input && n.op != Op::param) {
    for (int32_t i : n.inputs)
      if (i >= 0) n.requires_grad = n.requires_grad || nodes_[static_cast<size_t>(i)].requires_grad;
  }
  if (allocator_) allocator_->pushed(static_cast<int32_t>(nodes_.size()), n.op, n.inputs);
  nodes_.push_back(std::move(n));
  return Var{static_cast<int32_t>(nodes_.size() - 1)};
}

Tensor Graph::alloc(Op op, const std::vector<int32_t>& inputs, BufferRole role, const Shape& shape,
                    bool zero) {
  if (allocator_) {
    Tensor t =
        allocator_->allocate(static_cast<int32_t>(nodes_.size()), op, inputs, role, shape, zero);
    if (t.defined()) return t;
  }
  return zero ? Tensor(shape) : uninit_tensor(shape);
}

Tensor Graph::alloc_scalar(Op op, const std::vector<int32_t>& inputs, float v) {
  Tensor t = alloc(op, inputs, BufferRole::value, {1});
  t.data<float>()[0] = v;
  return t;
}

float Graph::scalar(Var v) const {
  const Tensor& t = node(v).value;
  DELTAMOE_CHECK(t.numel() == 1, "graph", "scalar() of a ", shape_str(t.shape()), " value");
  return t.data<float>()[0];
}

Var Graph::input(const Tensor& value) {
  check_f32(value, "input");
  Node n;
  n.op = Op::input;
  n.value = value;
  return push(std::move(n));
}

Var Graph::param(const Tensor& value, const Tensor& grad) {
  check_f32(value, "param value");
  Node n;
  n.op = Op::param;
  n.value = value;
  if (grad_enabled_) {
    check_f32(grad, "param grad");
    DELTAMOE_CHECK(grad.shape() == value.shape(), "graph", "param grad shape ",
                   shape_str(grad.shape()), " != value shape ", shape_str(value.shape()));
    n.grad = grad;
    n.requires_grad = true;
  }
  return push(std::move(n));
}

Var Graph::linear(Var x, Var w, Var b) {
  const Tensor& xv = value(x);
  const Tensor& wv = value(w);
  DELTAMOE_CHECK(xv.dim() == 2 && wv.dim() == 2 && xv.size(1) == wv.size(1), "graph", "linear: x ",
                 shape_str(xv.shape()), " and w ", shape_str(wv.shape()), " do not agree");
  const int64_t rows = xv.size(0), in = xv.size(1), out = wv.size(0);
  std::vector<int32_t> ins = {x.id, w.id};
  if (b.valid()) ins.push_back(b.id);
  Tensor y = alloc(Op::linear, ins, BufferRole::value, {rows, out});
  gemm(false, true, rows, out, in, 1.0f, xv.data<float>(), in, wv.data<float>(), in, 0.0f,
       y.data<float>(), out);
  Node n;
  n.op = Op::linear;
  n.inputs = std::move(ins);
  if (b.valid()) {
    const Tensor& bv = value(b);
    DELTAMOE_CHECK(bv.numel() == out, "graph", "linear: bias ", shape_str(bv.shape()), " for ", out,
                   " outputs");
    const float* __restrict bp = bv.data<float>();
    float* __restrict yp = y.data<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < out; ++c) yp[r * out + c] += bp[c];
  }
  n.value = std::move(y);
  return push(std::move(n));
}

template <typename F>
static Tensor map_unary(const Tensor& x, Tensor y, F f) {
  const float* xp = x.data<float>();
  float* yp = y.data<float>();
  for_range(x.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) yp[i] = f(xp[i]);
  });
  return y;
}

Var Graph::relu(Var x) {
  Node n;
  n.op = Op::relu;
  n.inputs = {x.id};
  n.value = map_unary(value(x), alloc(n.op, n.inputs, BufferRole::value, value(x).shape()),
                      [](float v) { return v > 0.0f ? v : 0.0f; });
  return push(std::move(n));
}
Var Graph::gelu(Var x) {
  Node n;
  n.op = Op::gelu;
  n.inputs = {x.id};
  const Tensor& xv = value(x);
  Tensor y = alloc(n.op, n.inputs, BufferRole::value, xv.shape());
  gelu_forward(xv.data<float>(), y.data<float>(), xv.numel());
  n.value = std::move(y);
  return push(std::move(n));
}
Var Graph::silu(Var x) {
  Node n;
  n.op = Op::silu;
  n.inputs = {x.id};
  n.value = map_unary(value(x), alloc(n.op, n.inputs, BufferRole::value, value(x).shape()),
                      [](float v) { return v * deltamoe::graph::sigmoid(v); });
  return push(std::move(n));
}
Var Graph::sigmoid(Var x) {
  Node n;
  n.op = Op::sigmoid;
  n.inputs = {x.id};
  n.value = map_unary(value(x), alloc(n.op, n.inputs, BufferRole::value, value(x).shape()),
                      [](float v) { return deltamoe::graph::sigmoid(v); });
  return push(std::move(n));
}
Var Graph::softplus(Var x) {
  Node n;
  n.op = Op::softplus;
  n.inputs = {x.id};
  n.value =
      map_unary(value(x), alloc(n.op, n.inputs, BufferRole::value, value(x).shape()), softplus_fwd);
  return push(std::move(n));
}

Var Graph::add(Var a, Var b) {
  const Tensor& av = value(a);
  const Tensor& bv = value(b);
  DELTAMOE_CHECK(av.shape() == bv.shape(), "graph", "add: shapes ", shape_str(av.shape()), " and ",
                 shape_str(bv.shape()));
  Tensor y = alloc(Op::add, {a.id, b.id}, BufferRole::value, av.shape());
  const float *ap = av.data<float>(), *bp = bv.data<float>();
  float* yp = y.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] = ap[i] + bp[i];
  Node n;
  n.op = Op::add;
  n.inputs = {a.id, b.id};
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::mul(Var a, Var b) {
  const Tensor& av = value(a);
  const Tensor& bv = value(b);
  DELTAMOE_CHECK(av.shape() == bv.shape(), "graph", "mul: shapes ", shape_str(av.shape()), " and ",
                 shape_str(bv.shape()));
  Tensor y = alloc(Op::mul, {a.id, b.id}, BufferRole::value, av.shape());
  const float *ap = av.data<float>(), *bp = bv.data<float>();
  float* yp = y.data<float>();
  for (int64_t i = 0; i < y.numel(); ++i) yp[i] = ap[i] * bp[i];
  Node n;
  n.op = Op::mul;
  n.inputs = {a.id, b.id};
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::scale(Var a, float s) {
  Node n;
  n.op = Op::scale;
  n.inputs = {a.id};
  n.fa = s;
  n.value = map_unary(value(a), alloc(n.op, n.inputs, BufferRole::value, value(a).shape()),
                      [s](float v) { return s * v; });
  return push(std::move(n));
}

Var Graph::add_rows_tiled(Var a, Var b) {
  const Tensor& av = value(a);
  const Tensor& bv = value(b);
  DELTAMOE_CHECK(av.dim() == 2 && bv.dim() == 2 && av.size(1) == bv.size(1) && bv.size(0) > 0 &&
                     av.size(0) % bv.size(0) == 0,
                 "graph", "add_rows_tiled: a ", shape_str(av.shape()), " b ",
                 shape_str(bv.shape()));
  const int64_t rows = av.size(0), d = av.size(1), g = bv.size(0);
  Tensor y = alloc(Op::add_rows_tiled, {a.id, b.id}, BufferRole::value, av.shape());
  const float *ap = av.data<float>(), *bp = bv.data<float>();
  float* yp = y.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) yp[r * d + c] = ap[r * d + c] + bp[(r % g) * d + c];
  Node n;
  n.op = Op::add_rows_tiled;
  n.inputs = {a.id, b.id};
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::sum(Var a) {
  const Tensor& av = value(a);
  double s = 0.0;
  const float* ap = av.data<float>();
  for (int64_t i = 0; i < av.numel(); ++i) s += ap[i];
  Node n;
  n.op = Op::sum;
  n.inputs = {a.id};
  n.value = alloc_scalar(Op::sum, {a.id}, static_cast<float>(s));
  return push(std::move(n));
}

Var Graph::mean(Var a) {
  const Tensor& av = value(a);
  DELTAMOE_CHECK(av.numel() > 0, "graph", "mean of an empty tensor");
  double s = 0.0;
  const float* ap = av.data<float>();
  for (int64_t i = 0; i < av.numel(); ++i) s += ap[i];
  Node n;
  n.op = Op::mean;
  n.inputs = {a.id};
  n.value = alloc_scalar(Op::mean, {a.id}, static_cast<float>(s / static_cast<double>(av.numel())));
  return push(std::move(n));
}

Var Graph::mean_cols(Var a) {
  const Tensor& av = value(a);
  DELTAMOE_CHECK(av.dim() == 2 && av.size(0) > 0, "graph", "mean_cols of ", shape_str(av.shape()));
  const int64_t rows = av.size(0), d = av.size(1);
  std::vector<double> acc(static_cast<size_t>(d), 0.0);
  const float* ap = av.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) acc[static_cast<size_t>(c)] += ap[r * d + c];
  Tensor y = alloc(Op::mean_cols, {a.id}, BufferRole::value, {d});
  for (int64_t c = 0; c < d; ++c)
    y.data<float>()[c] =
        static_cast<float>(acc[static_cast<size_t>(c)] / static_cast<double>(rows));
  Node n;
  n.op = Op::mean_cols;
  n.inputs = {a.id};
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::mean_groups(Var a, int64_t group) {
  const Tensor& av = value(a);
  DELTAMOE_CHECK(av.dim() == 2 && group > 0 && av.size(0) % group == 0, "graph",
                 "mean_groups: ", shape_str(av.shape()), " in groups of ", group);
  const int64_t rows = av.size(0) / group, d = av.size(1);
  Tensor y = alloc(Op::mean_groups, {a.id}, BufferRole::value, {rows, d}, true);
  const float* ap = av.data<float>();
  float* yp = y.data<float>();
  const float inv = 1.0f / static_cast<float>(group);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < group; ++g)
      for (int64_t c = 0; c < d; ++c) yp[r * d + c] += ap[(r * group + g) * d + c] * inv;
  Node n;
  n.op = Op::mean_groups;
  n.inputs = {a.id};
  n.na = group;
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::softmax(Var a) {
  const Tensor& av = value(a);
  DELTAMOE_CHECK(av.dim() == 2, "graph", "softmax of ", shape_str(av.shape()));
  const int64_t rows = av.size(0), d = av.size(1);
  Tensor y = alloc(Op::softmax, {a.id}, BufferRole::value, av.shape());
  const float* ap = av.data<float>();
  float* yp = y.data<float>();
  kernels::softmax_rows_st(ap, yp, rows, d);  // the tested, vectorised kernel
  Node n;
  n.op = Op::softmax;
  n.inputs = {a.id};
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::log_softmax(Var a) {
  const Tensor& av = value(a);
  DELTAMOE_CHECK(av.dim() == 2, "graph", "log_softmax of ", shape_str(av.shape()));
  const int64_t rows = av.size(0), d = av.size(1);
  Tensor y = alloc(Op::log_softmax, {a.id}, BufferRole::value, av.shape());
  const float* ap = av.data<float>();
  float* yp = y.data<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = ap + r * d;
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < d; ++c) m = std::max(m, x[c]);
    float s = 0.0f;
    for (int64_t c = 0; c < d; ++c) s += std::exp(x[c] - m);
    const float lse = m + std::log(s);
    for (int64_t c = 0; c < d; ++c) yp[r * d + c] = x[c] - lse;
  }
  Node n;
  n.op = Op::log_softmax;
  n.inputs = {a.id};
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::cross_entropy(Var logits, const std::vector<int32_t>& labels, float smoothing,
                         std::vector<float>* row_losses) {
  const Tensor& lv = value(logits);
  DELTAMOE_CHECK(
      lv.dim() == 2 && lv.size(0) == static_cast<int64_t>(labels.size()) && lv.size(0) > 0, "graph",
      "cross_entropy: logits ", shape_str(lv.shape()), " with ", labels.size(), " labels");
  const int64_t rows = lv.size(0), d = lv.size(1);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t y = labels[static_cast<size_t>(r)];
    DELTAMOE_CHECK(y >= 0 && y < d, "graph", "cross_entropy: label ", y, " outside [0, ", d, ")");
  }
  // Saved: the softmax, which is what the VJP needs. Rows in parallel with the vectorised
  // softmax (a language model's head makes this thousands of rows of a vocabulary each).
  Tensor probs = alloc(Op::cross_entropy, {logits.id}, BufferRole::saved, lv.shape());
  const float* lp = lv.data<float>();
  float* pp = probs.data<float>();
  std::vector<double> row_loss(static_cast<size_t>(rows));
  parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = lp + r * d;
      float* p = pp + r * d;
      kernels::softmax_rows_st(x, p, 1, d);
      // log Σ_c exp(x_c) = max − log p_max: the largest logit's probability is ≥ 1/d, so its
      // log is exact to float rounding, with no second pass of exponentials.
      int64_t top = 0;
      for (int64_t c = 1; c < d; ++c)
        if (x[c] > x[top]) top = c;
      const double lse = static_cast<double>(x[top]) - std::log(static_cast<double>(p[top]));
      double row = lse - static_cast<double>(x[labels[static_cast<size_t>(r)]]);
      if (smoothing > 0.0f) {
        double mean_x = 0.0;  // mean over classes of −log p_c is lse − mean x_c
        for (int64_t c = 0; c < d; ++c) mean_x += static_cast<double>(x[c]);
        row = (1.0 - smoothing) * row + smoothing * (lse - mean_x / static_cast<double>(d));
      }
      row_loss[static_cast<size_t>(r)] = row;
    }
  });
  double loss = 0.0;
  for (const double row : row_loss) {
    loss += row;
    if (row_losses) row_losses->push_back(static_cast<float>(row));
  }
  Node n;
  DELTAMOE_CHECK(smoothing >= 0.0f && smoothing < 1.0f, "graph", "cross_entropy: label smoothing ",
                 smoothing, " outside [0, 1)");
  n.op = Op::cross_entropy;
  n.inputs = {logits.id};
  n.ia = labels;
  n.fa = smoothing;
  n.saved = std::move(probs);
  n.value = alloc_scalar(Op::cross_entropy, {logits.id},
                         static_cast<float>(loss / static_cast<double>(rows)));
  return push(std::move(n));
}

Var Graph::layer_norm(Var x, Var gamma, Var beta, float eps) {
  const Tensor& xv = value(x);
  DELTAMOE_CHECK(
      xv.dim() == 2 && value(gamma).numel() == xv.size(1) && value(beta).numel() == xv.size(1),
      "graph", "layer_norm: x ", shape_str(xv.shape()), " gamma ", shape_str(value(gamma).shape()),
      " beta ", shape_str(value(beta).shape()));
  const int64_t rows = xv.size(0), d = xv.size(1);
  const std::vector<int32_t> ins = {x.id, gamma.id, beta.id};
  Tensor y = alloc(Op::layer_norm, ins, BufferRole::value, xv.shape());
  Tensor stats = alloc(Op::layer_norm, ins, BufferRole::saved, {rows, 2});  // mean, rstd
  const float *xp = xv.data<float>(), *g = value(gamma).data<float>(),
              *b = value(beta).data<float>();
  float* yp = y.data<float>();
  float* sp = stats.data<float>();
  kernels::layer_norm_rows_st(xp, g, b, yp, sp, rows, d, eps);
  Node n;
  n.op = Op::layer_norm;
  n.inputs = ins;
  n.saved = std::move(stats);
  n.fa = eps;
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::gather_rows(Var x, const std::vector<int32_t>& rows) {
  const Tensor& xv = value(x);
  DELTAMOE_CHECK(xv.dim() == 2, "graph", "gather_rows of ", shape_str(xv.shape()));
  const int64_t n_in = xv.size(0), d = xv.size(1), m = static_cast<int64_t>(rows.size());
  Tensor y = alloc(Op::gather_rows, {x.id}, BufferRole::value, {m, d});
  const float* xp = xv.data<float>();
  float* yp = y.data<float>();
  for (int64_t j = 0; j < m; ++j) {
    const int32_t r = rows[static_cast<size_t>(j)];
    DELTAMOE_CHECK(r >= 0 && r < n_in, "graph", "gather_rows: row ", r, " outside [0, ", n_in, ")");
    std::copy(xp + r * d, xp + (r + 1) * d, yp + j * d);
  }
  Node n;
  n.op = Op::gather_rows;
  n.inputs = {x.id};
  n.ia = rows;
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::gate_weights(Var p, const std::vector<int32_t>& offsets,
                        const std::vector<int32_t>& cols, bool renormalize,
                        const std::vector<int32_t>& extra_offsets,
                        const std::vector<int32_t>& extra_cols) {
  const Tensor& pv = value(p);
  DELTAMOE_CHECK(pv.dim() == 2 && static_cast<int64_t>(offsets.size()) == pv.size(0) + 1 &&
                     offsets.back() == static_cast<int32_t>(cols.size()),
                 "graph", "gate_weights: p ", shape_str(pv.shape()), " with ", offsets.size(),
                 " offsets and ", cols.size(), " entries");
  const bool has_extra = !extra_offsets.empty();
  DELTAMOE_CHECK(!has_extra || (extra_offsets.size() == offsets.size() &&
                                extra_offsets.back() == static_cast<int32_t>(extra_cols.size())),
                 "graph", "gate_weights: extra_offsets/extra_cols do not match the tokens");
  const int64_t tokens = pv.size(0), c_all = pv.size(1);
  const float* pp = pv.data<float>();
  Tensor w =
      alloc(Op::gate_weights, {p.id}, BufferRole::value, {static_cast<int64_t>(cols.size())});
  Tensor denom =
      alloc(Op::gate_weights, {p.id}, BufferRole::saved,
            {tokens});  // saved: the renormalisation sum per token (1 when not renormalising)
  float* wp = w.data<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    float s = 0.0f;
    for (int32_t j = offsets[t]; j < offsets[t + 1]; ++j) {
      DELTAMOE_CHECK(cols[j] >= 0 && cols[j] < c_all, "graph", "gate_weights: column ", cols[j]);
      s += pp[t * c_all + cols[j]];
    }
    if (has_extra)
      for (int32_t j = extra_offsets[t]; j < extra_offsets[t + 1]; ++j) {
        DELTAMOE_CHECK(extra_cols[j] >= 0 && extra_cols[j] < c_all, "graph",
                       "gate_weights: extra column ", extra_cols[j]);
        s += pp[t * c_all + extra_cols[j]];
      }
    // An all-underflow token keeps weights 0/ε rather than NaN.
    const float den = renormalize ? std::max(s, 1e-30f) : 1.0f;
    denom.data<float>()[t] = den;
    for (int32_t j = offsets[t]; j < offsets[t + 1]; ++j) wp[j] = pp[t * c_all + cols[j]] / den;
  }
  Node n;
  n.op = Op::gate_weights;
  n.inputs = {p.id};
  n.ia = offsets;
  n.ib = cols;
  n.ic = extra_offsets;
  n.id = extra_cols;
  n.na = renormalize ? 1 : 0;
  n.saved = std::move(denom);
  n.value = std::move(w);
  return push(std::move(n));
}

Var Graph::scatter_add_rows(Var base, Var vals, Var w, const std::vector<int32_t>& rows,
                            const std::vector<int32_t>& w_index, int64_t n_rows, bool reuse_base) {
  const Tensor& vv = value(vals);
  const Tensor& wv = value(w);
  const int64_t m = static_cast<int64_t>(rows.size());
  DELTAMOE_CHECK(vv.dim() == 2 && vv.size(0) == m && w_index.size() == rows.size(), "graph",
                 "scatter_add_rows: vals ", shape_str(vv.shape()), " with ", rows.size(),
                 " rows and ", w_index.size(), " weights");
  const int64_t d = vv.size(1);
  Tensor y;
  if (base.valid()) {
    const Tensor& bv = value(base);
    DELTAMOE_CHECK(bv.dim() == 2 && bv.size(0) == n_rows && bv.size(1) == d, "graph",
                   "scatter_add_rows: base ", shape_str(bv.shape()), " vs [", n_rows, ", ", d, "]");
    if (reuse_base) {
      y = bv;
    } else {
      y = alloc(Op::scatter_add_rows, {base.id, vals.id, w.id}, BufferRole::value, bv.shape());
      std::copy(bv.data<float>(), bv.data<float>() + bv.numel(), y.data<float>());
    }
  } else {
    y = alloc(Op::scatter_add_rows, {base.id, vals.id, w.id}, BufferRole::value, {n_rows, d}, true);
  }
  const float *vp = vv.data<float>(), *wp = wv.data<float>();
  float* yp = y.data<float>();
  for (int64_t j = 0; j < m; ++j) {
    const int32_t r = rows[static_cast<size_t>(j)];
    const int32_t wi = w_index[static_cast<size_t>(j)];
    DELTAMOE_CHECK(r >= 0 && r < n_rows && wi >= 0 && wi < wv.numel(), "graph",
                   "scatter_add_rows: row ", r, " or weight index ", wi, " out of range");
    const float s = wp[wi];
    for (int64_t c = 0; c < d; ++c) yp[r * d + c] += s * vp[j * d + c];
  }
  Node n;
  n.op = Op::scatter_add_rows;
  n.inputs = {base.id, vals.id, w.id};  // base.id may be -1
  n.ia = rows;
  n.ib = w_index;
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::dot_const(Var a, const std::vector<float>& c) {
  const Tensor& av = value(a);
  DELTAMOE_CHECK(av.numel() == static_cast<int64_t>(c.size()), "graph", "dot_const: ", av.numel(),
                 " elements vs ", c.size(), " constants");
  double s = 0.0;
  for (int64_t i = 0; i < av.numel(); ++i)
    s += static_cast<double>(av.data<float>()[i]) * c[static_cast<size_t>(i)];
  Node n;
  n.op = Op::dot_const;
  n.inputs = {a.id};
  n.saved = alloc(Op::dot_const, {a.id}, BufferRole::saved, {static_cast<int64_t>(c.size())});
  std::copy(c.begin(), c.end(), n.saved.data<float>());
  n.value = alloc_scalar(Op::dot_const, {a.id}, static_cast<float>(s));
  return push(std::move(n));
}

Var Graph::cv_squared(Var a) {
  const Tensor& av = value(a);
  const int64_t k = av.numel();
  DELTAMOE_CHECK(k > 0, "graph", "cv_squared of an empty tensor");
  const float* ap = av.data<float>();
  double mu = 0.0;
  for (int64_t i = 0; i < k; ++i) mu += ap[i];
  mu /= static_cast<double>(k);
  double var = 0.0;
  for (int64_t i = 0; i < k; ++i) var += (ap[i] - mu) * (ap[i] - mu);
  var /= static_cast<double>(k);
  Node n;
  n.op = Op::cv_squared;
  n.inputs = {a.id};
  n.value = alloc_scalar(Op::cv_squared, {a.id}, static_cast<float>(var / (mu * mu + 1e-10)));
  return push(std::move(n));
}

Var Graph::scatter_cols(Var w, const std::vector<int32_t>& cols, int64_t count) {
  const Tensor& wv = value(w);
  DELTAMOE_CHECK(wv.numel() == static_cast<int64_t>(cols.size()), "graph",
                 "scatter_cols: ", wv.numel(), " weights vs ", cols.size(), " columns");
  Tensor y = alloc(Op::scatter_cols, {w.id}, BufferRole::value, {count}, true);
  for (size_t j = 0; j < cols.size(); ++j) {
    DELTAMOE_CHECK(cols[j] >= 0 && cols[j] < count, "graph", "scatter_cols: column ", cols[j]);
    y.data<float>()[cols[j]] += wv.data<float>()[j];
  }
  Node n;
  n.op = Op::scatter_cols;
  n.inputs = {w.id};
  n.ia = cols;
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::noisy_load(Var clean, Var noisy, Var std_dev, int64_t k) {
  const Tensor& cv = value(clean);
  const Tensor& nv = value(noisy);
  const Tensor& sv = value(std_dev);
  DELTAMOE_CHECK(cv.dim() == 2 && cv.shape() == nv.shape() && cv.shape() == sv.shape() && k >= 1 &&
                     k < cv.size(1),
                 "graph", "noisy_load: clean ", shape_str(cv.shape()), " noisy ",
                 shape_str(nv.shape()), " std ", shape_str(sv.shape()), " k ", k);
  const int64_t tokens = cv.size(0), c_all = cv.size(1);
  // saved: z[t,c] = (clean − thr)/std, the argument of Φ, needed by the VJP.
  const std::vector<int32_t> ins = {clean.id, noisy.id, std_dev.id};
  Tensor z = alloc(Op::noisy_load, ins, BufferRole::saved, cv.shape());
  Tensor load = alloc(Op::noisy_load, ins, BufferRole::value, {c_all}, true);
  std::vector<float> row(static_cast<size_t>(c_all));
  for (int64_t t = 0; t < tokens; ++t) {
    const float* nr = nv.data<float>() + t * c_all;
    std::copy(nr, nr + c_all, row.begin());
    std::nth_element(row.begin(), row.begin() + (k - 1), row.end(), std::greater<float>());
    const float kth = row[static_cast<size_t>(k - 1)];
    std::nth_element(row.begin(), row.begin() + k, row.end(), std::greater<float>());
    const float k1th = row[static_cast<size_t>(k)];
    for (int64_t c = 0; c < c_all; ++c) {
      const float thr = nr[c] >= kth ? k1th : kth;
      const float zz = (cv.data<float>()[t * c_all + c] - thr) / sv.data<float>()[t * c_all + c];
      z.data<float>()[t * c_all + c] = zz;
      load.data<float>()[c] += normal_cdf(zz);
    }
  }
  Node n;
  n.op = Op::noisy_load;
  n.inputs = ins;
  n.na = k;
  n.saved = std::move(z);
  n.value = std::move(load);
  Var v = push(std::move(n));
  // The noisy logits are a sample: no gradient flows through them by definition of the op.
  return v;
}

}  // namespace deltamoe::graph
