// AVX2/FMA dot-product kernels for y = x · Wᵀ with W in row-major [N, K] layout (a mapped
// checkpoint used in place, see WeightLayout::row_major in cpu.h).
//
// Each output is a dot product of an x row with a W row, both contiguous along k, reduced
// horizontally once at the end. Up to 3 x rows at a time against a column block of W that
// stays in L2: every output is summed the same way whatever the row count, and the kernel is
// bound by reading W once (m = 1, decode) or by L1/L2 loads (a few rows). Many rows go to
// OpenBLAS instead (linear_rows.cpp). bf16 weights are widened to f32 in registers
// (zero-extend, shift left 16).
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/linear_impl.h"

#define DM_AVX2 __attribute__((target("avx2,fma")))
#define DM_INLINE __attribute__((always_inline)) inline

namespace deltamoe::kernels {

namespace {

template <bool kBf16>
DM_AVX2 DM_INLINE __m256 load_w(const void* w, int64_t i) {
  if constexpr (kBf16) {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  }
}

template <bool kBf16>
DM_INLINE float w_at(const void* w, int64_t i) {
  if constexpr (kBf16) {
    return bf16_to_f32(static_cast<const uint16_t*>(w)[i]);
  } else {
    return static_cast<const float*>(w)[i];
  }
}

DM_AVX2 DM_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// s[r] = x[r, :] · W[n, :] for M rows of x and one output: U accumulators per row (k unrolled
// by 8U) hide the FMA latency, and each W vector, loaded once, feeds the M rows. One output at
// a time reads W as one sequential stream (the rows of a column range are contiguous), which
// is what lets the hardware prefetcher keep a decode step at the memory's rate: measured on
// Zen 3 against 2-8 outputs at a time and software prefetch 4-32 KiB ahead (docs/kernels.md),
// this was the fastest at m = 1 from DRAM. Every row's sum is formed in the same order
// whatever M is, so a row's result does not depend on the rows batched with it (bitwise).
// pf: when not null, a W row (of the next column block) to read into L2 as the k loop goes.
template <int M, int U, bool kBf16>
DM_AVX2 void dot_rows(const float* x, int64_t ldx, const void* w, int64_t k, int64_t n, float* s,
                      const char* pf) {
  __m256 acc[M][U];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) acc[r][u] = _mm256_setzero_ps();
  const int64_t step = 8 * U;
  const int64_t kmain = k / step * step;
  const int64_t base = n * k;
  // W loads are unaligned: safetensors aligns tensors to 8 bytes only (a shard of the
  // reference model has every tensor at 48 mod 64). Summing the elements up to W's next
  // 32-byte boundary first, so that no load straddles two cache lines, measured 3-4% slower
  // at decode, not faster.
  constexpr int64_t kElem = kBf16 ? 2 : 4;
  for (int64_t kk = 0; kk < kmain; kk += step) {
    if (pf != nullptr) {
#pragma GCC unroll 4
      for (int64_t j = 0; j < step * kElem; j += 64) _mm_prefetch(pf + kk * kElem + j, _MM_HINT_T1);
    }
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const __m256 wv = load_w<kBf16>(w, base + kk + 8 * u);
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r)
        acc[r][u] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + kk + 8 * u), wv, acc[r][u]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) {
    const float* xr = x + r * ldx;
    __m256 a = acc[r][0];
#pragma GCC unroll 8
    for (int u = 1; u < U; ++u) a = _mm256_add_ps(a, acc[r][u]);
    int64_t kk = kmain;
    for (; kk + 8 <= k; kk += 8)
      a = _mm256_fmadd_ps(_mm256_loadu_ps(xr + kk), load_w<kBf16>(w, base + kk), a);
    float v = hsum(a);
    for (; kk < k; ++kk) v += xr[kk] * w_at<kBf16>(w, base + kk);
    s[r] = v;
  }
}

// Rows r0 .. r0 + M - 1 of y over columns [c0, c1), the `group`-th of `groups` row groups
// passing over this column block. The first reads W from memory; each later one computes from
// L2 and reads a share of the next column block [c1, c1 + c1 - c0) into L2 meanwhile (every
// (groups - 1)-th W row), so that memory keeps streaming and the next block's first group
// finds its rows in L2 (as the AVX-512 kernel, linear_rows_dot_avx512.cpp).
template <int M, bool kBf16>
DM_AVX2 void rows_block(const LinearArgs& a, const float* x, int64_t ldx, int64_t r0, int64_t c0,
                        int64_t c1, int64_t group, int64_t groups) {
  constexpr int kU = 4;
  const int64_t k = a.w->in_features();
  const auto* w_bytes = static_cast<const char*>(a.w->data());
  const int64_t row_bytes = k * (kBf16 ? 2 : 4);
  // bf16 only: widening bf16 to f32 gives the later groups enough work per byte to hide the
  // reads; in f32 they measured mixed (faster at 8-15 rows, slower at 4; Zen 4 forced to this
  // kernel, docs/kernels.md).
  constexpr bool kFetch = kBf16;
  float s[M];
  for (int64_t n = c0; n < c1; ++n) {
    const int64_t next = c1 + (n - c0);
    const bool fetch =
        kFetch && group > 0 && next < a.n_end && (n - c0) % (groups - 1) == group - 1;
    dot_rows<M, kU, kBf16>(x + r0 * ldx, ldx, a.w->data(), k, n, s,
                           fetch ? w_bytes + next * row_bytes : nullptr);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      float& out = a.y[(r0 + r) * a.ldy + n];
      out = a.accumulate ? out + s[r] : s[r];
    }
  }
}

template <bool kBf16>
DM_AVX2 void rows_avx2(const LinearArgs& a, const float* x, int64_t ldx) {
  // Column blocks of about 128 KiB of weights stay in L2 while each group of up to 3 rows of x
  // (in L1) passes over them.
  const int64_t row_bytes = a.w->in_features() * (kBf16 ? 2 : 4);
  const int64_t block = std::max<int64_t>(8, (int64_t{128} << 10) / row_bytes / 8 * 8);
  for (int64_t c0 = a.n_begin; c0 < a.n_end; c0 += block) {
    const int64_t c1 = std::min(a.n_end, c0 + block);
    // bf16: near-equal groups (4 rows as 2 + 2, not 3 + 1), as a one-row group computes too
    // little to hide its share of the next block's reads. f32 keeps groups of 3 and no reads
    // ahead (3 + 1 was faster than 2 + 2 there: the first group, which reads W from memory,
    // does more with it).
    const int64_t groups = (a.m + 2) / 3;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t r0 = kBf16 ? a.m * g / groups : 3 * g;
      const int64_t r1 = kBf16 ? a.m * (g + 1) / groups : std::min(a.m, r0 + 3);
      switch (r1 - r0) {
        case 3:
          rows_block<3, kBf16>(a, x, ldx, r0, c0, c1, g, groups);
          break;
        case 2:
          rows_block<2, kBf16>(a, x, ldx, r0, c0, c1, g, groups);
          break;
        default:
          rows_block<1, kBf16>(a, x, ldx, r0, c0, c1, g, groups);
          break;
      }
    }
  }
}

}  // namespace

void linear_rows_avx2(const LinearArgs& a, const float* x, int64_t ldx) {
  if (a.w->dtype() == DType::bf16) {
    rows_avx2<true>(a, x, ldx);
  } else {
    rows_avx2<false>(a, x, ldx);
  }
}

}  // namespace deltamoe::kernels
