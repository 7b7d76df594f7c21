// PackedLinear packing, implementation dispatch, the threaded linear(), the portable kernels
// and the OpenBLAS wrapper. The ISA-specific kernels live in linear_avx2.cpp and
// linear_avx512.cpp; the layout is described in linear_impl.h.
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <vector>

#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "kernels/cpu/linear_impl.h"

namespace deltamoe::kernels {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  DELTAMOE_CHECK(m >= 0 && n >= 0 && k >= 0, "kernels", "sgemm: negative size m=", m, " n=", n,
                 " k=", k);
  DELTAMOE_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX && lda <= INT32_MAX &&
                     ldb <= INT32_MAX && ldc <= INT32_MAX,
                 "kernels", "sgemm: sizes exceed the 32-bit BLAS interface");
  DELTAMOE_CHECK(ldc >= std::max<int64_t>(1, n), "kernels", "sgemm: ldc=", ldc, " < n=", n);
  DELTAMOE_CHECK(lda >= std::max<int64_t>(1, trans_a ? m : k), "kernels", "sgemm: lda=", lda,
                 " too small");
  DELTAMOE_CHECK(ldb >= std::max<int64_t>(1, trans_b ? k : n), "kernels", "sgemm: ldb=", ldb,
                 " too small");
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

// ---------------------------------------------------------------- packing

size_t PackedLinear::plan(const Tensor& w, DType dtype) {
  DELTAMOE_CHECK(w.dim() == 2, "kernels", "PackedLinear: weight must be 2-D [N, K], got ",
                 shape_str(w.shape()));
  DELTAMOE_CHECK(dtype != DType::int8, "kernels",
                 "PackedLinear: int8 weights have the row-major layout only (row_major())");
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16, "kernels",
                 "PackedLinear: dtype must be f32 or bf16, not ", dtype_name(dtype));
  panel_ = kPanel;
  dtype_ = dtype;
  n_ = w.size(0);
  k_ = w.size(1);
  DELTAMOE_CHECK(n_ > 0 && k_ > 0, "kernels", "PackedLinear: empty weight ", shape_str(w.shape()));
  const int64_t panels = (n_ + kPanel - 1) / kPanel;
  bytes_ = dtype == DType::f32 ? static_cast<size_t>(panels * k_ * kPanel) * 4
                               : static_cast<size_t>(panels * ((k_ + 1) / 2) * kPanel * 2) * 2;
  return bytes_;
}

void PackedLinear::pack_into(const Tensor& w, void* out) const {
  if (dtype_ == DType::bf16 && w.dtype() == DType::bf16 && w.is_contiguous()) {
    // bf16 into bf16 panels: each (k even, k odd) pair of a row is one 32-bit word of the
    // source, copied as is with sequential writes; no f32 temporary (whose fresh pages the
    // kernel must zero: most of the time of loading a bf16 model with packed weights).
    const int64_t k2 = (k_ + 1) / 2;
    const auto* src = static_cast<const uint16_t*>(w.raw());
    auto* dst = static_cast<uint32_t*>(out);
    const int64_t panels = (n_ + kPanel - 1) / kPanel;
    for (int64_t p = 0; p < panels; ++p) {
      uint32_t* panel = dst + p * k2 * kPanel;
      const int64_t cols = std::min(kPanel, n_ - p * kPanel);
      const uint16_t* rows[kPanel];
      for (int64_t c = 0; c < cols; ++c) rows[c] = src + (p * kPanel + c) * k_;
      for (int64_t j = 0; j < k2; ++j) {
        uint32_t* out_j = panel + j * kPanel;
        for (int64_t c = 0; c < cols; ++c) {
          if (2 * j + 1 < k_) {
            std::memcpy(out_j + c, rows[c] + 2 * j, 4);
          } else {
            out_j[c] = rows[c][2 * j];  // odd K: the high half (k = K) is 0
          }
        }
        for (int64_t c = cols; c < kPanel; ++c) out_j[c] = 0;
      }
    }
    return;
  }
  const Tensor wf = (w.dtype() == DType::f32 && w.is_contiguous()) ? w : w.to(DType::f32);
  const float* src = wf.data<float>();
  if (dtype_ == DType::f32) {
    float* dst = static_cast<float*>(out);
    for (int64_t n = 0; n < n_; ++n) {
      float* col = dst + (n / kPanel) * k_ * kPanel + n % kPanel;
      const float* row = src + n * k_;
      for (int64_t k = 0; k < k_; ++k) col[k * kPanel] = row[k];
    }
  } else {
    const int64_t k2 = (k_ + 1) / 2;
    uint16_t* dst = static_cast<uint16_t*>(out);
    for (int64_t n = 0; n < n_; ++n) {
      uint16_t* col = dst + ((n / kPanel) * k2 * kPanel + n % kPanel) * 2;
      const float* row = src + n * k_;
      for (int64_t k = 0; k < k_; ++k) col[(k / 2) * kPanel * 2 + (k & 1)] = f32_to_bf16(row[k]);
    }
  }
}

PackedLinear::PackedLinear(const Tensor& w, DType dtype) {
  data_ = std::make_shared<Storage>(plan(w, dtype));
  pack_into(w, data_->data());
  // Read once for the copy: a file mapping's pages of it go (as in row_major_all).
  w.release_pages();
}

std::vector<PackedLinear> PackedLinear::pack_all(const std::vector<Tensor>& ws, DType dtype) {
  std::vector<PackedLinear> out(ws.size());
  size_t total = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    out[i].offset_ = total;
    total += (out[i].plan(ws[i], dtype) + kAlignment - 1) / kAlignment * kAlignment;
  }
  auto storage = std::make_shared<Storage>(std::max<size_t>(total, kAlignment));
  // Matrices are packed on all threads: loading a model is mostly this loop.
  parallel_for(static_cast<int64_t>(ws.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      out[i].data_ = storage;
      out[i].pack_into(ws[i], static_cast<char*>(storage->data()) + out[i].offset_);
      ws[i].release_pages();
    }
  });
  return out;
}

std::vector<PackedLinear> PackedLinear::copy_all(const std::vector<PackedLinear>& ps) {
  std::vector<PackedLinear> out(ps);
  std::vector<size_t> offset(ps.size(), 0);
  size_t total = 0;
  const auto copied = [](const PackedLinear& p) { return p.data_ && !p.in_place_; };
  for (size_t i = 0; i < ps.size(); ++i) {
    if (!copied(ps[i])) continue;
    offset[i] = total;
    total += (ps[i].bytes_ + kAlignment - 1) / kAlignment * kAlignment;
  }
  if (total == 0) return out;
  auto storage = std::make_shared<Storage>(total);
  parallel_for(static_cast<int64_t>(ps.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (!copied(ps[i])) continue;
      std::memcpy(static_cast<char*>(storage->data()) + offset[i], ps[i].data(), ps[i].bytes_);
      out[i].data_ = storage;
      out[i].offset_ = offset[i];
    }
  });
  return out;
}

// ---------------------------------------------------------------- dispatch

bool linear_impl_supported(LinearImpl impl, DType dtype) {
  const CpuFeatures& f = cpu_features();
  switch (impl) {
    case LinearImpl::portable:
      return true;
    case LinearImpl::avx2:
      return f.avx2 && f.fma && (dtype != DType::int8 || f.f16c);
    case LinearImpl::avx512:
      // int8: the AVX-512 VNNI dot kernel (the AVX2 one's quantiser and prefill path).
      if (dtype == DType::int8)
        return f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni &&
               linear_impl_supported(LinearImpl::avx2, dtype);
      // The kernels are compiled for F+BW+VL(+BF16), so require what the compiler may use.
      return f.avx512f && f.avx512bw && f.avx512vl && (dtype != DType::bf16 || f.avx512_bf16);
    case LinearImpl::amx:
      // bf16 tiles (AMX has no f32 multiply; int8 weights are dequantised to bf16 for them);
      // smaller products take the AVX-512 BF16 kernel (bf16) or the AVX2 int8 dot kernel.
      if (dtype == DType::f32 || !(f.amx_tile && f.amx_bf16 && f.amx_permitted)) return false;
      return linear_impl_supported(LinearImpl::avx512, DType::bf16) &&
             linear_impl_supported(LinearImpl::avx512, dtype);
  }
  return false;
}

bool one_row_prefetch() {
  static const bool on = [] {
    const char* v = std::getenv("DELTAMOE_ONE_ROW_PREFETCH");
    if (v != nullptr && *v != '\0') {
      if (std::strcmp(v, "0") == 0 || std::strcmp(v, "1") == 0) return *v == '1';
      // As DELTAMOE_ISA: a bad value is named on stderr and the default applies.
      std::fprintf(
          stderr,
          "deltamoe: warning: [cpu] DELTAMOE_ONE_ROW_PREFETCH=%s ignored (expected 0 or 1)\n", v);
    }
    return cpu_features_detected().intel;
  }();
  return on;
}

LinearImpl best_linear_impl(DType dtype) {
  if (linear_impl_supported(LinearImpl::amx, dtype)) return LinearImpl::amx;
  if (linear_impl_supported(LinearImpl::avx512, dtype)) return LinearImpl::avx512;
  if (linear_impl_supported(LinearImpl::avx2, dtype)) return LinearImpl::avx2;
  return LinearImpl::portable;
}

const char* linear_impl_name(LinearImpl impl, DType dtype) {
  switch (impl) {
    case LinearImpl::portable:
      return "portable";
    case LinearImpl::avx2:
      return dtype == DType::int8 ? "avx2_int8" : "avx2";
    case LinearImpl::avx512:
      return dtype == DType::bf16   ? "avx512_bf16"
             : dtype == DType::int8 ? "avx512_vnni_int8"
                                    : "avx512";
    case LinearImpl::amx:
      return dtype == DType::int8 ? "avx512_vnni_int8+amx_bf16" : "amx_bf16";
  }
  return "unknown";
}

const char* linear_impl_name(DType dtype) {
  return linear_impl_name(best_linear_impl(dtype), dtype);
}

namespace {
void check_linear_args(const float* x, int64_t m, int64_t ldx, const PackedLinear& w,
                       int64_t n_begin, int64_t n_end, const float* y, int64_t ldy) {
  DELTAMOE_CHECK(w.data() != nullptr, "kernels", "linear: weight is not packed");
  DELTAMOE_CHECK(m >= 0, "kernels", "linear: negative row count ", m);
  DELTAMOE_CHECK(0 <= n_begin && n_begin <= n_end && n_end <= w.out_features(), "kernels",
                 "linear: column range [", n_begin, ", ", n_end, ") outside [0, ", w.out_features(),
                 ")");
  DELTAMOE_CHECK(n_begin % w.panel() == 0, "kernels", "linear: n_begin=", n_begin,
                 " is not a multiple of the panel width ", w.panel());
  DELTAMOE_CHECK(m <= 1 || ldx >= w.in_features(), "kernels", "linear: ldx=", ldx,
                 " < in_features=", w.in_features());
  DELTAMOE_CHECK(m <= 1 || ldy >= n_end - n_begin, "kernels", "linear: ldy=", ldy,
                 " < column range width ", n_end - n_begin);
  DELTAMOE_CHECK(m == 0 || n_begin == n_end || (x != nullptr && y != nullptr), "kernels",
                 "linear: null x or y");
}

void run_impl(LinearImpl impl, const LinearArgs& a) {
  if (a.w2 && !rows_avx512_takes(impl, *a.w, a.m)) {
    LinearArgs one = a, two = a;
    one.w2 = two.w2 = nullptr;
    one.y2 = two.y2 = nullptr;
    two.w = a.w2;
    two.y = a.y2;
    run_impl(impl, one);
    run_impl(impl, two);
    return;
  }
  if (a.w->layout() == WeightLayout::row_major) {
    linear_rows(impl, a);
    return;
  }
  const bool bf = a.w->dtype() == DType::bf16;
  switch (impl) {
    case LinearImpl::portable:
      bf ? linear_bf16_portable(a) : linear_f32_portable(a);
      return;
    case LinearImpl::avx2:
      bf ? linear_bf16_avx2(a) : linear_f32_avx2(a);
      return;
    case LinearImpl::avx512:
      bf ? linear_bf16_avx512(a) : linear_f32_avx512(a);
      return;
    case LinearImpl::amx:
      bf ? linear_bf16_amx(a) : linear_f32_avx512(a);
      return;
  }
}
}  // namespace

void linear_st_impl(LinearImpl impl, const float* x, int64_t m, int64_t ldx, const PackedLinear& w,
                    int64_t n_begin, int64_t n_end, float* y, int64_t ldy, bool accumulate) {
  check_linear_args(x, m, ldx, w, n_begin, n_end, y, ldy);
  DELTAMOE_CHECK(linear_impl_supported(impl, w.dtype()), "kernels", "linear: implementation ",
                 linear_impl_name(impl, w.dtype()), " is not supported on this CPU");
  if (m == 0 || n_begin == n_end) return;
  run_impl(impl, LinearArgs{x, m, ldx, &w, n_begin, n_end, y, ldy, accumulate});
}

void linear_st(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy, bool accumulate) {
  check_linear_args(x, m, ldx, w, n_begin, n_end, y, ldy);
  if (m == 0 || n_begin == n_end) return;
  run_impl(best_linear_impl(w.dtype()),
           LinearArgs{x, m, ldx, &w, n_begin, n_end, y, ldy, accumulate});
}

void linear_st_pair(const float* x, int64_t m, int64_t ldx, const PackedLinear& wa,
                    const PackedLinear& wb, int64_t n_begin, int64_t n_end, float* ya, float* yb,
                    int64_t ldy) {
  check_linear_args(x, m, ldx, wa, n_begin, n_end, ya, ldy);
  check_linear_args(x, m, ldx, wb, n_begin, n_end, yb, ldy);
  DELTAMOE_CHECK(wa.out_features() == wb.out_features() && wa.in_features() == wb.in_features() &&
                     wa.dtype() == wb.dtype() && wa.layout() == wb.layout(),
                 "kernels", "linear pair: weights differ in shape, dtype or layout");
  if (m == 0 || n_begin == n_end) return;
  LinearArgs a{x, m, ldx, &wa, n_begin, n_end, ya, ldy, false};
  a.w2 = &wb;
  a.y2 = yb;
  run_impl(best_linear_impl(wa.dtype()), a);
}

namespace {

// Rows up to which a product is a stream of its weights (decode, a few sequences), and the
// weights per block of that stream handed to one thread at a time: 512 KiB streamed 1% faster
// than 128 KiB at decode (fewer restarts of the prefetchers where a thread's blocks are not
// adjacent) and a block is still a small share of a layer's projections.
constexpr int64_t kStreamRows = 8;
constexpr int64_t kStreamBlockBytes = int64_t{512} << 10;

// x · Wᵀ for the few rows of a weight stream: blocks of about kStreamBlockBytes of each
// matrix, by parallel_for_stealing. Each thread streams a contiguous share of the weights and
// the threads end within a block of each other however their bandwidth differs (a static
// split left one waiting for the other at every matrix). Columns are computed as linear_st
// computes them, so results do not depend on the blocks.
void linear_stream(const float* x, int64_t m, int64_t ldx, const PackedLinear* ws, size_t count,
                   float* y, int64_t ldy, bool accumulate) {
  struct Block {
    const PackedLinear* w;
    int64_t n_begin, n_end;
    float* y;
  };
  std::vector<Block> blocks;
  bool row_major = false;
  for (size_t j = 0; j < count; y += ws[j].out_features(), ++j) {
    const PackedLinear& w = ws[j];
    const int64_t n = w.out_features(), unit = w.column_align(m);
    if (n == 0) continue;
    row_major = row_major || w.layout() == WeightLayout::row_major;
    const int64_t col_bytes = std::max<int64_t>(1, static_cast<int64_t>(w.weight_bytes()) / n);
    const int64_t cols = std::max<int64_t>(1, kStreamBlockBytes / col_bytes / unit) * unit;
    for (int64_t b = 0; b < n; b += cols) blocks.push_back({&w, b, std::min(n, b + cols), y});
  }
  std::optional<BlasThreadsGuard> blas;
  if (row_major) blas.emplace(1);
  parallel_for_stealing(static_cast<int64_t>(blocks.size()), [&](int64_t i) {
    const Block& b = blocks[static_cast<size_t>(i)];
    run_impl(best_linear_impl(b.w->dtype()),
             LinearArgs{x, m, ldx, b.w, b.n_begin, b.n_end, b.y, ldy, accumulate});
  });
}

bool streams(int64_t m, const PackedLinear* ws, size_t count) {
  double flops = 0;
  for (size_t j = 0; j < count; ++j)
    flops += 2.0 * static_cast<double>(m) * ws[j].out_features() * ws[j].in_features();
  return num_threads() > 1 && m >= 1 && m <= kStreamRows && flops >= 1e6;
}

// y = x · Wᵀ split statically over the threads (panels, then rows): the product of many rows,
// or of one thread. Arguments already checked.
void linear_split(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, float* y,
                  int64_t ldy, bool accumulate) {
  const int64_t n = w.out_features(), k = w.in_features();
  const LinearImpl impl = best_linear_impl(w.dtype());
  const int64_t unit = w.column_align(m);
  const int64_t panels = (n + unit - 1) / unit;
  const int threads = num_threads();
  // OpenBLAS (row-major weights, many rows) runs inside our threads, one each.
  std::optional<BlasThreadsGuard> blas;
  if (w.layout() == WeightLayout::row_major) blas.emplace(1);
  // Below ~1 MFLOP a fork-join costs more than it saves.
  if (threads <= 1 || 2.0 * static_cast<double>(m) * n * k < 1e6) {
    run_impl(impl, LinearArgs{x, m, ldx, &w, 0, n, y, ldy, accumulate});
    return;
  }
  // Split columns first: each thread then streams only its share of the weights (what
  // bounds small m) and keeps its panels in its own L2. Rows are split only when there are
  // fewer panels than threads.
  // Row chunks keep >= 3 rows: the kernels sum k in a different order for 1-2 rows (split
  // accumulators), and results must not depend on the thread count.
  const int64_t col_chunks = std::min<int64_t>(threads, panels);
  // Row-major weights never split rows: a row chunk could cross blas_rows() and take the
  // other kernel, and results must not depend on the thread count.
  // AMX takes rows from amx_rows() on, with other sums than the kernels below: no row
  // split either.
  const int64_t row_chunks = w.layout() == WeightLayout::row_major || impl == LinearImpl::amx
                                 ? 1
                                 : std::clamp<int64_t>((threads + col_chunks - 1) / col_chunks, 1,
                                                       std::max<int64_t>(1, m / 3));
  parallel_for(col_chunks * row_chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c = t % col_chunks, r = t / col_chunks;
      const int64_t nb = std::min(n, panels * c / col_chunks * unit);
      const int64_t ne = std::min(n, panels * (c + 1) / col_chunks * unit);
      const int64_t rb = m * r / row_chunks, re = m * (r + 1) / row_chunks;
      if (nb == ne || rb == re) continue;
      run_impl(impl,
               LinearArgs{x + rb * ldx, re - rb, ldx, &w, nb, ne, y + rb * ldy, ldy, accumulate});
    }
  });
}

}  // namespace

void linear_concat(const float* x, int64_t m, int64_t ldx, const PackedLinear* ws, size_t count,
                   float* y, int64_t ldy, bool accumulate) {
  for (size_t j = 0, col = 0; j < count; col += static_cast<size_t>(ws[j].out_features()), ++j)
    check_linear_args(x, m, ldx, ws[j], 0, ws[j].out_features(), y + col, ldy);
  if (m == 0) return;
  if (streams(m, ws, count)) {
    linear_stream(x, m, ldx, ws, count, y, ldy, accumulate);
    return;
  }
  for (size_t j = 0; j < count; y += ws[j].out_features(), ++j)
    linear_split(x, m, ldx, ws[j], y, ldy, accumulate);
}

void linear(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, float* y, int64_t ldy,
            bool accumulate) {
  linear_concat(x, m, ldx, &w, 1, y, ldy, accumulate);
}

void linear_naive(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y) {
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < k; ++c) s += static_cast<double>(x[r * k + c]) * w[j * k + c];
      y[r * n + j] = static_cast<float>(s);
    }
}

// ---------------------------------------------------------------- scratch

void* thread_scratch(size_t bytes) {
  struct Buffer {
    void* p = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(p); }
  };
  thread_local Buffer buf;
  if (buf.size < bytes) {
    std::free(buf.p);
    const size_t size = (std::max<size_t>(bytes, 4096) + 63) / 64 * 64;
    buf.p = std::aligned_alloc(64, size);
    if (buf.p == nullptr) throw std::bad_alloc();
    buf.size = size;
  }
  return buf.p;
}

// ---------------------------------------------------------------- portable kernels

namespace {
// Rows of x per block in the portable kernels (acc is kRows x kPanel floats on the stack).
constexpr int64_t kRows = 4;

template <bool kBf16>
void linear_portable(const LinearArgs& a) {
  const int64_t k_dim = a.w->in_features();
  const int64_t k2 = (k_dim + 1) / 2;
  for (int64_t n0 = a.n_begin; n0 < a.n_end; n0 += kPanel) {
    const int64_t cols = std::min(kPanel, a.n_end - n0);
    const int64_t p = n0 / kPanel;
    for (int64_t r0 = 0; r0 < a.m; r0 += kRows) {
      const int64_t rows = std::min(kRows, a.m - r0);
      float acc[kRows][kPanel] = {};
      for (int64_t k = 0; k < k_dim; ++k) {
        float wk[kPanel];
        if constexpr (kBf16) {
          const uint16_t* wp =
              static_cast<const uint16_t*>(a.w->data()) + ((p * k2 + k / 2) * kPanel) * 2 + (k & 1);
          for (int64_t c = 0; c < kPanel; ++c) wk[c] = bf16_to_f32(wp[2 * c]);
        } else {
          const float* wp = static_cast<const float*>(a.w->data()) + (p * k_dim + k) * kPanel;
          for (int64_t c = 0; c < kPanel; ++c) wk[c] = wp[c];
        }
        for (int64_t r = 0; r < rows; ++r) {
          float xv = a.x[(r0 + r) * a.ldx + k];
          if constexpr (kBf16) xv = bf16_to_f32(f32_to_bf16(xv));
          for (int64_t c = 0; c < kPanel; ++c) acc[r][c] += xv * wk[c];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        float* yr = a.y + (r0 + r) * a.ldy + n0;
        for (int64_t c = 0; c < cols; ++c) yr[c] = a.accumulate ? yr[c] + acc[r][c] : acc[r][c];
      }
    }
  }
}
}  // namespace

void linear_f32_portable(const LinearArgs& a) {
  linear_portable<false>(a);
}
void linear_bf16_portable(const LinearArgs& a) {
  linear_portable<true>(a);
}

}  // namespace deltamoe::kernels
