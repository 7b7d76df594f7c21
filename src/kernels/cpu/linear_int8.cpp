// int8 weights (DType::int8, layout in linear_impl.h): quantisation of weights (at load) and of
// activations (per call), the portable integer kernel, and the dispatch between the integer dot
// kernels (few rows: decode, bound by reading the weights, which are half of bf16's bytes) and
// dequantise + OpenBLAS (many rows: prefill, bound by multiply-adds, where OpenBLAS's f32 GEMM
// beats an AVX2 integer GEMM that has no VNNI).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include <omp.h>

#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "kernels/cpu/linear_impl.h"

namespace deltamoe::kernels {

void quantize_weight_block_int8(const float* w, int64_t len, int64_t row, int64_t col0, int8_t* q,
                                uint16_t* d) {
  float amax = 0.0f;
  for (int64_t c = 0; c < len; ++c) {
    DELTAMOE_CHECK(std::isfinite(w[c]), "kernels", "int8: weight [", row, ", ", col0 + c,
                   "] is not finite (", w[c], ")");
    amax = std::max(amax, std::fabs(w[c]));
  }
  const float d_exact = amax / 127.0f;
  DELTAMOE_CHECK(d_exact <= 65504.0f, "kernels", "int8: weights of row ", row, " (|w| up to ", amax,
                 ") exceed the range of f16 block scales");
  // Quantise against the stored (f16) scale, so that the rounding of the scale is not added
  // to every weight's error.
  const uint16_t d16 = f32_to_f16(d_exact);
  const float scale = f16_to_f32(d16);
  *d = d16;
  const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
  for (int64_t c = 0; c < kQBlock; ++c) {
    const float v = c < len ? std::nearbyint(w[c] * inv) : 0.0f;
    q[c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
  }
}

void quantize_weight_rows_int8(LinearImpl impl, const float* w, int64_t rows, int64_t k, int8_t* q,
                               uint16_t* d, int64_t row0) {
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  // Each row is quantised in natural order, then put in the stored order (linear_impl.h).
  std::vector<int8_t> natural(static_cast<size_t>(kp));
  for (int64_t n = 0; n < rows; ++n) {
    if (impl != LinearImpl::portable) {
      quantize_weight_row_int8_avx2(w + n * k, k, row0 + n, natural.data(), d + n * kb);
    } else {
      for (int64_t b = 0; b < kb; ++b)
        quantize_weight_block_int8(w + n * k + b * kQBlock, std::min(kQBlock, k - b * kQBlock),
                                   row0 + n, b * kQBlock, natural.data() + b * kQBlock,
                                   d + n * kb + b);
    }
    int8_to_stored_order(natural.data(), kb, q + n * kp);
  }
}

void quantize_weights_int8(const Tensor& w, void* dst) {
  DELTAMOE_CHECK(w.defined() && w.dim() == 2 && w.size(0) > 0 && w.size(1) > 0, "kernels",
                 "int8: weight must be a non-empty 2-D [N, K]");
  const int64_t n_rows = w.size(0), k = w.size(1);
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  auto* q = static_cast<int8_t*>(dst);
  auto* d = reinterpret_cast<uint16_t*>(static_cast<char*>(dst) + int8_scales_offset(n_rows, k));
  const LinearImpl impl = best_linear_impl(DType::int8);
  // An f32 tensor is read in place; any other (a bf16 checkpoint, a strided view) is widened 64
  // rows at a time on the thread that quantises them: converting whole tensors first took 12-23
  // s for the reference model, and a transient f32 copy of each tensor.
  const bool in_place = w.dtype() == DType::f32 && w.is_contiguous();
  constexpr int64_t kRows = 64;
  // Rows on all threads (a single large matrix, the LM head say, would otherwise load on one;
  // inside row_major_all's parallel loop this runs on the calling thread).
  parallel_for(n_rows, kRows, [&](int64_t b, int64_t e) {
    std::vector<float> widened;
    for (int64_t r0 = b; r0 < e; r0 += kRows) {
      const int64_t r1 = std::min(e, r0 + kRows);
      const float* rows = nullptr;
      if (in_place) {
        rows = w.data<float>() + r0 * k;
      } else {
        widened.resize(static_cast<size_t>((r1 - r0) * k));
        w.slice(r0, r1).convert_into(widened.data(), DType::f32);
        rows = widened.data();
      }
      quantize_weight_rows_int8(impl, rows, r1 - r0, k, q + r0 * kp, d + r0 * kb, r0);
    }
  });
}

void quantize_block_int8(const float* x, int64_t len, int8_t* q, float* d) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t c = 0; c < len; ++c) {
    finite = finite && std::isfinite(x[c]);
    amax = std::max(amax, std::fabs(x[c]));
  }
  if (!finite) {
    // NaN / Inf in, NaN out (as the f32 kernels would give), without converting NaN to int.
    *d = std::numeric_limits<float>::quiet_NaN();
    std::memset(q, 0, kQBlock);
    return;
  }
  *d = amax / 127.0f;
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t c = 0; c < kQBlock; ++c)
    q[c] = c < len ? static_cast<int8_t>(std::nearbyint(x[c] * inv)) : int8_t{0};
}

void quantize_rows_int8(const float* x, int64_t m, int64_t ldx, int64_t k, int8_t* q, float* d) {
  const int64_t kb = (k + kQBlock - 1) / kQBlock, kp = kb * kQBlock;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < kb; ++b)
      quantize_block_int8(x + r * ldx + b * kQBlock, std::min(kQBlock, k - b * kQBlock),
                          q + r * kp + b * kQBlock, d + r * kb + b);
}

namespace {

struct Int8Weights {
  const int8_t* q;
  const uint16_t* d;
  int64_t kb, kp;
};

Int8Weights int8_weights(const PackedLinear& w) {
  const int64_t kb = (w.in_features() + kQBlock - 1) / kQBlock;
  const char* base = static_cast<const char*>(w.data());
  return {reinterpret_cast<const int8_t*>(base),
          reinterpret_cast<const uint16_t*>(base +
                                            int8_scales_offset(w.out_features(), w.in_features())),
          kb, kb * kQBlock};
}

// The reference integer kernel (any CPU): exact integer sums per block, f32 across blocks.
void int8_portable(const LinearArgs& a, const int8_t* xq, const float* xd) {
  const Int8Weights w = int8_weights(*a.w);
  std::vector<int8_t> natural(static_cast<size_t>(w.kp));
  for (int64_t n = a.n_begin; n < a.n_end; ++n) {
    for (int64_t g0 = 0; g0 < w.kb; g0 += kQGroup)
      int8_group_to_natural(w.q + n * w.kp + g0 * kQBlock, std::min(kQGroup, w.kb - g0),
                            natural.data() + g0 * kQBlock);
    for (int64_t r = 0; r < a.m; ++r) {
      float s = 0.0f;
      for (int64_t b = 0; b < w.kb; ++b) {
        const int8_t* wb = natural.data() + b * kQBlock;
        const int8_t* xb = xq + r * w.kp + b * kQBlock;
        int32_t isum = 0;
        for (int64_t c = 0; c < kQBlock; ++c) isum += int32_t{wb[c]} * int32_t{xb[c]};
        s += static_cast<float>(isum) * (f16_to_f32(w.d[n * w.kb + b]) * xd[r * w.kb + b]);
      }
      float& out = a.y[r * a.ldy + n];
      out = a.accumulate ? out + s : s;
    }
  }
}

// Many rows (AVX2 CPUs only): x dequantised (so this path multiplies the same values as the
// integer kernels), the weights dequantised one tile of kBlasCols columns at a time, OpenBLAS
// sgemm per tile.
void int8_blas(const LinearArgs& a, const int8_t* xq, const float* xd, float* xf, float* wf,
               bool in_parallel) {
  const Int8Weights w = int8_weights(*a.w);
  const int64_t k = a.w->in_features();
  for (int64_t r = 0; r < a.m; ++r)
    for (int64_t c = 0; c < k; ++c)
      xf[r * k + c] = static_cast<float>(xq[r * w.kp + c]) * xd[r * w.kb + c / kQBlock];
  // (x is m·K; the weights, N·K, are what costs: vectorised.)
  std::optional<BlasThreadsGuard> one_thread;
  if (!in_parallel) one_thread.emplace(1);
  for (int64_t t0 = a.n_begin; t0 < a.n_end;) {
    const int64_t t1 = std::min(a.n_end, (t0 / kBlasCols + 1) * kBlasCols);
    dequantize_rows_int8_avx2(w.q + t0 * w.kp, w.d + t0 * w.kb, t1 - t0, k, wf);
    sgemm(false, true, a.m, t1 - t0, k, 1.0f, xf, k, wf, k, a.accumulate ? 1.0f : 0.0f, a.y + t0,
          a.ldy);
    t0 = t1;
  }
}

}  // namespace

void linear_rows_int8(LinearImpl impl, const LinearArgs& a) {
  if (amx_rows_apply(impl, *a.w, a.m)) {
    linear_rows_amx(a);
    return;
  }
  const Int8Weights w = int8_weights(*a.w);
  const int64_t k = a.w->in_features();
  // As linear_rows: inside a parallel region OpenBLAS must already be single-threaded.
  const bool in_parallel = omp_in_parallel() != 0;
  // The VNNI kernel beats dequantise + OpenBLAS at every row count (Zen 4, 1024 x 1024, 2
  // threads: 3.6x at 32 rows, 2.1x at 512; bench/micro_kernels BM_rows_int8), the AVX2 one only
  // below kBlasRowsInt8.
  const bool blas =
      impl == LinearImpl::avx2 && a.m >= kBlasRowsInt8 && (!in_parallel || blas_threads() == 1);
  const size_t q_bytes = static_cast<size_t>(a.m * w.kp + 63) / 64 * 64;
  const size_t d_bytes = static_cast<size_t>(a.m * w.kb * 4 + 63) / 64 * 64;
  const size_t f_bytes = blas ? static_cast<size_t>(a.m + kBlasCols) * k * 4 : 0;
  // The VNNI kernel is AVX-512's: avx2 (a cap, or a test of that path) keeps the AVX2 one.
  const bool vnni = !blas && impl != LinearImpl::portable && impl != LinearImpl::avx2;
  const size_t v_bytes = !blas && impl != LinearImpl::portable ? int8_dot_scratch_bytes(a.m, k) : 0;
  char* scratch = static_cast<char*>(thread_scratch(q_bytes + d_bytes + f_bytes + v_bytes));
  auto* xq = reinterpret_cast<int8_t*>(scratch);
  auto* xd = reinterpret_cast<float*>(scratch + q_bytes);
  if (impl == LinearImpl::portable) {
    quantize_rows_int8(a.x, a.m, a.ldx, k, xq, xd);
  } else {
    quantize_rows_int8_avx2(a.x, a.m, a.ldx, k, xq, xd);
  }
  if (blas) {
    float* xf = reinterpret_cast<float*>(scratch + q_bytes + d_bytes);
    int8_blas(a, xq, xd, xf, xf + a.m * k, in_parallel);
  } else if (impl == LinearImpl::portable) {
    int8_portable(a, xq, xd);
  } else if (vnni) {
    linear_int8_vnni(a, xq, xd, scratch + q_bytes + d_bytes);
  } else {
    linear_int8_avx2(a, xq, xd, scratch + q_bytes + d_bytes);
  }
}

}  // namespace deltamoe::kernels
