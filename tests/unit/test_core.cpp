#include <gtest/gtest.h>

#include <atomic>

#include <cmath>
#include <cstdint>
#include <vector>

#include "deltamoe/core/arena.h"
#include "deltamoe/core/dtype.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/core/tensor.h"

using namespace deltamoe;

TEST(Tensor, AllocatesAlignedZeroed) {
  Tensor t({3, 5}, DType::f32);
  EXPECT_EQ(t.numel(), 15);
  EXPECT_EQ(t.nbytes(), 60u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % kAlignment, 0u);
  for (float v : t.to_vector()) EXPECT_EQ(v, 0.0f);
  EXPECT_TRUE(t.is_contiguous());
}

TEST(Tensor, SliceReshapeTransposeAreViews) {
  Tensor t = Tensor::from({0, 1, 2, 3, 4, 5}, {3, 2});
  Tensor s = t.slice(1, 3);
  EXPECT_EQ(s.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.at({0, 0}), 2.0f);
  s.data<float>()[0] = 42;
  EXPECT_EQ(t.at({1, 0}), 42.0f);  // aliases
  Tensor tt = t.transpose(0, 1);
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.at({1, 2}), 5.0f);
  EXPECT_EQ(tt.clone().to_vector(), (std::vector<float>{0, 42, 4, 1, 3, 5}));
  EXPECT_EQ(t.reshape({-1}).shape(), (Shape{6}));
  EXPECT_THROW(t.reshape({4, 2}), Error);
  EXPECT_THROW(tt.reshape({6}), Error);
  EXPECT_THROW(t.slice(2, 4), Error);
}

TEST(Tensor, WrongElementTypeThrows) {
  Tensor t({2}, DType::bf16);
  EXPECT_THROW((void)t.data<float>(), Error);
  EXPECT_NO_THROW((void)t.data<uint16_t>());
}

TEST(Tensor, NegativeShapeThrows) {
  EXPECT_THROW(Tensor({2, -1}), Error);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, F16RoundTripAndEdges) {
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(v)), v) << v;
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_NEAR(f16_to_f32(f32_to_f16(0.1f)), 0.1f, 1e-4f);
  EXPECT_EQ(parse_dtype("bf16"), DType::bf16);
  EXPECT_THROW(parse_dtype("f64"), Error);
}

TEST(Tensor, ConvertsBetweenDtypes) {
  Tensor t = Tensor::from({1.5f, -2.0f, 3.25f}, {3});
  Tensor b = t.to(DType::bf16);
  EXPECT_EQ(b.to_vector(), t.to_vector());
  Tensor i = t.to(DType::i32);
  EXPECT_EQ(i.data<int32_t>()[1], -2);
}

// Contiguous bf16 / f16 <-> f32 conversions run in chunks on all threads: every element equals
// the conversion function's value (rounding, NaN, Inf, values past f16's range), and a strided
// view takes the element-wise path with the same results.
TEST(Tensor, ContiguousConversionsEqualTheElementFunctions) {
  set_num_threads(2);
  const int64_t n = 300001;  // several chunks of 65536 and a partial one
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[static_cast<size_t>(i)] = std::sin(0.37f * i) * std::exp2f(i % 40 - 20);
  v[5] = std::nanf("");
  v[6] = INFINITY;
  v[7] = -1e6f;  // beyond f16
  const Tensor t = Tensor::from(v, {n});
  const Tensor b = t.to(DType::bf16), h = t.to(DType::f16);
  const Tensor bf = b.to(DType::f32), hf = h.to(DType::f32);
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t bi = b.data<uint16_t>()[i], hi = h.data<uint16_t>()[i];
    ASSERT_EQ(bi, f32_to_bf16(v[static_cast<size_t>(i)])) << i;
    ASSERT_EQ(hi, f32_to_f16(v[static_cast<size_t>(i)])) << i;
    const float want_b = bf16_to_f32(bi), want_h = f16_to_f32(hi);
    ASSERT_TRUE(bf.data<float>()[i] == want_b ||
                (std::isnan(want_b) && std::isnan(bf.data<float>()[i])));
    ASSERT_TRUE(hf.data<float>()[i] == want_h ||
                (std::isnan(want_h) && std::isnan(hf.data<float>()[i])));
  }
  const Tensor m = Tensor::from(std::vector<float>(v.begin(), v.begin() + 6000), {60, 100});
  const Tensor tr = m.transpose(0, 1).to(DType::bf16);  // strided: element by element
  EXPECT_EQ(tr.data<uint16_t>()[1], f32_to_bf16(v[100]));
  set_num_threads(0);
}

TEST(Arena, HandsOutAlignedOffsetsAndChecksCapacity) {
  Arena a(1024);
  EXPECT_EQ(a.allocate(10), 0u);
  EXPECT_EQ(a.allocate(10), 64u);
  EXPECT_EQ(a.allocate(4, 4), 76u);
  EXPECT_EQ(a.used(), 80u);
  EXPECT_THROW(a.allocate(2000), Error);
  Tensor v = a.view(128, {4, 4}, DType::f32);
  v.fill(1.0f);
  EXPECT_EQ(static_cast<float*>(a.at(128))[15], 1.0f);
  EXPECT_THROW(a.view(1000, {100}, DType::f32), Error);
  a.reset();
  EXPECT_EQ(a.allocate(8), 0u);
  EXPECT_EQ(a.high_water(), 80u);
}

TEST(Error, MessagesCarryComponent) {
  try {
    fail("safetensors", "header length ", 9, " exceeds file size ", 1024);
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[safetensors] header length 9 exceeds file size 1024");
  }
  EXPECT_THROW(DELTAMOE_ASSERT(1 + 1 == 3, "math"), InternalError);
}

TEST(Parallel, ParallelForCoversRangeOnceAndRethrows) {
  set_num_threads(2);
  std::vector<int> hits(1000, 0);
  parallel_for(1000, 10, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
  });
  for (int h : hits) EXPECT_EQ(h, 1);
  EXPECT_THROW(parallel_for(100, 1, [](int64_t, int64_t) { fail("x", "boom"); }), Error);
}

TEST(Parallel, StealingRunsEveryItemOnceAndRethrows) {
  for (int threads : {1, 2, 3, 5}) {
    set_num_threads(threads);
    for (int64_t n : {1, 2, 3, 7, 64, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      // Uneven item costs, so that threads run out of their own shares and take others'.
      parallel_for_stealing(n, [&](int64_t i) {
        volatile double s = 0;
        for (int64_t r = 0; r < (i % 7) * 2000; ++r) s = s + 1.0;
        hits[static_cast<size_t>(i)].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n=" << n << " threads=" << threads;
    }
    // Inside another parallel region the nested one has one thread, which takes every share.
    std::vector<int> nested(50, 0);
    parallel_for(2, 1, [&](int64_t b, int64_t) {
      if (b == 0) parallel_for_stealing(50, [&](int64_t i) { nested[static_cast<size_t>(i)]++; });
    });
    for (int h : nested) EXPECT_EQ(h, 1);
    EXPECT_THROW(parallel_for_stealing(100,
                                       [](int64_t i) {
                                         if (i == 57) fail("x", "boom");
                                       }),
                 Error);
  }
  set_num_threads(0);
}
