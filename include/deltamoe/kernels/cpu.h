// CPU kernels: GEMM (OpenBLAS and our own packed kernels), activations, softmax, top-k.
//
// Conventions: row-major; leading dimensions in elements; all pointers are caller-owned.
// Functions whose name ends in `_st` are single-threaded and safe to call concurrently on
// disjoint outputs (the MoE layer parallelises across experts and tiles itself). The others
// use up to num_threads() threads (core/parallel.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "deltamoe/core/dtype.h"
#include "deltamoe/core/tensor.h"

namespace deltamoe::kernels {

/// C[M,N] = alpha * op(A) * op(B) + beta * C through OpenBLAS (cblas_sgemm), row-major.
/// op(A) is A[M,K] (or A[K,M] transposed when trans_a). Uses OpenBLAS's own threads.
void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

/// How a PackedLinear holds its weights.
enum class WeightLayout {
  packed,     // a private copy in 32-column panels (linear_impl.h), for our packed kernels
  row_major,  // W[N, K] as PyTorch stores it, usually a view of a mapped checkpoint
};

/// A weight matrix W[N,K] (PyTorch Linear layout: out_features x in_features) prepared once
/// for y = x · Wᵀ. Immutable; share freely across threads. Two layouts (WeightLayout):
///  - packed (the constructor, pack_all): a copy in panels for our own microkernels;
///  - row_major (row_major()): W as it is, no copy when it already has the compute dtype, so
///    a memory-mapped checkpoint is used in place. Few rows run our dot-product kernels, many
///    rows OpenBLAS (which packs a block at a time as it goes).
/// dtype f32 keeps f32 weights; dtype bf16 keeps bf16 weights (half the bytes) and the
/// kernels round x to bf16 and accumulate in f32 (AVX-512 BF16 `vdpbf16ps` when the CPU has
/// it and the layout is packed, else by widening the weights to f32).
/// dtype int8 (row_major() only; a quantised copy): symmetric int8 weights with one f16 scale
/// per 32 inputs (GGML q8_0's bytes); the kernels quantise x the same way per row and block
/// on the fly and sum the block products as integers (AVX2 below 32 rows, dequantised tiles
/// through OpenBLAS from there; layout and error in docs/kernels.md).
class PackedLinear {
 public:
  PackedLinear() = default;
  /// Packs `w` (any dtype, shape [N, K]) into `dtype` (f32 or bf16; int8 has no packed form).
  /// A file mapping's pages of `w` are released once read (Tensor::release_pages: resident
  /// memory is the copy, not also its source). Throws Error("kernels") on bad shapes or dtype.
  PackedLinear(const Tensor& w, DType dtype);
  /// Packs several weights into ONE allocation, each result a view of its part (sharing the
  /// storage). Large allocations sit on 2 MiB pages rounded up to whole pages, so packing the
  /// experts of a layer together avoids rounding each 1 MiB matrix (a bf16 [1024, 512]
  /// expert) up to 2 MiB, which doubles resident memory.
  static std::vector<PackedLinear> pack_all(const std::vector<Tensor>& ws, DType dtype);
  /// W (shape [N, K]) in row-major layout. When w is contiguous and already `dtype` (f32 or
  /// bf16) the result is a view that shares w's storage (keeping a mapped file mapped);
  /// otherwise w is converted into a new row-major buffer (int8: quantised). Throws
  /// Error("kernels"), for int8 also on a non-finite weight or a block scale beyond f16.
  static PackedLinear row_major(const Tensor& w, DType dtype);
  /// row_major() of several matrices, with every converted copy in ONE allocation (as
  /// pack_all: no rounding of each 1 MiB matrix to whole 2 MiB pages). In-place views stay
  /// views; a converted matrix's mapped source pages are released, as by the constructor.
  static std::vector<PackedLinear> row_major_all(const std::vector<Tensor>& ws, DType dtype);
  /// Copies of several prepared matrices in ONE allocation (as pack_all), each equal to its
  /// source; in-place views and empty matrices come back as they are. Gathers matrices
  /// prepared at different times into one allocation, so that the memory of those dropped
  /// from the set goes when they do.
  static std::vector<PackedLinear> copy_all(const std::vector<PackedLinear>& ps);
  /// Whether row_major(w, dtype) would use w in place (no copy).
  static bool can_view(const Tensor& w, DType dtype);

  WeightLayout layout() const { return layout_; }
  /// Whether the weights are the source tensor's own memory (row_major() without a copy).
  bool in_place() const { return in_place_; }
  /// For an in-place matrix over a file's read-only mapping (Storage::file_mapped): drops
  /// this process's mapping of the whole pages inside its bytes (madvise MADV_DONTNEED), so
  /// resident memory stops counting them; the file's page cache keeps them, and a later use
  /// reads them again. Copies and other memory are left alone. Returns the bytes released.
  /// Not thread-safe with a concurrent use.
  size_t release_pages() const;

  int64_t out_features() const { return n_; }
  int64_t in_features() const { return k_; }
  DType dtype() const { return dtype_; }
  /// Bytes of packed weights (what a decode step must read from memory).
  size_t weight_bytes() const { return bytes_; }
  /// Opaque packed data (layout private to kernels/cpu, see docs/kernels.md).
  const void* data() const {
    return data_ ? static_cast<const char*>(data_->data()) + offset_ : nullptr;
  }
  /// Output columns per packed panel: column ranges passed to linear_st must start on a
  /// multiple of it. 32 for both dtypes and every shape (callers may probe it once); 1 for
  /// row-major weights (any column range).
  int64_t panel() const { return panel_; }
  /// Column alignment that makes results independent of how a product of m rows is split
  /// into column ranges (among threads, say): packed, the panel; row-major, 8 below the rows
  /// from which OpenBLAS takes over, 128 from there (OpenBLAS's result for a cell depends
  /// on the width of the product it is part of, so it is called on aligned tiles).
  int64_t column_align(int64_t m) const;

 private:
  int64_t n_ = 0, k_ = 0;
  int64_t panel_ = 0;  // output columns per packed panel
  DType dtype_ = DType::f32;
  WeightLayout layout_ = WeightLayout::packed;
  bool in_place_ = false;
  std::shared_ptr<Storage> data_;
  size_t offset_ = 0, bytes_ = 0;  // this matrix's bytes within data_

  /// Checks `w` and sets the shape fields; returns the packed size in bytes.
  size_t plan(const Tensor& w, DType dtype);
  /// Packs `w` (checked by plan) into dst.
  void pack_into(const Tensor& w, void* dst) const;
};

/// y[m, n_begin:n_end] = x[m, K] · W[n_begin:n_end, :]ᵀ (+ y if accumulate). Single-threaded.
/// x is f32 with leading dimension ldx; y is f32 with leading dimension ldy, and `y` points at
/// column 0: row r's outputs go to y[r*ldy + n_begin .. r*ldy + n_end) (so a caller may pass
/// `buf - n_begin` with ldy = n_end - n_begin to get a compact block). Only those cells are
/// written. n_begin must be a multiple of w.panel() (or 0); n_end may be anything ≤ N.
/// bf16 weights: x is rounded to bf16 (nearest even) and products accumulate in f32.
/// Row-major weights with many rows go through OpenBLAS, which must then be single-threaded
/// (callers inside a parallel region hold a BlasThreadsGuard(1), as linear() and the MoE
/// block do); otherwise OpenBLAS starts its own threads beside the caller's.
/// Thread-safe: concurrent calls on disjoint outputs are fine (scratch is per thread).
/// Throws Error("kernels") on bad ranges or leading dimensions.
void linear_st(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy, bool accumulate = false);

/// Two products of one x over the same columns: ya = x · waᵀ and yb = x · wbᵀ (row stride ldy,
/// as linear_st without accumulate), bitwise equal to the two linear_st calls. wa and wb must
/// have the same shape, dtype and layout. Where a kernel prepares x before use (row-major
/// weights on AVX-512: copied to a padded stride or rounded to bf16), it does so once for both
/// (the gate and up projections of a SwiGLU expert). Thread-safety as linear_st.
void linear_st_pair(const float* x, int64_t m, int64_t ldx, const PackedLinear& wa,
                    const PackedLinear& wb, int64_t n_begin, int64_t n_end, float* ya, float* yb,
                    int64_t ldy);

/// A row stride (floats) of at least n that the row-major AVX-512 kernels read x at in place:
/// not a multiple of 512 floats (2 KiB), where up to 12 rows read together would share L1 sets
/// (x at any other stride is copied to such a one first). Callers that lay out many rows for
/// linear_st (the MoE block's gathered tokens and activations) use it.
inline int64_t padded_row_stride(int64_t n) {
  return n % 512 == 0 ? n + 16 : n;
}

/// y[m, N] = x[m, K] · Wᵀ (+ y if accumulate), on up to num_threads() threads: split over
/// output panels (each thread streams only its share of the weights), and over rows only when
/// there are fewer panels than threads. With up to 8 rows the panels go out in blocks of about
/// 512 KiB of weights, each thread taking its own share in order and then blocks left over by
/// slower threads. Small products (< 1 MFLOP) run on the calling thread.
/// Results do not depend on the thread count (each output is computed by one microkernel).
void linear(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, float* y, int64_t ldy,
            bool accumulate = false);

/// The products of one x with `count` matrices side by side: for j < count, y's columns
/// [o_j, o_j + N_j) = x · ws[j]ᵀ (+ y if accumulate) with o_j = N_0 + ... + N_{j-1} (ldy ≥ Σ N_j
/// when m > 1); each column as linear() computes it. With a few rows (decode) all the
/// matrices' weights are one stream split over the threads in one parallel region (a layer's
/// q, k and v projections), else one linear() per matrix. ws: `count` matrices, not owned.
/// Throws Error("kernels") as linear().
void linear_concat(const float* x, int64_t m, int64_t ldx, const PackedLinear* ws, size_t count,
                   float* y, int64_t ldy, bool accumulate = false);

/// Naive triple loop y = x · Wᵀ with W[N,K] f32 (the test reference; slow).
void linear_naive(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y);

// ---- element-wise and row-wise ops (single-threaded; n elements or rows of length d) ----

/// SiLU: y = x · sigmoid(x).
void silu_st(const float* x, float* y, int64_t n);
/// GELU, tanh approximation (as PyTorch's approximate="tanh").
void gelu_tanh_st(const float* x, float* y, int64_t n);
/// GELU, exact (erf), as PyTorch's default nn.GELU(); x == y allowed. On AVX-512 erf is
/// Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7), elsewhere std::erf.
void gelu_st(const float* x, float* y, int64_t n);
/// GELU's vector-Jacobian product, accumulated: dx[i] += dy[i] · GELU'(x[i]) with
/// GELU'(x) = Φ(x) + x·φ(x) (same erf as gelu_st).
void gelu_grad_acc_st(const float* x, const float* dy, float* dx, int64_t n);
/// Row-wise layer norm: y[r, :] = (x[r, :] − mean) · rstd · gamma + beta over rows of d
/// floats, rstd = 1/sqrt(var + eps) (biased variance). If `stats` is not null, writes mean and
/// rstd of row r to stats[2r], stats[2r+1] (for the backward pass). x and y must not overlap.
void layer_norm_rows_st(const float* x, const float* gamma, const float* beta, float* y,
                        float* stats, int64_t rows, int64_t d, float eps);
/// SwiGLU combine: out[i] = silu(gate[i]) * up[i].
void swiglu_st(const float* gate, const float* up, float* out, int64_t n);
/// y += alpha * x.
void axpy_st(float alpha, const float* x, float* y, int64_t n);
/// Row-wise numerically stable softmax of x[rows, d] into y (may alias x).
void softmax_rows_st(const float* x, float* y, int64_t rows, int64_t d);
/// Indices and values of the k largest entries of x[d], sorted by value descending; ties go
/// to the lower index (matches torch.topk on distinct values, deterministic on ties).
void topk_st(const float* x, int64_t d, int64_t k, int32_t* idx, float* val);

/// What linear_st does with row-major weights of `dtype` on this CPU, in words (for
/// `deltamoe info`), e.g. "avx2 dot kernel below 16 rows, OpenBLAS sgemm from 16".
std::string linear_row_major_impl_name(DType dtype);
/// Whether the single-row dot kernels (AVX-512 f32 and bf16, AVX-512 VNNI int8: the decode of
/// one sequence, one weight stream per thread) also read the weights ahead in software: on
/// Intel CPUs (CpuFeatures::intel), where it made decode 1.02-1.04x (f32), 1.11x (bf16) and
/// 1.08x (int8) faster, not on AMD Zen, whose prefetchers follow one stream better alone
/// (docs/kernels.md). DELTAMOE_ONE_ROW_PREFETCH=1 or 0 overrides the choice (for comparisons;
/// the results are the same either way; another value is ignored with a warning on stderr).
/// Read once; thread-safe.
bool one_row_prefetch();
/// Name of the element-wise ops' implementation on this CPU ("avx512" or "portable").
const char* ops_impl_name();

/// The AMX-BF16 peak probe of `bench moe-layer`: `iters` x 4 register-only tdpbf16ps (65536
/// flops per iteration) on the calling thread; returns a value of the result tile (0). Only
/// where linear_impl_name(DType::bf16) is "amx_bf16" (else the tile instructions fault).
double amx_bf16_peak_loop(int64_t iters);

/// Which implementation linear_st uses for a dtype on this CPU ("amx_bf16", "avx512",
/// "avx512_bf16", "avx2_int8+amx_bf16", "avx2_int8", "avx2", "portable").
const char* linear_impl_name(DType dtype);

}  // namespace deltamoe::kernels
