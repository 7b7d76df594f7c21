// Private to kernels/cpu: small AVX-512 building blocks shared by the kernels (callers carry
// the target attribute; these are inlined into them).
#pragma once

#include <immintrin.h>

// GCC 12's AVX-512 intrinsics initialise their "undefined" pass-through operands from
// themselves, which -Wmaybe-uninitialized (or -Wuninitialized, where the caller is a template
// instantiated through a function-pointer table) reports once inlined into a target("avx512f")
// function. Files of such kernels put their code between these two; clang has no such warning
// (and would warn about the unknown name).
#if defined(__clang__)
#define DM_AVX512_WARNINGS_PUSH _Pragma("GCC diagnostic push")
#else
#define DM_AVX512_WARNINGS_PUSH                                                              \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#endif
#define DM_AVX512_WARNINGS_POP _Pragma("GCC diagnostic pop")

namespace deltamoe::kernels {

// In-register transpose of a 16 x 16 block of 32-bit elements: on return r[j] holds what was
// column j. Lane shuffles only, so the bits (f32 or bf16 pairs) pass through unchanged.
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // Per 128-bit lane j: columns 4j..4j+3 of each group of four rows.
#pragma GCC unroll 4
  for (int g = 0; g < 16; g += 4) {
    const __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    const __m512d c = _mm512_castps_pd(t[g + 2]), d = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Now r[4q + i] lane j = column 4j + i of rows 4q..4q+3; gather the lanes.
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

}  // namespace deltamoe::kernels
