// Private to kernels/cpu: the scalar and AVX-512 versions of the element-wise ops, so tests
// can check both in one process (the public *_st functions pick one at run time).
#pragma once

#include <cstdint>

namespace deltamoe::kernels::ops {

/// Whether the AVX-512 versions can run here (AVX-512F and not DELTAMOE_DISABLE_AVX512).
bool avx512_supported();

void silu_scalar(const float* x, float* y, int64_t n);
void gelu_tanh_scalar(const float* x, float* y, int64_t n);
void swiglu_scalar(const float* gate, const float* up, float* out, int64_t n);
void axpy_scalar(float alpha, const float* x, float* y, int64_t n);
void softmax_rows_scalar(const float* x, float* y, int64_t rows, int64_t d);

/// exp(x) for each element with the AVX-512 polynomial (max relative error ~2 ulp for
/// x in [-87, 88]; overflow gives inf, underflow 0 or a subnormal). Exposed for tests.
void exp_avx512(const float* x, float* y, int64_t n);
void silu_avx512(const float* x, float* y, int64_t n);
void gelu_tanh_avx512(const float* x, float* y, int64_t n);
void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n);
void axpy_avx512(float alpha, const float* x, float* y, int64_t n);
void softmax_rows_avx512(const float* x, float* y, int64_t rows, int64_t d);
/// Exact GELU and dx += dy·GELU'(x) with erf from Abramowitz & Stegun 7.1.26 (|error| ≤
/// 1.5e-7), in place allowed (x == y).
void gelu_avx512(const float* x, float* y, int64_t n);
void gelu_grad_acc_avx512(const float* x, const float* dy, float* dx, int64_t n);

}  // namespace deltamoe::kernels::ops
