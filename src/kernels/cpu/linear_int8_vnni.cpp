// AVX-512 VNNI integer dot kernel for int8 weights (layout in linear_impl.h): the decode path of
// --dtype int8 on CPUs with vpdpbusd.
//
// vpdpbusd multiplies unsigned by signed bytes and adds groups of 4 into int32 lanes, exactly
// (no int16 saturation as in vpmaddubsw). x is prepared once per call: |q_x| as bytes and the
// sign bits of q_x as one 64-bit mask per 64 bytes; per weight vector (two blocks of 32) and
// x row, a masked subtraction moves x's sign onto w, one vpdpbusd forms both blocks' 8 partial
// sums, which are converted and multiply-added with the blocks' combined scales d_w · d_x
// (lanes 0-7 the first block's, 8-15 the second's, permuted out of 8 scales formed at once).
// About 5 instructions per 64 weight bytes and x row, against 16 for the AVX2 kernel (which
// was bound by them, not by memory, at one row: 14.5 GB/s per core from L3 on this machine).
// The integer block sums are the AVX2 kernel's; only the f32 summation order differs. One
// output at a time, up to 4 x rows per weight row, every row summed in the same order whatever
// the number of rows.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/linear_impl.h"

#define DM_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

namespace deltamoe::kernels {

namespace {

// Bytes ahead of the weight stream fetched by software (as in the AVX2 kernel), with several
// rows of x only: one row is a single sequential stream, which the hardware prefetchers follow
// better alone (Zen 4, the model's decode with old and new code alternated per chunk in one
// process: 1.05-1.19x without it at one row, 0.97x at 16 sequences).
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

template <int M>
DM_VNNI void dot_rows(const int8_t* wq, const uint16_t* wd, int64_t kb, const uint8_t* xa,
                      const uint64_t* xn, int64_t ldn, const float* xd, int64_t kp, float* s) {
  __m512 acc[M];
  __m256 tail[M];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) {
    acc[r] = _mm512_setzero_ps();
    tail[r] = _mm256_setzero_ps();
  }
  const __m512i zero = _mm512_setzero_si512();
  const __m512i idx[4] = {_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                          _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
                          _mm512_setr_epi32(4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5),
                          _mm512_setr_epi32(6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7)};
  const int64_t kb8 = kb / 8 * 8;
  for (int64_t b0 = 0; b0 < kb8; b0 += 8) {
    if constexpr (M > 1) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wq + b0 * kQBlock + kPrefetchBytes + 64 * j),
                     _MM_HINT_T1);
    }
    const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wd + b0)));
    __m512 dc[M];
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r)
      dc[r] = _mm512_maskz_mov_ps(
          0x00FF, _mm512_castps256_ps512(_mm256_mul_ps(dw, _mm256_loadu_ps(xd + r * kb + b0))));
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const int64_t off = (b0 + 2 * j) * kQBlock;
      const __m512i w = _mm512_loadu_si512(wq + off);
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r) {
        const __mmask64 neg = xn[r * ldn + off / 64];
        const __m512i ws = _mm512_mask_sub_epi8(w, neg, zero, w);
        const __m512i x = _mm512_loadu_si512(xa + r * kp + off);
        const __m512i p = _mm512_dpbusd_epi32(zero, x, ws);
        acc[r] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, p),
                                 _mm512_maskz_permutexvar_ps(0xFFFF, idx[j], dc[r]), acc[r]);
      }
    }
  }
  // The last kb % 8 blocks one at a time (K = 32 · kb with kb not a multiple of 8).
  for (int64_t b = kb8; b < kb; ++b) {
    const float dw = _cvtsh_ss(wd[b]);
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wq + b * kQBlock));
    const __m256i zero8 = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      const auto neg = static_cast<__mmask32>(xn[r * ldn + b / 2] >> (32 * (b % 2)));
      const __m256i ws = _mm256_mask_sub_epi8(w, neg, zero8, w);
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xa + r * kp + b * 32));
      const __m256i p = _mm256_dpbusd_epi32(zero8, x, ws);
      tail[r] =
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * xd[r * kb + b]), tail[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r)
    s[r] =
        hsum(_mm512_add_ps(acc[r], _mm512_maskz_mov_ps(0x00FF, _mm512_castps256_ps512(tail[r]))));
}

template <int M>
DM_VNNI void rows_block(const LinearArgs& a, const uint8_t* xa, const uint64_t* xn, int64_t ldn,
                        const float* xd, int64_t r0, int64_t c0, int64_t c1) {
  const int64_t k = a.w->in_features(), n_rows = a.w->out_features();
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  const char* base = static_cast<const char*>(a.w->data());
  const auto* q = reinterpret_cast<const int8_t*>(base);
  const auto* d = reinterpret_cast<const uint16_t*>(base + int8_scales_offset(n_rows, k));
  float s[M];
  for (int64_t n = c0; n < c1; ++n) {
    dot_rows<M>(q + n * kp, d + n * kb, kb, xa + r0 * kp, xn + r0 * ldn, ldn, xd + r0 * kb, kp, s);
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
  const int64_t ldn = (kp + 63) / 64;
  // |q_x| and the sign masks, per row.
  const size_t xa_bytes = static_cast<size_t>(a.m * kp + 63) / 64 * 64;
  auto* xa = static_cast<uint8_t*>(scratch);
  auto* xn = reinterpret_cast<uint64_t*>(xa + xa_bytes);
  for (int64_t r = 0; r < a.m; ++r) {
    for (int64_t c = 0; c < kp; c += 64) {
      const auto mk = static_cast<__mmask64>(kp - c >= 64 ? ~0ull : (1ull << (kp - c)) - 1);
      const __m512i v = _mm512_maskz_loadu_epi8(mk, xq + r * kp + c);
      xn[r * ldn + c / 64] = _mm512_movepi8_mask(v);
      _mm512_mask_storeu_epi8(xa + r * kp + c, mk, _mm512_abs_epi8(v));
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
          rows_block<4>(a, xa, xn, ldn, xd, r0, c0, c1);
          break;
        case 3:
          rows_block<3>(a, xa, xn, ldn, xd, r0, c0, c1);
          break;
        case 2:
          rows_block<2>(a, xa, xn, ldn, xd, r0, c0, c1);
          break;
        default:
          rows_block<1>(a, xa, xn, ldn, xd, r0, c0, c1);
          break;
      }
    }
  }
}

}  // namespace deltamoe::kernels
