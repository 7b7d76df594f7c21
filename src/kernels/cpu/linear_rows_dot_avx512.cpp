// AVX-512 dot-product kernels for y = x · Wᵀ with W in row-major [N, K] layout and a few rows of
// x (decode, and a decode batch's few rows per expert): tiles of up to 4 rows of x against up
// to 4 adjacent W rows, over column blocks of W that stay in L2 while the row groups pass.
//
// Why tiles: decode streams every weight once. One W row per pass (this file's first kernel)
// loads R + 1 vectors for R FMAs; with the 2-15 rows per expert of a batched decode step the
// core then could not overlap its FMAs with the memory reads (f32 at 16 sequences: 0.42 of the
// read roofline). A tile of R rows x C columns loads C + R vectors for R x C FMAs, and its first
// row group reads the next tile's rows ahead into L2: C streams one weight row long each are too
// short for the hardware prefetchers, which follow one long stream well. With more than one
// row group (5+ rows), the later groups compute from L2 and read the next column block into L2
// meanwhile, so memory streams while they compute (bf16 at 8 rows from DRAM: 1.4x). One row of x
// (the single-sequence decode) keeps one column per pass, a single stream, read ahead in software
// only where one_row_prefetch() says (Intel: its L2 streamer stops at every 4 KiB page; Zen
// follows the stream better alone).
// f32 takes one zmm FMA per 64 bytes of W per row of x, and bf16 on AVX-512 BF16 CPUs one
// `vdpbf16ps` against x rounded to bf16 once per call (convert_rows_bf16_avx512, as the prefill
// panels round it; every bf16 path multiplies bf16 x by bf16 W). Tails (K not a multiple of the
// step) use masked loads, whose masked-out lanes are zeros and never fault.
//
// Every (row, column) sum runs the same accumulator chains over k whatever the tile: two chains
// over alternate 16-float steps in f32 (one chain is bound by the FMA latency at one row), one in
// bf16. So a row's result does not depend on the rows batched with it (bitwise), nor a column's
// on the columns beside it, as in the AVX2 kernel.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>

#include "kernels/cpu/avx512_util.h"
#include "kernels/cpu/linear_impl.h"

#define DM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define DM_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define DM_INLINE __attribute__((always_inline)) inline

DM_AVX512_WARNINGS_PUSH  // see avx512_util.h

namespace deltamoe::kernels {
namespace {

// One vector of k for each weight dtype: f32 (16 per zmm) or bf16 pairs (32 per zmm, products
// summed in pairs by vdpbf16ps).
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  static constexpr int64_t kStep = 16;
  static constexpr int kChains = 2;
  DM_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  DM_AVX512 static __m512 load_tail(const float* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  DM_AVX512 static __m512 madd(__m512 acc, __m512 x, __m512 w) {
    return _mm512_fmadd_ps(x, w, acc);
  }
};
template <>
struct Vec<uint16_t> {
  static constexpr int64_t kStep = 32;
  static constexpr int kChains = 1;
  DM_AVX512 static __m512 load(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_loadu_si512(p));
  }
  DM_AVX512 static __m512 load_tail(const uint16_t* p, int64_t n) {
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(static_cast<__mmask32>((1u << n) - 1), p));
  }
  DM_AVX512BF16 static __m512 madd(__m512 acc, __m512 x, __m512 w) {
    return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w);
  }
};

constexpr int kTileRows = 4;
// Columns per tile: R x C x chains accumulators stay within 24 of the 32 zmm.
template <typename T>
constexpr int kTileCols = Vec<T>::kChains == 1 ? 4 : 3;

// y[r, c] (+)= x[r, :] · W[c, :] for r < R, c < C; W rows k apart, y rows ldy apart. pf: when
// not null, C x k elements to read into L2 as the tile goes, a share per step. One template
// for both dtypes, so the f32 tiles carry the BF16 target too; they contain no BF16
// instruction and run on AVX-512 CPUs without it.
template <typename T, int R, int C>
DM_AVX512BF16 DM_INLINE void tile(const T* x, int64_t ldx, const T* w, int64_t k, float* y,
                                  int64_t ldy, bool accumulate, const char* pf) {
  using V = Vec<T>;
  constexpr int U = V::kChains;
  constexpr int64_t vs = V::kStep, step = vs * U;
  __m512 acc[R][C][U];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c)
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u) acc[r][c][u] = _mm512_setzero_ps();
  const int64_t kmain = k / step * step;
  for (int64_t kk = 0; kk < kmain; kk += step) {
    if (pf != nullptr) {
#pragma GCC unroll 8
      for (int j = 0; j < C * U; ++j)
        _mm_prefetch(pf + kk * static_cast<int64_t>(sizeof(T)) * C + 64 * j, _MM_HINT_T1);
    }
#pragma GCC unroll 2
    for (int u = 0; u < U; ++u) {
      __m512 wv[C];
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) wv[c] = V::load(w + c * k + kk + vs * u);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const __m512 xv = V::load(x + r * ldx + kk + vs * u);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) acc[r][c][u] = V::madd(acc[r][c][u], xv, wv[c]);
      }
    }
  }
  // The rest of k in steps of one vector (the last one masked), into the first chain.
  for (int64_t kk = kmain; kk < k; kk += vs) {
    const int64_t n = std::min<int64_t>(vs, k - kk);
    __m512 wv[C];
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) wv[c] = V::load_tail(w + c * k + kk, n);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 xv = V::load_tail(x + r * ldx + kk, n);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c][0] = V::madd(acc[r][c][0], xv, wv[c]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      __m512 t = acc[r][c][0];
      if constexpr (U == 2) t = _mm512_add_ps(t, acc[r][c][1]);
      const float s = _mm512_reduce_add_ps(t);
      float& out = y[r * ldy + c];
      out = accumulate ? out + s : s;
    }
}

// What the tiles of one run read ahead into L2, C W rows per tile that prefetches: the rows
// `ahead` tiles further (the run's first row group, which reads W from memory), or the rows
// of the next column block, every `every`-th tile starting at `phase` (the later groups,
// which compute from L2 and would otherwise leave memory idle).
struct TilePrefetch {
  enum class Kind { none, ahead, next_block } kind = Kind::none;
  const void* next = nullptr;  // next_block: the next column block's first W row
  int64_t every = 1, phase = 0;
  int64_t limit = 0;  // next_block: tiles t < limit cover the next block's rows
};

// `count` R x C tiles side by side (columns C apart) with the read-ahead `pf` says. One call
// per run of tiles, not per tile: at one row a tile is one W row.
template <typename T, int R, int C>
DM_AVX512BF16 void tiles(const T* x, int64_t ldx, const T* w, int64_t k, int64_t count, float* y,
                         int64_t ldy, bool accumulate, const TilePrefetch& pf) {
  constexpr int64_t ahead = 2;
  const T* next = static_cast<const T*>(pf.next);
  for (int64_t t = 0; t < count; ++t, w += C * k, y += C) {
    const char* p = nullptr;
    if (pf.kind == TilePrefetch::Kind::ahead) {
      p = reinterpret_cast<const char*>(w + ahead * C * k);
    } else if (pf.kind == TilePrefetch::Kind::next_block && t < pf.limit &&
               t % pf.every == pf.phase) {
      p = reinterpret_cast<const char*>(next + t * C * k);
    }
    tile<T, R, C>(x, ldx, w, k, y, ldy, accumulate, p);
  }
}

template <typename T>
using TilesFn = void (*)(const T*, int64_t, const T*, int64_t, int64_t, float*, int64_t, bool,
                         const TilePrefetch&);
template <typename T>
using TileTable = std::array<TilesFn<T>, kTileRows * kTileCols<T>>;

// Entry (R - 1) * C_max + (C - 1) runs R x C tiles.
template <typename T, int... I>
constexpr TileTable<T> tile_table(std::integer_sequence<int, I...>) {
  return {tiles<T, I / kTileCols<T> + 1, I % kTileCols<T> + 1>...};
}
template <typename T>
constexpr TileTable<T> kTiles =
    tile_table<T>(std::make_integer_sequence<int, kTileRows * kTileCols<T>>{});

// Column blocks of about 128 KiB of weights stay in L2 while each group of up to kTileRows rows
// of x (in L1; near-equal groups, so 5 rows run as 3 + 2, not 4 + 1) passes over them. The
// first group reads W from memory and fetches the next tile's rows (one contiguous block, two
// tiles ahead) as it goes; the later groups, which compute from L2, read the next column
// block into L2 meanwhile, a share each, so that memory keeps streaming while they compute and
// the next block's first group finds its rows in L2. One row takes one column at a time, a
// single stream, which reads two W rows ahead where one_row_prefetch().
template <typename T>
void over_tiles(const LinearArgs& a, const T* x, int64_t ldx) {
  constexpr int64_t cmax = kTileCols<T>;
  const int64_t k = a.w->in_features();
  const T* w = static_cast<const T*>(a.w->data());
  const int64_t row_bytes = k * static_cast<int64_t>(sizeof(T));
  const int64_t block = std::max<int64_t>(8, (int64_t{128} << 10) / row_bytes / 8 * 8);
  const int64_t groups = (a.m + kTileRows - 1) / kTileRows;
  const bool ahead_one = a.m == 1 && one_row_prefetch();
  for (int64_t c0 = a.n_begin; c0 < a.n_end; c0 += block) {
    const int64_t c1 = std::min(a.n_end, c0 + block);
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t r0 = a.m * g / groups, rows = a.m * (g + 1) / groups - r0;
      const int64_t tc = rows == 1 ? 1 : cmax, full = (c1 - c0) / tc, rest = (c1 - c0) % tc;
      TilePrefetch pf;
      if (g == 0 && (rows > 1 || ahead_one)) {
        pf.kind = TilePrefetch::Kind::ahead;
      } else if (g > 0 && c1 < a.n_end) {
        // Tile t of this block's full tiles reads the next block's rows [t C, t C + C); the
        // later groups take every (groups - 1)-th tile each. The next block is at most as
        // wide as this one, so these tiles cover it but for its last rows past a multiple of
        // C (fewer than C), which its first group reads ahead itself.
        const int64_t next_rows = std::min(block, a.n_end - c1);
        pf = {TilePrefetch::Kind::next_block, w + c1 * k, groups - 1, g - 1,
              (next_rows + tc - 1) / tc};
      }
      const auto run = [&](int64_t n, int64_t cols, int64_t count, const TilePrefetch& p) {
        kTiles<T>[static_cast<size_t>((rows - 1) * cmax + cols - 1)](
            x + r0 * ldx, ldx, w + n * k, k, count, a.y + r0 * a.ldy + n, a.ldy, a.accumulate, p);
      };
      if (full > 0) run(c0, tc, full, pf);
      if (rest > 0)
        run(c0 + full * tc, rest, 1,
            pf.kind == TilePrefetch::Kind::next_block ? TilePrefetch{} : pf);
    }
  }
}

}  // namespace

void linear_rows_dot_avx512(const LinearArgs& a) {
  const int64_t k = a.w->in_features();
  if (a.w->dtype() != DType::bf16) {
    // Several rows at a stride of a multiple of 2 KiB would share L1 sets with each other and
    // with the weight rows (4 KiB apart at K = 1024): copied to a padded stride first.
    const int64_t ldp = padded_row_stride(a.ldx);
    if (a.m == 1 || ldp == a.ldx) {
      over_tiles<float>(a, a.x, a.ldx);
      return;
    }
    auto* xp = static_cast<float*>(thread_scratch(static_cast<size_t>(a.m * ldp) * 4));
    for (int64_t r = 0; r < a.m; ++r)
      std::memcpy(xp + r * ldp, a.x + r * a.ldx, static_cast<size_t>(k) * 4);
    over_tiles<float>(a, xp, ldp);
    return;
  }
  // x rounded to bf16 pairs, as the prefill panels and the AMX tiles take it.
  const int64_t ldw = (k + 31) / 32 * 16;  // words per row, a multiple of 16
  auto* xw = static_cast<uint32_t*>(thread_scratch(static_cast<size_t>(a.m * ldw) * 4));
  convert_rows_bf16_avx512(a.x, a.m, a.ldx, k, xw, ldw);
  over_tiles<uint16_t>(a, reinterpret_cast<const uint16_t*>(xw), 2 * ldw);
}

}  // namespace deltamoe::kernels

DM_AVX512_WARNINGS_POP
