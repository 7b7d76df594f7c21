// Private to kernels/cpu: the packed weight layout and the per-ISA entry points of
// linear_st, so tests can run every implementation this CPU supports in one process.
//
// Packed layout (PackedLinear::data()), panel width P = kPanel = 32 output columns:
//  f32:  panel p holds W[p*P + c, k] at  data[(p * K + k) * P + c]           (K-major, c fastest)
//  bf16: panel p holds W[p*P + c, k] at  data[((p * K2 + k/2) * P + c) * 2 + k%2],  K2 = ceil(K/2)
//        i.e. each 32-bit word is the (k even, k odd) pair of one column, as vdpbf16ps wants.
// Columns past N and the odd k past K are zero, so kernels never read garbage.
#pragma once

#include <cstdint>

#include "deltamoe/kernels/cpu.h"

namespace deltamoe::kernels {

/// Output columns per packed panel (same for f32 and bf16; the MoE layer relies on it being
/// independent of the matrix shape).
inline constexpr int64_t kPanel = 32;

/// Implementations of linear_st. For bf16, `avx512` means AVX-512 BF16 (vdpbf16ps).
enum class LinearImpl { portable, avx2, avx512 };

/// Arguments of one single-threaded linear call (see linear_st in cpu.h).
struct LinearArgs {
  const float* x;
  int64_t m, ldx;
  const PackedLinear* w;
  int64_t n_begin, n_end;
  float* y;
  int64_t ldy;
  bool accumulate;
};

/// Whether this CPU (after DELTAMOE_DISABLE_AVX512) can run `impl` for `dtype`.
bool linear_impl_supported(LinearImpl impl, DType dtype);
/// The fastest supported implementation for `dtype`.
LinearImpl best_linear_impl(DType dtype);
/// "avx512", "avx512_bf16", "avx2" or "portable".
const char* linear_impl_name(LinearImpl impl, DType dtype);
/// linear_st through a given implementation (must be supported; checked).
void linear_st_impl(LinearImpl impl, const float* x, int64_t m, int64_t ldx, const PackedLinear& w,
                    int64_t n_begin, int64_t n_end, float* y, int64_t ldy, bool accumulate);

// Per-ISA kernels; arguments already validated, n_begin a multiple of kPanel.
void linear_f32_portable(const LinearArgs& a);
void linear_bf16_portable(const LinearArgs& a);
void linear_f32_avx2(const LinearArgs& a);
void linear_bf16_avx2(const LinearArgs& a);
void linear_f32_avx512(const LinearArgs& a);
void linear_bf16_avx512(const LinearArgs& a);

/// Rows from which row-major products go through OpenBLAS rather than our dot kernels
/// (measured: bench/micro_kernels --table, docs/kernels.md). bf16 needs more rows to pay
/// for widening the weights to f32 for OpenBLAS.
inline constexpr int64_t kBlasRowsF32 = 16;
inline constexpr int64_t kBlasRowsBf16 = 32;
inline int64_t blas_rows(DType dtype) {
  return dtype == DType::bf16 ? kBlasRowsBf16 : kBlasRowsF32;
}
/// OpenBLAS is called on whole tiles of this many output columns, aligned to multiples of it
/// (its result for a cell depends on the product's width), so that results do not depend on
/// how callers split the columns among threads (PackedLinear::column_align).
inline constexpr int64_t kBlasCols = 256;

/// linear_st on row-major weights through `impl` (portable: plain loops; otherwise the AVX2
/// dot kernels below blas_rows() rows and OpenBLAS from there).
void linear_rows(LinearImpl impl, const LinearArgs& a);
/// AVX2 dot kernels for row-major weights; x (row stride ldx) replaces a.x (bf16: the copy
/// of x rounded to bf16).
void linear_rows_avx2(const LinearArgs& a, const float* x, int64_t ldx);

/// Per-thread scratch of at least `bytes` bytes, 64-byte aligned, reused across calls
/// (the packed copy of x). Valid until the next call on the same thread.
void* thread_scratch(size_t bytes);

}  // namespace deltamoe::kernels
