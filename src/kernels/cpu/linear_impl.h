// Private to kernels/cpu: the packed weight layout and the per-ISA entry points of
// linear_st, so tests can run every implementation this CPU supports in one process.
//
// Packed layout (PackedLinear::data()), panel width P = kPanel = 32 output columns:
//  f32:  panel p holds W[p*P + c, k] at  data[(p * K + k) * P + c]           (K-major, c fastest)
//  bf16: panel p holds W[p*P + c, k] at  data[((p * K2 + k/2) * P + c) * 2 + k%2],  K2 = ceil(K/2)
//        i.e. each 32-bit word is the (k even, k odd) pair of one column, as vdpbf16ps wants.
// Columns past N and the odd k past K are zero, so kernels never read garbage.
//
// int8 weights (DType::int8; always WeightLayout::row_major, a quantised copy), K blocks of
// kQBlock = 32 inputs, KB = ceil(K/32), KP = 32 * KB:
//   quants: int8  row n at q[n * KP], (k ≥ K is 0), symmetric in [-127, 127], stored in groups
//           of kQGroup = 16 blocks (the last group of a row may have fewer, w blocks): within a
//           group, the quants of input 4j..4j+3 of each block follow each other block by block,
//           i.e. input t of block b of the group sits at byte 4·w·(t/4) + 4·b + t%4 of the
//           group (int8_quant_offset). A 64-byte load then holds 4 inputs of each of 16 blocks,
//           and vpdpbusd sums whole blocks in its 16 int32 lanes without a reduction.
//   scales: f16   d[n * KB + b], starting at byte int8_scales_offset(N, K)
//   W[n, k] ≈ d[n * KB + k/32] * q[n * KP + int8_quant_offset(k, KB)]
//           (1.0625 bytes per weight, as GGML's q8_0)
// x is quantised the same way per row (f32 scales) and products are summed as integers within
// a block: y[r, n] = Σ_b d_w[n, b] · d_x[r, b] · Σ_{k in b} q_w · q_x.
#pragma once

#include <cstdint>

#include "deltamoe/kernels/cpu.h"

namespace deltamoe::kernels {

/// Output columns per packed panel (same for f32 and bf16; the MoE layer relies on it being
/// independent of the matrix shape).
inline constexpr int64_t kPanel = 32;

/// Implementations of linear_st. For bf16, `avx512` means AVX-512 BF16 (vdpbf16ps); `amx`
/// (bf16 and int8) is AMX-BF16 tiles from amx_rows() rows, the avx512 / avx2 kernels below.
enum class LinearImpl { portable, avx2, avx512, amx };

/// Arguments of one single-threaded linear call (see linear_st in cpu.h).
struct LinearArgs {
  const float* x;
  int64_t m, ldx;
  const PackedLinear* w;
  int64_t n_begin, n_end;
  float* y;
  int64_t ldy;
  bool accumulate;
  // linear_st_pair: a second weight of the same shape and kind applied to the same x and
  // columns, into y2 (stride ldy). Only linear_rows_avx512 takes it; run_impl splits the call
  // for every other kernel.
  const PackedLinear* w2 = nullptr;
  float* y2 = nullptr;
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
/// AMX-BF16 (tdpbf16ps) on the packed bf16 layout, whose panels are already B tiles (each
/// k-pair row of a panel is 32 columns x 2 bf16 = two 64-byte tile rows). Takes m >= kAmxRowsBf16
/// and K a multiple of 32; other calls go to linear_bf16_avx512. Needs amx_usable().
void linear_bf16_amx(const LinearArgs& a);
/// AMX-BF16 for row-major weights (bf16 in place, or int8 dequantised to bf16 32 rows at a
/// time; x rounded to bf16): for m >= amx_rows() and K a multiple of 32 (amx_rows_apply).
/// Needs amx_usable().
void linear_rows_amx(const LinearArgs& a);
/// Converts rows x[0:rows, 0:k] to bf16 pairs (round to nearest even), row stride ldxb words
/// (a multiple of 16; xb 64-byte aligned); the odd tail element and the padding up to ldxb
/// are zero. Needs AVX-512 BF16.
void convert_rows_bf16_avx512(const float* x, int64_t rows, int64_t ldx, int64_t k, uint32_t* xb,
                              int64_t ldxb);

/// Rows from which row-major products go through OpenBLAS rather than our dot kernels
/// (measured: bench/micro_kernels --table, docs/kernels.md). bf16 needs more rows to pay
/// for widening the weights to f32 for OpenBLAS.
inline constexpr int64_t kBlasRowsF32 = 16;
inline constexpr int64_t kBlasRowsBf16 = 32;
inline constexpr int64_t kBlasRowsInt8 = 32;
inline int64_t blas_rows(DType dtype) {
  return dtype == DType::bf16 ? kBlasRowsBf16 : dtype == DType::int8 ? kBlasRowsInt8 : kBlasRowsF32;
}
/// OpenBLAS is called on whole tiles of this many output columns, aligned to multiples of it
/// (its result for a cell depends on the product's width), so that results do not depend on
/// how callers split the columns among threads (PackedLinear::column_align).
inline constexpr int64_t kBlasCols = 256;
/// Rows from which the amx implementation uses tiles (docs/kernels.md). Packed bf16 from one row
/// (kAmxRowsBf16; measured in the MoE layer, bench moe-layer: padded to a 16-row tile, AMX still
/// streams the panels faster than the AVX-512 BF16 microkernel). Row-major (amx_rows()): bf16
/// from kAmxRowsBf16RowMajor (below, the AVX-512 BF16 dot kernel streams W's rows faster than
/// the tiles, which read 16 rows a row stride apart: the model's decode 1.25x at one sequence,
/// 1.14x at 4, level at 16), int8 from kAmxRowsInt8 (below, the integer dot kernel beats
/// dequantising the weights to bf16).
inline constexpr int64_t kAmxRowsBf16 = 1;
inline constexpr int64_t kAmxRowsBf16RowMajor = 4;
inline constexpr int64_t kAmxRowsInt8 = 8;
inline int64_t amx_rows(DType dtype) {
  return dtype == DType::int8 ? kAmxRowsInt8 : kAmxRowsBf16RowMajor;
}
/// Whether linear_rows_amx takes a row-major product of m rows (the amx implementation
/// selected, bf16 or int8 weights, K a multiple of 32, m >= amx_rows()). Each output depends
/// only on its own row of x and of W, so results do not depend on how columns are split.
inline bool amx_rows_apply(LinearImpl impl, const PackedLinear& w, int64_t m) {
  return impl == LinearImpl::amx && (w.dtype() == DType::bf16 || w.dtype() == DType::int8) &&
         w.in_features() % 32 == 0 && m >= amx_rows(w.dtype());
}

/// Rows from which row-major f32 / bf16 products take the AVX-512 microkernels of the packed
/// layout, on panels transposed from the weights as they go (linear_rows_avx512), where the
/// CPU has AVX-512 (bf16: AVX-512 BF16) and no AMX tiles take the product. Below, the dot
/// kernels. Measured against OpenBLAS on Zen 4 (bench/micro_kernels --table, docs/kernels.md),
/// and against the dot kernels' tiles from memory (BM_gemv_dram_rows_*: bf16 tiles stay ahead
/// of the panels up to 31 rows, f32 tiles are level with them at 16).
inline constexpr int64_t kPackRowsF32 = 16;
inline constexpr int64_t kPackRowsBf16 = 32;
inline int64_t pack_rows(DType dtype) {
  return dtype == DType::bf16 ? kPackRowsBf16 : kPackRowsF32;
}
/// Whether linear_rows_avx512 takes a row-major product of m rows: the avx512 implementation
/// (or amx where its tiles do not apply, bf16 only), f32 or bf16 weights (bf16 with K even, so
/// that each k-pair is one 32-bit word of a weight row), m >= kPackRows*. Each output is one
/// sequential sum over k slices of fixed width for any m from kPackRows*, so results do not
/// depend on how rows or columns are split.
inline bool rows_avx512_apply(LinearImpl impl, const PackedLinear& w, int64_t m) {
  if (w.dtype() == DType::f32) return impl == LinearImpl::avx512 && m >= pack_rows(w.dtype());
  return w.dtype() == DType::bf16 && (impl == LinearImpl::avx512 || impl == LinearImpl::amx) &&
         w.in_features() % 2 == 0 && m >= pack_rows(w.dtype());
}
/// Whether linear_rows sends a row-major product to linear_rows_avx512: not int8, not taken
/// by AMX tiles first, and rows_avx512_apply. The only kernel that runs both weights of a
/// linear_st_pair over one prepared x; run_impl splits a pair for every other one.
inline bool rows_avx512_takes(LinearImpl impl, const PackedLinear& w, int64_t m) {
  return w.layout() == WeightLayout::row_major && w.dtype() != DType::int8 &&
         !amx_rows_apply(impl, w, m) && rows_avx512_apply(impl, w, m);
}
/// Row-major f32 / bf16 weights through the AVX-512 (BF16) microkernels: each 32-column panel
/// of W is transposed into the packed layout in per-thread scratch (in-register 16 x 16
/// transposes), then used by every row block; x is copied (f32) or rounded to bf16 pairs
/// (bf16) once per block of rows. Needs AVX-512 (bf16: AVX-512 BF16); see rows_avx512_apply.
void linear_rows_avx512(const LinearArgs& a);
/// linear_st on row-major weights through `impl` (portable: plain loops; otherwise the AVX2
/// dot kernels below blas_rows() rows and OpenBLAS from there).
void linear_rows(LinearImpl impl, const LinearArgs& a);
/// AVX2 dot kernels for row-major weights; x (row stride ldx) replaces a.x (bf16: the copy
/// of x rounded to bf16).
void linear_rows_avx2(const LinearArgs& a, const float* x, int64_t ldx);
/// AVX-512 dot kernels for the same (f32: AVX-512 F/BW/VL; bf16: also AVX-512 BF16, `vdpbf16ps`
/// against a.x rounded to bf16 pairs by convert_rows_bf16_avx512 into thread_scratch): what
/// impl avx512 and amx run below their GEMM thresholds.
void linear_rows_dot_avx512(const LinearArgs& a);

// ---- int8 weights (linear_int8.cpp, linear_int8_avx2.cpp)

/// Inputs per int8 quantisation block (one scale each).
inline constexpr int64_t kQBlock = 32;
/// Byte offset of the f16 scales in an int8 matrix of N rows and K inputs (after the quants,
/// 64-byte aligned).
inline size_t int8_scales_offset(int64_t n, int64_t k) {
  const size_t quants =
      static_cast<size_t>(n) * static_cast<size_t>((k + kQBlock - 1) / kQBlock * kQBlock);
  return (quants + 63) / 64 * 64;
}
/// Blocks per group of the stored quant order of an int8 row (see the layout at the top).
inline constexpr int64_t kQGroup = 16;
/// Byte offset of input c's quant (c < 32 · kb) in a stored int8 row of kb blocks.
inline int64_t int8_quant_offset(int64_t c, int64_t kb) {
  const int64_t g0 = c / (kQGroup * kQBlock) * kQGroup;  // the group's first block
  const int64_t width = kb - g0 < kQGroup ? kb - g0 : kQGroup;
  const int64_t b = c / kQBlock - g0, t = c % kQBlock;
  return g0 * kQBlock + (t / 4) * 4 * width + 4 * b + t % 4;
}
/// Puts one row of kb blocks of quants from natural order (`in`) into the stored order (`out`,
/// not overlapping `in`); 4-byte copies, which the compiler may vectorise.
inline void int8_to_stored_order(const int8_t* in, int64_t kb, int8_t* out) {
  for (int64_t g0 = 0; g0 < kb; g0 += kQGroup) {
    const int64_t width = kb - g0 < kQGroup ? kb - g0 : kQGroup;
    const int8_t* src = in + g0 * kQBlock;
    int8_t* dst = out + g0 * kQBlock;
    for (int64_t j = 0; j < kQBlock / 4; ++j)
      for (int64_t b = 0; b < width; ++b)
        __builtin_memcpy(dst + 4 * (j * width + b), src + b * kQBlock + 4 * j, 4);
  }
}
/// The inverse for one group of `width` blocks: stored bytes (`in`) to 32 · width quants in
/// natural order (`out`, not overlapping).
inline void int8_group_to_natural(const int8_t* in, int64_t width, int8_t* out) {
  for (int64_t b = 0; b < width; ++b)
    for (int64_t j = 0; j < kQBlock / 4; ++j)
      __builtin_memcpy(out + b * kQBlock + 4 * j, in + 4 * (j * width + b), 4);
}
/// Bytes of an int8 matrix of N rows and K inputs (quants + scales).
inline size_t int8_weight_bytes(int64_t n, int64_t k) {
  return int8_scales_offset(n, k) +
         static_cast<size_t>(n) * static_cast<size_t>((k + kQBlock - 1) / kQBlock) * 2;
}
/// Quantises w ([N, K], any dtype, finite) into dst (int8_weight_bytes(N, K) bytes): per block
/// of 32 inputs the scale d = max|w| / 127 is rounded to f16 first and q = round(w / d).
/// Throws Error("kernels") on a non-finite weight or a scale beyond f16's range.
void quantize_weights_int8(const Tensor& w, void* dst);
/// The rows of quantize_weights_int8: w [rows, K] f32 into quants q (row stride KP) and f16
/// scales d (row stride KB), through `impl` (portable, or AVX2 for any other): the same bytes.
/// row0: the index of w's first row in its matrix (for error messages).
void quantize_weight_rows_int8(LinearImpl impl, const float* w, int64_t rows, int64_t k, int8_t* q,
                               uint16_t* d, int64_t row0 = 0);
/// One block (len ≤ 32 weights of row `row` from column col0, for error messages): 32 quants
/// (zero past len) and the f16 scale. Throws Error("kernels") on a non-finite weight or a
/// scale beyond f16's range.
void quantize_weight_block_int8(const float* w, int64_t len, int64_t row, int64_t col0, int8_t* q,
                                uint16_t* d);
/// One row of quantize_weight_rows_int8 with AVX2 (blocks it cannot take, the partial last one
/// and any that would throw, go to quantize_weight_block_int8).
void quantize_weight_row_int8_avx2(const float* w, int64_t k, int64_t row, int8_t* q, uint16_t* d);
/// Quantises rows of x ([m, k], row stride ldx) per block of 32: q (row stride KP, k ≥ K
/// zero) and d (row stride KB, d = max|x| / 127, f32), with q = round-to-nearest-even(x ·
/// 127 / max|x|). The same values on every path. A block with a non-finite x gets d = NaN.
void quantize_rows_int8(const float* x, int64_t m, int64_t ldx, int64_t k, int8_t* q, float* d);
/// One block of quantize_rows_int8: len ≤ 32 values of x into 32 quants (zero past len) and d.
void quantize_block_int8(const float* x, int64_t len, int8_t* q, float* d);
/// quantize_rows_int8 with AVX2 (needs AVX2; the same q and d bit for bit).
void quantize_rows_int8_avx2(const float* x, int64_t m, int64_t ldx, int64_t k, int8_t* q,
                             float* d);
/// Dequantises `rows` int8 weight rows (quants q, row stride KP; f16 scales d, row stride KB)
/// into f32 dst[rows, k] (row stride k): d · q exactly. Needs AVX2 + F16C.
void dequantize_rows_int8_avx2(const int8_t* q, const uint16_t* d, int64_t rows, int64_t k,
                               float* dst);
/// linear_st for int8 weights through `impl` (portable or avx2): the integer dot kernels below
/// kBlasRowsInt8 rows; from there the weights are dequantised a tile at a time and the
/// dequantised x goes through OpenBLAS (the same products, summed in another order).
void linear_rows_int8(LinearImpl impl, const LinearArgs& a);
/// AVX2 integer dot kernel: y[r, n] (+)= for rows r < a.m, columns [a.n_begin, a.n_end) from
/// the quantised x (xq natural order, row stride KP; xd row stride KB); scratch:
/// int8_dot_scratch_bytes(a.m, K) bytes, 64-byte aligned.
void linear_int8_avx2(const LinearArgs& a, const int8_t* xq, const float* xd, void* scratch);
/// Scratch bytes the integer dot kernels need for m rows of K inputs (x's quants in the
/// weights' stored order).
inline size_t int8_dot_scratch_bytes(int64_t m, int64_t k) {
  const int64_t kp = (k + kQBlock - 1) / kQBlock * kQBlock;
  return static_cast<size_t>(m * kp + 63) / 64 * 64;
}
/// The same products with AVX-512 VNNI (vpdpbusd; the same integer block sums, f32 sums in
/// another order); scratch: int8_dot_scratch_bytes(a.m, K) bytes, 64-byte aligned.
void linear_int8_vnni(const LinearArgs& a, const int8_t* xq, const float* xd, void* scratch);

/// Per-thread scratch of at least `bytes` bytes, 64-byte aligned, reused across calls
/// (the packed copy of x). Valid until the next call on the same thread.
void* thread_scratch(size_t bytes);

}  // namespace deltamoe::kernels
