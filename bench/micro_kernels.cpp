// Micro benchmarks of kernels/cpu: our packed linear (f32, bf16; 1 thread through linear_st,
// N threads through linear) against OpenBLAS cblas_sgemm on the same y = x·Wᵀ, for the
// per-expert shapes of an MoE layer, and the element-wise ops.
//
// Counters: gflops (2·m·N·K per second), weight_gbs (packed weight bytes per second: what
// bounds decode, m = 1).
// Example: build/bench/micro_kernels --benchmark_filter='f32/.*/1024/1024/2$'
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "kernels/cpu/linear_impl.h"

namespace dk = deltamoe::kernels;

namespace {

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void set_counters(benchmark::State& state, int64_t m, int64_t n, int64_t k, double wbytes) {
  const double iters = static_cast<double>(state.iterations());
  state.counters["gflops"] =
      benchmark::Counter(2.0 * m * n * k * iters * 1e-9, benchmark::Counter::kIsRate);
  state.counters["weight_gbs"] = benchmark::Counter(wbytes * iters * 1e-9, benchmark::Counter::kIsRate);
}

// Args: m, N, K, threads (threads == 0 means linear_st on one thread).
void run_linear(benchmark::State& state, deltamoe::DType dtype) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  deltamoe::set_num_threads(threads == 0 ? 1 : threads);
  const auto x = random_vec(static_cast<size_t>(m * k), 1);
  const auto w = random_vec(static_cast<size_t>(n * k), 2);
  const dk::PackedLinear packed(deltamoe::Tensor::from(w, {n, k}), dtype);
  std::vector<float> y(static_cast<size_t>(m * n));
  for (auto _ : state) {
    if (threads == 0) {
      dk::linear_st(x.data(), m, k, packed, 0, n, y.data(), n);
    } else {
      dk::linear(x.data(), m, k, packed, y.data(), n);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, m, n, k, static_cast<double>(packed.weight_bytes()));
  state.SetLabel(dk::linear_impl_name(dtype));
  deltamoe::set_num_threads(0);
}

void BM_linear_f32(benchmark::State& state) { run_linear(state, deltamoe::DType::f32); }
void BM_linear_bf16(benchmark::State& state) { run_linear(state, deltamoe::DType::bf16); }

// OpenBLAS on the same product: y[m,N] = x[m,K] · W[N,K]ᵀ (threads as above; 0 = 1 thread).
void BM_sgemm(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  deltamoe::set_num_threads(threads == 0 ? 1 : threads);
  const auto x = random_vec(static_cast<size_t>(m * k), 1);
  const auto w = random_vec(static_cast<size_t>(n * k), 2);
  std::vector<float> y(static_cast<size_t>(m * n));
  for (auto _ : state) {
    dk::sgemm(false, true, m, n, k, 1.0f, x.data(), k, w.data(), k, 0.0f, y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, m, n, k, static_cast<double>(n * k * 4));
  deltamoe::set_num_threads(0);
}

// OpenBLAS with the weights pre-transposed to [K, N] (no transpose flag): its best layout.
void BM_sgemm_nn(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  deltamoe::set_num_threads(threads == 0 ? 1 : threads);
  const auto x = random_vec(static_cast<size_t>(m * k), 1);
  const auto wt = random_vec(static_cast<size_t>(n * k), 2);
  std::vector<float> y(static_cast<size_t>(m * n));
  for (auto _ : state) {
    dk::sgemm(false, false, m, n, k, 1.0f, x.data(), k, wt.data(), n, 0.0f, y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, m, n, k, static_cast<double>(n * k * 4));
  deltamoe::set_num_threads(0);
}

// Decode (m = 1) from DRAM: cycles through enough 1024x1024 matrices (96 MiB f32,
// 48 MiB bf16) that they cannot stay in the 32 MiB L3. Args: threads (0 = linear_st).
void run_gemv_dram(benchmark::State& state, deltamoe::DType dtype) {
  const int64_t n = 1024, k = 1024, mats = 24;
  const int threads = static_cast<int>(state.range(0));
  deltamoe::set_num_threads(threads == 0 ? 1 : threads);
  const auto x = random_vec(static_cast<size_t>(k), 1);
  const auto w = random_vec(static_cast<size_t>(n * k), 2);
  std::vector<dk::PackedLinear> packed;
  for (int64_t i = 0; i < mats; ++i) packed.emplace_back(deltamoe::Tensor::from(w, {n, k}), dtype);
  std::vector<float> y(static_cast<size_t>(n));
  size_t i = 0;
  for (auto _ : state) {
    const dk::PackedLinear& p = packed[i++ % packed.size()];
    if (threads == 0) {
      dk::linear_st(x.data(), 1, k, p, 0, n, y.data(), n);
    } else {
      dk::linear(x.data(), 1, k, p, y.data(), n);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, 1, n, k, static_cast<double>(packed[0].weight_bytes()));
  state.SetLabel(dk::linear_impl_name(dtype));
  deltamoe::set_num_threads(0);
}
void BM_gemv_dram_f32(benchmark::State& state) { run_gemv_dram(state, deltamoe::DType::f32); }
void BM_gemv_dram_bf16(benchmark::State& state) { run_gemv_dram(state, deltamoe::DType::bf16); }
BENCHMARK(BM_gemv_dram_f32)->ArgName("threads")->Arg(0)->Arg(2)->UseRealTime();
BENCHMARK(BM_gemv_dram_bf16)->ArgName("threads")->Arg(0)->Arg(2)->UseRealTime();

void linear_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "threads"});
  for (int threads : {0, 2})
    for (int64_t m : {1, 4, 8, 16, 32, 64, 128, 256, 512}) b->Args({m, 1024, 1024, threads});
  for (int threads : {0, 2})
    for (int64_t m : {1, 16, 128}) {
      b->Args({m, 2048, 512, threads});
      b->Args({m, 512, 2048, threads});
    }
  b->UseRealTime();
}

BENCHMARK(BM_linear_f32)->Apply(linear_args);
BENCHMARK(BM_linear_bf16)->Apply(linear_args);
BENCHMARK(BM_sgemm)->Apply(linear_args);
BENCHMARK(BM_sgemm_nn)->Apply(linear_args);

// Element-wise ops on one row block of an expert's activations.
void BM_swiglu(benchmark::State& state) {
  const int64_t n = state.range(0);
  const auto g = random_vec(static_cast<size_t>(n), 3), u = random_vec(static_cast<size_t>(n), 4);
  std::vector<float> o(static_cast<size_t>(n));
  for (auto _ : state) {
    dk::swiglu_st(g.data(), u.data(), o.data(), n);
    benchmark::DoNotOptimize(o.data());
  }
  state.counters["gelems"] = benchmark::Counter(static_cast<double>(n) * state.iterations() * 1e-9,
                                                benchmark::Counter::kIsRate);
}
BENCHMARK(BM_swiglu)->Arg(1 << 16);

void BM_softmax_rows(benchmark::State& state) {
  const int64_t rows = 512, d = state.range(0);
  auto x = random_vec(static_cast<size_t>(rows * d), 5);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    dk::softmax_rows_st(x.data(), y.data(), rows, d);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["grows"] = benchmark::Counter(static_cast<double>(rows) * state.iterations() * 1e-9,
                                               benchmark::Counter::kIsRate);
}
BENCHMARK(BM_softmax_rows)->Arg(8)->Arg(64)->Arg(128);

}  // namespace

BENCHMARK_MAIN();
