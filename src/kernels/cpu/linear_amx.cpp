// AMX-BF16 kernel for y = x · Wᵀ on the packed bf16 layout of linear_impl.h.
//
// tdpbf16ps multiplies a 16 x 32 bf16 tile of x (A: 16 rows, 16 k-pairs of 4 bytes) by a
// 16 x 16 tile of weight pairs (B: 16 k-pair rows, 16 columns of 4 bytes) into 16 x 16 f32
// (C). A packed bf16 panel stores, per k-pair, 32 columns x (k even, k odd), i.e. two B-tile
// rows side by side: the panel is read in place as B tiles with a 128-byte stride, no
// re-packing. x is rounded to bf16 pairs once per call (convert_rows_bf16_avx512).
//
// Register blocking 2 x 2: C tiles 0-3 hold 32 rows x one 32-column panel, A tiles 4-5 two
// 16-row blocks of x, B tiles 6-7 the panel's two 16-column halves; per 32 k: 4 tile loads,
// 4 tdpbf16ps. Loop order panel-outer, rows-inner: a panel (K x 64 bytes, 64 KiB at K=1024)
// is read from memory once and re-used from L2 by every 32-row block.
//
// tdpbf16ps treats bf16 denormal inputs as zero and flushes denormal results (it ignores
// MXCSR); products are exact in f32 and summed in f32, as in the avx512 kernel, in another
// order. Each output depends only on its own row of x, so results do not depend on the row
// count. K must be a multiple of 32; other shapes take the avx512 kernel.
//
// Row-major weights (linear_rows_amx: a mapped bf16 checkpoint in place, or int8 weights)
// swap the roles: yᵀ = W · xᵀ, with W's rows as A tiles (16 rows x 32 bf16, read in place with
// the row stride; int8 rows are dequantised to bf16 32 rows at a time into scratch) and x as
// B tiles (x rounded to bf16 and transposed into k-pair rows of 16 x rows, once per call: x is
// small next to W). Each C tile (16 outputs x 16 rows) is transposed on the way out.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/linear_impl.h"

#define DM_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c,amx-tile,amx-bf16")))

namespace deltamoe::kernels {

namespace {

constexpr int64_t kTileRows = 16;
constexpr int64_t kPairsPerTile = 16;  // k-pairs per A/B tile (64 bytes)
// Rows of x converted per block: 256 rows x 1 KiB (K = 1024 bf16) stay in L2 with a panel.
constexpr int64_t kMcAmx = 256;

// The ldtilecfg operand (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

TileConfig make_config() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = kTileRows;
  }
  return c;
}

// All 8 tiles as 16 rows x 64 bytes, on this thread (released by _tile_release()).
DM_AMX void configure_tiles() {
  static const TileConfig config = make_config();
  _tile_loadconfig(&config);
}

constexpr int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// Bytes per k step (whole cache lines) that spread `bytes` of the next weight block over the
// k steps of the current one (`row_blocks` 32-row blocks of x, k2 pairs each); 0 when none.
int64_t prefetch_step(int64_t bytes, int64_t row_blocks, int64_t k2) {
  if (bytes <= 0) return 0;
  return round_up(bytes / (row_blocks * (k2 / kPairsPerTile)), 64);
}

// Writes a 16 x 16 f32 tile (row stride 16) into y rows [0, rows), columns [0, cols).
DM_AMX void write_tile(const float* c, int64_t rows, int64_t cols, float* y, int64_t ldy,
                       bool accumulate) {
  const __mmask16 mk = static_cast<__mmask16>(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    __m512 v = _mm512_load_ps(c + r * 16);
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, y + r * ldy));
    _mm512_mask_storeu_ps(y + r * ldy, mk, v);
  }
}

// 32 (kTwo) or 16 rows of xb times one panel over k2 pairs; C tiles stored into cbuf
// (4 x 256 floats: tile t = row block t / 2, column half t % 2).
// pf: bytes to prefetch into L2 over the k loop (the next panel's share of this row block),
// pf_step bytes per 32 k.
template <bool kTwo>
DM_AMX void panel_block(const uint32_t* xb, int64_t ldxb, const uint16_t* wp, int64_t k2,
                        float* cbuf, const char* pf, int64_t pf_step) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (kTwo) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t stride_x = ldxb * 4;
  for (int64_t kp = 0; kp < k2; kp += kPairsPerTile) {
    const uint16_t* w = wp + kp * kPanel * 2;
    for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + b, _MM_HINT_T1);
    pf += pf_step;
    _tile_loadd(6, w, 128);
    _tile_loadd(7, w + 32, 128);
    _tile_loadd(4, xb + kp, stride_x);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (kTwo) {
      _tile_loadd(5, xb + kTileRows * ldxb + kp, stride_x);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, cbuf, 64);
  _tile_stored(1, cbuf + 256, 64);
  if constexpr (kTwo) {
    _tile_stored(2, cbuf + 512, 64);
    _tile_stored(3, cbuf + 768, 64);
  }
}

// ---- row-major weights

// B tiles of x: xt[(rb * k2 + kp) * 16 + r] = bf16 pair kp of row 16 rb + r of xb (zero for
// rows past `rows`), for rb < ceil(rows / 16).
DM_AMX void transpose_x(const uint32_t* xb, int64_t ldxb, int64_t rows, int64_t k2, uint32_t* xt) {
  const __m512i idx =
      _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(static_cast<int>(ldxb)));
  for (int64_t rb = 0; rb * kTileRows < rows; ++rb) {
    const int64_t valid = std::min(kTileRows, rows - rb * kTileRows);
    const auto mk = static_cast<__mmask16>(valid >= 16 ? 0xFFFF : (1u << valid) - 1);
    const uint32_t* base = xb + rb * kTileRows * ldxb;
    uint32_t* dst = xt + rb * k2 * kTileRows;
    for (int64_t kp = 0; kp < k2; ++kp)
      _mm512_store_si512(dst + kp * kTileRows, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(),
                                                                           mk, idx, base + kp, 4));
  }
}

// Dequantises int8 weight rows [n0, n0 + rows) (quants q, row stride kp; f16 scales d, row
// stride kb) to bf16 rows of k (k a multiple of 32) in dst, rows up to 32 zero-filled.
DM_AMX void dequantize_rows_bf16(const int8_t* q, const uint16_t* d, int64_t kp, int64_t kb,
                                 int64_t rows, int64_t k, uint16_t* dst) {
  alignas(64) int8_t natural[kQGroup * kQBlock];
  for (int64_t n = 0; n < 2 * kTileRows; ++n) {
    uint16_t* out = dst + n * k;
    if (n >= rows) {
      std::memset(out, 0, static_cast<size_t>(k) * 2);
      continue;
    }
    for (int64_t b = 0; b < k / kQBlock; ++b) {
      if (b % kQGroup == 0)  // the group's quants in natural order (layout in linear_impl.h)
        int8_group_to_natural(q + n * kp + b * kQBlock, std::min(kQGroup, kb - b), natural);
      const __m512 s = _mm512_set1_ps(_cvtsh_ss(d[n * kb + b]));
      const __m256i q8 =
          _mm256_load_si256(reinterpret_cast<const __m256i*>(natural + (b % kQGroup) * kQBlock));
      // (The maskz forms: GCC 12 warns about the unmasked ones' undefined pass-through.)
      const __m512 lo = _mm512_mul_ps(
          s, _mm512_maskz_cvtepi32_ps(
                 0xFFFF, _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm256_castsi256_si128(q8))));
      const __m512 hi = _mm512_mul_ps(
          s, _mm512_maskz_cvtepi32_ps(
                 0xFFFF, _mm512_maskz_cvtepi8_epi32(0xFFFF, _mm256_extracti128_si256(q8, 1))));
      _mm512_storeu_si512(out + b * 32, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// C tiles for W rows (A: 4 = rows 0-15, 5 = rows 16-31, row stride lda bytes) times x rows
// (B: 6 = x rows 0-15, 7 = rows 16-31 of xt blocks), over k2 pairs; tile (i, j) -> cbuf
// + (2 i + j) * 256 as [16 outputs][16 rows].
template <bool kTwoN, bool kTwoR>
DM_AMX void rows_block(const uint16_t* wa, int64_t lda, const uint32_t* xt, int64_t k2, float* cbuf,
                       const char* pf, int64_t pf_step) {
  _tile_zero(0);
  if constexpr (kTwoR) _tile_zero(1);
  if constexpr (kTwoN) _tile_zero(2);
  if constexpr (kTwoN && kTwoR) _tile_zero(3);
  const char* w = reinterpret_cast<const char*>(wa);
  for (int64_t kp = 0; kp < k2; kp += kPairsPerTile) {
    for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + b, _MM_HINT_T1);
    pf += pf_step;
    _tile_loadd(4, w + kp * 4, lda);
    _tile_loadd(6, xt + kp * kTileRows, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (kTwoR) {
      _tile_loadd(7, xt + (k2 + kp) * kTileRows, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (kTwoN) {
      _tile_loadd(5, w + kTileRows * lda + kp * 4, lda);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (kTwoR) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, cbuf, 64);
  if constexpr (kTwoR) _tile_stored(1, cbuf + 256, 64);
  if constexpr (kTwoN) _tile_stored(2, cbuf + 512, 64);
  if constexpr (kTwoN && kTwoR) _tile_stored(3, cbuf + 768, 64);
}

// y[r, n] for r < rows, n < cols from a [16 n][16 r] tile.
DM_AMX void write_tile_t(const float* c, int64_t rows, int64_t cols, float* y, int64_t ldy,
                         bool accumulate) {
  const __m512i idx =
      _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
  const auto mk = static_cast<__mmask16>(cols >= 16 ? 0xFFFF : (1u << cols) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xFFFF, idx, c + r, 4);
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, y + r * ldy));
    _mm512_mask_storeu_ps(y + r * ldy, mk, v);
  }
}

}  // namespace

DM_AMX void linear_rows_amx(const LinearArgs& a) {
  const int64_t k = a.w->in_features(), n_all = a.w->out_features();
  const int64_t k2 = k / 2;
  const bool int8 = a.w->dtype() == DType::int8;
  const int64_t ldxb = k2 + 16;
  const int64_t mc = std::min(kMcAmx, a.m);
  const int64_t mc_pad = round_up(mc, 2 * kTileRows);
  const size_t xb_words = static_cast<size_t>(round_up(mc * ldxb, 16));
  const size_t xt_words = static_cast<size_t>(mc_pad * k2);
  const size_t wbuf_halves = static_cast<size_t>(2 * kTileRows * k);
  auto* xb = static_cast<uint32_t*>(
      thread_scratch((xb_words + xt_words) * 4 + wbuf_halves * 2 + 4 * 256 * sizeof(float)));
  uint32_t* xt = xb + xb_words;
  auto* wbuf = reinterpret_cast<uint16_t*>(xt + xt_words);
  auto* cbuf = reinterpret_cast<float*>(wbuf + wbuf_halves);
  const char* base = static_cast<const char*>(a.w->data());
  const int64_t kb = k / kQBlock;
  configure_tiles();
  for (int64_t rb = 0; rb < a.m; rb += kMcAmx) {
    const int64_t rows = std::min(kMcAmx, a.m - rb);
    const int64_t rows_pad = round_up(rows, kTileRows);
    const int64_t row_blocks = round_up(rows_pad, 2 * kTileRows) / (2 * kTileRows);
    convert_rows_bf16_avx512(a.x + rb * a.ldx, rows, a.ldx, k, xb, ldxb);
    transpose_x(xb, ldxb, rows, k2, xt);
    for (int64_t n0 = a.n_begin; n0 < a.n_end; n0 += 2 * kTileRows) {
      const int64_t cols = std::min(2 * kTileRows, a.n_end - n0);
      const uint16_t* wa = nullptr;
      const char* pf = nullptr;
      int64_t pf_step = 0;
      if (int8) {
        dequantize_rows_bf16(
            reinterpret_cast<const int8_t*>(base) + n0 * k,
            reinterpret_cast<const uint16_t*>(base + int8_scales_offset(n_all, k)) + n0 * kb, k, kb,
            cols, k, wbuf);
        wa = wbuf;
      } else if (n0 + 2 * kTileRows > n_all) {
        // The last rows of W: a 32-row A block would read past the matrix.
        std::memcpy(wbuf, base + n0 * k * 2, static_cast<size_t>((n_all - n0) * k) * 2);
        std::memset(wbuf + (n_all - n0) * k, 0, static_cast<size_t>((n0 + 32 - n_all) * k) * 2);
        wa = wbuf;
      } else {
        wa = reinterpret_cast<const uint16_t*>(base) + n0 * k;
        // The next 32 rows go to L2 while these compute (as for packed panels).
        pf_step = prefetch_step(
            std::min<int64_t>(2 * kTileRows, a.n_end - n0 - 2 * kTileRows) * k * 2, row_blocks, k2);
        pf = reinterpret_cast<const char*>(wa + 2 * kTileRows * k);
      }
      const bool two_n = cols > kTileRows;
      for (int64_t r0 = 0; r0 < rows_pad; r0 += 2 * kTileRows) {
        const bool two_r = rows_pad - r0 > kTileRows;
        const uint32_t* xr = xt + (r0 / kTileRows) * k2 * kTileRows;
        const char* pfb =
            pf ? pf + (r0 / (2 * kTileRows)) * (k2 / kPairsPerTile) * pf_step : nullptr;
        if (two_n && two_r) {
          rows_block<true, true>(wa, k * 2, xr, k2, cbuf, pfb, pf_step);
        } else if (two_n) {
          rows_block<true, false>(wa, k * 2, xr, k2, cbuf, pfb, pf_step);
        } else if (two_r) {
          rows_block<false, true>(wa, k * 2, xr, k2, cbuf, pfb, pf_step);
        } else {
          rows_block<false, false>(wa, k * 2, xr, k2, cbuf, pfb, pf_step);
        }
        for (int t = 0; t < 4; ++t) {
          const int64_t tn = (t / 2) * kTileRows, tr = r0 + (t % 2) * kTileRows;
          if ((t / 2 == 1 && !two_n) || (t % 2 == 1 && !two_r)) continue;
          const int64_t vr = std::min(kTileRows, rows - tr), vc = std::min(kTileRows, cols - tn);
          if (vr <= 0 || vc <= 0) continue;
          write_tile_t(cbuf + t * 256, vr, vc, a.y + (rb + tr) * a.ldy + n0 + tn, a.ldy,
                       a.accumulate);
        }
      }
    }
  }
  _tile_release();
}

DM_AMX void linear_bf16_amx(const LinearArgs& a) {
  const int64_t k_dim = a.w->in_features();
  const int64_t k2 = (k_dim + 1) / 2;
  if (a.m < kAmxRowsBf16 || k2 % kPairsPerTile != 0) {
    linear_bf16_avx512(a);
    return;
  }
  // +16 words: a row stride that is a multiple of 4 KiB would put all rows in one L1 set.
  const int64_t ldxb = k2 + 16;
  const int64_t mc_pad = round_up(std::min(kMcAmx, a.m), 2 * kTileRows);
  const size_t x_words = static_cast<size_t>(mc_pad * ldxb);
  auto* xb = static_cast<uint32_t*>(thread_scratch(x_words * 4 + 4 * 256 * sizeof(float)));
  float* cbuf = reinterpret_cast<float*>(xb + x_words);
  const uint16_t* w_all = static_cast<const uint16_t*>(a.w->data());
  configure_tiles();
  for (int64_t rb = 0; rb < a.m; rb += kMcAmx) {
    const int64_t rows = std::min(kMcAmx, a.m - rb);
    const int64_t rows_pad = round_up(rows, kTileRows);
    const int64_t row_blocks = round_up(rows_pad, 2 * kTileRows) / (2 * kTileRows);
    convert_rows_bf16_avx512(a.x + rb * a.ldx, rows, a.ldx, k_dim, xb, ldxb);
    // Padding rows are zero so that their (discarded) outputs stay finite.
    std::memset(xb + rows * ldxb, 0, static_cast<size_t>((rows_pad - rows) * ldxb) * 4);
    for (int64_t n0 = a.n_begin; n0 < a.n_end; n0 += kPanel) {
      const int64_t cols = std::min(kPanel, a.n_end - n0);
      const uint16_t* wp = w_all + (n0 / kPanel) * k2 * kPanel * 2;
      // The next panel is fetched into L2 while this one computes (from DRAM, tile loads
      // stall): its bytes are spread over this panel's row blocks and k steps.
      const int64_t panel_bytes = k2 * kPanel * 4;
      const int64_t pf_step =
          prefetch_step(n0 + kPanel < a.n_end ? panel_bytes : 0, row_blocks, k2);
      const char* pf = reinterpret_cast<const char*>(wp) + panel_bytes;
      for (int64_t r0 = 0; r0 < rows_pad; r0 += 2 * kTileRows) {
        const bool two = rows_pad - r0 > kTileRows;
        const char* pfb = pf + (r0 / (2 * kTileRows)) * (k2 / kPairsPerTile) * pf_step;
        if (two) {
          panel_block<true>(xb + r0 * ldxb, ldxb, wp, k2, cbuf, pfb, pf_step);
        } else {
          panel_block<false>(xb + r0 * ldxb, ldxb, wp, k2, cbuf, pfb, pf_step);
        }
        for (int t = 0; t < (two ? 4 : 2); ++t) {
          const int64_t tr = r0 + (t / 2) * kTileRows, tc = (t % 2) * 16;
          const int64_t vr = std::min(kTileRows, rows - tr), vc = std::min<int64_t>(16, cols - tc);
          if (vr <= 0 || vc <= 0) continue;
          write_tile(cbuf + t * 256, vr, vc, a.y + (rb + tr) * a.ldy + n0 + tc, a.ldy,
                     a.accumulate);
        }
      }
    }
  }
  _tile_release();
}

DM_AMX double amx_bf16_peak_loop(int64_t iters) {
  configure_tiles();
  // Zero tiles: tdpbf16ps runs at the same rate on any values.
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[256];
  _tile_stored(0, c, 64);
  _tile_release();
  return c[0];
}

}  // namespace deltamoe::kernels
