// AVX-512 versions of the hot element-wise ops. exp is a range reduction
// x = n·ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial for e^r (truncation error
// < 6e-9 relative, below f32 rounding) and vscalefps for 2^n, which also gives inf on
// overflow and 0/subnormals on underflow without special cases.

#include <immintrin.h>

#include <cmath>

#include "kernels/cpu/avx512_util.h"
#include "kernels/cpu/ops_impl.h"

#define DM_AVX512 __attribute__((target("avx512f")))
#define DM_INLINE __attribute__((always_inline)) inline

DM_AVX512_WARNINGS_PUSH  // see avx512_util.h

namespace deltamoe::kernels::ops {
namespace {

DM_AVX512 DM_INLINE __m512 exp_ps(__m512 x) {
  // min(hi, x) returns x when x is NaN, so NaN propagates.
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(100.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 high bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);     // ln2 low bits
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// x / (1 + exp(-x)): silu(x), and with x = 2u·... the tanh-GELU (see below).
DM_AVX512 DM_INLINE __m512 silu_ps(__m512 x) {
  const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

DM_AVX512 DM_INLINE __mmask16 tail(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// Applies f to 16-float vectors of x, masked on the tail.
template <typename F>
DM_AVX512 DM_INLINE void map1(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, f(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(y + i, m, f(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

// Φ(x) and φ(x) for exact GELU and its VJP: erf(|x|/√2) by Abramowitz & Stegun 7.1.26
// (absolute error ≤ 1.5e-7, below what f32 resolves in Φ), sharing its exp(−x²/2) with φ.
DM_AVX512 DM_INLINE void cdf_pdf(__m512 x, __m512& cdf, __m512& pdf) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 a = _mm512_mul_ps(ax, _mm512_set1_ps(0.70710678118654752f));  // |x|/√2
  const __m512 e = exp_ps(_mm512_mul_ps(_mm512_mul_ps(a, a), _mm512_set1_ps(-1.0f)));
  const __m512 t = _mm512_div_ps(
      _mm512_set1_ps(1.0f), _mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
  __m512 q = _mm512_set1_ps(1.061405429f);
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-1.453152027f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.421413741f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(-0.284496736f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(0.254829592f));
  q = _mm512_mul_ps(q, t);
  const __m512 erf_abs = _mm512_fnmadd_ps(q, e, _mm512_set1_ps(1.0f));  // erf(|x|/√2)
  // Φ(x) = ½(1 + sign(x)·erf(|x|/√2))
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 half_erf = _mm512_mul_ps(erf_abs, _mm512_set1_ps(0.5f));
  cdf = _mm512_mask_sub_ps(_mm512_add_ps(_mm512_set1_ps(0.5f), half_erf), neg, _mm512_set1_ps(0.5f),
                           half_erf);
  pdf = _mm512_mul_ps(e, _mm512_set1_ps(0.39894228040143268f));
}

}  // namespace

// Functors rather than lambdas: the target attribute must be on the call operator.
struct ExpOp {
  DM_AVX512 DM_INLINE __m512 operator()(__m512 v) const { return exp_ps(v); }
};
struct SiluOp {
  DM_AVX512 DM_INLINE __m512 operator()(__m512 v) const { return silu_ps(v); }
};
// 0.5·x·(1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi)·(x + 0.044715·x³).
struct GeluTanhOp {
  DM_AVX512 DM_INLINE __m512 operator()(__m512 v) const {
    const __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    const __m512 u2 = _mm512_mul_ps(_mm512_set1_ps(-2.0f * 0.7978845608028654f),
                                    _mm512_fmadd_ps(v3, _mm512_set1_ps(0.044715f), v));
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_ps(u2)));
  }
};

DM_AVX512 void exp_avx512(const float* x, float* y, int64_t n) {
  map1(x, y, n, ExpOp{});
}
DM_AVX512 void silu_avx512(const float* x, float* y, int64_t n) {
  map1(x, y, n, SiluOp{});
}
DM_AVX512 void gelu_tanh_avx512(const float* x, float* y, int64_t n) {
  map1(x, y, n, GeluTanhOp{});
}

DM_AVX512 void swiglu_avx512(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i,
                     _mm512_mul_ps(silu_ps(_mm512_loadu_ps(gate + i)), _mm512_loadu_ps(up + i)));
  if (i < n) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(out + i, m,
                          _mm512_mul_ps(silu_ps(_mm512_maskz_loadu_ps(m, gate + i)),
                                        _mm512_maskz_loadu_ps(m, up + i)));
  }
}

DM_AVX512 void axpy_avx512(float alpha, const float* x, float* y, int64_t n) {
  const __m512 a = _mm512_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = tail(n - i);
    _mm512_mask_storeu_ps(
        y + i, m,
        _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

DM_AVX512 void softmax_rows_avx512(const float* x, float* y, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* yr = y + r * d;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < d; i += 16)
      mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(d - i), xr + i));
    const float m = _mm512_reduce_max_ps(mx);
    if (m == -INFINITY) {  // fully masked row: uniform, as the scalar version
      for (int64_t i = 0; i < d; ++i) yr[i] = 1.0f / static_cast<float>(d);
      continue;
    }
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 t = tail(d - i);
      const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(t, xr + i), mv));
      sum = _mm512_mask_add_ps(sum, t, sum, e);
      _mm512_mask_storeu_ps(yr + i, t, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 t = tail(d - i);
      _mm512_mask_storeu_ps(yr + i, t, _mm512_mul_ps(_mm512_maskz_loadu_ps(t, yr + i), inv));
    }
  }
}

DM_AVX512 void gelu_avx512(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    __m512 cdf, pdf;
    cdf_pdf(v, cdf, pdf);
    _mm512_storeu_ps(y + i, _mm512_mul_ps(v, cdf));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    __m512 cdf, pdf;
    cdf_pdf(v, cdf, pdf);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, cdf));
  }
}

DM_AVX512 void gelu_grad_acc_avx512(const float* x, const float* dy, float* dx, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    __m512 cdf, pdf;
    cdf_pdf(v, cdf, pdf);
    const __m512 d = _mm512_fmadd_ps(v, pdf, cdf);
    _mm512_storeu_ps(dx + i, _mm512_fmadd_ps(_mm512_loadu_ps(dy + i), d, _mm512_loadu_ps(dx + i)));
  }
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    __m512 cdf, pdf;
    cdf_pdf(v, cdf, pdf);
    const __m512 d = _mm512_fmadd_ps(v, pdf, cdf);
    _mm512_mask_storeu_ps(
        dx + i, m,
        _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dy + i), d, _mm512_maskz_loadu_ps(m, dx + i)));
  }
}

}  // namespace deltamoe::kernels::ops

DM_AVX512_WARNINGS_POP
