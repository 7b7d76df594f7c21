// AVX-512 dot-product kernels for y = x · Wᵀ with W in row-major [N, K] layout and a few rows of
// x (decode): the AVX-512 counterpart of linear_rows_avx2.cpp, same blocking (up to 3 rows of x
// against a column block of W that stays in L2, one W row at a time as one sequential stream).
//
// Why: decode streams every weight once, and at 45-55 GB/s over two cores (what this VM's
// memory gives at times) the AVX2 kernel's instructions became the limit in bf16: per 64 bytes
// of W it issues 4 widening loads, 4 shifts and 4 FMAs per row. Here f32 takes 4 zmm FMAs per
// 256 bytes, and bf16 on AVX-512 BF16 CPUs 1 `vdpbf16ps` per 64 bytes against x rounded to
// bf16 once per call (convert_rows_bf16_avx512, as the prefill panels round it; every bf16 path
// multiplies bf16 x by bf16 W; each instruction adds two products per lane). Tails (K not a
// multiple of the step) use masked loads, whose masked-out lanes are zeros and never fault.
//
// Every row's sum is formed the same way whatever the number of rows, so a row's result does
// not depend on the rows batched with it (bitwise), as in the AVX2 kernel.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/avx512_util.h"
#include "kernels/cpu/linear_impl.h"

#define DM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define DM_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define DM_INLINE __attribute__((always_inline)) inline

DM_AVX512_WARNINGS_PUSH  // see avx512_util.h

namespace deltamoe::kernels {
namespace {

constexpr int kU = 4;  // accumulators per row: independent FMA chains that hide the latency

// s[r] = x[r, :] · W[n, :] in f32 for M rows.
template <int M>
DM_AVX512 DM_INLINE void dot_f32(const float* x, int64_t ldx, const float* w, int64_t k, float* s) {
  __m512 acc[M][kU];
#pragma GCC unroll 3
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u) acc[r][u] = _mm512_setzero_ps();
  constexpr int64_t step = 16 * kU;
  const int64_t kmain = k / step * step;
  for (int64_t kk = 0; kk < kmain; kk += step) {
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u) {
      const __m512 wv = _mm512_loadu_ps(w + kk + 16 * u);
#pragma GCC unroll 3
      for (int r = 0; r < M; ++r)
        acc[r][u] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * ldx + kk + 16 * u), wv, acc[r][u]);
    }
  }
  for (int64_t kk = kmain; kk < k; kk += 16) {
    const __mmask16 m = k - kk >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - kk)) - 1);
    const __m512 wv = _mm512_maskz_loadu_ps(m, w + kk);
#pragma GCC unroll 3
    for (int r = 0; r < M; ++r)
      acc[r][0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + r * ldx + kk), wv, acc[r][0]);
  }
#pragma GCC unroll 3
  for (int r = 0; r < M; ++r)
    s[r] = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
}

// s[r] = xb[r, :] · W[n, :] for M rows of bf16 x (row stride ldxb halves) against a bf16 W row.
template <int M>
DM_AVX512BF16 DM_INLINE void dot_bf16(const uint16_t* xb, int64_t ldxb, const uint16_t* w,
                                      int64_t k, float* s) {
  __m512 acc[M][kU];
#pragma GCC unroll 3
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u) acc[r][u] = _mm512_setzero_ps();
  constexpr int64_t step = 32 * kU;
  const int64_t kmain = k / step * step;
  for (int64_t kk = 0; kk < kmain; kk += step) {
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + kk + 32 * u);
#pragma GCC unroll 3
      for (int r = 0; r < M; ++r)
        acc[r][u] = _mm512_dpbf16_ps(acc[r][u],
                                     (__m512bh)_mm512_loadu_si512(xb + r * ldxb + kk + 32 * u), wv);
    }
  }
  for (int64_t kk = kmain; kk < k; kk += 32) {
    const __mmask32 m = k - kk >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (k - kk)) - 1);
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w + kk);
#pragma GCC unroll 3
    for (int r = 0; r < M; ++r)
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0],
                                   (__m512bh)_mm512_maskz_loadu_epi16(m, xb + r * ldxb + kk), wv);
  }
#pragma GCC unroll 3
  for (int r = 0; r < M; ++r)
    s[r] = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])));
}

template <int M>
DM_INLINE void store_rows(const LinearArgs& a, int64_t r0, int64_t n, const float* s) {
  for (int r = 0; r < M; ++r) {
    float& out = a.y[(r0 + r) * a.ldy + n];
    out = a.accumulate ? out + s[r] : s[r];
  }
}

// Rows r0 .. r0 + M - 1 of y over columns [c0, c1).
template <int M>
DM_AVX512 void block_f32(const LinearArgs& a, const float* x, int64_t ldx, int64_t r0, int64_t c0,
                         int64_t c1) {
  const int64_t k = a.w->in_features();
  const float* w = static_cast<const float*>(a.w->data());
  float s[M];
  for (int64_t n = c0; n < c1; ++n) {
    dot_f32<M>(x + r0 * ldx, ldx, w + n * k, k, s);
    store_rows<M>(a, r0, n, s);
  }
}

template <int M>
DM_AVX512BF16 void block_bf16(const LinearArgs& a, const uint16_t* xb, int64_t ldxb, int64_t r0,
                              int64_t c0, int64_t c1) {
  const int64_t k = a.w->in_features();
  const uint16_t* w = static_cast<const uint16_t*>(a.w->data());
  float s[M];
  for (int64_t n = c0; n < c1; ++n) {
    dot_bf16<M>(xb + r0 * ldxb, ldxb, w + n * k, k, s);
    store_rows<M>(a, r0, n, s);
  }
}

// Column blocks of about 128 KiB of weights stay in L2 while each group of up to 3 rows of x
// (in L1) passes over them; `run(M, r0, c0, c1)` does one group.
template <typename Run>
void over_blocks(const LinearArgs& a, int64_t row_bytes, Run&& run) {
  const int64_t block = std::max<int64_t>(8, (int64_t{128} << 10) / row_bytes / 8 * 8);
  for (int64_t c0 = a.n_begin; c0 < a.n_end; c0 += block) {
    const int64_t c1 = std::min(a.n_end, c0 + block);
    for (int64_t r0 = 0; r0 < a.m; r0 += 3) run(std::min<int64_t>(3, a.m - r0), r0, c0, c1);
  }
}

}  // namespace

void linear_rows_dot_avx512(const LinearArgs& a) {
  const int64_t k = a.w->in_features();
  if (a.w->dtype() != DType::bf16) {
    over_blocks(a, k * 4, [&](int64_t rows, int64_t r0, int64_t c0, int64_t c1) {
      if (rows == 3) block_f32<3>(a, a.x, a.ldx, r0, c0, c1);
      if (rows == 2) block_f32<2>(a, a.x, a.ldx, r0, c0, c1);
      if (rows == 1) block_f32<1>(a, a.x, a.ldx, r0, c0, c1);
    });
    return;
  }
  // x rounded to bf16 pairs, as the prefill panels and the AMX tiles take it.
  const int64_t ldw = (k + 31) / 32 * 16;  // words per row, a multiple of 16
  auto* xw = static_cast<uint32_t*>(thread_scratch(static_cast<size_t>(a.m * ldw) * 4));
  convert_rows_bf16_avx512(a.x, a.m, a.ldx, k, xw, ldw);
  const auto* xb = reinterpret_cast<const uint16_t*>(xw);
  over_blocks(a, k * 2, [&](int64_t rows, int64_t r0, int64_t c0, int64_t c1) {
    if (rows == 3) block_bf16<3>(a, xb, 2 * ldw, r0, c0, c1);
    if (rows == 2) block_bf16<2>(a, xb, 2 * ldw, r0, c0, c1);
    if (rows == 1) block_bf16<1>(a, xb, 2 * ldw, r0, c0, c1);
  });
}

}  // namespace deltamoe::kernels

DM_AVX512_WARNINGS_POP
