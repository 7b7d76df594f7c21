// RMSNorm, RoPE and causal GQA attention against plain double-precision loops.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "deltamoe/core/dtype.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/llm.h"
#include "kernels/cpu/attention_impl.h"

using namespace deltamoe;
using namespace deltamoe::kernels;

namespace {
std::vector<float> randn(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Reference attention of one sequence: q rows at positions start.., keys 0..pos.
std::vector<double> naive_attention(const std::vector<float>& q, const std::vector<float>& k,
                                    const std::vector<float>& v, int64_t n, int64_t start,
                                    int64_t heads, int64_t kvh, int64_t d) {
  std::vector<double> out(static_cast<size_t>(n * heads * d), 0.0);
  const int64_t group = heads / kvh;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / group, keys = start + r + 1;
      std::vector<double> s(static_cast<size_t>(keys));
      double mx = -1e300;
      for (int64_t j = 0; j < keys; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < d; ++c)
          acc += static_cast<double>(q[static_cast<size_t>(r * heads * d + h * d + c)]) *
                 k[static_cast<size_t>(j * kvh * d + g * d + c)];
        s[static_cast<size_t>(j)] = acc / std::sqrt(static_cast<double>(d));
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      double sum = 0;
      for (double& x : s) sum += x = std::exp(x - mx);
      for (int64_t j = 0; j < keys; ++j)
        for (int64_t c = 0; c < d; ++c)
          out[static_cast<size_t>(r * heads * d + h * d + c)] +=
              s[static_cast<size_t>(j)] / sum * v[static_cast<size_t>(j * kvh * d + g * d + c)];
    }
  return out;
}
}  // namespace

TEST(LlmKernels, RmsNormMatchesDefinition) {
  const int64_t rows = 3, d = 37;
  auto x = randn(static_cast<size_t>(rows * d), 1), w = randn(static_cast<size_t>(d), 2);
  std::vector<float> y(x.size());
  rms_norm_rows_st(x.data(), w.data(), y.data(), rows, d, d, 1e-6f);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i)
      ss += static_cast<double>(x[static_cast<size_t>(r * d + i)]) *
            x[static_cast<size_t>(r * d + i)];
    const double s = 1.0 / std::sqrt(ss / d + 1e-6);
    for (int64_t i = 0; i < d; ++i)
      EXPECT_NEAR(y[static_cast<size_t>(r * d + i)],
                  w[static_cast<size_t>(i)] * x[static_cast<size_t>(r * d + i)] * s, 1e-5);
  }
  // In place (x == y) gives the same.
  rms_norm_rows_st(x.data(), w.data(), x.data(), rows, d, d, 1e-6f);
  EXPECT_EQ(x, y);
}

// The row conversion (F16C where the CPU has it; DELTAMOE_ISA=portable runs the scalar loop)
// gives f32_to_f16's bits: normals, the rounding ties, subnormals, the overflow edge, zeros,
// infinities; a NaN stays a NaN. Odd lengths cover the scalar tail after the 8-wide loop.
TEST(LlmKernels, F32ToF16RowMatchesScalar) {
  std::vector<float> v = randn(1000, 11);
  for (float& x : v) x *= 100.0f;
  const float special[] = {0.0f,
                           -0.0f,
                           1.0f,
                           -1.0f,
                           65504.0f,
                           65519.0f,
                           65520.0f,
                           -70000.0f,
                           6.1035e-05f,
                           5.96046e-08f,
                           2.98023e-08f,
                           2.98024e-08f,
                           1e-10f,
                           -3.0e-06f,
                           1.00048828125f /* tie, even down */,
                           1.00146484375f /* tie, odd up */,
                           INFINITY,
                           -INFINITY};
  v.insert(v.end(), std::begin(special), std::end(special));
  for (int i = 0; i < 200; ++i)
    v.push_back(std::ldexp(1.0f + static_cast<float>(i) / 200.0f, -20 + i % 40));
  for (const int64_t n :
       {int64_t{1}, int64_t{7}, int64_t{8}, int64_t{13}, static_cast<int64_t>(v.size())}) {
    std::vector<uint16_t> out(static_cast<size_t>(n), 0xFFFF);
    f32_to_f16_row(v.data(), out.data(), n);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(out[static_cast<size_t>(i)], f32_to_f16(v[static_cast<size_t>(i)]))
          << "element " << i << " = " << v[static_cast<size_t>(i)] << ", n = " << n;
  }
  const float nan = std::nanf("");
  uint16_t h = 0;
  f32_to_f16_row(&nan, &h, 1);
  EXPECT_TRUE(std::isnan(f16_to_f32(h)));
}

TEST(LlmKernels, RopeRotatesHalvesAndKeepsNorms) {
  const int64_t d = 16, heads = 3;
  RopeTable t(d, 10000.0);
  t.ensure(100);
  auto x = randn(static_cast<size_t>(heads * d), 3);
  const auto x0 = x;
  rope_st(x.data(), heads, t, 0);
  EXPECT_EQ(x, x0);  // position 0: identity
  rope_st(x.data(), heads, t, 57);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < d / 2; ++i) {
      const double th = 57.0 * std::pow(10000.0, -2.0 * static_cast<double>(i) / d);
      const double a = x0[static_cast<size_t>(h * d + i)],
                   b = x0[static_cast<size_t>(h * d + i + d / 2)];
      EXPECT_NEAR(x[static_cast<size_t>(h * d + i)], a * std::cos(th) - b * std::sin(th), 1e-4);
      EXPECT_NEAR(x[static_cast<size_t>(h * d + i + d / 2)], b * std::cos(th) + a * std::sin(th),
                  1e-4);
    }
  EXPECT_THROW(RopeTable(15, 1e4), Error);
}

// Head sizes: 24 takes the OpenBLAS kernel everywhere; multiples of 16 take the AVX-512 one
// where the CPU has it (48: 3 output vectors, 80: 64 + 16 columns, 128: two passes of 64).
class CausalAttention : public ::testing::TestWithParam<int64_t> {};

TEST_P(CausalAttention, GqaMatchesNaive) {
  const int64_t d = GetParam();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    const int64_t heads = 6, kvh = 2;
    // Sequences: a long prefill (several 64-row blocks), a chunk after a cached prefix, one
    // decode token with a long cache, 2 and 65 rows (padded row groups, chunk boundaries).
    const std::vector<int64_t> n = {150, 9, 1, 2, 65}, start = {0, 20, 70, 5, 100};
    std::vector<std::vector<float>> qs, ks, vs;
    std::vector<int64_t> row0;
    int64_t rows = 0;
    for (size_t s = 0; s < n.size(); ++s) {
      row0.push_back(rows);
      rows += n[s];
      const int64_t len = start[s] + n[s];
      ks.push_back(randn(static_cast<size_t>(len * kvh * d), 10 + static_cast<uint32_t>(s)));
      vs.push_back(randn(static_cast<size_t>(len * kvh * d), 20 + static_cast<uint32_t>(s)));
    }
    const auto q = randn(static_cast<size_t>(rows * heads * d), 30);
    // The same caches in f16 (--kv-dtype f16), and the f32 values they hold.
    std::vector<std::vector<uint16_t>> ks16, vs16;
    std::vector<std::vector<float>> ksr, vsr;
    for (size_t s = 0; s < n.size(); ++s) {
      ks16.emplace_back();
      vs16.emplace_back();
      ksr.emplace_back();
      vsr.emplace_back();
      for (float x : ks[s]) {
        ks16.back().push_back(f32_to_f16(x));
        ksr.back().push_back(f16_to_f32(ks16.back().back()));
      }
      for (float x : vs[s]) {
        vs16.back().push_back(f32_to_f16(x));
        vsr.back().push_back(f16_to_f32(vs16.back().back()));
      }
    }
    // Contiguous (one block per sequence), then paged caches of 1, 7 and 16 positions per
    // block: block b of sequence s points at rows [b·bt, (b+1)·bt) of the same arrays.
    for (bool f16 : {false, true})
      for (int64_t bt : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{16}}) {
        std::vector<float> out(q.size(), -7.0f);
        std::vector<std::vector<const float*>> kb(n.size()), vb(n.size());
        std::vector<std::vector<const uint16_t*>> kb16(n.size()), vb16(n.size());
        std::vector<KvBlocks> kv;
        for (size_t s = 0; s < n.size(); ++s) {
          const int64_t len = start[s] + n[s], blk = bt ? bt : len;
          for (int64_t p = 0; p < len; p += blk) {
            kb[s].push_back(ks[s].data() + p * kvh * d);
            vb[s].push_back(vs[s].data() + p * kvh * d);
            kb16[s].push_back(ks16[s].data() + p * kvh * d);
            vb16[s].push_back(vs16[s].data() + p * kvh * d);
          }
          if (f16) {
            kv.push_back({nullptr, nullptr, blk, 0, kb16[s].data(), vb16[s].data()});
          } else {
            kv.push_back({kb[s].data(), vb[s].data(), blk});
          }
        }
        causal_attention_batch(q.data(), heads * d, kv, kvh * d, out.data(), heads * d, row0, n,
                               start, heads, kvh, d, 1.0f / std::sqrt(static_cast<float>(d)));
        for (size_t s = 0; s < n.size(); ++s) {
          std::vector<float> qs_(q.begin() + row0[s] * heads * d,
                                 q.begin() + (row0[s] + n[s]) * heads * d);
          const auto ref = naive_attention(qs_, f16 ? ksr[s] : ks[s], f16 ? vsr[s] : vs[s], n[s],
                                           start[s], heads, kvh, d);
          double err = 0;
          for (size_t i = 0; i < ref.size(); ++i)
            err =
                std::max(err, std::abs(ref[i] - out[static_cast<size_t>(row0[s] * heads * d) + i]));
          EXPECT_LE(err, 2e-5) << "sequence " << s << ", " << threads << " threads, block " << bt
                               << ", d " << d << (f16 ? ", f16 cache" : "");
        }
      }
  }
  set_num_threads(0);
}

INSTANTIATE_TEST_SUITE_P(HeadSizes, CausalAttention, ::testing::Values(24, 48, 80, 128));

TEST(LlmKernels, CausalAttentionRejectsBadHeads) {
  EXPECT_THROW(causal_attention(nullptr, 0, nullptr, nullptr, 0, nullptr, 0, 1, 0, 6, 4, 8, 1.0f),
               Error);
}

// Decode under GQA: one call for the query heads of a KV head (groups of 1 to 4: the dot-product
// path; 5 and 7: the 6-row kernel, padded row groups) equals each head through the OpenBLAS
// kernel.
TEST(LlmKernels, GroupedDecodeMatchesPerHead) {
  const int64_t keys = 203;  // not a multiple of 4: the one-key tail after the four-key steps
  if (!attend_avx512_supported(64)) GTEST_SKIP() << "no AVX-512 here";
  std::vector<float> scratch;
  for (int64_t bt : {64, 7})      // 7: every block ends in a tail
    for (int64_t d : {64, 80}) {  // 80: a 16-column tail after the 32-column steps
      const int64_t kv_ld = 2 * d;
      const auto k = randn(static_cast<size_t>(keys * kv_ld), 51);
      const auto v = randn(static_cast<size_t>(keys * kv_ld), 52);
      std::vector<const float*> kb, vb;
      for (int64_t p = 0; p < keys; p += bt) {
        kb.push_back(k.data() + p * kv_ld + d);  // KV head 1
        vb.push_back(v.data() + p * kv_ld + d);
      }
      for (int64_t group : {1, 2, 3, 4, 5, 7}) {
        const auto q = randn(static_cast<size_t>(group * d), 53 + static_cast<uint32_t>(group));
        std::vector<float> got(static_cast<size_t>((group + 1) * d), 5.0f), want(got.size(), 5.0f);
        attend_group_avx512(q.data(), group, kb.data(), vb.data(), bt, kv_ld, got.data(), keys, d,
                            0.125f, scratch);
        for (int64_t h = 0; h < group; ++h)
          attend_blas(q.data() + h * d, d, kb.data(), vb.data(), bt, kv_ld, want.data() + h * d, d,
                      0, 1, keys - 1, d, 0.125f, scratch);
        for (size_t i = 0; i < got.size(); ++i)
          ASSERT_NEAR(got[i], want[i], 1e-5)
              << "block " << bt << ", d " << d << ", group " << group << ", element " << i;
      }
    }
}

// On an f16 cache the AVX-512 kernels widen each value as they read it and then do exactly what
// they do on f32: the same bits as the f32 kernels on the widened cache, for decode groups of
// 1-7 (dot products; the 6-row kernel) and causal row ranges (one row; several).
TEST(LlmKernels, F16CacheKernelsEqualF32KernelsOnWidenedValues) {
  const int64_t d = 80, kvh = 2, keys = 203, bt = 7, ld = kvh * d;
  if (!attend_avx512_supported(d)) GTEST_SKIP() << "no AVX-512 here";
  const auto q = randn(static_cast<size_t>(keys * 8 * d), 61);
  std::vector<uint16_t> k16, v16;
  std::vector<float> kw, vw;
  for (float x : randn(static_cast<size_t>(keys * ld), 62)) {
    k16.push_back(f32_to_f16(x));
    kw.push_back(f16_to_f32(k16.back()));
  }
  for (float x : randn(static_cast<size_t>(keys * ld), 63)) {
    v16.push_back(f32_to_f16(x));
    vw.push_back(f16_to_f32(v16.back()));
  }
  std::vector<const float*> kb, vb;
  std::vector<const uint16_t*> kb16, vb16;
  for (int64_t p = 0; p < keys; p += bt) {  // KV head 1
    kb.push_back(kw.data() + p * ld + d);
    vb.push_back(vw.data() + p * ld + d);
    kb16.push_back(k16.data() + p * ld + d);
    vb16.push_back(v16.data() + p * ld + d);
  }
  std::vector<float> scratch;
  for (int64_t group = 1; group <= 7; ++group) {
    std::vector<float> a(static_cast<size_t>(group * d)), b(a.size());
    attend_group_avx512(q.data(), group, kb.data(), vb.data(), bt, ld, a.data(), keys, d, 0.125f,
                        scratch);
    attend_group_f16_avx512(q.data(), group, kb16.data(), vb16.data(), bt, ld, b.data(), keys, d,
                            0.125f, scratch);
    EXPECT_EQ(a, b) << "group " << group;
  }
  for (const auto& [r0, r1] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {202, 203}, {0, 64}, {150, 203}}) {
    std::vector<float> a(static_cast<size_t>(keys * d), 0.0f), b(a.size(), 0.0f);
    attend_avx512(q.data(), d, kb.data(), vb.data(), bt, ld, a.data(), d, r0, r1, 0, d, 0.125f,
                  scratch);
    attend_f16_avx512(q.data(), d, kb16.data(), vb16.data(), bt, ld, b.data(), d, r0, r1, 0, d,
                      0.125f, scratch);
    EXPECT_EQ(a, b) << "rows [" << r0 << ", " << r1 << ")";
  }
}

// The AVX-512 kernel and the OpenBLAS one on the same items: rows at the end of a long prompt
// (key chunks skipped for early row groups), rows that are not a multiple of 6, and single
// rows (decode: the vector dot-product path).
TEST(LlmKernels, AttendKernelsAgree) {
  const int64_t d = 64, ld = 3 * d, keys = 300, bt = 64;
  if (!attend_avx512_supported(d)) GTEST_SKIP() << "no AVX-512 here";
  const auto q = randn(static_cast<size_t>(keys * ld), 41);
  const auto k = randn(static_cast<size_t>(keys * ld), 42);
  const auto v = randn(static_cast<size_t>(keys * ld), 43);
  std::vector<const float*> kb, vb;
  for (int64_t p = 0; p < keys; p += bt) {
    kb.push_back(k.data() + p * ld + d);  // the second of three heads
    vb.push_back(v.data() + p * ld + d);
  }
  std::vector<float> scratch;
  for (const auto& [r0, r1] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 64}, {192, 250}, {3, 5}, {299, 300}, {0, 1}}) {
    std::vector<float> a(static_cast<size_t>(keys * ld), 5.0f), b = a;
    attend_blas(q.data(), ld, kb.data(), vb.data(), bt, ld, a.data(), ld, r0, r1, 0, d, 0.125f,
                scratch);
    attend_avx512(q.data(), ld, kb.data(), vb.data(), bt, ld, b.data(), ld, r0, r1, 0, d, 0.125f,
                  scratch);
    for (int64_t r = 0; r < keys; ++r)
      for (int64_t c = 0; c < ld; ++c) {
        const size_t i = static_cast<size_t>(r * ld + c);
        if (r >= r0 && r < r1 && c < d) {
          ASSERT_NEAR(a[i], b[i], 1e-5) << "row " << r << " col " << c;
        } else {
          ASSERT_EQ(b[i], 5.0f) << "wrote outside the item: row " << r << " col " << c;
        }
      }
  }
}
