// AVX-512 causal attention for several query rows of one (sequence, head) item (see
// attention_impl.h). Why not OpenBLAS: the products are small (64 query rows x at most a few
// thousand keys x d = 64 or 128), so sgemm's packing and edge kernels take a large share, and
// it cannot skip the key blocks that the causal mask hides from a group of rows.
//
// Scores: keys are transposed 16 at a time in registers, a chunk of 64 keys at a time (d x 64
// floats, 1/64 of the score FLOPs), then a microkernel keeps 6 rows x 64 keys in 24 zmm
// accumulators: per k it loads 4 key vectors and broadcasts 6 query elements (FMA-bound, as the
// linear microkernels). Output: 6 rows x 64 columns of V in 24 accumulators, per key 4 loads of the
// V row as the cache holds it and 6 broadcast probabilities. Rows are padded to a multiple of 6 by
// repeating the last one (its results are dropped), so one instantiation serves all.
//
// Decode: a lone query row, or the 2-4 query heads of one KV head, take vector dot products per
// key (each K and V row read once for all of them, no transposition); larger groups go
// through the 6-row kernel as rows that all see the same keys.
//
// An f16 cache (--kv-dtype f16): the kernels are templates on the cache's element type and read
// it through load16, which widens 16 values with vcvtph2ps, so they compute bit for bit what
// they compute on an f32 cache holding the widened values, reading half the bytes.
#include <immintrin.h>

#include <algorithm>

#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "deltamoe/kernels/llm.h"
#include "kernels/cpu/attention_impl.h"
#include "kernels/cpu/avx512_util.h"

#define DM_AVX512 __attribute__((target("avx512f")))

DM_AVX512_WARNINGS_PUSH  // see avx512_util.h

namespace deltamoe::kernels {
namespace {

constexpr int kRows = 6;        // query rows per microkernel call
constexpr int64_t kChunk = 64;  // keys per score chunk (4 zmm)

// Rows of cached keys and values are read kRowAhead positions ahead: in the model's cache one
// head's positions are contiguous within a block, but each block is its own allocation (and a
// token-major cache has them ldkv apart), which the hardware prefetchers pick up late. Past the
// end of a block the address is another block's or none (a prefetch never faults).
#ifndef DM_TUNE_ROW_AHEAD
#define DM_TUNE_ROW_AHEAD 16
#endif
constexpr int64_t kRowAhead = DM_TUNE_ROW_AHEAD;
// (T: float, or uint16_t for an f16 cache.)
template <typename T>
DM_AVX512 inline void prefetch_row(const T* p, int64_t n) {
  for (int64_t c = 0; c < n; c += 64 / static_cast<int64_t>(sizeof(T)))
    _mm_prefetch(reinterpret_cast<const char*>(p + c), _MM_HINT_T0);
}

// 16 cached values as f32: in place, or widened from f16.
DM_AVX512 inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
DM_AVX512 inline __m512 load16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The row kRowAhead positions after row `r` of block `b` (of `blocks`), in the next block when
// it is past this one's end (a block's rows of one head are 16 KiB at 64 positions, so a
// prefetch that stopped at the block's end left the first rows of every block to miss), or
// null past the last block.
template <typename T>
inline const T* row_ahead(const T* const* blocks, int64_t b, int64_t r, int64_t bt, int64_t ldkv,
                          int64_t nblocks) {
  const int64_t a = r + kRowAhead;
  if (a < bt) return blocks[b] + a * ldkv;
  return b + 1 < nblocks ? blocks[b + 1] + (a - bt) * ldkv : nullptr;
}

int64_t round_up(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// Keys [c0, c0 + 64) transposed: kt[c·64 + j] = K[c0 + j][c], zero for keys past `keys`.
template <typename T>
DM_AVX512 void transpose_chunk(const T* const* k, int64_t bt, int64_t ldkv, int64_t c0,
                               int64_t keys, int64_t d, float* kt) {
  for (int64_t g = 0; g < kChunk; g += 16) {
    const T* rows[16];
    const T* ahead[16];  // the same keys of the next chunk, read into cache meanwhile
    for (int i = 0; i < 16; ++i) {
      const int64_t p = c0 + g + i, pn = p + kChunk;
      rows[i] = p < keys ? k[p / bt] + (p % bt) * ldkv : nullptr;
      ahead[i] = pn < keys ? k[pn / bt] + (pn % bt) * ldkv : nullptr;
    }
    for (int64_t c = 0; c < d; c += 16) {
      for (int i = 0; i < 16; ++i)
        if (ahead[i]) _mm_prefetch(reinterpret_cast<const char*>(ahead[i] + c), _MM_HINT_T0);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) r[i] = rows[i] ? load16(rows[i] + c) : _mm512_setzero_ps();
      transpose16(r);
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(kt + (c + i) * kChunk + g, r[i]);
    }
  }
}

// s[i][0:64] = scale · q[i][0:d] · K chunkᵀ for 6 rows.
DM_AVX512 void scores6(const float* const q[kRows], const float* kt, int64_t d, float scale,
                       float* const s[kRows]) {
  __m512 acc[kRows][4];
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    const float* kc = kt + c * kChunk;
    const __m512 k0 = _mm512_loadu_ps(kc), k1 = _mm512_loadu_ps(kc + 16);
    const __m512 k2 = _mm512_loadu_ps(kc + 32), k3 = _mm512_loadu_ps(kc + 48);
#pragma GCC unroll 6
    for (int i = 0; i < kRows; ++i) {
      const __m512 b = _mm512_set1_ps(q[i][c]);
      acc[i][0] = _mm512_fmadd_ps(b, k0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(b, k1, acc[i][1]);
      acc[i][2] = _mm512_fmadd_ps(b, k2, acc[i][2]);
      acc[i][3] = _mm512_fmadd_ps(b, k3, acc[i][3]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 6
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(s[i] + 16 * v, _mm512_mul_ps(acc[i][v], sc));
}

// out[i][dc : dc + 16·NV] (+)= Σ_{j0 <= j < j1} p[i][j] · V[j][dc : dc + 16·NV] for R rows
// (+ with `accumulate`): per key one load of the V row's 16·NV columns, R broadcasts.
template <int R, int NV, typename T>
DM_AVX512 void values(const float* const p[R], const T* const* v, int64_t bt, int64_t ldkv,
                      int64_t j0, int64_t j1, int64_t dc, float* const out[R], bool accumulate) {
  __m512 acc[R][NV];
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u)
      acc[i][u] = accumulate ? _mm512_loadu_ps(out[i] + dc + 16 * u) : _mm512_setzero_ps();
  const int64_t nblocks = (j1 + bt - 1) / bt;
  for (int64_t j = j0; j < j1;) {
    const int64_t b = j / bt;
    const T* vr = v[b] + (j - b * bt) * ldkv + dc;
    for (const int64_t end = std::min(j1, (b + 1) * bt); j < end; ++j, vr += ldkv) {
      if (const T* ahead = row_ahead(v, b, j - b * bt, bt, ldkv, nblocks))
        prefetch_row(ahead + dc, 16 * NV);
      __m512 vv[NV];
#pragma GCC unroll 4
      for (int u = 0; u < NV; ++u) vv[u] = load16(vr + 16 * u);
#pragma GCC unroll 6
      for (int i = 0; i < R; ++i) {
        const __m512 w = _mm512_set1_ps(p[i][j]);
#pragma GCC unroll 4
        for (int u = 0; u < NV; ++u) acc[i][u] = _mm512_fmadd_ps(w, vv[u], acc[i][u]);
      }
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(out[i] + dc + 16 * u, acc[i][u]);
}

// values<R, NV> over all d columns, 64 at a time (out[i]: d floats each).
template <int R, typename T>
DM_AVX512 void values_cols(const float* const p[R], const T* const* v, int64_t bt, int64_t ldkv,
                           int64_t j0, int64_t j1, int64_t d, float* const out[R],
                           bool accumulate) {
  for (int64_t dc = 0; dc < d; dc += 64) {
    switch (std::min<int64_t>(4, (d - dc) / 16)) {
      case 4:
        values<R, 4, T>(p, v, bt, ldkv, j0, j1, dc, out, accumulate);
        break;
      case 3:
        values<R, 3, T>(p, v, bt, ldkv, j0, j1, dc, out, accumulate);
        break;
      case 2:
        values<R, 2, T>(p, v, bt, ldkv, j0, j1, dc, out, accumulate);
        break;
      default:
        values<R, 1, T>(p, v, bt, ldkv, j0, j1, dc, out, accumulate);
        break;
    }
  }
}

// Lane i of the result: the sum of the 16 lanes of v_i (i < 4), by one reduction tree.
DM_AVX512 inline __m128 sum4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  // Per 128-bit block: [v0, v1 partial sums, interleaved], then [v0, v1, v2, v3] partial sums.
  const __m512 c = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1));
  const __m512 e = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
  __m512 y = _mm512_add_ps(_mm512_shuffle_ps(c, e, 0x44), _mm512_shuffle_ps(c, e, 0xEE));
  // Sum the four blocks into block 0.
  y = _mm512_add_ps(y, _mm512_shuffle_f32x4(y, y, 0x4E));
  y = _mm512_add_ps(y, _mm512_shuffle_f32x4(y, y, 0xB1));
  return _mm512_castps512_ps128(y);
}

// Decode, R query rows that all see `keys` keys (one row, or the query heads of one KV head):
// s[r·keys + j] = scale · q_r · K[j], per key one read of the K row feeding R vector FMA
// chains, each reduced once (independent keys overlap in the core); softmax; then
// out_r = Σ_j s[r][j] · V[j] with the output rows in registers. No transposition: at a few
// keys (short contexts) the transposing kernel's fixed costs dominate, and K and V are read
// once for the R rows either way.
template <int R, typename T = float>
DM_AVX512 void attend_few_rows(const float* q, int64_t ldq, const T* const* k, const T* const* v,
                               int64_t bt, int64_t ldkv, float* out, int64_t ldo, int64_t keys,
                               int64_t d, float scale, std::vector<float>& scratch) {
  scratch.resize(static_cast<size_t>(R * keys));
  float* const s = scratch.data();
  const __m128 scale4 = _mm_set1_ps(scale);
  const int64_t nblocks = (keys + bt - 1) / bt;
  for (int64_t j = 0, b = 0; j < keys; ++b) {
    const T* kr = k[b];
    const int64_t end = std::min(keys, j + bt);
    // Four keys at a time: 4R independent FMA chains, and one reduction tree for the four
    // sums of a row (a horizontal sum per key cost more than the key's FMAs at d = 64).
    for (; j + 4 <= end; j += 4, kr += 4 * ldkv) {
      __m512 acc[R][4];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) acc[r][i] = _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i)
        if (const T* ahead = row_ahead(k, b, j + i - b * bt, bt, ldkv, nblocks))
          prefetch_row(ahead, d);
      for (int64_t c = 0; c < d; c += 16) {
        __m512 kv[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) kv[i] = load16(kr + i * ldkv + c);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const __m512 qv = _mm512_loadu_ps(q + r * ldq + c);
#pragma GCC unroll 4
          for (int i = 0; i < 4; ++i) acc[r][i] = _mm512_fmadd_ps(qv, kv[i], acc[r][i]);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        _mm_storeu_ps(s + r * keys + j,
                      _mm_mul_ps(sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), scale4));
    }
    for (; j < end; ++j, kr += ldkv) {
      if (const T* ahead = row_ahead(k, b, j - b * bt, bt, ldkv, nblocks)) prefetch_row(ahead, d);
      // Two chains per row: at d = 64 one chain of 4 FMAs would be latency-bound.
      __m512 a0[R], a1[R];
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
      int64_t c = 0;
      for (; c + 32 <= d; c += 32) {
        const __m512 k0 = load16(kr + c), k1 = load16(kr + c + 16);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          a0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * ldq + c), k0, a0[r]);
          a1[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * ldq + c + 16), k1, a1[r]);
        }
      }
      if (c < d) {
        const __m512 k0 = load16(kr + c);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r)
          a0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * ldq + c), k0, a0[r]);
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        s[r * keys + j] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r])) * scale;
    }
  }
  softmax_rows_st(s, s, R, keys);
  const float* p[R];
  float* o[R];
  for (int r = 0; r < R; ++r) {
    p[r] = s + r * keys;
    o[r] = out + r * ldo;
  }
  values_cols<R, T>(p, v, bt, ldkv, 0, keys, d, o, false);
}

}  // namespace

bool attend_avx512_supported(int64_t d) {
  return cpu_features().avx512f && d > 0 && d % 16 == 0;
}

const char* attention_impl_name() {
  return cpu_features().avx512f
             ? "avx512 microkernels per (sequence, head, 64-row block) for head sizes that are "
               "multiples of 16 (else OpenBLAS sgemm); one query row: dot products; an f16 KV "
               "cache widened in registers"
             : "OpenBLAS sgemm per (sequence, head, 64-row block); one query row: dot products; "
               "an f16 KV cache widened into scratch";
}

AttendFn best_attend(int64_t d) {
  return attend_avx512_supported(d) ? &attend_avx512 : &attend_blas;
}

namespace {

// `rows` query rows (row i at q + i·ldq, its output at out + i·ldo), the first seeing keys0
// keys; with `causal` row i sees keys0 + i (consecutive positions of one head), without it
// every row sees keys0 (the query heads of one KV head at one position: decode under GQA).
template <typename T>
DM_AVX512 void attend_rows(const float* q, int64_t ldq, const T* const* k, const T* const* v,
                           int64_t bt, int64_t ldkv, float* out, int64_t ldo, int64_t rows,
                           int64_t keys0, bool causal, int64_t d, float scale,
                           std::vector<float>& scratch) {
  const int64_t keys = keys0 + (causal ? rows - 1 : 0), ls = round_up(keys, kChunk),
                prow = round_up(rows, kRows);
  // Scratch: one chunk of transposed keys, scores (prow rows of ls), one dropped output row.
  const size_t kt_floats = static_cast<size_t>(kChunk * d);
  scratch.resize(kt_floats + static_cast<size_t>(prow * ls + d));
  float* const kt = scratch.data();
  float* const s = kt + kt_floats;
  float* const dropped = s + prow * ls;
  // Keys a row sees: up to and including its own position; a group of rows, its last row's.
  const auto visible = [&](int64_t ri) { return keys0 + (causal ? std::min(ri, rows - 1) : 0); };
  const auto group_keys = [&](int64_t g) { return visible(g + kRows - 1); };
  const auto q_rows = [&](int64_t g, const float* qr[kRows]) {
    for (int i = 0; i < kRows; ++i) qr[i] = q + std::min(g + i, rows - 1) * ldq;
  };
  // Scores, key chunk by key chunk: one chunk of transposed keys (d x 64) stays in L1 while
  // every row group that sees it passes over it.
  for (int64_t c0 = 0; c0 < keys; c0 += kChunk) {
    transpose_chunk(k, bt, ldkv, c0, keys, d, kt);
    for (int64_t g = 0; g < rows; g += kRows) {
      if (group_keys(g) <= c0) continue;
      const float* qr[kRows];
      float* sr[kRows];
      q_rows(g, qr);
      for (int i = 0; i < kRows; ++i) sr[i] = s + (g + i) * ls + c0;
      scores6(qr, kt, d, scale, sr);
    }
  }
  for (int64_t ri = 0; ri < rows; ++ri) {
    float* sr = s + ri * ls;
    const int64_t vis = visible(ri);
    softmax_rows_st(sr, sr, 1, vis);
    std::fill(sr + vis, sr + group_keys(ri / kRows * kRows), 0.0f);
  }
  // Output, block of keys by block of keys: the block's V rows stay in L1/L2 while every row
  // group that sees them adds their share to its rows (written by the first block).
  constexpr int64_t kValueKeys = 128;
  for (int64_t j0 = 0; j0 < keys; j0 += kValueKeys) {
    for (int64_t g = 0; g < rows; g += kRows) {
      const int64_t j1 = std::min(group_keys(g), j0 + kValueKeys);
      if (j1 <= j0) continue;
      const float* pr[kRows];
      for (int i = 0; i < kRows; ++i) pr[i] = s + std::min(g + i, rows - 1) * ls;
      // A padded row's output goes to `dropped` (d floats).
      float* o[kRows];
      for (int i = 0; i < kRows; ++i) o[i] = g + i < rows ? out + (g + i) * ldo : dropped;
      values_cols<kRows, T>(pr, v, bt, ldkv, j0, j1, d, o, j0 > 0);
    }
  }
}

// One (sequence, head) item's rows [r0, r1) (see attention_impl.h), on a cache of T.
template <typename T>
DM_AVX512 void attend_item(const float* q, int64_t ldq, const T* const* k, const T* const* v,
                           int64_t bt, int64_t ldkv, float* out, int64_t ldo, int64_t r0,
                           int64_t r1, int64_t start, int64_t d, float scale,
                           std::vector<float>& scratch) {
  const int64_t rows = r1 - r0;
  if (rows <= 0) return;
  if (rows == 1) {
    attend_few_rows<1, T>(q + r0 * ldq, ldq, k, v, bt, ldkv, out + r0 * ldo, ldo, start + r1, d,
                          scale, scratch);
    return;
  }
  attend_rows<T>(q + r0 * ldq, ldq, k, v, bt, ldkv, out + r0 * ldo, ldo, rows, start + r0 + 1, true,
                 d, scale, scratch);
}

// Decode of the `group` query heads of one KV head (see attend_group_avx512), on a cache of T.
template <typename T>
DM_AVX512 void attend_group(const float* q, int64_t group, const T* const* k, const T* const* v,
                            int64_t bt, int64_t ldkv, float* out, int64_t keys, int64_t d,
                            float scale, std::vector<float>& scratch) {
  switch (group) {
    case 1:
      return attend_few_rows<1, T>(q, d, k, v, bt, ldkv, out, d, keys, d, scale, scratch);
    case 2:
      return attend_few_rows<2, T>(q, d, k, v, bt, ldkv, out, d, keys, d, scale, scratch);
    case 3:
      return attend_few_rows<3, T>(q, d, k, v, bt, ldkv, out, d, keys, d, scale, scratch);
    case 4:
      return attend_few_rows<4, T>(q, d, k, v, bt, ldkv, out, d, keys, d, scale, scratch);
    default:
      return attend_rows<T>(q, d, k, v, bt, ldkv, out, d, group, keys, false, d, scale, scratch);
  }
}

}  // namespace

DM_AVX512 void attend_avx512(const float* q, int64_t ldq, const float* const* k,
                             const float* const* v, int64_t bt, int64_t ldkv, float* out,
                             int64_t ldo, int64_t r0, int64_t r1, int64_t start, int64_t d,
                             float scale, std::vector<float>& scratch) {
  attend_item<float>(q, ldq, k, v, bt, ldkv, out, ldo, r0, r1, start, d, scale, scratch);
}

DM_AVX512 void attend_group_avx512(const float* q, int64_t group, const float* const* k,
                                   const float* const* v, int64_t bt, int64_t ldkv, float* out,
                                   int64_t keys, int64_t d, float scale,
                                   std::vector<float>& scratch) {
  attend_group<float>(q, group, k, v, bt, ldkv, out, keys, d, scale, scratch);
}

DM_AVX512 void attend_group_tiled_avx512(const float* q, int64_t group, const float* const* k,
                                         const float* const* v, int64_t bt, int64_t ldkv,
                                         float* out, int64_t keys, int64_t d, float scale,
                                         std::vector<float>& scratch) {
  attend_rows<float>(q, d, k, v, bt, ldkv, out, d, group, keys, false, d, scale, scratch);
}

DM_AVX512 void attend_group_f16_avx512(const float* q, int64_t group, const uint16_t* const* k,
                                       const uint16_t* const* v, int64_t bt, int64_t ldkv,
                                       float* out, int64_t keys, int64_t d, float scale,
                                       std::vector<float>& scratch) {
  attend_group<uint16_t>(q, group, k, v, bt, ldkv, out, keys, d, scale, scratch);
}

DM_AVX512 void attend_f16_avx512(const float* q, int64_t ldq, const uint16_t* const* k,
                                 const uint16_t* const* v, int64_t bt, int64_t ldkv, float* out,
                                 int64_t ldo, int64_t r0, int64_t r1, int64_t start, int64_t d,
                                 float scale, std::vector<float>& scratch) {
  attend_item<uint16_t>(q, ldq, k, v, bt, ldkv, out, ldo, r0, r1, start, d, scale, scratch);
}

}  // namespace deltamoe::kernels

DM_AVX512_WARNINGS_POP
