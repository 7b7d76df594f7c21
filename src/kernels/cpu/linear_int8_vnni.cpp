// AVX-512 VNNI integer dot kernel for int8 weights (layout in linear_impl.h): --dtype int8 at
// every row count on CPUs with vpdpbusd and without AMX (with AMX: below its 8 rows).
//
// vpdpbusd multiplies unsigned by signed bytes and adds groups of 4 into int32 lanes, exactly
// (no int16 saturation as in vpmaddubsw). x is prepared once per call: its quants in the
// weights' stored order (groups of 16 blocks, 4 inputs of each block after each other), plus
// 128 as unsigned bytes, so one 64-byte load holds 4 inputs of each of 16 blocks and vpdpbusd
// sums whole blocks in its 16 lanes over a group's 8 loads. The 128 · Σw it adds is one more
// vpdpbusd per weight load (of a vector of 128s), shared by every row of x and subtracted per
// group, before one conversion and multiply-add with the 16 blocks' scales d_w · d_x. About 2
// instructions per 64 weight bytes and x row, against 5 when every 2 blocks needed a conversion
// and a scale (the previous kernel) and 16 for the AVX2 kernel's first version. The integer
// block sums are the AVX2 kernel's; only the f32 summation order differs. One output at a time,
// up to 4 x rows per weight row, every row summed in the same order whatever the number of rows.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/linear_impl.h"

#define DM_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define DM_INLINE __attribute__((always_inline)) inline

namespace deltamoe::kernels {

namespace {

// Bytes ahead of the weight stream fetched by software (as in the AVX2 kernel). With one row of
// x, a single sequential stream, only where one_row_prefetch(): Zen 4's hardware prefetchers
// follow it better alone (the model's decode with and without, alternated per chunk in one
// process: 1.05-1.19x without), Intel's stop at every 4 KiB page (AMX Xeon: 1.08x with).
constexpr int64_t kPrefetchBytes = 4096;

// (The maskz / explicit forms throughout: GCC 12 warns about the unmasked intrinsics'
// undefined pass-through operands.)
DM_VNNI inline float hsum(__m512 v) {
  const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 0));
  const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1));
  __m256 s = _mm256_add_ps(lo, hi);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// One group of `width` blocks (kQGroup, or fewer at the end of a row) of one weight row against
// M rows of x (x + 128 in the same order, xug; f32 scales xdg, row stride kb).
template <int M, bool Full>
DM_VNNI DM_INLINE void dot_group(const int8_t* wg, const uint16_t* dg, int64_t width,
                                 const uint8_t* xug, const float* xdg, int64_t kp, int64_t kb,
                                 __m512 acc[M]) {
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  // Partial groups: 8 steps of 4 · width bytes, read with masked loads.
  const auto mb = static_cast<__mmask64>(Full ? ~0ull : (1ull << (4 * width)) - 1);
  const auto ms = static_cast<__mmask16>(Full ? 0xFFFF : (1u << width) - 1);
  const int64_t step = Full ? 64 : 4 * width;
  __m512i corr0 = zero, corr1 = zero, ia[M], ib[M];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) ia[r] = ib[r] = zero;
#pragma GCC unroll 4
  for (int v = 0; v < 8; v += 2) {
    const int8_t* w = wg + step * v;
    const __m512i w0 = Full ? _mm512_loadu_si512(w) : _mm512_maskz_loadu_epi8(mb, w);
    const __m512i w1 = Full ? _mm512_loadu_si512(w + step) : _mm512_maskz_loadu_epi8(mb, w + step);
    corr0 = _mm512_dpbusd_epi32(corr0, c128, w0);
    corr1 = _mm512_dpbusd_epi32(corr1, c128, w1);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      const uint8_t* x = xug + r * kp + step * v;
      ia[r] = _mm512_dpbusd_epi32(
          ia[r], Full ? _mm512_loadu_si512(x) : _mm512_maskz_loadu_epi8(mb, x), w0);
      ib[r] = _mm512_dpbusd_epi32(
          ib[r], Full ? _mm512_loadu_si512(x + step) : _mm512_maskz_loadu_epi8(mb, x + step), w1);
    }
  }
  const __m512i corr = _mm512_add_epi32(corr0, corr1);
  const __m512 dw =
      _mm512_maskz_cvtph_ps(0xFFFF, Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dg))
                                         : _mm256_maskz_loadu_epi16(ms, dg));
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) {
    const __m512i t = _mm512_sub_epi32(_mm512_add_epi32(ia[r], ib[r]), corr);
    const __m512 xd =
        Full ? _mm512_loadu_ps(xdg + r * kb) : _mm512_maskz_loadu_ps(ms, xdg + r * kb);
    acc[r] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, t), _mm512_mul_ps(dw, xd), acc[r]);
  }
}

template <int M>
DM_VNNI void dot_rows(const int8_t* wq, const uint16_t* wd, int64_t kb, const uint8_t* xu,
                      const float* xd, int64_t kp, bool prefetch, float* s) {
  __m512 acc[M];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < kb; g0 += kQGroup) {
    const int8_t* wg = wq + g0 * kQBlock;
    if (M > 1 || prefetch) {
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wg + kPrefetchBytes + 64 * j), _MM_HINT_T1);
    }
    if (kb - g0 >= kQGroup) {
      dot_group<M, true>(wg, wd + g0, kQGroup, xu + g0 * kQBlock, xd + g0, kp, kb, acc);
    } else {
      dot_group<M, false>(wg, wd + g0, kb - g0, xu + g0 * kQBlock, xd + g0, kp, kb, acc);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) s[r] = hsum(acc[r]);
}

template <int M>
DM_VNNI void rows_block(const LinearArgs& a, const uint8_t* xu, const float* xd, int64_t r0,
                        int64_t c0, int64_t c1) {
  const int64_t k = a.w->in_features(), n_rows = a.w->out_features();
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  const char* base = static_cast<const char*>(a.w->data());
  const auto* q = reinterpret_cast<const int8_t*>(base);
  const auto* d = reinterpret_cast<const uint16_t*>(base + int8_scales_offset(n_rows, k));
  float s[M];
  const bool prefetch = M == 1 && one_row_prefetch();
  for (int64_t n = c0; n < c1; ++n) {
    dot_rows<M>(q + n * kp, d + n * kb, kb, xu + r0 * kp, xd + r0 * kb, kp, prefetch, s);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      float& out = a.y[(r0 + r) * a.ldy + n];
      out = a.accumulate ? out + s[r] : s[r];
    }
  }
}

}  // namespace

DM_VNNI void linear_int8_vnni(const LinearArgs& a, const int8_t* xq, const float* xd,
                              void* scratch) {
  const int64_t k = a.w->in_features();
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  // x's quants + 128 (as unsigned bytes: q XOR 0x80) in the weights' stored order, per row.
  auto* xu = static_cast<uint8_t*>(scratch);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t r = 0; r < a.m; ++r) {
    auto* row = reinterpret_cast<int8_t*>(xu + r * kp);
    int8_to_stored_order(xq + r * kp, kb, row);
    for (int64_t c = 0; c < kp; c += 64) {
      const auto mk = static_cast<__mmask64>(kp - c >= 64 ? ~0ull : (1ull << (kp - c)) - 1);
      _mm512_mask_storeu_epi8(row + c, mk,
                              _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, row + c), flip));
    }
  }
  // Column blocks of about 128 KiB of weights stay in L2 while each group of 4 rows of x passes
  // over them (as the AVX2 kernel).
  const int64_t block = std::max<int64_t>(8, (int64_t{128} << 10) / (kb * (kQBlock + 2)) / 8 * 8);
  for (int64_t c0 = a.n_begin; c0 < a.n_end; c0 += block) {
    const int64_t c1 = std::min(a.n_end, c0 + block);
    for (int64_t r0 = 0; r0 < a.m; r0 += 4) {
      switch (std::min<int64_t>(4, a.m - r0)) {
        case 4:
          rows_block<4>(a, xu, xd, r0, c0, c1);
          break;
        case 3:
          rows_block<3>(a, xu, xd, r0, c0, c1);
          break;
        case 2:
          rows_block<2>(a, xu, xd, r0, c0, c1);
          break;
        default:
          rows_block<1>(a, xu, xd, r0, c0, c1);
          break;
      }
    }
  }
}

}  // namespace deltamoe::kernels
