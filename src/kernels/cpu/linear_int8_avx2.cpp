// AVX2 integer dot kernel for int8 weights (layout in linear_impl.h) and int8-quantised x.
//
// vpmaddubsw needs one unsigned operand, so it multiplies |x| by w with x's sign moved onto w
// (vpsignb twice; |q| ≤ 127 keeps the pair sums within int16) and vpmaddwd adds the pairs into
// int32 lanes. In the weights' stored order (groups of 16 blocks, 4 inputs of each block after
// each other) each 32-byte step gives one lane per block, so a group's 8 steps sum whole blocks
// in int32 lanes before one conversion and multiply-add with the blocks' scales d_w · d_x (x is
// put in the same order once per call). One weight row is read once for up to 4 x rows (it stays
// in L1 for the rows after), and, as the f32 dot kernels, one output at a time, so a column
// range is one sequential stream: decode is bound by reading 1.0625 bytes per weight.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/linear_impl.h"

#define DM_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DM_INLINE __attribute__((always_inline)) inline

namespace deltamoe::kernels {

namespace {

DM_AVX2 DM_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Software prefetch distance in the weight stream. The integer kernel does more work per byte
// than the f32 / bf16 dot kernels, and the hardware prefetchers alone left it at 15 GB/s (1
// thread) / 23 GB/s (2 threads) from DRAM where bf16 reads 16 / 29; 1.5-3 KiB ahead gave 21-24
// / 28-38 (BM_gemv_dram_rows_int8, Zen 3; 2 KiB is two rows of a K = 1024 matrix). With the
// weights in groups (session 24) 4 KiB did better than 1 or 2 KiB on Zen 4 with the AVX2 path
// forced (one row, one thread: 44-51 µs per 1024 x 1024 against 50-62 at 1 KiB, 43-55 at 2;
// the old per-block kernel 42-43 there). A prefetch past the end of the matrix is harmless
// (prefetches do not fault).
constexpr int64_t kPrefetchBytes = 4096;

// Per int32 lane, the sum of the 4 byte products w · x of that lane.
DM_AVX2 DM_INLINE __m256i block_dot(__m256i w, __m256i x) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// One group of `width` blocks (kQGroup, or fewer at the end of a row; stored order, so a
// 32-byte load holds 4 inputs of each of 8 blocks): the integer block sums of M rows of x
// (same order) accumulate in int32 lanes (lo: blocks 0-7, hi: 8-15) over the group's 8 steps,
// then are converted and multiply-added with the combined scales d_w · d_x, lo then hi.
template <int M, bool Full>
DM_AVX2 DM_INLINE void dot_group(const int8_t* wg, const uint16_t* dg, int64_t width,
                                 const int8_t* xg, const float* xdg, int64_t kp, int64_t kb,
                                 __m256 acc[M]) {
  __m256i lo[M], hi[M];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
  // Partial groups: masked loads of the first min(width, 8) and width - 8 dwords of a step.
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mlo = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(width)), lane);
  const __m256i mhi = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(width) - 8), lane);
  const int64_t step = Full ? 64 : 4 * width;
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) {
    if (v % 2 == 0)  // 2 of the 8 cache lines kPrefetchBytes ahead per 2 steps
      for (int j = 0; j < 2; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(wg + kPrefetchBytes + 64 * (v + j)),
                     _MM_HINT_T0);
    const auto* wv = reinterpret_cast<const int*>(wg + step * v);
    const __m256i wlo = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wv))
                             : _mm256_maskload_epi32(wv, mlo);
    const __m256i whi = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wv + 8))
                             : _mm256_maskload_epi32(wv + 8, mhi);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      const auto* xv = reinterpret_cast<const int*>(xg + r * kp + step * v);
      const __m256i xlo = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv))
                               : _mm256_maskload_epi32(xv, mlo);
      const __m256i xhi = Full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xv + 8))
                               : _mm256_maskload_epi32(xv + 8, mhi);
      lo[r] = _mm256_add_epi32(lo[r], block_dot(wlo, xlo));
      hi[r] = _mm256_add_epi32(hi[r], block_dot(whi, xhi));
    }
  }
  // The f16 scales; a partial group's through a zero-padded copy (a 16-wide load could pass the
  // matrix's end).
  alignas(32) uint16_t d16[kQGroup] = {};
  if (!Full) __builtin_memcpy(d16, dg, static_cast<size_t>(width) * 2);
  const uint16_t* ds = Full ? dg : d16;
  const __m256 dlo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ds)));
  const __m256 dhi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ds + 8)));
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) {
    const float* xd = xdg + r * kb;
    const __m256 xlo = Full ? _mm256_loadu_ps(xd) : _mm256_maskload_ps(xd, mlo);
    const __m256 xhi = Full ? _mm256_loadu_ps(xd + 8) : _mm256_maskload_ps(xd + 8, mhi);
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lo[r]), _mm256_mul_ps(dlo, xlo), acc[r]);
    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi[r]), _mm256_mul_ps(dhi, xhi), acc[r]);
  }
}

// s[r] = row n of W · x row r (x in the stored order), for M rows, a group of 16 blocks (512
// inputs) per step. Every row is summed in the same order whatever M is, so a row's result
// does not depend on the rows batched with it.
template <int M>
DM_AVX2 void dot_rows(const int8_t* wq, const uint16_t* wd, int64_t kb, const int8_t* xs,
                      const float* xd, int64_t kp, float* s) {
  __m256 acc[M];
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t g0 = 0; g0 < kb; g0 += kQGroup) {
    const int8_t* wg = wq + g0 * kQBlock;
    if (kb - g0 >= kQGroup) {
      dot_group<M, true>(wg, wd + g0, kQGroup, xs + g0 * kQBlock, xd + g0, kp, kb, acc);
    } else {
      dot_group<M, false>(wg, wd + g0, kb - g0, xs + g0 * kQBlock, xd + g0, kp, kb, acc);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < M; ++r) s[r] = hsum(acc[r]);
}

template <int M>
DM_AVX2 void rows_block(const LinearArgs& a, const int8_t* xs, const float* xd, int64_t r0,
                        int64_t c0, int64_t c1) {
  const int64_t k = a.w->in_features(), n_rows = a.w->out_features();
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  const char* base = static_cast<const char*>(a.w->data());
  const auto* q = reinterpret_cast<const int8_t*>(base);
  const auto* d = reinterpret_cast<const uint16_t*>(base + int8_scales_offset(n_rows, k));
  float s[M];
  for (int64_t n = c0; n < c1; ++n) {
    dot_rows<M>(q + n * kp, d + n * kb, kb, xs + r0 * kp, xd + r0 * kb, kp, s);
#pragma GCC unroll 4
    for (int r = 0; r < M; ++r) {
      float& out = a.y[(r0 + r) * a.ldy + n];
      out = a.accumulate ? out + s[r] : s[r];
    }
  }
}

// Loads a full block of 32 floats into v and returns max |x| in `amax`; false when the block
// holds NaN or ±Inf (x − x is 0 only for finite x).
DM_AVX2 DM_INLINE bool load_block(const float* x, __m256 v[4], float& amax) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  for (int j = 0; j < 4; ++j) {
    v[j] = _mm256_loadu_ps(x + 8 * j);
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[j]));
    bad = _mm256_or_ps(bad,
                       _mm256_cmp_ps(_mm256_sub_ps(v[j], v[j]), _mm256_setzero_ps(), _CMP_NEQ_UQ));
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  amax = _mm_cvtss_f32(h);
  return _mm256_movemask_ps(bad) == 0;
}

// q[0..32) = round-to-nearest-even(v · inv) (the default MXCSR mode, as std::nearbyint),
// clamped to [-127, 127].
DM_AVX2 DM_INLINE void store_quants(const __m256 v[4], float inv, int8_t* q) {
  const __m256 s = _mm256_set1_ps(inv);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  __m256i i[4];
  for (int j = 0; j < 4; ++j)
    i[j] = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(v[j], s))));
  const __m256i p16 =
      _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(p16, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

}  // namespace

DM_AVX2 void quantize_rows_int8_avx2(const float* x, int64_t m, int64_t ldx, int64_t k, int8_t* q,
                                     float* d) {
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock, kfull = k / kQBlock;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = 0; b < kfull; ++b) {
      const float* xb = x + r * ldx + b * kQBlock;
      int8_t* qb = q + r * kp + b * kQBlock;
      __m256 v[4];
      float am = 0.0f;
      if (!load_block(xb, v, am)) {
        quantize_block_int8(xb, kQBlock, qb, d + r * kb + b);  // NaN out
        continue;
      }
      d[r * kb + b] = am / 127.0f;
      // |x · 127 / max| ≤ 127: the clamp never acts here.
      store_quants(v, am > 0.0f ? 127.0f / am : 0.0f, qb);
    }
    if (kfull < kb)
      quantize_block_int8(x + r * ldx + kfull * kQBlock, k - kfull * kQBlock,
                          q + r * kp + kfull * kQBlock, d + r * kb + kfull);
  }
}

DM_AVX2 void quantize_weight_row_int8_avx2(const float* w, int64_t k, int64_t row, int8_t* q,
                                           uint16_t* d) {
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kfull = k / kQBlock;
  for (int64_t b = 0; b < kfull; ++b) {
    const float* wb = w + b * kQBlock;
    __m256 v[4];
    float am = 0.0f;
    if (!load_block(wb, v, am) || am / 127.0f > 65504.0f) {
      quantize_weight_block_int8(wb, kQBlock, row, b * kQBlock, q + b * kQBlock, d + b);  // throws
      continue;
    }
    const uint16_t d16 = f32_to_f16(am / 127.0f);
    const float scale = f16_to_f32(d16);
    d[b] = d16;
    store_quants(v, scale > 0.0f ? 1.0f / scale : 0.0f, q + b * kQBlock);
  }
  if (kfull < kb)
    quantize_weight_block_int8(w + kfull * kQBlock, k - kfull * kQBlock, row, kfull * kQBlock,
                               q + kfull * kQBlock, d + kfull);
}

DM_AVX2 void dequantize_rows_int8_avx2(const int8_t* q, const uint16_t* d, int64_t rows, int64_t k,
                                       float* dst) {
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock, kfull = k / kQBlock;
  alignas(64) int8_t natural[kQGroup * kQBlock];
  for (int64_t n = 0; n < rows; ++n) {
    float* out = dst + n * k;
    for (int64_t g0 = 0; g0 < kb; g0 += kQGroup) {
      const int64_t width = std::min(kQGroup, kb - g0);
      int8_group_to_natural(q + n * kp + g0 * kQBlock, width, natural);
      for (int64_t b = g0; b < g0 + width; ++b) {
        const int8_t* qb = natural + (b - g0) * kQBlock;
        if (b == kfull) {  // the partial last block
          const float s = f16_to_f32(d[n * kb + b]);
          for (int64_t c = kfull * kQBlock; c < k; ++c)
            out[c] = s * static_cast<float>(qb[c - kfull * kQBlock]);
          continue;
        }
        const __m256 s = _mm256_set1_ps(f16_to_f32(d[n * kb + b]));
        for (int j = 0; j < 4; ++j) {
          const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qb + 8 * j));
          _mm256_storeu_ps(out + b * kQBlock + 8 * j,
                           _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8))));
        }
      }
    }
  }
}

void linear_int8_avx2(const LinearArgs& a, const int8_t* xq, const float* xd, void* scratch) {
  const int64_t kb = (a.w->in_features() + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  // x's quants in the weights' stored order.
  auto* xs = static_cast<int8_t*>(scratch);
  for (int64_t r = 0; r < a.m; ++r) int8_to_stored_order(xq + r * kp, kb, xs + r * kp);
  // Column blocks of about 128 KiB of weights stay in L2 while each group of 4 rows of x passes
  // over them.
  const int64_t row_bytes = kb * (kQBlock + 2);
  const int64_t block = std::max<int64_t>(8, (int64_t{128} << 10) / row_bytes / 8 * 8);
  for (int64_t c0 = a.n_begin; c0 < a.n_end; c0 += block) {
    const int64_t c1 = std::min(a.n_end, c0 + block);
    for (int64_t r0 = 0; r0 < a.m; r0 += 4) {
      switch (std::min<int64_t>(4, a.m - r0)) {
        case 4:
          rows_block<4>(a, xs, xd, r0, c0, c1);
          break;
        case 3:
          rows_block<3>(a, xs, xd, r0, c0, c1);
          break;
        case 2:
          rows_block<2>(a, xs, xd, r0, c0, c1);
          break;
        default:
          rows_block<1>(a, xs, xd, r0, c0, c1);
          break;
      }
    }
  }
}

}  // namespace deltamoe::kernels
