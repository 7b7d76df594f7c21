// Row-major weights (WeightLayout::row_major): PackedLinear::row_major, the dispatch between
// our dot-product kernels (few rows) and the GEMMs (many rows), and the portable kernel.
//
// Why both: with a handful of rows a product is bound by reading W once, which the dot
// kernels do at the memory's rate straight from the mapped file; with many rows it is bound
// by FMAs. There, on AVX-512 CPUs, our packed-layout microkernels run on panels transposed
// from W as they go (linear_rows_avx512: 1.1-1.3x OpenBLAS in f32, 2.3x its widened-bf16
// path in bf16 on Zen 4); elsewhere OpenBLAS's GEMM, which packs W a block at a time the same
// way (bench/micro_kernels --table).
#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include <omp.h>

#include "deltamoe/core/parallel.h"

#include "deltamoe/kernels/cpu.h"
#include "kernels/cpu/linear_impl.h"

namespace deltamoe::kernels {

bool PackedLinear::can_view(const Tensor& w, DType dtype) {
  return w.defined() && w.dim() == 2 && w.dtype() == dtype && w.is_contiguous() &&
         (dtype == DType::f32 || dtype == DType::bf16);
}

PackedLinear PackedLinear::row_major(const Tensor& w, DType dtype) {
  DELTAMOE_CHECK(w.defined() && w.dim() == 2, "kernels",
                 "PackedLinear: weight must be 2-D [N, K], got ",
                 w.defined() ? shape_str(w.shape()) : std::string("none"));
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::int8, "kernels",
                 "PackedLinear: dtype must be f32, bf16 or int8, not ", dtype_name(dtype));
  DELTAMOE_CHECK(w.size(0) > 0 && w.size(1) > 0, "kernels", "PackedLinear: empty weight ",
                 shape_str(w.shape()));
  if (dtype == DType::int8) return std::move(row_major_all({w}, dtype)[0]);
  const bool view = can_view(w, dtype);
  const Tensor src = view ? w : w.to(dtype);
  PackedLinear p;
  p.in_place_ = view;
  p.layout_ = WeightLayout::row_major;
  p.panel_ = 1;
  p.dtype_ = dtype;
  p.n_ = src.size(0);
  p.k_ = src.size(1);
  p.data_ = src.storage();
  p.offset_ = static_cast<size_t>(static_cast<const char*>(src.raw()) -
                                  static_cast<const char*>(src.storage()->data()));
  p.bytes_ = src.nbytes();
  return p;
}

std::vector<PackedLinear> PackedLinear::row_major_all(const std::vector<Tensor>& ws, DType dtype) {
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::int8, "kernels",
                 "PackedLinear: dtype must be f32, bf16 or int8, not ", dtype_name(dtype));
  const bool int8 = dtype == DType::int8;
  std::vector<PackedLinear> out(ws.size());
  std::vector<size_t> offset(ws.size(), 0);
  size_t total = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    if (can_view(ws[i], dtype)) continue;
    DELTAMOE_CHECK(ws[i].defined() && ws[i].dim() == 2 && ws[i].size(0) > 0 && ws[i].size(1) > 0,
                   "kernels", "PackedLinear: weight ", i, " must be a non-empty 2-D [N, K], got ",
                   ws[i].defined() ? shape_str(ws[i].shape()) : std::string("none"));
    offset[i] = total;
    const size_t bytes = int8 ? int8_weight_bytes(ws[i].size(0), ws[i].size(1))
                              : static_cast<size_t>(ws[i].numel()) * dtype_size(dtype);
    total += (bytes + kAlignment - 1) / kAlignment * kAlignment;
  }
  std::shared_ptr<Storage> storage =
      total > 0 ? std::make_shared<Storage>(total) : std::shared_ptr<Storage>();
  // Converted on all threads: loading a model with a dtype change is mostly this loop.
  parallel_for(static_cast<int64_t>(ws.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (can_view(ws[i], dtype)) {
        out[i] = row_major(ws[i], dtype);
        continue;
      }
      char* dst = static_cast<char*>(storage->data()) + offset[i];
      size_t bytes = 0;
      if (int8) {
        quantize_weights_int8(ws[i], dst);
        bytes = int8_weight_bytes(ws[i].size(0), ws[i].size(1));
      } else {
        ws[i].convert_into(dst, dtype);
        bytes = static_cast<size_t>(ws[i].numel()) * dtype_size(dtype);
      }
      // The source was read once for the copy: a file mapping's pages of it go (resident
      // memory is the copies, not also what they were converted from).
      ws[i].release_pages();
      PackedLinear& p = out[i];
      p.layout_ = WeightLayout::row_major;
      p.panel_ = 1;
      p.dtype_ = dtype;
      p.n_ = ws[i].size(0);
      p.k_ = ws[i].size(1);
      p.data_ = storage;
      p.offset_ = offset[i];
      p.bytes_ = bytes;
      p.in_place_ = false;
    }
  });
  return out;
}

int64_t PackedLinear::column_align(int64_t m) const {
  if (layout_ == WeightLayout::packed) return panel_;
  return m >= blas_rows(dtype_) ? kBlasCols : 8;
}

std::string linear_row_major_impl_name(DType dtype) {
  if (best_linear_impl(dtype) == LinearImpl::portable)
    return dtype == DType::int8 ? "portable (plain integer loops)" : "portable (plain loops)";
  const std::string rows = std::to_string(blas_rows(dtype));
  if (best_linear_impl(dtype) == LinearImpl::amx) {
    const std::string amx = std::to_string(amx_rows(dtype));
    if (dtype == DType::int8)
      return "avx512 vnni int8 dot kernel (x quantised per 32) below " + amx +
             " rows, AMX-BF16 tiles on weights dequantised to bf16 from " + amx +
             " (K a multiple of 32)";
    return "avx512_bf16 dot kernel below " + amx + " rows, AMX-BF16 tiles from " + amx +
           " (K a multiple of 32; otherwise the dot kernel below " +
           std::to_string(pack_rows(dtype)) + " rows, avx512_bf16 panels packed on the fly from " +
           std::to_string(pack_rows(dtype)) + " (K even))";
  }
  if (dtype == DType::int8)
    return best_linear_impl(dtype) == LinearImpl::avx512
               ? "avx512 vnni int8 dot kernel (x quantised per 32) at every row count"
               : "avx2 int8 dot kernel (x quantised per 32) below " + rows +
                     " rows, dequantised tiles + OpenBLAS sgemm from " + rows;
  if (best_linear_impl(dtype) == LinearImpl::avx512) {
    const std::string pack = std::to_string(pack_rows(dtype));
    if (dtype == DType::bf16)
      return "avx512_bf16 dot kernel below " + pack +
             " rows, avx512_bf16 panels packed on the fly from " + pack +
             " (K even; odd K: OpenBLAS sgemm from " + rows + ")";
    return "avx512 dot kernel below " + pack + " rows, avx512 panels packed on the fly from " +
           pack;
  }
  return "avx2 dot kernel below " + rows + " rows, OpenBLAS sgemm from " + rows;
}

namespace {

// y[r, n] (+)= x[r, :] · W[n, :], plain loops (the reference path; any CPU).
template <bool kBf16>
void rows_portable(const LinearArgs& a, const float* x, int64_t ldx) {
  const int64_t k = a.w->in_features();
  for (int64_t r = 0; r < a.m; ++r)
    for (int64_t n = a.n_begin; n < a.n_end; ++n) {
      float s = 0.0f;
      if constexpr (kBf16) {
        const uint16_t* wr = static_cast<const uint16_t*>(a.w->data()) + n * k;
        for (int64_t c = 0; c < k; ++c) s += x[r * ldx + c] * bf16_to_f32(wr[c]);
      } else {
        const float* wr = static_cast<const float*>(a.w->data()) + n * k;
        for (int64_t c = 0; c < k; ++c) s += x[r * ldx + c] * wr[c];
      }
      float& out = a.y[r * a.ldy + n];
      out = a.accumulate ? out + s : s;
    }
}

}  // namespace

void linear_rows(LinearImpl impl, const LinearArgs& a) {
  DELTAMOE_ASSERT(!a.w2 || rows_avx512_takes(impl, *a.w, a.m),
                  "linear_rows: a pair reached a kernel that runs one weight");
  if (a.w->dtype() == DType::int8) {
    linear_rows_int8(impl, a);
    return;
  }
  if (amx_rows_apply(impl, *a.w, a.m)) {
    linear_rows_amx(a);
    return;
  }
  if (rows_avx512_takes(impl, *a.w, a.m)) {
    linear_rows_avx512(a);
    return;
  }
  const int64_t k = a.w->in_features(), cols = a.n_end - a.n_begin;
  const bool bf16 = a.w->dtype() == DType::bf16;
  // Inside a parallel region OpenBLAS must be single-threaded (callers hold a
  // BlasThreadsGuard(1)); if it is not, the dot kernels run instead of oversubscribing.
  const bool in_parallel = omp_in_parallel() != 0;
  const bool blas = impl != LinearImpl::portable && a.m >= blas_rows(a.w->dtype()) &&
                    (!in_parallel || blas_threads() == 1);
  // The AVX-512 dot kernels round x to bf16 pairs themselves (vectorised).
  if (!blas && (impl == LinearImpl::avx512 || impl == LinearImpl::amx)) {
    linear_rows_dot_avx512(a);
    return;
  }
  // Scratch: x rounded to bf16 (all bf16 paths compute the same products), then, for the
  // OpenBLAS path, the weights' column range widened to f32.
  const size_t x_floats = bf16 ? static_cast<size_t>((a.m * k + 15) / 16 * 16) : 0;
  const size_t w_floats = bf16 && blas ? static_cast<size_t>(cols * k) : 0;
  float* scratch = x_floats + w_floats > 0
                       ? static_cast<float*>(thread_scratch((x_floats + w_floats) * sizeof(float)))
                       : nullptr;
  const float* x = a.x;
  int64_t ldx = a.ldx;
  if (bf16) {
    for (int64_t r = 0; r < a.m; ++r)
      for (int64_t c = 0; c < k; ++c)
        scratch[r * k + c] = bf16_to_f32(f32_to_bf16(a.x[r * a.ldx + c]));
    x = scratch;
    ldx = k;
  }
  if (blas) {
    const float* w = static_cast<const float*>(a.w->data()) + a.n_begin * k;
    if (bf16) {
      float* wf = scratch + x_floats;
      const uint16_t* src = static_cast<const uint16_t*>(a.w->data()) + a.n_begin * k;
      for (int64_t i = 0; i < cols * k; ++i) wf[i] = bf16_to_f32(src[i]);
      w = wf;
    }
    std::optional<BlasThreadsGuard> one_thread;
    if (!in_parallel) one_thread.emplace(1);
    for (int64_t t0 = a.n_begin; t0 < a.n_end;) {
      const int64_t t1 = std::min(a.n_end, (t0 / kBlasCols + 1) * kBlasCols);
      sgemm(false, true, a.m, t1 - t0, k, 1.0f, x, ldx, w + (t0 - a.n_begin) * k, k,
            a.accumulate ? 1.0f : 0.0f, a.y + t0, a.ldy);
      t0 = t1;
    }
    return;
  }
  if (impl == LinearImpl::portable) {
    bf16 ? rows_portable<true>(a, x, ldx) : rows_portable<false>(a, x, ldx);
  } else {
    linear_rows_avx2(a, x, ldx);
  }
}

size_t PackedLinear::release_pages() const {
  // Only a file's read-only mapping (Storage::release_pages checks): never a copy.
  if (!in_place_ || !data_) return 0;
  return data_->release_pages(data(), bytes_);
}

}  // namespace deltamoe::kernels
