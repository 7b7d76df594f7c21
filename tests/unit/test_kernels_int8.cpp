// Tests for int8 weights (DType::int8, kernels/cpu/linear_int8*.cpp): every implementation this
// CPU supports, on both of its paths (integer dot kernel below kBlasRowsInt8 rows, dequantised
// OpenBLAS from there), against a naive double-precision product of independently quantised
// x and W; the quantisation error against the f32 product; and the refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "kernels/cpu/linear_impl.h"

namespace deltamoe::kernels {
namespace {

std::vector<float> random_vec(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// The format's definition, written out independently of the kernels: per block of 32 along k,
// weights: d = f16(max|w| / 127), q = round(w / d); activations: d = max|x| / 127 (f32),
// q = round(x · 127 / max|x|). Returns the dequantised values (q · d) of a row.
std::vector<double> quantised_row(const float* v, int64_t k, bool weights) {
  std::vector<double> out(static_cast<size_t>(k));
  for (int64_t c0 = 0; c0 < k; c0 += 32) {
    const int64_t c1 = std::min(k, c0 + 32);
    float amax = 0.0f;
    for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(v[c]));
    for (int64_t c = c0; c < c1; ++c) {
      double q = 0.0, d = 0.0;
      if (weights) {
        d = f16_to_f32(f32_to_f16(amax / 127.0f));
        q = d > 0
                ? std::clamp(std::nearbyint(v[c] * (1.0f / static_cast<float>(d))), -127.0f, 127.0f)
                : 0.0;
      } else {
        d = amax / 127.0f;
        q = amax > 0 ? std::nearbyint(v[c] * (127.0f / amax)) : 0.0;
      }
      out[static_cast<size_t>(c)] = q * d;
    }
  }
  return out;
}

std::vector<LinearImpl> int8_impls() {
  std::vector<LinearImpl> out;
  for (LinearImpl impl :
       {LinearImpl::portable, LinearImpl::avx2, LinearImpl::avx512, LinearImpl::amx})
    if (linear_impl_supported(impl, DType::int8)) out.push_back(impl);
  return out;
}

struct Case {
  int64_t m, n, k, ldx, ldy, nb, ne;
  bool accumulate;
};

// Runs one case; checks the cells outside [nb, ne) are untouched, every cell against the
// naive product of the quantised values (error relative to Σ|x̂·ŵ| ≤ 2e-6: only the f32
// summation differs), and returns the largest error against the f32 product relative to
// Σ|x·w| (the quantisation error).
double check_case(LinearImpl impl, const Case& s, uint32_t seed) {
  SCOPED_TRACE(std::string(linear_impl_name(impl, DType::int8)) + " m=" + std::to_string(s.m) +
               " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k) + " cols=[" +
               std::to_string(s.nb) + "," + std::to_string(s.ne) +
               ") acc=" + std::to_string(s.accumulate));
  const std::vector<float> x = random_vec(static_cast<size_t>(s.m * s.ldx), seed);
  const std::vector<float> w = random_vec(static_cast<size_t>(s.n * s.k), seed + 1, 0.05f);
  const std::vector<float> y0 = random_vec(static_cast<size_t>(s.m * s.ldy), seed + 2);
  const PackedLinear p = PackedLinear::row_major(Tensor::from(w, {s.n, s.k}), DType::int8);
  EXPECT_EQ(p.weight_bytes(), int8_weight_bytes(s.n, s.k));
  EXPECT_FALSE(p.in_place());
  std::vector<float> y = y0;
  linear_st_impl(impl, x.data(), s.m, s.ldx, p, s.nb, s.ne, y.data(), s.ldy, s.accumulate);
  double max_q = 0.0, max_f = 0.0;
  // AMX (from kBlasRowsInt8 rows, K a multiple of 32) multiplies bf16 tiles: the dequantised
  // weights rounded to bf16, by x rounded to bf16 (not quantised).
  const bool amx = amx_rows_apply(impl, p, s.m);
  const auto bf16 = [](double v) {
    return static_cast<double>(bf16_to_f32(f32_to_bf16(static_cast<float>(v))));
  };
  std::vector<std::vector<double>> wq;
  for (int64_t j = 0; j < s.n; ++j) {
    wq.push_back(quantised_row(w.data() + j * s.k, s.k, true));
    if (amx)
      for (double& v : wq.back()) v = bf16(v);
  }
  for (int64_t r = 0; r < s.m; ++r) {
    std::vector<double> xq = quantised_row(x.data() + r * s.ldx, s.k, false);
    if (amx)
      for (int64_t c = 0; c < s.k; ++c) xq[static_cast<size_t>(c)] = bf16(x[r * s.ldx + c]);
    for (int64_t j = 0; j < s.ldy; ++j) {
      const float got = y[r * s.ldy + j];
      if (j < s.nb || j >= s.ne) {
        EXPECT_EQ(got, y0[r * s.ldy + j]) << "wrote outside the column range at " << r << "," << j;
        continue;
      }
      const double base = s.accumulate ? y0[r * s.ldy + j] : 0.0;
      double ref_q = base, scale_q = std::abs(base), ref_f = base, scale_f = std::abs(base);
      for (int64_t c = 0; c < s.k; ++c) {
        const double pq =
            xq[static_cast<size_t>(c)] * wq[static_cast<size_t>(j)][static_cast<size_t>(c)];
        const double pf = static_cast<double>(x[r * s.ldx + c]) * w[j * s.k + c];
        ref_q += pq;
        scale_q += std::abs(pq);
        ref_f += pf;
        scale_f += std::abs(pf);
      }
      max_q = std::max(max_q, std::abs(got - ref_q) / std::max(scale_q, 1e-30));
      max_f = std::max(max_f, std::abs(got - ref_f) / std::max(scale_f, 1e-30));
    }
  }
  EXPECT_LE(max_q, 2e-6);
  return max_f;
}

TEST(LinearInt8, MatchesNaiveQuantisedProductEveryImplAndPath) {
  // m below and from kBlasRowsInt8 (dot kernel, OpenBLAS path); k not a multiple of 32, one
  // block, many; partial column ranges, ldx / ldy beyond the width, accumulation.
  static_assert(kBlasRowsInt8 == 32, "the cases below straddle 32 rows");
  const std::vector<Case> cases = {{1, 32, 32, 32, 32, 0, 32, false},
                                   {1, 70, 33, 40, 70, 0, 70, true},
                                   {2, 9, 5, 5, 9, 3, 9, false},
                                   {3, 100, 64, 64, 100, 0, 100, false},
                                   {4, 17, 300, 310, 20, 1, 17, true},
                                   {5, 64, 257, 257, 64, 8, 40, false},
                                   {7, 31, 1, 1, 31, 0, 31, false},
                                   {16, 48, 1024, 1024, 48, 0, 48, false},
                                   {31, 40, 96, 96, 40, 0, 40, true},
                                   {32, 40, 96, 96, 40, 0, 40, false},
                                   {40, 300, 129, 130, 300, 0, 300, true},
                                   {150, 65, 20, 20, 65, 1, 64, false},
                                   {33, 520, 64, 64, 520, 256, 520, false},
                                   {300, 70, 1024, 1024, 75, 0, 70, true},
                                   {48, 33, 256, 260, 33, 0, 33, false},
                                   {4, 40, 64, 64, 40, 0, 40, true},
                                   {8, 33, 1024, 1024, 33, 3, 33, false},
                                   {3, 20, 600, 600, 20, 0, 20, true},
                                   {6, 19, 1400, 1401, 19, 2, 19, false},
                                   {1, 24, 1400, 1400, 24, 0, 24, false}};
  uint32_t seed = 100;
  for (LinearImpl impl : int8_impls()) {
    for (const Case& c : cases) {
      const double err = check_case(impl, c, seed += 7);
      // Quantisation error of both operands at 8 bits per block of 32: each product is off by
      // about 1/254 of the blocks' maxima, mostly cancelling in the sum (measured ≤ 1.2e-2
      // relative to Σ|x·w| on Gaussian data; the bound leaves room without hiding a bug,
      // which gives errors of order 1).
      EXPECT_LE(err, 3e-2) << linear_impl_name(impl, DType::int8) << " m=" << c.m << " k=" << c.k;
    }
  }
}

// The threaded linear() gives the same results at every thread count, on both paths.
TEST(LinearInt8, ThreadedEqualsSingleThreadAtEveryThreadCount) {
  for (int64_t m : {1, 5, 40}) {
    const int64_t n = 700, k = 200;
    const std::vector<float> x = random_vec(static_cast<size_t>(m * k), 3);
    const PackedLinear p = PackedLinear::row_major(
        Tensor::from(random_vec(static_cast<size_t>(n * k), 4), {n, k}), DType::int8);
    std::vector<float> ref(static_cast<size_t>(m * n)), got(ref.size());
    const int before = num_threads();
    set_num_threads(1);
    linear(x.data(), m, k, p, ref.data(), n);
    for (int t : {2, 3}) {
      set_num_threads(t);
      linear(x.data(), m, k, p, got.data(), n);
      EXPECT_EQ(got, ref) << "m=" << m << " threads=" << t;
    }
    set_num_threads(before);
  }
}

TEST(LinearInt8, AllMatricesInOneAllocationEqualSeparate) {
  std::vector<Tensor> ws = {Tensor::from(random_vec(70 * 33, 1), {70, 33}),
                            Tensor::from(random_vec(5 * 64, 2), {5, 64})};
  const auto all = PackedLinear::row_major_all(ws, DType::int8);
  for (size_t i = 0; i < ws.size(); ++i) {
    const PackedLinear alone = PackedLinear::row_major(ws[i], DType::int8);
    const int64_t n = ws[i].size(0), k = ws[i].size(1);
    const std::vector<float> x = random_vec(static_cast<size_t>(2 * k), 9);
    std::vector<float> ya(static_cast<size_t>(2 * n)), yb(ya.size());
    linear_st(x.data(), 2, k, all[i], 0, n, ya.data(), n);
    linear_st(x.data(), 2, k, alone, 0, n, yb.data(), n);
    EXPECT_EQ(ya, yb) << "matrix " << i;
    EXPECT_EQ(all[i].weight_bytes(), int8_weight_bytes(n, k));
  }
  // 1 byte per weight plus a 2-byte scale per 32 (K padded to 32), as GGML's q8_0.
  EXPECT_EQ(int8_weight_bytes(64, 1024), size_t{64 * 1024 + 64 * 32 * 2});
}

// The AVX2 quantiser gives the portable one's quants and scales bit for bit (full and partial
// blocks, zeros, ties at .5, NaN and Inf), and the AVX2 dequantiser gives d · q exactly.
TEST(LinearInt8, Avx2QuantiserAndDequantiserMatchPortable) {
  if (!linear_impl_supported(LinearImpl::avx2, DType::int8)) GTEST_SKIP() << "no AVX2 int8 here";
  for (int64_t k : {1, 31, 32, 33, 100, 256}) {
    const int64_t m = 3, kb = (k + 31) / 32, kp = kb * 32;
    std::vector<float> x = random_vec(static_cast<size_t>(m * (k + 3)), static_cast<uint32_t>(k));
    x[0] = 0.5f;  // exact .5 ties after scaling are rounded to even on both paths
    if (k >= 32) {
      for (int64_t c = 0; c < 32; ++c)
        x[static_cast<size_t>(k + 3 + c)] = 0.0f;  // row 1: zero block
      x[static_cast<size_t>(2 * (k + 3) + 5)] = std::numeric_limits<float>::infinity();
    }
    std::vector<int8_t> qa(static_cast<size_t>(m * kp), 1), qb(qa.size(), 2);
    std::vector<float> da(static_cast<size_t>(m * kb)), db(da.size());
    quantize_rows_int8(x.data(), m, k + 3, k, qa.data(), da.data());
    quantize_rows_int8_avx2(x.data(), m, k + 3, k, qb.data(), db.data());
    EXPECT_EQ(qa, qb) << "k=" << k;
    for (size_t i = 0; i < da.size(); ++i)
      EXPECT_TRUE(da[i] == db[i] || (std::isnan(da[i]) && std::isnan(db[i])))
          << "k=" << k << " " << i;
  }
  // k = 70: one partial group of 3 blocks; 600: a full group and 3 blocks; 1400: 2 and 12.
  for (int64_t k : {70, 600, 1400}) {
    const int64_t n = 5, kb = (k + 31) / 32, kp = kb * 32;
    const PackedLinear p = PackedLinear::row_major(
        Tensor::from(random_vec(static_cast<size_t>(n * k), 8), {n, k}), DType::int8);
    const auto* q = static_cast<const int8_t*>(p.data());
    const auto* d = reinterpret_cast<const uint16_t*>(static_cast<const char*>(p.data()) +
                                                      int8_scales_offset(n, k));
    std::vector<float> w(static_cast<size_t>(n * k));
    dequantize_rows_int8_avx2(q, d, n, k, w.data());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < k; ++c)
        ASSERT_EQ(w[static_cast<size_t>(r * k + c)],
                  f16_to_f32(d[r * kb + c / 32]) *
                      static_cast<float>(q[r * kp + int8_quant_offset(c, kb)]))
            << "k=" << k << " [" << r << ", " << c << "]";
  }
}

// The stored order of an int8 row (linear_impl.h), written out by hand: in a group of w blocks,
// byte j of 4-byte step s of block b is at 4·w·s + 4·b + j; the helpers and the quantiser agree.
TEST(LinearInt8, StoredQuantOrder) {
  for (int64_t kb : {1, 3, 15, 16, 17, 19, 32, 44}) {
    const int64_t kp = kb * 32;
    std::vector<int8_t> natural(static_cast<size_t>(kp));
    for (int64_t c = 0; c < kp; ++c) natural[static_cast<size_t>(c)] = static_cast<int8_t>(c * 7);
    std::vector<int8_t> stored(natural.size(), 0), back(natural.size(), 0);
    int8_to_stored_order(natural.data(), kb, stored.data());
    std::vector<bool> hit(natural.size(), false);
    for (int64_t c = 0; c < kp; ++c) {
      const int64_t g0 = c / 512 * 16, w = std::min<int64_t>(16, kb - g0);
      const int64_t b = c / 32 - g0, t = c % 32;
      const int64_t off = g0 * 32 + 4 * w * (t / 4) + 4 * b + t % 4;
      ASSERT_EQ(int8_quant_offset(c, kb), off) << "kb=" << kb << " c=" << c;
      ASSERT_EQ(stored[static_cast<size_t>(off)], natural[static_cast<size_t>(c)]);
      ASSERT_FALSE(hit[static_cast<size_t>(off)]) << "two inputs at one byte";
      hit[static_cast<size_t>(off)] = true;
    }
    for (int64_t g0 = 0; g0 < kb; g0 += 16)
      int8_group_to_natural(stored.data() + g0 * 32, std::min<int64_t>(16, kb - g0),
                            back.data() + g0 * 32);
    EXPECT_EQ(back, natural) << "kb=" << kb;
  }
  // The weight quantiser stores block b's quants (as quantize_weight_block_int8 gives them) at
  // those offsets.
  const int64_t n = 2, k = 600, kb = 19, kp = kb * 32;
  const std::vector<float> w = random_vec(static_cast<size_t>(n * k), 21);
  std::vector<int8_t> q(static_cast<size_t>(n * kp));
  std::vector<uint16_t> d(static_cast<size_t>(n * kb));
  quantize_weight_rows_int8(LinearImpl::portable, w.data(), n, k, q.data(), d.data());
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < kb; ++b) {
      int8_t qb[32];
      uint16_t db = 0;
      quantize_weight_block_int8(w.data() + r * k + b * 32, std::min<int64_t>(32, k - b * 32), r,
                                 b * 32, qb, &db);
      EXPECT_EQ(db, d[static_cast<size_t>(r * kb + b)]);
      for (int64_t t = 0; t < 32; ++t)
        ASSERT_EQ(q[static_cast<size_t>(r * kp + int8_quant_offset(b * 32 + t, kb))], qb[t])
            << "row " << r << " block " << b << " input " << t;
    }
}

// The AVX2 weight quantiser (load time) writes the portable one's bytes, and refuses the same
// weights with the same message.
TEST(LinearInt8, Avx2WeightQuantiserMatchesPortable) {
  if (!linear_impl_supported(LinearImpl::avx2, DType::int8)) GTEST_SKIP() << "no AVX2 int8 here";
  for (int64_t k : {1, 31, 32, 33, 100, 256, 600}) {
    const int64_t n = 4, kb = (k + 31) / 32, kp = kb * 32;
    std::vector<float> w = random_vec(static_cast<size_t>(n * k), static_cast<uint32_t>(k + 50));
    for (int64_t c = 0; c < std::min<int64_t>(k, 32); ++c) w[static_cast<size_t>(k + c)] = 0.0f;
    w[static_cast<size_t>(2 * k)] = 3e4f;  // a large block
    std::vector<int8_t> qa(static_cast<size_t>(n * kp), 1), qb(qa.size(), 2);
    std::vector<uint16_t> da(static_cast<size_t>(n * kb)), db(da.size());
    quantize_weight_rows_int8(LinearImpl::portable, w.data(), n, k, qa.data(), da.data());
    quantize_weight_rows_int8(LinearImpl::avx2, w.data(), n, k, qb.data(), db.data());
    EXPECT_EQ(qa, qb) << "k=" << k;
    EXPECT_EQ(da, db) << "k=" << k;
  }
  std::vector<float> w = random_vec(2 * 64, 3);
  w[64 + 40] = std::numeric_limits<float>::infinity();
  std::vector<int8_t> q(2 * 64);
  std::vector<uint16_t> d(4);
  std::string msg[2];
  for (int i = 0; i < 2; ++i) {
    try {
      quantize_weight_rows_int8(i == 0 ? LinearImpl::portable : LinearImpl::avx2, w.data(), 2, 64,
                                q.data(), d.data());
    } catch (const Error& e) {
      msg[i] = e.what();
    }
  }
  EXPECT_NE(msg[0].find("weight [1, 40] is not finite"), std::string::npos) << msg[0];
  EXPECT_EQ(msg[0], msg[1]);
}

// A bf16 tensor (a bf16 checkpoint) is widened a chunk of rows at a time: the same bytes as
// quantising its f32 copy.
TEST(LinearInt8, Bf16WeightsQuantiseAsTheirF32Copy) {
  const int64_t n = 130, k = 600;
  const Tensor w32 = Tensor::from(random_vec(static_cast<size_t>(n * k), 31), {n, k});
  const Tensor w16 = w32.to(DType::bf16);
  std::vector<char> a(int8_weight_bytes(n, k), 1), b(a.size(), 2);
  quantize_weights_int8(w16, a.data());
  quantize_weights_int8(w16.to(DType::f32), b.data());
  EXPECT_EQ(a, b);
}

TEST(LinearInt8, RefusesWhatItCannotRepresent) {
  std::vector<float> w(64, 0.5f);
  w[37] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(PackedLinear::row_major(Tensor::from(w, {2, 32}), DType::int8), Error);
  w[37] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(PackedLinear::row_major(Tensor::from(w, {2, 32}), DType::int8), Error);
  w[37] = 1e8f;  // scale 1e8 / 127 is beyond f16's 65504
  EXPECT_THROW(PackedLinear::row_major(Tensor::from(w, {2, 32}), DType::int8), Error);
  // Rows are quantised in parallel chunks: the message still names the matrix's row.
  std::vector<float> big(200 * 40, 0.25f);
  big[150 * 40 + 7] = std::numeric_limits<float>::quiet_NaN();
  try {
    PackedLinear::row_major(Tensor::from(big, {200, 40}), DType::int8);
    ADD_FAILURE() << "NaN weight accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight [150, 7] is not finite"), std::string::npos)
        << e.what();
  }
  // The packed (panel) layout has no int8 form.
  EXPECT_THROW(PackedLinear(Tensor({4, 4}, DType::f32), DType::int8), Error);
  try {
    PackedLinear(Tensor({4, 4}, DType::f32), DType::int8);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row-major"), std::string::npos) << e.what();
  }
}

// A zero block and a NaN activation: zeros stay exact, NaN propagates (no int conversion of
// NaN, no crash), on every implementation.
TEST(LinearInt8, ZeroBlocksAndNonFiniteActivations) {
  const int64_t n = 3, k = 64;
  std::vector<float> w = random_vec(static_cast<size_t>(n * k), 5);
  for (int64_t c = 0; c < 32; ++c) w[static_cast<size_t>(c)] = 0.0f;  // row 0, block 0
  const PackedLinear p = PackedLinear::row_major(Tensor::from(w, {n, k}), DType::int8);
  for (LinearImpl impl : int8_impls()) {
    std::vector<float> x(static_cast<size_t>(2 * k), 0.0f), y(static_cast<size_t>(2 * n), 1.0f);
    x[static_cast<size_t>(k + 3)] = std::numeric_limits<float>::quiet_NaN();
    linear_st_impl(impl, x.data(), 2, k, p, 0, n, y.data(), n, false);
    for (int64_t j = 0; j < n; ++j) {
      EXPECT_EQ(y[static_cast<size_t>(j)], 0.0f) << linear_impl_name(impl, DType::int8);
      EXPECT_TRUE(std::isnan(y[static_cast<size_t>(n + j)])) << linear_impl_name(impl, DType::int8);
    }
  }
}

}  // namespace
}  // namespace deltamoe::kernels
