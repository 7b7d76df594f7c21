// TEMPORARY (branch `train` only, removed once the `kernels` branch lands on main): minimal
// implementations of the kernels the library references, so the CLI and tests link.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "deltamoe/kernels/cpu.h"

namespace deltamoe::kernels {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

PackedLinear::PackedLinear(const Tensor& w, DType dtype)
    : n_(w.size(0)), k_(w.size(1)), panel_(16), dtype_(DType::f32) {
  (void)dtype;
  data_ = w.to(DType::f32).storage();
}
size_t PackedLinear::weight_bytes() const { return static_cast<size_t>(n_ * k_) * 4; }

void linear_st(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy, bool accumulate) {
  const float* wp = static_cast<const float*>(w.data()) + n_begin * w.in_features();
  if (m == 0 || n_end <= n_begin) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
              static_cast<int>(n_end - n_begin), static_cast<int>(w.in_features()), 1.0f, x,
              static_cast<int>(ldx), wp, static_cast<int>(w.in_features()), accumulate ? 1.0f : 0.0f,
              y + n_begin, static_cast<int>(ldy));
}
void linear(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, float* y, int64_t ldy,
            bool accumulate) {
  linear_st(x, m, ldx, w, 0, w.out_features(), y, ldy, accumulate);
}
void linear_naive(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int64_t c = 0; c < k; ++c) s += x[i * k + c] * w[j * k + c];
      y[i * n + j] = s;
    }
}
void silu_st(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}
void gelu_tanh_st(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = 0.5f * x[i] * (1.0f + std::tanh(0.7978845608f * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}
void gelu_st(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678f));
}
void swiglu_st(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
void axpy_st(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
void softmax_rows_st(const float* x, float* y, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const float m = *std::max_element(x + r * d, x + (r + 1) * d);
    float s = 0.0f;
    for (int64_t c = 0; c < d; ++c) s += (y[r * d + c] = std::exp(x[r * d + c] - m));
    for (int64_t c = 0; c < d; ++c) y[r * d + c] /= s;
  }
}
void topk_st(const float* x, int64_t d, int64_t k, int32_t* idx, float* val) {
  std::vector<int32_t> order(static_cast<size_t>(d));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  for (int64_t i = 0; i < k; ++i) {
    idx[i] = order[static_cast<size_t>(i)];
    val[i] = x[order[static_cast<size_t>(i)]];
  }
}
const char* linear_impl_name(DType) { return "tmp-cblas"; }

}  // namespace deltamoe::kernels
