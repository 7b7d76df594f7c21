#include "roofline.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "deltamoe/core/tensor.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"

namespace deltamoe::cli {

namespace {
// Horizontal sum through memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized.
__attribute__((target("avx512f"))) double hsum(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  double s = 0;
  for (float x : lanes) s += x;
  return s;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__attribute__((target("avx512f"))) double sum_avx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  double s = hsum(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}

double sum_portable(const float* p, size_t n) {
  float a[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + j];
  double s = 0;
  for (float v : a) s += v;
  for (; i < n; ++i) s += p[i];
  return s;
}

__attribute__((target("avx512f,avx512bf16"))) double bf16_loop(int64_t iters) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80);  // bf16 1.0
  const __m512bh y = (__m512bh)_mm512_set1_epi16(0x0001);  // tiny: no overflow
  for (int64_t i = 0; i < iters; ++i)
    for (auto& a : acc) a = _mm512_dpbf16_ps(a, x, y);
  __m512 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, acc[j]);
  return hsum(s);
}

__attribute__((target("avx512f"))) double fma_loop(int64_t iters) {
  __m512 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(static_cast<float>(j));
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (auto& a : acc) a = _mm512_fmadd_ps(a, x, y);
  __m512 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm512_add_ps(s, acc[j]);
  return hsum(s);
}

__attribute__((target("avx2"))) double hsum256(__m256 v) {
  alignas(32) float f[8];
  _mm256_store_ps(f, v);
  double out = 0;
  for (float x : f) out += x;
  return out;
}

// The AVX2 forms, for CPUs without AVX-512: 12 ymm FMA chains (8 lanes).
__attribute__((target("avx2,fma"))) double fma_loop_avx2(int64_t iters) {
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(static_cast<float>(j));
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (auto& a : acc) a = _mm256_fmadd_ps(a, x, y);
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  return hsum256(s);
}

// The int8 kernels' inner step (linear_int8_avx2.cpp): vpsignb twice, vpmaddubsw, vpmaddwd,
// convert, FMA with the block scale: 32 multiply-adds per 32-byte block, 12 independent chains.
__attribute__((target("avx2,fma"))) double int8_loop_avx2(int64_t iters) {
  __m256 acc[12];
  __m256i w[12];
  for (int j = 0; j < 12; ++j) {
    acc[j] = _mm256_setzero_ps();
    w[j] = _mm256_set1_epi8(static_cast<char>(j + 1));
  }
  const __m256i x = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  const __m256 scale = _mm256_set1_ps(1e-9f);
  for (int64_t i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) {
      const __m256i p = _mm256_madd_epi16(
          _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w[j], x)), ones);
      acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[j]);
    }
  __m256 s = acc[0];
  for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, acc[j]);
  return hsum256(s);
}

template <typename F>
double best_rate(int threads, double flops_per_iter, F&& body) {
  const int64_t iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double total = 0;
    const double t0 = now_s();
#pragma omp parallel num_threads(threads)
    {
      const double v = body(iters);
#pragma omp atomic
      total += v;
    }
    volatile double sink = total;
    (void)sink;
    const double dt = now_s() - t0;
    best = std::max(best, flops_per_iter * static_cast<double>(iters) * threads / dt / 1e9);
  }
  return best;
}
}  // namespace

namespace {
// Seconds to sum p[0, n) (n a multiple of 64) on `threads` threads, each a contiguous share.
double timed_parallel_sum_s(const float* p, size_t n, int threads) {
  const bool avx512 = cpu_features().avx512f;
  double total = 0;
  const double t0 = now_s();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const size_t b = (n / 64 * t / nt) * 64, e = (n / 64 * (t + 1) / nt) * 64;
    const double s = avx512 ? sum_avx512(p + b, e - b) : sum_portable(p + b, e - b);
#pragma omp atomic
    total += s;
  }
  const double dt = now_s() - t0;
  volatile double sink = total;  // keeps the reads from being optimised away
  (void)sink;
  return dt;
}
}  // namespace

size_t llc_flush_bytes() {
  const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t twice = l3 > 0 ? 2 * static_cast<size_t>(l3) : 0;
  return std::clamp<size_t>((twice + (size_t{1} << 21) - 1) >> 21 << 21, size_t{96} << 20,
                            size_t{2} << 30);
}

StreamProbe::StreamProbe() : StreamProbe(std::max(size_t{512} << 20, llc_flush_bytes())) {}

StreamProbe::StreamProbe(size_t buffer_bytes)
    : storage_(buffer_bytes),
      buf_(static_cast<float*>(storage_.data())),
      n_(buffer_bytes / sizeof(float)) {
  for (size_t i = 0; i < n_; ++i) buf_[i] = 1.0f;
}

double StreamProbe::best_pass_gbps(int threads, int repeats) {
  const size_t bytes = n_ / 64 * 64 * sizeof(float);
  double best = 0;
  for (int rep = 0; rep < repeats; ++rep)
    best = std::max(best, static_cast<double>(bytes) / time_pass_s(bytes, threads) / 1e9);
  return best;
}

double StreamProbe::time_pass_s(size_t bytes, int threads) {
  const size_t n = std::min(n_, bytes / sizeof(float)) / 64 * 64;
  if (offset_ + n > n_) offset_ = 0;
  const float* base = buf_ + offset_;
  offset_ += n;
  return timed_parallel_sum_s(base, n, threads);
}

double measure_bf16_dot_peak_gflops(int threads) {
  if (!cpu_features().avx512_bf16) return 0.0;
  return best_rate(threads, 12.0 * 64.0, [](int64_t it) { return bf16_loop(it); });
}

double measure_amx_bf16_peak_gflops(int threads) {
  if (std::string(kernels::linear_impl_name(DType::bf16)) != "amx_bf16") return 0.0;
  // Fewer iterations than best_rate's: one is 4 x 16 cycles or more.
  return best_rate(threads, 4.0 * 16 * 16 * 32 * 2,
                   [](int64_t it) { return kernels::amx_bf16_peak_loop(it / 16); }) /
         16.0;
}

double measure_fma_peak_gflops(int threads) {
  const CpuFeatures& f = cpu_features();
  if (f.avx512f) return best_rate(threads, 12.0 * 32.0, [](int64_t it) { return fma_loop(it); });
  if (f.avx2 && f.fma)
    return best_rate(threads, 12.0 * 16.0, [](int64_t it) { return fma_loop_avx2(it); });
  return 0.0;
}

double measure_int8_dot_peak_gops(int threads) {
  const CpuFeatures& f = cpu_features();
  if (!f.avx2 || !f.fma) return 0.0;
  return best_rate(threads, 12.0 * 64.0, [](int64_t it) { return int8_loop_avx2(it); });
}

}  // namespace deltamoe::cli
