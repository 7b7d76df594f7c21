// Serving building blocks (see layers.h).
#include "serve/layers.h"

// GCC 12's AVX-512 headers use _mm512_undefined_ps() as a pass-through operand, which
// -Wmaybe-uninitialized reports once inlined into a target("avx512f") function.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "deltamoe/core/error.h"
#include "deltamoe/core/tensor.h"
#include "deltamoe/kernels/cpu_features.h"

namespace deltamoe::serve::detail {

void PackedLayer::set(std::vector<float> weight, std::vector<float> bias, int64_t out_features,
                      int64_t in_features) {
  DELTAMOE_CHECK(static_cast<int64_t>(weight.size()) == out_features * in_features &&
                     (bias.empty() || static_cast<int64_t>(bias.size()) == out_features),
                 "serve", "layer weights do not match ", out_features, "x", in_features);
  w = std::move(weight);
  b = std::move(bias);
  out = out_features;
  in = in_features;
  packed = kernels::PackedLinear(Tensor::wrap(w.data(), {out, in}, DType::f32), DType::f32);
}

void PackedLayer::apply(const float* x, int64_t m, float* y) const {
  if (b.empty()) {
    kernels::linear_st(x, m, in, packed, 0, out, y, out, /*accumulate=*/false);
    return;
  }
  for (int64_t r = 0; r < m; ++r) std::copy(b.begin(), b.end(), y + r * out);
  kernels::linear_st(x, m, in, packed, 0, out, y, out, /*accumulate=*/true);
}

namespace {

// exp(x) for x in [-88, 0]: x·log2(e) = n + f, |f| ≤ 1/2, 2^f by a degree-7 Taylor polynomial
// of e^(f·ln2) (relative error < 2e-9 on the interval), scaled by 2^n with vscalefps.
__attribute__((target("avx512f"))) inline __m512 exp_neg_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
  const __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(y, n), _mm512_set1_ps(0.69314718055994531f));
  // e^f, |f| ≤ 0.347: Horner on 1 + f + f²/2! + … + f⁷/7!
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// GELU with erf(z) = 1 − (a1·t + … + a5·t⁵)·e^(−z²), t = 1/(1 + p·z), z ≥ 0 (Abramowitz &
// Stegun 7.1.26, |error| ≤ 1.5e-7), odd extension for z < 0.
__attribute__((target("avx512f"))) inline __m512 gelu16(__m512 v) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512i sign_mask = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512 z = _mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f));
  const __m512 az = _mm512_abs_ps(z);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), az, one));
  __m512 poly = _mm512_set1_ps(1.061405429f);
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = exp_neg_avx512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)));
  const __m512 erf_abs = _mm512_fnmadd_ps(poly, e, one);  // 1 − poly·e
  const __m512 erf = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_castps_si512(erf_abs), _mm512_and_si512(_mm512_castps_si512(z), sign_mask)));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), v), _mm512_add_ps(one, erf));
}

__attribute__((target("avx512f"))) void gelu_avx512(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(x + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

}  // namespace

void gelu_inplace(float* x, int64_t n) {
  static const bool avx512 = cpu_features().avx512f;
  if (avx512) {
    gelu_avx512(x, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

void layer_norm_rows(const float* x, int64_t rows, int64_t d, const float* gamma, const float* beta,
                     float* y, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float mu = 0.0f;
    for (int64_t c = 0; c < d; ++c) mu += xr[c];
    mu /= static_cast<float>(d);
    float var = 0.0f;
    for (int64_t c = 0; c < d; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= static_cast<float>(d);
    const float rstd = 1.0f / std::sqrt(var + eps);
    for (int64_t c = 0; c < d; ++c) y[r * d + c] = (xr[c] - mu) * rstd * gamma[c] + beta[c];
  }
}

}  // namespace deltamoe::serve::detail
