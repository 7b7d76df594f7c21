// AVX-512 kernels for y = x · Wᵀ on the packed layout of linear_impl.h.
//
// Microkernel: kMr rows of x times one 32-column panel = 2 zmm accumulators per row
// (kMr = 12 gives 24 accumulators + 2 weight registers of the 32 zmm). Per k it loads the
// panel's 32 weights (two aligned zmm loads) once and uses each in kMr FMAs against a
// broadcast x[r, k], so it issues 2·kMr FMAs per 2 + kMr loads: FMA-bound, with 24 independent
// dependency chains (> FMA latency 4 × 1 zmm FMA/cycle on Zen 4). x is read through row
// pointers, not packed k-major: the MoE layer calls us on narrow column blocks, where a
// transposed copy of x would cost a noticeable fraction of the FMAs (a straight row copy,
// done below to fix the stride, costs ~1/N of them).
// Cache blocking: rows in blocks of kMc (x block in L2), K in slices of kKc; the
// kKc x 32 weight sliver is reused from L1/L2 by every row block.
// Only these functions carry the AVX-512 target attribute; they run only when
// cpu_features() says the CPU has the extensions.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "kernels/cpu/avx512_util.h"
#include "kernels/cpu/linear_impl.h"

#define DM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define DM_INLINE __attribute__((always_inline)) inline

namespace deltamoe::kernels {

namespace {

constexpr int kMr = 12;  // rows per microkernel call
// Blocking, measured on Zen 4 (docs/kernels.md): slicing K finely to keep the weight sliver
// in L1 lost more to re-loading the accumulators than it gained (L2 feeds 2 zmm per k
// easily), so K is sliced only past 512 (f32: 64 KiB sliver in L2).
#ifndef DM_TUNE_MC  // overridable only for tuning experiments
#define DM_TUNE_MC 192
#define DM_TUNE_KC 512
#define DM_TUNE_COPY 4
#endif
constexpr int64_t kMc = DM_TUNE_MC;  // rows per block: x block (768 KiB at K=1024) in L2
constexpr int64_t kKc = DM_TUNE_KC;  // k per slice (f32); bf16 uses kKc k-pairs

constexpr int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

struct Masks {
  __mmask16 lo, hi;
};

Masks column_masks(int64_t cols) {
  if (cols >= 32) return {0xFFFF, 0xFFFF};
  if (cols >= 16) return {0xFFFF, static_cast<__mmask16>((1u << (cols - 16)) - 1)};
  return {static_cast<__mmask16>((1u << cols) - 1), 0};
}

#ifndef DM_TUNE_PF
#define DM_TUNE_PF 0
#endif
// Software prefetch distance, in k steps (128 bytes of weights each), for the tiny-MR
// kernels that stream weights from memory (decode); 0 = none. With the weights on 2 MiB
// pages (Storage) the hardware prefetchers stream a whole expert without restarting at
// every 4 KiB page, and software prefetch only adds instructions: bench/micro_kernels
// BM_gemv_dram, single thread, bf16 ~60-65 us per 2 MiB matrix without it vs ~72 us at 64
// steps and ~100 us at 16 steps (f32: 130-140 us either way). On 4 KiB pages 8..24 steps
// had been best.
constexpr int kPrefetchK = DM_TUNE_PF;
#ifndef DM_TUNE_PF_BF16
#define DM_TUNE_PF_BF16 0
#endif
constexpr int kPrefetchKBf16 = DM_TUNE_PF_BF16;

// Independent accumulator sets for tiny MR, so the k loop is not bound by FMA latency
// (1 row = 2 chains otherwise; decode is m = 1).
template <int MR>
constexpr int kSets = MR == 1 ? 4 : (MR == 2 ? 2 : 1);

// f32: y[0:MR, 0:32] (+)= x[0:MR, 0:kc] · w_sliverᵀ. x row r at x + r*ldx; w at 32 floats per k.
template <int MR>
DM_AVX512 DM_INLINE void micro_f32(const float* x, int64_t ldx, const float* w, int64_t kc,
                                   float* y, int64_t ldy, Masks mk, bool load_c) {
  constexpr int S = kSets<MR>;
  __m512 c0[S][MR], c1[S][MR];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) c0[s][r] = c1[s][r] = _mm512_setzero_ps();
  if (load_c) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      c0[0][r] = _mm512_maskz_loadu_ps(mk.lo, y + r * ldy);
      c1[0][r] = _mm512_maskz_loadu_ps(mk.hi, y + r * ldy + 16);
    }
  }
  int64_t k = 0;
  if constexpr (S > 1) {
    for (; k + S <= kc; k += S) {
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        if constexpr (kPrefetchK > 0) {
          _mm_prefetch(reinterpret_cast<const char*>(w + 32 * (kPrefetchK + s)), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w + 32 * (kPrefetchK + s) + 16), _MM_HINT_T0);
        }
        const __m512 w0 = _mm512_load_ps(w + 32 * s), w1 = _mm512_load_ps(w + 32 * s + 16);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const __m512 b = _mm512_set1_ps(x[r * ldx + k + s]);
          c0[s][r] = _mm512_fmadd_ps(b, w0, c0[s][r]);
          c1[s][r] = _mm512_fmadd_ps(b, w1, c1[s][r]);
        }
      }
      w += 32 * S;
    }
  }
  for (; k < kc; ++k) {
    const __m512 w0 = _mm512_load_ps(w), w1 = _mm512_load_ps(w + 16);
    w += 32;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 b = _mm512_set1_ps(x[r * ldx + k]);
      c0[0][r] = _mm512_fmadd_ps(b, w0, c0[0][r]);
      c1[0][r] = _mm512_fmadd_ps(b, w1, c1[0][r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    __m512 a0 = c0[0][r], a1 = c1[0][r];
#pragma GCC unroll 4
    for (int s = 1; s < S; ++s) {
      a0 = _mm512_add_ps(a0, c0[s][r]);
      a1 = _mm512_add_ps(a1, c1[s][r]);
    }
    _mm512_mask_storeu_ps(y + r * ldy, mk.lo, a0);
    _mm512_mask_storeu_ps(y + r * ldy + 16, mk.hi, a1);
  }
}

// bf16: x as bf16 pairs (uint32 per k-pair), row r at xb + r*ldxb; w: 64 bf16 per k-pair.
template <int MR>
DM_AVX512 DM_INLINE void micro_bf16(const uint32_t* xb, int64_t ldxb, const uint16_t* w,
                                    int64_t k2c, float* y, int64_t ldy, Masks mk, bool load_c) {
  constexpr int S = kSets<MR>;
  __m512 c0[S][MR], c1[S][MR];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) c0[s][r] = c1[s][r] = _mm512_setzero_ps();
  if (load_c) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      c0[0][r] = _mm512_maskz_loadu_ps(mk.lo, y + r * ldy);
      c1[0][r] = _mm512_maskz_loadu_ps(mk.hi, y + r * ldy + 16);
    }
  }
  int64_t k = 0;
  if constexpr (S > 1) {
    for (; k + S <= k2c; k += S) {
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        if constexpr (kPrefetchKBf16 > 0) {
          _mm_prefetch(reinterpret_cast<const char*>(w + 64 * (kPrefetchKBf16 + s)), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(w + 64 * (kPrefetchKBf16 + s) + 32),
                       _MM_HINT_T0);
        }
        const __m512bh w0 = (__m512bh)_mm512_load_si512(w + 64 * s);
        const __m512bh w1 = (__m512bh)_mm512_load_si512(w + 64 * s + 32);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
          const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(xb[r * ldxb + k + s]));
          c0[s][r] = _mm512_dpbf16_ps(c0[s][r], b, w0);
          c1[s][r] = _mm512_dpbf16_ps(c1[s][r], b, w1);
        }
      }
      w += 64 * S;
    }
  }
  for (; k < k2c; ++k) {
    const __m512bh w0 = (__m512bh)_mm512_load_si512(w);
    const __m512bh w1 = (__m512bh)_mm512_load_si512(w + 32);
    w += 64;
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(xb[r * ldxb + k]));
      c0[0][r] = _mm512_dpbf16_ps(c0[0][r], b, w0);
      c1[0][r] = _mm512_dpbf16_ps(c1[0][r], b, w1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    __m512 a0 = c0[0][r], a1 = c1[0][r];
#pragma GCC unroll 4
    for (int s = 1; s < S; ++s) {
      a0 = _mm512_add_ps(a0, c0[s][r]);
      a1 = _mm512_add_ps(a1, c1[s][r]);
    }
    _mm512_mask_storeu_ps(y + r * ldy, mk.lo, a0);
    _mm512_mask_storeu_ps(y + r * ldy + 16, mk.hi, a1);
  }
}

template <int MR>
DM_AVX512 void micro_f32_call(const float* x, int64_t ldx, const float* w, int64_t kc, float* y,
                              int64_t ldy, Masks mk, bool load_c) {
  micro_f32<MR>(x, ldx, w, kc, y, ldy, mk, load_c);
}
template <int MR>
DM_AVX512 void micro_bf16_call(const uint32_t* xb, int64_t ldxb, const uint16_t* w, int64_t k2c,
                               float* y, int64_t ldy, Masks mk, bool load_c) {
  micro_bf16<MR>(xb, ldxb, w, k2c, y, ldy, mk, load_c);
}

using MicroF32 = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, Masks,
                          bool);
using MicroBf16 = void (*)(const uint32_t*, int64_t, const uint16_t*, int64_t, float*, int64_t,
                           Masks, bool);

template <int... I>
constexpr auto make_f32_table(std::integer_sequence<int, I...>) {
  return std::array<MicroF32, sizeof...(I)>{&micro_f32_call<I + 1>...};
}
template <int... I>
constexpr auto make_bf16_table(std::integer_sequence<int, I...>) {
  return std::array<MicroBf16, sizeof...(I)>{&micro_bf16_call<I + 1>...};
}
constexpr auto kMicroF32 = make_f32_table(std::make_integer_sequence<int, kMr>{});
constexpr auto kMicroBf16 = make_bf16_table(std::make_integer_sequence<int, kMr>{});

// Splits `rows` into ceil(rows / kMr) blocks of near-equal size (16 rows -> 8 + 8, not
// 12 + 4: a 4-row block has too few accumulators to hide FMA latency as well).
template <typename F>
void for_row_blocks(int64_t rows, F&& f) {
  const int64_t blocks = (rows + kMr - 1) / kMr;
  int64_t r = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t e = rows * (b + 1) / blocks;
    f(r, e - r);
    r = e;
  }
}

}  // namespace

DM_AVX512 void convert_rows_bf16_avx512(const float* x, int64_t rows, int64_t ldx, int64_t k,
                                        uint32_t* xb, int64_t ldxb) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * ldx;
    uint32_t* dst = xb + r * ldxb;
    for (int64_t c = 0; c < 2 * ldxb; c += 32) {
      const int64_t left = std::clamp<int64_t>(k - c, 0, 32);
      const __mmask16 m_lo = static_cast<__mmask16>(left >= 16 ? 0xFFFF : (1u << left) - 1);
      const __mmask16 m_hi =
          static_cast<__mmask16>(left >= 32 ? 0xFFFF : (left <= 16 ? 0 : (1u << (left - 16)) - 1));
      const __m512 lo = _mm512_maskz_loadu_ps(m_lo, src + c);
      const __m512 hi = _mm512_maskz_loadu_ps(m_hi, src + c + 16);
      const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);  // lo in elements 0..15
      _mm512_store_si512(dst + c / 2, (__m512i)v);
    }
  }
}

namespace {

// k per slice for a row block of `rows` rows: a small block reuses the weights only across
// its own rows, so it takes K whole.
constexpr int64_t slice_len(int64_t rows, int64_t len) {
  return rows <= kMr ? len : kKc;
}

// The loops over panels, k slices and microkernel row blocks for one block of `rows` rows of
// x starting at row rb: x as f32 rows (kBf16 false) or bf16 pairs, `ldx` elements apart,
// `len` words per row (f32: K; bf16: K/2 rounded up). Shared by the packed-layout drivers and
// the row-major one. panel(n0, cols) returns the packed panel of columns [n0, n0 + cols) as
// 32-bit words; after_call() runs after every microkernel call.
template <bool kBf16, typename Panel, typename AfterCall>
DM_AVX512 DM_INLINE void run_panels(const LinearArgs& a, int64_t rb, int64_t rows, const void* x,
                                    int64_t ldx, int64_t len, Panel&& panel,
                                    AfterCall&& after_call) {
  const int64_t kc_max = slice_len(rows, len);
  for (int64_t n0 = a.n_begin; n0 < a.n_end; n0 += kPanel) {
    const int64_t cols = std::min(kPanel, a.n_end - n0);
    const Masks mk = column_masks(cols);
    const uint32_t* wp = panel(n0, cols);
    for (int64_t k0 = 0; k0 < len; k0 += kc_max) {
      const int64_t kc = std::min(kc_max, len - k0);
      const bool load_c = a.accumulate || k0 > 0;
      for_row_blocks(rows, [&](int64_t r0, int64_t mr) {
        float* y = a.y + (rb + r0) * a.ldy + n0;
        if constexpr (kBf16) {
          kMicroBf16[mr - 1](static_cast<const uint32_t*>(x) + r0 * ldx + k0, ldx,
                             reinterpret_cast<const uint16_t*>(wp + k0 * kPanel), kc, y, a.ldy, mk,
                             load_c);
        } else {
          kMicroF32[mr - 1](static_cast<const float*>(x) + r0 * ldx + k0, ldx,
                            reinterpret_cast<const float*>(wp + k0 * kPanel), kc, y, a.ldy, mk,
                            load_c);
        }
        after_call();
      });
    }
  }
}

}  // namespace

DM_AVX512 void linear_f32_avx512(const LinearArgs& a) {
  const int64_t k_dim = a.w->in_features();
  const float* w_all = static_cast<const float*>(a.w->data());
  // x rows are re-strided into scratch (a plain row copy, ~1/N of the FMA work) with a
  // stride that is not a multiple of 4 KiB: the microkernel reads up to 12 rows at once and
  // with ldx = 1024 floats they would all map to one L1 set (8 ways) and evict each other.
  const bool copy_x = a.m > DM_TUNE_COPY;
  const int64_t ldp = copy_x ? round_up(k_dim, 16) + 16 : a.ldx;
  float* xs = copy_x ? static_cast<float*>(thread_scratch(
                           static_cast<size_t>(std::min(kMc, a.m) * ldp) * sizeof(float)))
                     : nullptr;
  for (int64_t rb = 0; rb < a.m; rb += kMc) {
    const int64_t rows = std::min(kMc, a.m - rb);
    const float* xb = a.x + rb * a.ldx;
    if (copy_x) {
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(xs + r * ldp, xb + r * a.ldx, static_cast<size_t>(k_dim) * sizeof(float));
      xb = xs;
    }
    run_panels<false>(
        a, rb, rows, xb, ldp, k_dim,
        [&](int64_t n0, int64_t) {
          return reinterpret_cast<const uint32_t*>(w_all + (n0 / kPanel) * k_dim * kPanel);
        },
        [] {});
  }
}

DM_AVX512 void linear_bf16_avx512(const LinearArgs& a) {
  const int64_t k_dim = a.w->in_features();
  const int64_t k2 = (k_dim + 1) / 2;
  // +16 words: a row stride that is a multiple of 4 KiB would put all rows in one L1 set.
  const int64_t ldxb = round_up(k2, 16) + 16;
  const uint16_t* w_all = static_cast<const uint16_t*>(a.w->data());
  uint32_t* xb = static_cast<uint32_t*>(
      thread_scratch(static_cast<size_t>(std::min(kMc, a.m) * ldxb) * sizeof(uint32_t)));
  for (int64_t rb = 0; rb < a.m; rb += kMc) {
    const int64_t rows = std::min(kMc, a.m - rb);
    convert_rows_bf16_avx512(a.x + rb * a.ldx, rows, a.ldx, k_dim, xb, ldxb);
    run_panels<true>(
        a, rb, rows, xb, ldxb, k2,
        [&](int64_t n0, int64_t) {
          return reinterpret_cast<const uint32_t*>(w_all + (n0 / kPanel) * k2 * kPanel * 2);
        },
        [] {});
  }
}

// ---------------------------------------------------------------- row-major weights

DM_AVX512_WARNINGS_PUSH  // see avx512_util.h

namespace {
#ifndef DM_TUNE_PACK_PF
#define DM_TUNE_PACK_PF 128
#endif
// Words each weight row is read ahead of its transposition (0 = no software prefetch).
constexpr int64_t kPackPrefetchWords = DM_TUNE_PACK_PF;

// One panel of the packed layout from row-major weights, as 32-bit words (an f32, or a bf16
// k-pair): dst[l * 32 + c] = word l of W row c, for c < rows (zero up to 32) and l < len.
// src: row 0's first byte (any alignment), rows ld_bytes apart; dst 64-byte aligned.
DM_AVX512 void pack_panel_words(const char* src, int64_t ld_bytes, int64_t rows, int64_t len,
                                uint32_t* dst) {
  // One half-panel (16 rows) at a time: 16 sequential streams through the weights, each read
  // ahead by software prefetch (32 interleaved streams defeat the hardware prefetchers).
  for (int64_t h = 0; h < 32; h += 16) {
    if (h >= rows) {
      for (int64_t l = 0; l < len; ++l)
        _mm512_store_si512(dst + l * 32 + h, _mm512_setzero_si512());
      continue;
    }
    for (int64_t l0 = 0; l0 < len; l0 += 16) {
      const int64_t n = std::min<int64_t>(16, len - l0);
      const __mmask16 lm = static_cast<__mmask16>(n == 16 ? 0xFFFF : (1u << n) - 1);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        const char* row = src + (h + i) * ld_bytes;
        if (h + i < rows) {
          if (l0 + kPackPrefetchWords < len)
            _mm_prefetch(row + (l0 + kPackPrefetchWords) * 4, _MM_HINT_T0);
          r[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(lm, row + l0 * 4));
        } else {
          r[i] = _mm512_setzero_ps();
        }
      }
      transpose16(r);
      for (int64_t i = 0; i < n; ++i)
        _mm512_store_ps(reinterpret_cast<float*>(dst + (l0 + i) * 32 + h), r[i]);
    }
  }
}

}  // namespace

DM_AVX512 void linear_rows_avx512(const LinearArgs& a) {
  const bool bf16 = a.w->dtype() == DType::bf16;
  const int64_t k_dim = a.w->in_features();
  DELTAMOE_ASSERT(!bf16 || k_dim % 2 == 0, "linear_rows_avx512: odd K for bf16");
  const int64_t len = bf16 ? k_dim / 2 : k_dim;  // 32-bit words per weight row
  // x block: f32 rows (f32) or bf16 pairs (bf16), a row stride off multiples of 4 KiB (see
  // linear_f32_avx512); then one packed panel, 32 x len words. f32 rows whose stride is not a
  // multiple of 2 KiB are read in place (callers that pad their rows save the copy).
  const bool copy_x = bf16 || padded_row_stride(a.ldx) != a.ldx;
  const int64_t ldw = copy_x ? round_up(len, 16) + 16 : a.ldx;
  const int64_t rows_max = std::min(kMc, a.m);
  const size_t x_words = copy_x ? static_cast<size_t>(rows_max * ldw) : 0;
  const size_t panel_words = static_cast<size_t>(round_up(len, 16) * kPanel);
  auto* xs = static_cast<uint32_t*>(thread_scratch((x_words + panel_words) * sizeof(uint32_t)));
  uint32_t* panel = xs + x_words;
  const int64_t row_bytes = len * 4;
  // Near-equal row blocks (not kMc + a remainder): every block then has >= kPackRows*/2 rows,
  // so every microkernel call gets >= 6 rows and one accumulator set, and each output is the
  // same sequential sum over k whatever the batch it is in.
  const int64_t blocks = (a.m + kMc - 1) / kMc;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t rb = a.m * b / blocks, rows = a.m * (b + 1) / blocks - rb;
    const float* xr = a.x + rb * a.ldx;
    const void* xb = xs;
    if (bf16) {
      convert_rows_bf16_avx512(xr, rows, a.ldx, k_dim, xs, ldw);
    } else if (copy_x) {
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(xs + r * ldw, xr + r * a.ldx, static_cast<size_t>(k_dim) * sizeof(float));
    } else {
      xb = xr;
    }
    // Microkernel calls per panel.
    const int64_t kc_max = slice_len(rows, len);
    const int64_t calls = (len + kc_max - 1) / kc_max * ((rows + kMr - 1) / kMr);
    // One weight (and output) after the other over this x block: the second of a pair
    // (linear_st_pair) reuses the prepared rows.
    for (int which = 0; which < (a.w2 ? 2 : 1); ++which) {
      LinearArgs one = a;
      if (which == 1) {
        one.w = a.w2;
        one.y = a.y2;
      }
      const char* w_bytes = static_cast<const char*>(one.w->data());
      // The next panel's rows are one contiguous block: read it into L2 a share per
      // microkernel call, so that packing it waits less on memory (the weights of a prefill
      // are read once, from DRAM).
      const char* pf = nullptr;
      const char* pf_end = nullptr;
      int64_t pf_step = 0;
      auto pack = [&](int64_t n0, int64_t cols) {
        pack_panel_words(w_bytes + n0 * row_bytes, row_bytes, cols, len, panel);
        pf = w_bytes + (n0 + cols) * row_bytes;
        pf_end = w_bytes + std::min(one.n_end, n0 + cols + kPanel) * row_bytes;
        pf_step = ((pf_end - pf) / 64 + calls - 1) / calls * 64;
        return static_cast<const uint32_t*>(panel);
      };
      auto prefetch = [&] {
        for (const char* e = std::min(pf + pf_step, pf_end); pf < e; pf += 64)
          _mm_prefetch(pf, _MM_HINT_T1);
      };
      if (bf16) {
        run_panels<true>(one, rb, rows, xb, ldw, len, pack, prefetch);
      } else {
        run_panels<false>(one, rb, rows, xb, ldw, len, pack, prefetch);
      }
    }
  }
}

DM_AVX512_WARNINGS_POP

}  // namespace deltamoe::kernels
