// Element-wise and row-wise ops: scalar versions, run-time dispatch to the AVX-512 ones
// (ops_avx512.cpp), exact GELU and top-k.
#include <algorithm>
#include <cmath>

#include "deltamoe/core/error.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "kernels/cpu/ops_impl.h"

namespace deltamoe::kernels {

namespace ops {

bool avx512_supported() {
  return cpu_features().avx512f;
}

void silu_scalar(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void gelu_tanh_scalar(const float* x, float* y, int64_t n) {
  constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + std::tanh(kC * (v + 0.044715f * v * v * v)));
  }
}

void swiglu_scalar(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void axpy_scalar(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void softmax_rows_scalar(const float* x, float* y, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    float mx = -INFINITY;
    for (int64_t i = 0; i < d; ++i) mx = std::max(mx, xr[i]);
    // All -inf (a fully masked row): define the result as uniform rather than NaN.
    if (mx == -INFINITY) {
      for (int64_t i = 0; i < d; ++i) yr[i] = 1.0f / static_cast<float>(d);
      continue;
    }
    float sum = 0.0f;
    for (int64_t i = 0; i < d; ++i) {
      yr[i] = std::exp(xr[i] - mx);
      sum += yr[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < d; ++i) yr[i] *= inv;
  }
}

}  // namespace ops

const char* ops_impl_name() {
  return ops::avx512_supported() ? "avx512" : "portable";
}

void silu_st(const float* x, float* y, int64_t n) {
  ops::avx512_supported() ? ops::silu_avx512(x, y, n) : ops::silu_scalar(x, y, n);
}

void gelu_tanh_st(const float* x, float* y, int64_t n) {
  ops::avx512_supported() ? ops::gelu_tanh_avx512(x, y, n) : ops::gelu_tanh_scalar(x, y, n);
}

// Lane-wise partial sums (16 lanes, then a fixed-order reduction): vectorised by the compiler
// for each target clone and deterministic for a given clone.
__attribute__((target_clones("avx512f", "avx2", "default"))) void layer_norm_rows_st(
    const float* __restrict x, const float* __restrict gamma, const float* __restrict beta,
    float* __restrict y, float* __restrict stats, int64_t rows, int64_t d, float eps) {
  constexpr int kLanes = 16;
  const int64_t dv = d / kLanes * kLanes;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float acc[kLanes] = {};
    for (int64_t c = 0; c < dv; c += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += xr[c + l];
    float sum = 0.0f;
    for (int l = 0; l < kLanes; ++l) sum += acc[l];
    for (int64_t c = dv; c < d; ++c) sum += xr[c];
    const float mu = sum / static_cast<float>(d);
    float acc2[kLanes] = {};
    for (int64_t c = 0; c < dv; c += kLanes)
      for (int l = 0; l < kLanes; ++l) acc2[l] += (xr[c + l] - mu) * (xr[c + l] - mu);
    float var = 0.0f;
    for (int l = 0; l < kLanes; ++l) var += acc2[l];
    for (int64_t c = dv; c < d; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= static_cast<float>(d);
    const float rstd = 1.0f / std::sqrt(var + eps);
    float* yr = y + r * d;
    for (int64_t c = 0; c < d; ++c) yr[c] = (xr[c] - mu) * rstd * gamma[c] + beta[c];
    if (stats) {
      stats[2 * r] = mu;
      stats[2 * r + 1] = rstd;
    }
  }
}

void gelu_st(const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  if (ops::avx512_supported()) {
    ops::gelu_avx512(x, y, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    y[i] = 0.5f * v * (1.0f + std::erf(v * 0.7071067811865476f));
  }
}

void gelu_grad_acc_st(const float* x, const float* dy, float* dx, int64_t n) {
  if (n <= 0) return;
  if (ops::avx512_supported()) {
    ops::gelu_grad_acc_avx512(x, dy, dx, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float cdf = 0.5f * (1.0f + std::erf(v * 0.7071067811865476f));
    const float pdf = 0.3989422804014327f * std::exp(-0.5f * v * v);
    dx[i] += dy[i] * (cdf + v * pdf);
  }
}

void swiglu_st(const float* gate, const float* up, float* out, int64_t n) {
  ops::avx512_supported() ? ops::swiglu_avx512(gate, up, out, n)
                          : ops::swiglu_scalar(gate, up, out, n);
}

void axpy_st(float alpha, const float* x, float* y, int64_t n) {
  ops::avx512_supported() ? ops::axpy_avx512(alpha, x, y, n) : ops::axpy_scalar(alpha, x, y, n);
}

void softmax_rows_st(const float* x, float* y, int64_t rows, int64_t d) {
  if (rows <= 0 || d <= 0) return;
  ops::avx512_supported() ? ops::softmax_rows_avx512(x, y, rows, d)
                          : ops::softmax_rows_scalar(x, y, rows, d);
}

void topk_st(const float* x, int64_t d, int64_t k, int32_t* idx, float* val) {
  DELTAMOE_CHECK(0 <= k && k <= d, "kernels", "topk: k=", k, " outside [0, ", d, "]");
  if (k == 0) return;
  // Insertion into a sorted list of k: O(d·k), best for the small k of routing. A strict
  // "greater" keeps the earlier index ahead on ties; NaN ranks below every number.
  const auto greater = [](float a, float b) { return a > b || (std::isnan(b) && !std::isnan(a)); };
  int64_t filled = 0;
  for (int64_t i = 0; i < d; ++i) {
    const float v = x[i];
    if (filled == k && !greater(v, val[k - 1])) continue;
    int64_t pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && greater(v, val[pos - 1])) {
      val[pos] = val[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    val[pos] = v;
    idx[pos] = static_cast<int32_t>(i);
  }
}

}  // namespace deltamoe::kernels
