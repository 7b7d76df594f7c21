// AVX2/FMA fallback kernels for y = x · Wᵀ on the packed layout of linear_impl.h (for CPUs
// without AVX-512, and for DELTAMOE_DISABLE_AVX512=1).
//
// 16 ymm registers: a 32-column panel is 4 ymm, so the f32 microkernel takes 3 rows
// (12 accumulators) and lets the FMAs read the weights from L1 as memory operands.
// bf16 weights are widened to f32 in registers (a bf16 pair word w: low half << 16 is the
// even k, high half masked is the odd k), 2 rows x 4 ymm. x is rounded to bf16 first so all
// bf16 implementations compute the same products.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/linear_impl.h"

#define DM_AVX2 __attribute__((target("avx2,fma")))
#define DM_INLINE __attribute__((always_inline)) inline

namespace deltamoe::kernels {

namespace {

constexpr int64_t kMc = 96;
constexpr int64_t kKc = 128;

DM_AVX2 DM_INLINE __m256i tail_mask(int64_t cols) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)), idx);
}

template <int MR>
DM_AVX2 void micro_f32(const float* x, int64_t ldx, const float* w, int64_t kc, float* y,
                       int64_t ldy, int64_t cols, bool load_c) {
  __m256 c[MR][4];
  __m256i mask[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) mask[j] = tail_mask(cols - 8 * j);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      c[r][j] = load_c ? _mm256_maskload_ps(y + r * ldy + 8 * j, mask[j]) : _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const __m256 b = _mm256_broadcast_ss(x + r * ldx + k);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) c[r][j] = _mm256_fmadd_ps(b, _mm256_load_ps(w + 8 * j), c[r][j]);
    }
    w += 32;
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm256_maskstore_ps(y + r * ldy + 8 * j, mask[j], c[r][j]);
}

// xr: bf16-rounded x as f32, row stride ldxr (even, zero padded); w: 64 bf16 per k-pair.
template <int MR>
DM_AVX2 void micro_bf16(const float* xr, int64_t ldxr, const uint16_t* w, int64_t k2c, float* y,
                        int64_t ldy, int64_t cols, bool load_c) {
  __m256 c[MR][4];
  __m256i mask[4];
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) mask[j] = tail_mask(cols - 8 * j);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j)
      c[r][j] = load_c ? _mm256_maskload_ps(y + r * ldy + 8 * j, mask[j]) : _mm256_setzero_ps();
  for (int64_t k = 0; k < k2c; ++k) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 16 * j));
      const __m256 w_even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 w_odd = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        c[r][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + r * ldxr + 2 * k), w_even, c[r][j]);
        c[r][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + r * ldxr + 2 * k + 1), w_odd, c[r][j]);
      }
    }
    w += 64;
  }
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm256_maskstore_ps(y + r * ldy + 8 * j, mask[j], c[r][j]);
}

}  // namespace

DM_AVX2 void linear_f32_avx2(const LinearArgs& a) {
  constexpr int kMr = 3;
  const int64_t k_dim = a.w->in_features();
  const float* w_all = static_cast<const float*>(a.w->data());
  for (int64_t rb = 0; rb < a.m; rb += kMc) {
    const int64_t rows = std::min(kMc, a.m - rb);
    const int64_t kc_max = rows <= kMr ? k_dim : kKc;
    for (int64_t n0 = a.n_begin; n0 < a.n_end; n0 += kPanel) {
      const int64_t cols = std::min(kPanel, a.n_end - n0);
      const float* wp = w_all + (n0 / kPanel) * k_dim * kPanel;
      for (int64_t k0 = 0; k0 < k_dim; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, k_dim - k0);
        const bool load_c = a.accumulate || k0 > 0;
        for (int64_t r0 = 0; r0 < rows; r0 += kMr) {
          const float* x = a.x + (rb + r0) * a.ldx + k0;
          float* y = a.y + (rb + r0) * a.ldy + n0;
          switch (std::min<int64_t>(kMr, rows - r0)) {
            case 1:
              micro_f32<1>(x, a.ldx, wp + k0 * kPanel, kc, y, a.ldy, cols, load_c);
              break;
            case 2:
              micro_f32<2>(x, a.ldx, wp + k0 * kPanel, kc, y, a.ldy, cols, load_c);
              break;
            default:
              micro_f32<3>(x, a.ldx, wp + k0 * kPanel, kc, y, a.ldy, cols, load_c);
              break;
          }
        }
      }
    }
  }
}

DM_AVX2 void linear_bf16_avx2(const LinearArgs& a) {
  constexpr int kMr = 2;
  const int64_t k_dim = a.w->in_features();
  const int64_t k2 = (k_dim + 1) / 2;
  const int64_t ldxr = 2 * k2;
  const uint16_t* w_all = static_cast<const uint16_t*>(a.w->data());
  float* xr = static_cast<float*>(
      thread_scratch(static_cast<size_t>(std::min(kMc, a.m) * ldxr) * sizeof(float)));
  for (int64_t rb = 0; rb < a.m; rb += kMc) {
    const int64_t rows = std::min(kMc, a.m - rb);
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = a.x + (rb + r) * a.ldx;
      for (int64_t k = 0; k < k_dim; ++k) xr[r * ldxr + k] = bf16_to_f32(f32_to_bf16(src[k]));
      if (k_dim < ldxr) xr[r * ldxr + k_dim] = 0.0f;
    }
    const int64_t kc_max = rows <= kMr ? k2 : kKc / 2;
    for (int64_t n0 = a.n_begin; n0 < a.n_end; n0 += kPanel) {
      const int64_t cols = std::min(kPanel, a.n_end - n0);
      const uint16_t* wp = w_all + (n0 / kPanel) * k2 * kPanel * 2;
      for (int64_t k0 = 0; k0 < k2; k0 += kc_max) {
        const int64_t kc = std::min(kc_max, k2 - k0);
        const bool load_c = a.accumulate || k0 > 0;
        for (int64_t r0 = 0; r0 < rows; r0 += kMr) {
          const float* x = xr + r0 * ldxr + 2 * k0;
          float* y = a.y + (rb + r0) * a.ldy + n0;
          const uint16_t* w = wp + k0 * kPanel * 2;
          if (rows - r0 >= 2) {
            micro_bf16<2>(x, ldxr, w, kc, y, a.ldy, cols, load_c);
          } else {
            micro_bf16<1>(x, ldxr, w, kc, y, a.ldy, cols, load_c);
          }
        }
      }
    }
  }
}

}  // namespace deltamoe::kernels
