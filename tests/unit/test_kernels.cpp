// Tests for kernels/cpu: every linear implementation this CPU supports against the naive
// reference (f32) or a naive reference on bf16-rounded inputs (bf16), sgemm against a naive
// GEMM, and every element-wise op against a scalar double-precision reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "kernels/cpu/linear_impl.h"
#include "kernels/cpu/ops_impl.h"

namespace deltamoe::kernels {
namespace {

std::vector<float> random_vec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

float round_bf16(float v) {
  return bf16_to_f32(f32_to_bf16(v));
}

std::vector<LinearImpl> supported_impls(DType dtype) {
  std::vector<LinearImpl> out;
  for (LinearImpl impl :
       {LinearImpl::portable, LinearImpl::avx2, LinearImpl::avx512, LinearImpl::amx})
    if (linear_impl_supported(impl, dtype)) out.push_back(impl);
  return out;
}

struct Shape3 {
  int64_t m, n, k;
};

// Checks linear_st_impl on x[m, k] (leading dim ldx) and W[n, k] for columns [nb, ne) of y
// (leading dim ldy), optionally accumulating, against a double-precision naive product
// on the same (possibly bf16-rounded) inputs. Cells outside the range must be untouched.
void check_linear(LinearImpl impl, DType dtype, Shape3 s, int64_t ldx, int64_t ldy, int64_t nb,
                  int64_t ne, bool accumulate, uint32_t seed,
                  WeightLayout layout = WeightLayout::packed) {
  SCOPED_TRACE(std::string(linear_impl_name(impl, dtype)) +
               (layout == WeightLayout::row_major ? " row-major" : " packed") +
               " m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) +
               " k=" + std::to_string(s.k) + " ldx=" + std::to_string(ldx) +
               " ldy=" + std::to_string(ldy) + " cols=[" + std::to_string(nb) + "," +
               std::to_string(ne) + ") acc=" + std::to_string(accumulate));
  const std::vector<float> x = random_vec(static_cast<size_t>(s.m * ldx), seed);
  const std::vector<float> w = random_vec(static_cast<size_t>(s.n * s.k), seed + 1);
  const std::vector<float> y0 = random_vec(static_cast<size_t>(s.m * ldy), seed + 2);
  const PackedLinear packed = layout == WeightLayout::packed
                                  ? PackedLinear(Tensor::from(w, {s.n, s.k}), dtype)
                                  : PackedLinear::row_major(Tensor::from(w, {s.n, s.k}), dtype);
  std::vector<float> y = y0;
  linear_st_impl(impl, x.data(), s.m, ldx, packed, nb, ne, y.data(), ldy, accumulate);
  const bool bf = dtype == DType::bf16;
  double max_err = 0.0;
  for (int64_t r = 0; r < s.m; ++r) {
    for (int64_t j = 0; j < ldy; ++j) {
      const float got = y[r * ldy + j];
      if (j < nb || j >= ne) {
        ASSERT_EQ(got, y0[r * ldy + j]) << "wrote outside the column range at " << r << "," << j;
        continue;
      }
      double ref = accumulate ? y0[r * ldy + j] : 0.0, scale = std::abs(ref);
      for (int64_t c = 0; c < s.k; ++c) {
        double xv = x[r * ldx + c], wv = w[j * s.k + c];
        if (bf) {
          xv = round_bf16(static_cast<float>(xv));
          wv = round_bf16(static_cast<float>(wv));
        }
        ref += xv * wv;
        scale += std::abs(xv * wv);
      }
      // Error relative to sum|x·w|: f32 accumulation of k products stays far below
      // k·eps (measured ~2e-7); bf16 products are exact in f32, so the same bound holds.
      const double err = std::abs(got - ref) / std::max(scale, 1e-30);
      max_err = std::max(max_err, err);
    }
  }
  EXPECT_LE(max_err, 2e-6);
}

TEST(Linear, PackedShapeAndBytes) {
  const PackedLinear f(Tensor({70, 33}, DType::f32), DType::f32);
  EXPECT_EQ(f.out_features(), 70);
  EXPECT_EQ(f.in_features(), 33);
  EXPECT_EQ(f.panel(), kPanel);
  EXPECT_EQ(f.weight_bytes(), size_t{3 * 32 * 33 * 4});  // 3 panels, zero padded
  const PackedLinear b(Tensor({70, 33}, DType::f32), DType::bf16);
  EXPECT_EQ(b.weight_bytes(), size_t{3 * 32 * 34 * 2});  // K padded to even
  EXPECT_THROW(PackedLinear(Tensor({4}, DType::f32), DType::f32), Error);
  EXPECT_THROW(PackedLinear(Tensor({4, 4}, DType::f32), DType::i32), Error);
}

// pack_all: several matrices in one allocation give the same products as packed alone, and
// each views its own part (odd shapes, so padding between parts matters).
TEST(Linear, PackAllEqualsSeparatePacking) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (DType dt : {DType::f32, DType::bf16}) {
    std::vector<Tensor> ws;
    for (auto [n, k] : {std::pair<int64_t, int64_t>{70, 33}, {32, 64}, {5, 17}}) {
      Tensor w({n, k});
      for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = u(rng);
      ws.push_back(w);
    }
    const auto all = PackedLinear::pack_all(ws, dt);
    ASSERT_EQ(all.size(), ws.size());
    for (size_t i = 0; i < ws.size(); ++i) {
      const PackedLinear alone(ws[i], dt);
      EXPECT_EQ(all[i].weight_bytes(), alone.weight_bytes());
      const int64_t n = ws[i].size(0), k = ws[i].size(1);
      std::vector<float> x(static_cast<size_t>(3 * k)), ya(static_cast<size_t>(3 * n)),
          yb(ya.size());
      for (float& v : x) v = u(rng);
      linear_st(x.data(), 3, k, all[i], 0, n, ya.data(), n);
      linear_st(x.data(), 3, k, alone, 0, n, yb.data(), n);
      EXPECT_EQ(ya, yb) << "matrix " << i;
    }
  }
}

// bf16 weights packed into bf16 panels take a direct path (32-bit pairs copied, no f32 round
// trip): the same bytes as packing their f32 upcast, odd K and partial panels included.
TEST(Linear, PackingBf16WeightsEqualsPackingTheirF32Upcast) {
  for (auto [n, k] : {std::pair<int64_t, int64_t>{70, 33}, {32, 64}, {5, 17}, {64, 1}}) {
    const Tensor wb =
        Tensor::from(random_vec(static_cast<size_t>(n * k), 77), {n, k}).to(DType::bf16);
    const PackedLinear direct(wb, DType::bf16), via_f32(wb.to(DType::f32), DType::bf16);
    ASSERT_EQ(direct.weight_bytes(), via_f32.weight_bytes());
    EXPECT_EQ(std::memcmp(direct.data(), via_f32.data(), direct.weight_bytes()), 0)
        << n << " x " << k;
  }
}

TEST(Linear, MatchesNaiveEveryImplF32AndBf16) {
  const std::vector<Shape3> shapes = {{1, 32, 16},   {2, 70, 33},   {3, 100, 64},  {7, 31, 5},
                                      {16, 64, 1},   {33, 96, 129}, {1, 512, 300}, {128, 40, 260},
                                      {13, 33, 257}, {150, 65, 20}};
  uint32_t seed = 1;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (LinearImpl impl : supported_impls(dtype)) {
      for (const Shape3& s : shapes) {
        check_linear(impl, dtype, s, s.k, s.n, 0, s.n, false, seed++);
        // Wider leading dimensions, accumulate, and a sub-range of columns.
        check_linear(impl, dtype, s, s.k + 3, s.n + 5, 0, s.n, true, seed++);
        if (s.n > kPanel)
          check_linear(impl, dtype, s, s.k, s.n, kPanel, std::min(s.n, 2 * kPanel + 7), true,
                       seed++);
      }
    }
  }
}

// AMX-BF16 tiles (K a multiple of 32 and m >= amx_rows(), packed or row-major; other products take
// the avx512 or avx2 kernels, covered above): row counts around the 16-row tiles, the 32-row blocks
// and the 256-row x blocks, partial panels and column ranges, accumulation.
TEST(Linear, AmxTilesMatchNaive) {
  if (!linear_impl_supported(LinearImpl::amx, DType::bf16)) GTEST_SKIP() << "no AMX-BF16 here";
  const std::vector<Shape3> shapes = {{1, 32, 32},  {2, 70, 64},   {5, 33, 1024},  {16, 32, 32},
                                      {17, 40, 64}, {31, 96, 32},  {32, 64, 128},  {33, 70, 1024},
                                      {48, 33, 96}, {150, 65, 64}, {300, 100, 256}};
  uint32_t seed = 500;
  for (const Shape3& s : shapes) {
    check_linear(LinearImpl::amx, DType::bf16, s, s.k, s.n, 0, s.n, false, seed++);
    check_linear(LinearImpl::amx, DType::bf16, s, s.k + 3, s.n + 5, 0, s.n, true, seed++);
    if (s.n > kPanel)
      check_linear(LinearImpl::amx, DType::bf16, s, s.k, s.n, kPanel, std::min(s.n, 2 * kPanel + 7),
                   true, seed++);
    // Row-major weights (W's rows as A tiles): ranges starting anywhere, blocks past the last
    // row of W.
    check_linear(LinearImpl::amx, DType::bf16, s, s.k, s.n, 0, s.n, false, seed++,
                 WeightLayout::row_major);
    check_linear(LinearImpl::amx, DType::bf16, s, s.k + 3, s.n + 5, 5, s.n, true, seed++,
                 WeightLayout::row_major);
  }
}

// Each AMX output depends only on its own row of x: the first rows of a batch come out
// bitwise the same in a smaller batch (from amx_rows() rows), so results do not depend on how
// many tokens an expert receives.
TEST(Linear, AmxRowsBitwiseIndependentOfBatch) {
  if (!linear_impl_supported(LinearImpl::amx, DType::bf16)) GTEST_SKIP() << "no AMX-BF16 here";
  const int64_t n = 70, k = 256, m = 300;
  const PackedLinear p(Tensor::from(random_vec(static_cast<size_t>(n * k), 31), {n, k}),
                       DType::bf16);
  const std::vector<float> x = random_vec(static_cast<size_t>(m * k), 32);
  std::vector<float> all(static_cast<size_t>(m * n));
  linear_st_impl(LinearImpl::amx, x.data(), m, k, p, 0, n, all.data(), n, false);
  for (int64_t rows : {int64_t{1}, int64_t{2}, int64_t{17}, int64_t{100}}) {
    std::vector<float> part(static_cast<size_t>(rows * n));
    linear_st_impl(LinearImpl::amx, x.data(), rows, k, p, 0, n, part.data(), n, false);
    for (int64_t i = 0; i < rows * n; ++i)
      ASSERT_EQ(part[i], all[i]) << rows << " rows, cell " << i;
  }
}

// Row-major weights (a mapped checkpoint used in place): every implementation, both the dot
// kernels (m < blas_rows()) and the OpenBLAS path, on odd shapes, strides and column ranges,
// including ranges that start anywhere (no panel alignment).
TEST(Linear, RowMajorMatchesNaiveEveryImpl) {
  const std::vector<Shape3> shapes = {{1, 32, 16},     {2, 70, 33},   {3, 100, 64},  {4, 9, 8},
                                      {5, 31, 5},      {31, 96, 129}, {32, 40, 260}, {1, 512, 300},
                                      {13, 33, 257},   {150, 65, 20}, {16, 33, 2},   {17, 31, 66},
                                      {64, 513, 1030}, {250, 70, 36}};
  uint32_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (LinearImpl impl : supported_impls(dtype))
      for (const Shape3& s : shapes) {
        check_linear(impl, dtype, s, s.k, s.n, 0, s.n, false, seed++, WeightLayout::row_major);
        check_linear(impl, dtype, s, s.k + 3, s.n + 5, 0, s.n, true, seed++,
                     WeightLayout::row_major);
        if (s.n > 8)
          check_linear(impl, dtype, s, s.k, s.n, 5, std::min<int64_t>(s.n, 5 + 2 * 8 + 3), true,
                       seed++, WeightLayout::row_major);
      }
}

// Row-major dot kernels: a row's result is bitwise the same alone or batched with others (up
// to where the dot kernels hand over: to the AVX-512 panels, to OpenBLAS, or on AMX CPUs to the
// tiles from amx_rows() rows), so a decode step does not depend on the batch it runs in.
// K = 512: f32 rows at a stride of a multiple of 2 KiB, which the AVX-512 tiles copy to a
// padded one first.
TEST(Linear, RowMajorRowsBitwiseIndependentOfBatch) {
  const int64_t n = 37;
  for (int64_t k : {300, 512}) {
    const Tensor w = Tensor::from(random_vec(static_cast<size_t>(n * k), 21), {n, k});
    for (DType dtype : {DType::f32, DType::bf16}) {
      const PackedLinear p = PackedLinear::row_major(w, dtype);
      // Up to where the dot kernels hand over (to the AVX-512 panels or to OpenBLAS, or to
      // the AMX tiles where they take the product: bf16 with K a multiple of 32).
      const LinearImpl impl = best_linear_impl(dtype);
      int64_t handover =
          rows_avx512_apply(impl, p, pack_rows(dtype)) ? pack_rows(dtype) : blas_rows(dtype);
      if (amx_rows_apply(impl, p, handover)) handover = amx_rows(dtype);
      const int64_t m = handover - 1;
      const std::vector<float> x = random_vec(static_cast<size_t>(m * k), 22);
      std::vector<float> batch(static_cast<size_t>(m * n)), one(static_cast<size_t>(n));
      linear_st(x.data(), m, k, p, 0, n, batch.data(), n);
      for (int64_t r = 0; r < m; ++r) {
        linear_st(x.data() + r * k, 1, k, p, 0, n, one.data(), n);
        for (int64_t j = 0; j < n; ++j)
          ASSERT_EQ(batch[r * n + j], one[j])
              << dtype_name(dtype) << " K " << k << " row " << r << " col " << j;
      }
    }
  }
}

// Row-major panels packed on the fly (linear_rows_avx512, from kPackRows* rows): a row's result
// is bitwise the same whatever batch it is in (16 rows or several row blocks) and whichever
// column range is asked for, so prefill results do not depend on the batch or the thread split.
TEST(Linear, RowMajorPackedPanelsIndependentOfBatchAndColumns) {
  const int64_t n = 100, k = 1030, big = 400;
  const Tensor w = Tensor::from(random_vec(static_cast<size_t>(n * k), 23), {n, k});
  const std::vector<float> x = random_vec(static_cast<size_t>(big * k), 24);
  int checked = 0;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const PackedLinear p = PackedLinear::row_major(w, dtype);
    if (!rows_avx512_apply(best_linear_impl(dtype), p, pack_rows(dtype))) continue;
    const int64_t small = pack_rows(dtype);
    std::vector<float> all(static_cast<size_t>(big * n)), part(static_cast<size_t>(small * n));
    linear_st(x.data(), big, k, p, 0, n, all.data(), n);
    // The last `small` rows alone, in two column ranges that do not start on a panel.
    const float* xs = x.data() + (big - small) * k;
    linear_st(xs, small, k, p, 0, 37, part.data(), n);
    linear_st(xs, small, k, p, 37, n, part.data(), n);
    for (int64_t r = 0; r < small; ++r)
      for (int64_t j = 0; j < n; ++j)
        ASSERT_EQ(all[(big - small + r) * n + j], part[r * n + j])
            << dtype_name(dtype) << " row " << r << " col " << j;
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no AVX-512 row-major kernel on this CPU";
}

// linear_st_pair equals two linear_st calls bitwise, for every layout and dtype, with x read
// in place (f32 rows at a stride off 2 KiB multiples) or copied (a 2 KiB stride), over one
// and several row blocks; and it matches the naive product.
TEST(Linear, PairEqualsTwoCalls) {
  for (const int64_t k : {int64_t{512}, int64_t{70}}) {
    const int64_t n = 72;
    const Tensor wa = Tensor::from(random_vec(static_cast<size_t>(n * k), 31), {n, k});
    const Tensor wb = Tensor::from(random_vec(static_cast<size_t>(n * k), 32), {n, k});
    for (const int64_t m : {int64_t{1}, int64_t{5}, int64_t{16}, int64_t{40}, int64_t{200}}) {
      const int64_t ldx = k == 512 ? 512 : k + 3;
      const std::vector<float> x = random_vec(static_cast<size_t>(m * ldx), 33);
      std::vector<float> dense(static_cast<size_t>(m * k));
      for (int64_t r = 0; r < m; ++r) std::copy_n(x.data() + r * ldx, k, dense.data() + r * k);
      std::vector<float> ref_a(static_cast<size_t>(m * n)), ref_b(ref_a.size());
      linear_naive(dense.data(), m, k, wa.data<float>(), n, ref_a.data());
      linear_naive(dense.data(), m, k, wb.data<float>(), n, ref_b.data());
      for (DType dtype : {DType::f32, DType::bf16})
        for (bool rows : {false, true}) {
          const PackedLinear pa =
              rows ? PackedLinear::row_major(wa, dtype) : PackedLinear(wa, dtype);
          const PackedLinear pb =
              rows ? PackedLinear::row_major(wb, dtype) : PackedLinear(wb, dtype);
          std::vector<float> ya(static_cast<size_t>(m * n)), yb(ya.size()), za(ya.size()),
              zb(ya.size());
          linear_st_pair(x.data(), m, ldx, pa, pb, 0, n, ya.data(), yb.data(), n);
          linear_st(x.data(), m, ldx, pa, 0, n, za.data(), n);
          linear_st(x.data(), m, ldx, pb, 0, n, zb.data(), n);
          const std::string what = std::string(dtype_name(dtype)) + (rows ? " rows" : " packed") +
                                   " m=" + std::to_string(m) + " k=" + std::to_string(k);
          EXPECT_EQ(ya, za) << what;
          EXPECT_EQ(yb, zb) << what;
          const float tol = dtype == DType::bf16 ? 0.3f : 1e-3f;
          for (size_t j = 0; j < ya.size(); ++j) {
            ASSERT_NEAR(ya[j], ref_a[j], tol) << what << " a " << j;
            ASSERT_NEAR(yb[j], ref_b[j], tol) << what << " b " << j;
          }
        }
    }
  }
  const Tensor w = Tensor::from(random_vec(64 * 32, 34), {64, 32});
  const Tensor w2 = Tensor::from(random_vec(32 * 32, 35), {32, 32});
  const PackedLinear p(w, DType::f32), q(w2, DType::f32);
  std::vector<float> x(4 * 32), y(4 * 64), y2(y.size());
  EXPECT_THROW(linear_st_pair(x.data(), 4, 32, p, q, 0, 32, y.data(), y2.data(), 64), Error);
}

// row_major_all: views stay views; converted matrices share one allocation and compute the
// same as row_major() alone.
TEST(Linear, RowMajorAllSharesOneAllocationForCopies) {
  const Tensor a = Tensor::from(random_vec(70 * 33, 11), {70, 33});
  const Tensor b = Tensor::from(random_vec(5 * 17, 12), {5, 17});
  const Tensor c = Tensor::from(random_vec(8 * 33, 13), {8, 33}).to(DType::bf16);
  const auto all = PackedLinear::row_major_all({a, b, c}, DType::bf16);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_FALSE(all[0].in_place());
  EXPECT_FALSE(all[1].in_place());
  EXPECT_TRUE(all[2].in_place());
  EXPECT_EQ(all[2].data(), c.raw());
  // a and b converted into one buffer: b starts 64-byte aligned right after a.
  EXPECT_EQ(static_cast<const char*>(all[1].data()) - static_cast<const char*>(all[0].data()),
            (70 * 33 * 2 + 63) / 64 * 64);
  const Tensor inputs[] = {a, b, c};
  for (size_t i = 0; i < 3; ++i) {
    const PackedLinear alone = PackedLinear::row_major(inputs[i], DType::bf16);
    const int64_t n = alone.out_features(), k = alone.in_features();
    EXPECT_EQ(all[i].out_features(), n);
    EXPECT_EQ(all[i].layout(), WeightLayout::row_major);
    const std::vector<float> x = random_vec(static_cast<size_t>(2 * k), 14);
    std::vector<float> ya(static_cast<size_t>(2 * n)), yb(ya.size());
    linear_st(x.data(), 2, k, all[i], 0, n, ya.data(), n);
    linear_st(x.data(), 2, k, alone, 0, n, yb.data(), n);
    EXPECT_EQ(ya, yb) << i;
  }
  EXPECT_THROW(PackedLinear::row_major_all({a}, DType::i32), Error);
  EXPECT_THROW(PackedLinear::row_major_all({Tensor({4}, DType::f32)}, DType::bf16), Error);
}

// Row-major weights that start off a 32-byte boundary (safetensors aligns tensors to 8 bytes
// only) and rows of odd length: results still match.
TEST(Linear, RowMajorMisalignedViewsMatchNaive) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t shift : {1, 2, 3, 5, 7}) {
      for (int64_t k : {5, 64, 77, 1024}) {
        const int64_t n = 6;
        const std::vector<float> raw = random_vec(static_cast<size_t>(n * k + shift), 90 + shift);
        const Tensor all = Tensor::from(raw, {n * k + shift}).to(dtype);
        const Tensor w = all.slice(shift, shift + n * k).reshape({n, k});
        const PackedLinear p = PackedLinear::row_major(w, dtype);
        ASSERT_TRUE(p.in_place());
        for (int64_t m : {1, 3, 17}) {
          const std::vector<float> x = random_vec(static_cast<size_t>(m * k), 91);
          std::vector<float> y(static_cast<size_t>(m * n));
          linear_st(x.data(), m, k, p, 0, n, y.data(), n);
          const std::vector<float> wf = w.to_vector();
          for (int64_t r = 0; r < m; ++r)
            for (int64_t j = 0; j < n; ++j) {
              double ref = 0, scale = 0;
              for (int64_t c = 0; c < k; ++c) {
                const double xv = dtype == DType::bf16 ? round_bf16(x[r * k + c]) : x[r * k + c];
                ref += xv * wf[j * k + c];
                scale += std::abs(xv * wf[j * k + c]);
              }
              EXPECT_LE(std::abs(y[r * n + j] - ref), 2e-6 * scale + 1e-30)
                  << dtype_name(dtype) << " shift " << shift << " k " << k << " m " << m;
            }
        }
      }
    }
  }
}

// row_major() uses a tensor of the compute dtype in place (no copy; the storage, e.g. a
// mapped file, is kept alive) and converts any other dtype.
TEST(Linear, RowMajorViewsWithoutCopy) {
  const Tensor w = Tensor::from(random_vec(6 * 10, 3), {6, 10});
  const Tensor big = Tensor::from(random_vec(8 * 10, 4), {8, 10});
  const Tensor part = big.slice(2, 8);
  for (const Tensor& t : {w, part}) {
    ASSERT_TRUE(PackedLinear::can_view(t, DType::f32));
    const PackedLinear v = PackedLinear::row_major(t, DType::f32);
    EXPECT_EQ(v.layout(), WeightLayout::row_major);
    EXPECT_EQ(v.data(), t.raw());
    EXPECT_TRUE(v.in_place());
    EXPECT_EQ(v.weight_bytes(), size_t{6 * 10 * 4});
    EXPECT_EQ(v.panel(), 1);
  }
  EXPECT_FALSE(PackedLinear::can_view(w, DType::bf16));
  const PackedLinear b = PackedLinear::row_major(w, DType::bf16);
  EXPECT_NE(b.data(), w.raw());
  EXPECT_FALSE(b.in_place());
  EXPECT_FALSE(PackedLinear(w, DType::f32).in_place());
  EXPECT_EQ(b.weight_bytes(), size_t{6 * 10 * 2});
  const Tensor wb = w.to(DType::bf16);
  EXPECT_EQ(PackedLinear::row_major(wb, DType::bf16).data(), wb.raw());
  EXPECT_FALSE(PackedLinear::can_view(w.transpose(0, 1), DType::f32));
  EXPECT_THROW(PackedLinear::row_major(Tensor({4}, DType::f32), DType::f32), Error);
  EXPECT_THROW(PackedLinear::row_major(w, DType::i32), Error);
}

TEST(Linear, AllImplsAgreeWithPublicEntryPoints) {
  // linear (threaded) and linear_st (best impl) agree with each impl to rounding.
  const int64_t m = 37, n = 200, k = 96;
  const auto x = random_vec(static_cast<size_t>(m * k), 7);
  const auto w = random_vec(static_cast<size_t>(n * k), 8);
  for (auto [dtype, layout] : {std::pair{DType::f32, WeightLayout::packed},
                               {DType::bf16, WeightLayout::packed},
                               {DType::f32, WeightLayout::row_major},
                               {DType::bf16, WeightLayout::row_major}}) {
    const Tensor wt = Tensor::from(w, {n, k});
    const PackedLinear packed = layout == WeightLayout::packed ? PackedLinear(wt, dtype)
                                                               : PackedLinear::row_major(wt, dtype);
    std::vector<float> a(static_cast<size_t>(m * n)), b(a.size()), c(a.size());
    linear_st(x.data(), m, k, packed, 0, n, a.data(), n);
    for (int threads : {1, 2, 3}) {
      set_num_threads(threads);
      linear(x.data(), m, k, packed, b.data(), n);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_FLOAT_EQ(a[i], b[i]) << "threads " << threads;
    }
    set_num_threads(0);
    for (LinearImpl impl : supported_impls(dtype)) {
      linear_st_impl(impl, x.data(), m, k, packed, 0, n, c.data(), n, false);
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], c[i], 1e-4f);
    }
  }
}

TEST(Linear, ThreadCountDoesNotChangeResults) {
  // One panel (N <= 32) makes linear split rows; results must stay bitwise identical.
  for (int64_t m : {3, 7, 40}) {
    const int64_t n = 20, k = 4000;
    const auto x = random_vec(static_cast<size_t>(m * k), 71);
    const auto w = random_vec(static_cast<size_t>(n * k), 72);
    for (auto [dtype, layout] : {std::pair{DType::f32, WeightLayout::packed},
                                 {DType::bf16, WeightLayout::packed},
                                 {DType::f32, WeightLayout::row_major},
                                 {DType::bf16, WeightLayout::row_major}}) {
      const Tensor wt = Tensor::from(w, {n, k});
      const PackedLinear packed = layout == WeightLayout::packed
                                      ? PackedLinear(wt, dtype)
                                      : PackedLinear::row_major(wt, dtype);
      std::vector<float> a(static_cast<size_t>(m * n)), b(a.size());
      linear_st(x.data(), m, k, packed, 0, n, a.data(), n);
      for (int threads : {2, 3, 4}) {
        set_num_threads(threads);
        std::fill(b.begin(), b.end(), 0.0f);
        linear(x.data(), m, k, packed, b.data(), n);
        for (size_t i = 0; i < a.size(); ++i)
          ASSERT_EQ(a[i], b[i]) << "m=" << m << " threads=" << threads << " at " << i;
      }
      set_num_threads(0);
    }
  }
}

TEST(Linear, StreamedFewRowsAndConcatEqualSingleThreaded) {
  // A few rows (decode) go out in weight blocks taken by parallel_for_stealing, and
  // linear_concat puts several matrices into one region: every column as linear_st makes it.
  const int64_t k = 1000;
  const std::vector<int64_t> ns = {1500, 520, 700};
  int64_t total = 0;
  for (int64_t n : ns) total += n;
  for (int64_t m : {1, 2, 5, 8}) {
    const auto x = random_vec(static_cast<size_t>(m * k), 81);
    for (auto [dtype, layout] : {std::pair{DType::f32, WeightLayout::packed},
                                 {DType::bf16, WeightLayout::packed},
                                 {DType::f32, WeightLayout::row_major},
                                 {DType::bf16, WeightLayout::row_major}}) {
      std::vector<PackedLinear> ws;
      std::vector<std::vector<float>> wf;
      for (size_t j = 0; j < ns.size(); ++j) {
        wf.push_back(random_vec(static_cast<size_t>(ns[j] * k), 82 + static_cast<uint32_t>(j)));
        const Tensor wt = Tensor::from(wf.back(), {ns[j], k});
        ws.push_back(layout == WeightLayout::packed ? PackedLinear(wt, dtype)
                                                    : PackedLinear::row_major(wt, dtype));
      }
      // Reference: each matrix single-threaded into its columns, on top of y0 (accumulate).
      const auto y0 = random_vec(static_cast<size_t>(m * total), 85);
      std::vector<float> ref = y0;
      for (size_t j = 0, col = 0; j < ns.size(); col += static_cast<size_t>(ns[j]), ++j)
        linear_st(x.data(), m, k, ws[j], 0, ns[j], ref.data() + col, total, true);
      if (dtype == DType::f32) {  // and the product itself, against the naive loop
        std::vector<float> naive(static_cast<size_t>(m * ns[0]));
        linear_naive(x.data(), m, k, wf[0].data(), ns[0], naive.data());
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = 0; c < ns[0]; ++c)
            ASSERT_NEAR(ref[r * total + c] - y0[r * total + c], naive[r * ns[0] + c], 1e-3f);
      }
      for (int threads : {2, 3}) {
        set_num_threads(threads);
        std::vector<float> y = y0;
        linear_concat(x.data(), m, k, ws.data(), ws.size(), y.data(), total, true);
        for (size_t i = 0; i < y.size(); ++i)
          ASSERT_EQ(y[i], ref[i]) << "concat m=" << m << " threads=" << threads << " at " << i;
        std::vector<float> one(static_cast<size_t>(m * ns[0])), one_ref(one.size());
        linear(x.data(), m, k, ws[0], one.data(), ns[0]);
        linear_st(x.data(), m, k, ws[0], 0, ns[0], one_ref.data(), ns[0]);
        for (size_t i = 0; i < one.size(); ++i)
          ASSERT_EQ(one[i], one_ref[i]) << "linear m=" << m << " threads=" << threads;
      }
      set_num_threads(0);
    }
  }
}

TEST(Linear, LinearNaiveIsAProduct) {
  const float x[] = {1, 2, 3, 4, 5, 6};  // [2, 3]
  const float w[] = {1, 0, 0, 0, 1, 1};  // [2, 3]
  float y[4];
  linear_naive(x, 2, 3, w, 2, y);
  EXPECT_EQ(y[0], 1);
  EXPECT_EQ(y[1], 5);
  EXPECT_EQ(y[2], 4);
  EXPECT_EQ(y[3], 11);
}

TEST(Linear, RejectsBadArguments) {
  const PackedLinear p(Tensor({64, 8}, DType::f32), DType::f32);
  std::vector<float> x(64 * 8), y(64 * 64);
  EXPECT_THROW(linear_st(x.data(), 2, 8, p, 16, 64, y.data(), 64), Error);  // unaligned begin
  EXPECT_THROW(linear_st(x.data(), 2, 8, p, 0, 65, y.data(), 64), Error);   // past N
  EXPECT_THROW(linear_st(x.data(), 2, 4, p, 0, 64, y.data(), 64), Error);   // ldx < K
  EXPECT_THROW(linear_st(x.data(), 2, 8, PackedLinear(), 0, 0, y.data(), 64), Error);
  EXPECT_NO_THROW(linear_st(x.data(), 0, 8, p, 0, 64, y.data(), 64));
}

TEST(Linear, ImplNameMatchesCpu) {
  const std::string f32 = linear_impl_name(DType::f32);
  const std::string bf = linear_impl_name(DType::bf16);
  if (cpu_features().avx512f) {
    EXPECT_EQ(f32, "avx512");
  } else {
    EXPECT_TRUE(f32 == "avx2" || f32 == "portable") << f32;
  }
  if (linear_impl_supported(LinearImpl::amx, DType::bf16)) {
    EXPECT_EQ(bf, "amx_bf16");
  } else if (cpu_features().avx512_bf16) {
    EXPECT_EQ(bf, "avx512_bf16");
  }
}

// ------------------------------------------------------------------------- sgemm

TEST(Sgemm, MatchesNaiveWithTransposes) {
  const int64_t m = 13, n = 17, k = 9;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      const int64_t lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
      const auto a = random_vec(static_cast<size_t>((ta ? k : m) * lda), 11);
      const auto b = random_vec(static_cast<size_t>((tb ? n : k) * ldb), 12);
      const auto c0 = random_vec(static_cast<size_t>(m * ldc), 13);
      auto c = c0;
      sgemm(ta, tb, m, n, k, 0.5f, a.data(), lda, b.data(), ldb, 2.0f, c.data(), ldc);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t p = 0; p < k; ++p)
            s += static_cast<double>(ta ? a[p * lda + i] : a[i * lda + p]) *
                 (tb ? b[j * ldb + p] : b[p * ldb + j]);
          ASSERT_NEAR(c[i * ldc + j], 0.5 * s + 2.0 * c0[i * ldc + j], 1e-5) << ta << tb;
        }
    }
  }
  float dummy = 0;
  EXPECT_THROW(sgemm(false, false, 2, 2, 2, 1, &dummy, 1, &dummy, 2, 0, &dummy, 2), Error);
}

// ------------------------------------------------------------------------- ops

// Values spanning the interesting range, including large magnitudes and exact zeros.
std::vector<float> op_inputs() {
  std::vector<float> v = random_vec(1000, 21, -12.0f, 12.0f);
  for (float e : {0.0f, -0.0f, 1e-8f, -1e-8f, 20.0f, -20.0f, 80.0f, -80.0f, 88.0f, -87.0f})
    v.push_back(e);
  return v;  // 1010 elements: not a multiple of 16, exercises the tails
}

double silu_ref(double x) {
  return x / (1.0 + std::exp(-x));
}

template <typename F, typename R>
void expect_close_rel(const std::vector<float>& x, F f, R ref, double rel, double abs_floor,
                      const char* what) {
  std::vector<float> y(x.size());
  f(x.data(), y.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const double r = ref(static_cast<double>(x[i]));
    ASSERT_NEAR(y[i], r, rel * std::abs(r) + abs_floor) << what << " x=" << x[i];
  }
}

TEST(Ops, ExpApproximationAccurate) {
  if (!ops::avx512_supported()) GTEST_SKIP() << "no AVX-512";
  std::vector<float> x = random_vec(4000, 31, -87.0f, 88.0f);
  x.push_back(0.0f);
  expect_close_rel(
      x, ops::exp_avx512, [](double v) { return std::exp(v); }, 1e-6, 0.0, "exp");
  // Overflow and underflow saturate instead of producing garbage; NaN stays NaN.
  const float special[] = {200.0f, -200.0f, INFINITY, -INFINITY, NAN};
  float out[5];
  ops::exp_avx512(special, out, 5);
  EXPECT_EQ(out[0], INFINITY);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], INFINITY);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_TRUE(std::isnan(out[4]));
}

TEST(Ops, SiluAndSwigluBothPaths) {
  const auto x = op_inputs();
  const auto up = random_vec(x.size(), 22, -3.0f, 3.0f);
  using Fn = void (*)(const float*, float*, int64_t);
  std::vector<std::pair<Fn, const char*>> silus = {{ops::silu_scalar, "scalar"}, {silu_st, "st"}};
  if (ops::avx512_supported()) silus.push_back({ops::silu_avx512, "avx512"});
  for (auto [fn, name] : silus) expect_close_rel(x, fn, silu_ref, 2e-6, 1e-30, name);

  using Sw = void (*)(const float*, const float*, float*, int64_t);
  std::vector<Sw> swiglus = {ops::swiglu_scalar, swiglu_st};
  if (ops::avx512_supported()) swiglus.push_back(ops::swiglu_avx512);
  for (Sw fn : swiglus) {
    std::vector<float> out(x.size());
    fn(x.data(), up.data(), out.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const double r = silu_ref(x[i]) * up[i];
      ASSERT_NEAR(out[i], r, 3e-6 * std::abs(r) + 1e-30) << "x=" << x[i];
    }
  }
}

TEST(Ops, GeluExactAndTanh) {
  const auto x = op_inputs();
  // Exact GELU: erf is A&S 7.1.26 on AVX-512 (|erf error| <= 1.5e-7, so |GELU error| <=
  // 0.75e-7 |x|) and std::erf elsewhere; both within 1e-6 relative + 1e-7 (1 + |x|).
  {
    std::vector<float> y(x.size()), in_place(x);
    gelu_st(x.data(), y.data(), static_cast<int64_t>(x.size()));
    gelu_st(in_place.data(), in_place.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i];
      const double r = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
      ASSERT_NEAR(y[i], r, 1e-6 * std::abs(r) + 1e-7 * (1.0 + std::abs(v))) << "gelu x=" << v;
      ASSERT_EQ(in_place[i], y[i]) << "in place, x=" << v;
    }
  }
  // dx += dy * GELU'(x), GELU'(x) = Phi(x) + x phi(x), against double precision.
  {
    const auto dy = random_vec(x.size(), 23, -2.0f, 2.0f);
    std::vector<float> dx(x.size(), 0.5f);
    gelu_grad_acc_st(x.data(), dy.data(), dx.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i];
      const double d = 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))) +
                       v * std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
      const double r = 0.5 + dy[i] * d;
      ASSERT_NEAR(dx[i], r, 1e-6 * std::abs(r) + 3e-7 * (1.0 + std::abs(v))) << "gelu grad x=" << v;
    }
  }
  const auto tanh_ref = [](double v) {
    return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
  };
  expect_close_rel(x, gelu_tanh_st, tanh_ref, 3e-6, 1e-7, "gelu_tanh_st");
  expect_close_rel(x, ops::gelu_tanh_scalar, tanh_ref, 3e-6, 1e-7, "gelu_tanh_scalar");
  if (ops::avx512_supported())
    expect_close_rel(x, ops::gelu_tanh_avx512, tanh_ref, 3e-6, 1e-7, "gelu_tanh_avx512");
  // The two GELUs differ by < 1e-3 everywhere (a sanity check of the constants).
  std::vector<float> a(x.size()), b(x.size());
  gelu_st(x.data(), a.data(), static_cast<int64_t>(x.size()));
  gelu_tanh_st(x.data(), b.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-3);
}

TEST(Ops, AxpyBothPaths) {
  const auto x = random_vec(77, 41);
  const auto y0 = random_vec(77, 42);
  using Fn = void (*)(float, const float*, float*, int64_t);
  std::vector<Fn> fns = {ops::axpy_scalar, axpy_st};
  if (ops::avx512_supported()) fns.push_back(ops::axpy_avx512);
  for (Fn fn : fns) {
    auto y = y0;
    fn(-1.5f, x.data(), y.data(), 77);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_FLOAT_EQ(y[i], y0[i] - 1.5f * x[i]);
  }
}

TEST(Ops, SoftmaxRowsStableAndInPlace) {
  const int64_t rows = 5, d = 37;
  auto x = random_vec(static_cast<size_t>(rows * d), 51, -5.0f, 5.0f);
  for (int64_t i = 0; i < d; ++i)
    x[static_cast<size_t>(4 * d + i)] += 1000.0f;  // naive exp overflows
  using Fn = void (*)(const float*, float*, int64_t, int64_t);
  std::vector<Fn> fns = {ops::softmax_rows_scalar, softmax_rows_st};
  if (ops::avx512_supported()) fns.push_back(ops::softmax_rows_avx512);
  for (Fn fn : fns) {
    std::vector<float> y(x.size());
    fn(x.data(), y.data(), rows, d);
    for (int64_t r = 0; r < rows; ++r) {
      double mx = -1e300, z = 0, sum = 0;
      for (int64_t i = 0; i < d; ++i) mx = std::max<double>(mx, x[r * d + i]);
      for (int64_t i = 0; i < d; ++i) z += std::exp(x[r * d + i] - mx);
      for (int64_t i = 0; i < d; ++i) {
        const double ref = std::exp(x[r * d + i] - mx) / z;
        ASSERT_NEAR(y[r * d + i], ref, 2e-6 * ref + 1e-9);
        sum += y[r * d + i];
      }
      EXPECT_NEAR(sum, 1.0, 1e-5);
    }
    auto inplace = x;  // aliasing x and y is allowed
    fn(inplace.data(), inplace.data(), rows, d);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(inplace[i], y[i]);
  }
  // A fully masked row is uniform, not NaN.
  const float masked[3] = {-INFINITY, -INFINITY, -INFINITY};
  float out[3];
  softmax_rows_st(masked, out, 1, 3);
  for (float v : out) EXPECT_FLOAT_EQ(v, 1.0f / 3.0f);
}

TEST(Ops, TopkMatchesPartialSortWithTies) {
  std::mt19937 rng(61);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t d = 1 + static_cast<int64_t>(rng() % 70);
    const int64_t k = 1 + static_cast<int64_t>(rng() % d);
    std::vector<float> x(static_cast<size_t>(d));
    // Few distinct values: many ties.
    for (auto& v : x) v = static_cast<float>(static_cast<int>(rng() % 7)) - 3.0f;
    std::vector<int32_t> ref(static_cast<size_t>(d));
    std::iota(ref.begin(), ref.end(), 0);
    std::partial_sort(ref.begin(), ref.begin() + k, ref.end(),
                      [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
    std::vector<int32_t> idx(static_cast<size_t>(k));
    std::vector<float> val(static_cast<size_t>(k));
    topk_st(x.data(), d, k, idx.data(), val.data());
    for (int64_t i = 0; i < k; ++i) {
      ASSERT_EQ(idx[i], ref[i]) << "trial " << trial << " rank " << i;
      ASSERT_EQ(val[i], x[ref[i]]);
    }
  }
  const float with_nan[] = {NAN, 1.0f, -2.0f};
  int32_t idx[2];
  float val[2];
  topk_st(with_nan, 3, 2, idx, val);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 2);
  EXPECT_THROW(topk_st(with_nan, 3, 4, idx, val), Error);
}

}  // namespace
}  // namespace deltamoe::kernels
