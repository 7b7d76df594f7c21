// Micro benchmarks of kernels/cpu: our packed linear (f32, bf16; 1 thread through linear_st,
// N threads through linear) against OpenBLAS cblas_sgemm on the same y = x·Wᵀ, for the
// per-expert shapes of an MoE layer, and the element-wise ops.
//
// Counters: gflops (2·m·N·K per second), weight_gbs (packed weight bytes per second: what
// bounds decode, m = 1).
// Example: build/bench/micro_kernels --benchmark_filter='f32/.*/1024/1024/2$'
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "kernels/cpu/attention_impl.h"
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
  state.counters["weight_gbs"] =
      benchmark::Counter(wbytes * iters * 1e-9, benchmark::Counter::kIsRate);
}

// Args: m, N, K, threads (threads == 0 means linear_st on one thread).
// row_major: PackedLinear::row_major (the language models' layout; int8 has only this one).
void run_linear(benchmark::State& state, deltamoe::DType dtype, bool row_major = false) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int threads = static_cast<int>(state.range(3));
  deltamoe::set_num_threads(threads == 0 ? 1 : threads);
  const auto x = random_vec(static_cast<size_t>(m * k), 1);
  const auto w = random_vec(static_cast<size_t>(n * k), 2);
  const dk::PackedLinear packed =
      row_major ? dk::PackedLinear::row_major(deltamoe::Tensor::from(w, {n, k}), dtype)
                : dk::PackedLinear(deltamoe::Tensor::from(w, {n, k}), dtype);
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

void BM_linear_f32(benchmark::State& state) {
  run_linear(state, deltamoe::DType::f32);
}
void BM_linear_bf16(benchmark::State& state) {
  run_linear(state, deltamoe::DType::bf16);
}
void BM_rows_f32(benchmark::State& state) {
  run_linear(state, deltamoe::DType::f32, true);
}
void BM_rows_bf16(benchmark::State& state) {
  run_linear(state, deltamoe::DType::bf16, true);
}
void BM_rows_int8(benchmark::State& state) {
  run_linear(state, deltamoe::DType::int8, true);
}

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

// Decode (m rows) from DRAM: cycles through enough 1024x1024 matrices (≥ 96 MiB) that they
// cannot stay in the 32 MiB L3. Args: threads (0 = linear_st).
void run_gemv_dram(benchmark::State& state, deltamoe::DType dtype, bool row_major = false) {
  // At least 96 MiB of weights whatever the dtype (3x the 32 MiB L3).
  const int64_t n = 1024, k = 1024;
  const int64_t mats = (int64_t{96} << 20) / (n * k * static_cast<int64_t>(dtype_size(dtype))) + 1;
  const int threads = static_cast<int>(state.range(0));
  deltamoe::set_num_threads(threads == 0 ? 1 : threads);
  const int64_t m = state.range(1);
  const auto x = random_vec(static_cast<size_t>(m * k), 1);
  const auto w = random_vec(static_cast<size_t>(n * k), 2);
  std::vector<dk::PackedLinear> packed;
  for (int64_t i = 0; i < mats; ++i)
    packed.push_back(row_major
                         ? dk::PackedLinear::row_major(deltamoe::Tensor::from(w, {n, k}), dtype)
                         : dk::PackedLinear(deltamoe::Tensor::from(w, {n, k}), dtype));
  std::vector<float> y(static_cast<size_t>(m * n));
  size_t i = 0;
  for (auto _ : state) {
    const dk::PackedLinear& p = packed[i++ % packed.size()];
    if (threads == 0) {
      dk::linear_st(x.data(), m, k, p, 0, n, y.data(), n);
    } else {
      dk::linear(x.data(), m, k, p, y.data(), n);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, m, n, k, static_cast<double>(packed[0].weight_bytes()));
  state.SetLabel(dk::linear_impl_name(dtype));
  deltamoe::set_num_threads(0);
}
void BM_gemv_dram_f32(benchmark::State& state) {
  run_gemv_dram(state, deltamoe::DType::f32);
}
void BM_gemv_dram_bf16(benchmark::State& state) {
  run_gemv_dram(state, deltamoe::DType::bf16);
}
void BM_gemv_dram_rows_f32(benchmark::State& state) {
  run_gemv_dram(state, deltamoe::DType::f32, true);
}
void BM_gemv_dram_rows_bf16(benchmark::State& state) {
  run_gemv_dram(state, deltamoe::DType::bf16, true);
}
void BM_gemv_dram_rows_int8(benchmark::State& state) {
  run_gemv_dram(state, deltamoe::DType::int8, true);
}
// Args: threads (0 = linear_st), rows of x (1 = decode; a few = a decode batch's rows per
// expert; 15 / 16 and 31 / 32: the two sides of the handover from the dot kernels to the packed
// panels in f32 and in bf16).
void gemv_dram_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"threads", "m"});
  for (int64_t m : {1, 4, 8, 15, 16, 31, 32})
    for (int threads : {0, 2}) b->Args({threads, m});
  b->UseRealTime();
}
BENCHMARK(BM_gemv_dram_f32)->Apply(gemv_dram_args);
BENCHMARK(BM_gemv_dram_bf16)->Apply(gemv_dram_args);
BENCHMARK(BM_gemv_dram_rows_f32)->Apply(gemv_dram_args);
BENCHMARK(BM_gemv_dram_rows_bf16)->Apply(gemv_dram_args);
BENCHMARK(BM_gemv_dram_rows_int8)->Apply(gemv_dram_args);

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
BENCHMARK(BM_rows_f32)->Apply(linear_args);
BENCHMARK(BM_rows_bf16)->Apply(linear_args);
BENCHMARK(BM_rows_int8)->Apply(linear_args);
BENCHMARK(BM_sgemm)->Apply(linear_args);
BENCHMARK(BM_sgemm_nn)->Apply(linear_args);

// Random keys and values of `keys` positions (rows of ld floats) and the pointers to their
// blocks of bt positions, as the model's paged cache hands them to the attention kernels.
struct KvItem {
  std::vector<float> k, v;
  std::vector<const float*> kb, vb;
  KvItem(int64_t keys, int64_t bt, int64_t ld)
      : k(random_vec(static_cast<size_t>(keys * ld), 2)),
        v(random_vec(static_cast<size_t>(keys * ld), 3)) {
    for (int64_t p = 0; p < keys; p += bt) {
      kb.push_back(k.data() + p * ld);
      vb.push_back(v.data() + p * ld);
    }
  }
};

// One causal attention item, single-threaded: the last 64 query rows of a `keys`-token prompt
// against its cache (KV blocks of 64 positions, 8 KV heads of d, the reference model's layout).
// Args: kernel (0 = OpenBLAS, 1 = AVX-512), keys, d. gflops counts the causal products
// (2·d per visible query-key pair, scores and output).
void BM_attend(benchmark::State& state) {
  const bool avx512 = state.range(0) == 1;
  const int64_t keys = state.range(1), d = state.range(2), rows = 64, bt = 64, ld = 8 * d;
  if (avx512 && !dk::attend_avx512_supported(d)) {
    state.SkipWithError("no AVX-512 here");
    return;
  }
  const auto q = random_vec(static_cast<size_t>(keys * 16 * d), 1);
  const KvItem kv(keys, bt, ld);
  const auto& kb = kv.kb;
  const auto& vb = kv.vb;
  std::vector<float> out(static_cast<size_t>(keys * 16 * d)), scratch;
  const auto fn = avx512 ? &dk::attend_avx512 : &dk::attend_blas;
  deltamoe::BlasThreadsGuard one(1);
  for (auto _ : state) {
    fn(q.data(), 16 * d, kb.data(), vb.data(), bt, ld, out.data(), 16 * d, keys - rows, keys, 0, d,
       0.125f, scratch);
    benchmark::ClobberMemory();
  }
  double pairs = 0;
  for (int64_t r = keys - rows; r < keys; ++r) pairs += static_cast<double>(r + 1);
  state.counters["gflops"] =
      benchmark::Counter(4.0 * d * pairs * static_cast<double>(state.iterations()) * 1e-9,
                         benchmark::Counter::kIsRate);
  state.SetLabel(avx512 ? "avx512" : "openblas");
}
BENCHMARK(BM_attend)
    ->ArgNames({"avx512", "keys", "d"})
    ->ArgsProduct({{0, 1}, {64, 128, 512, 2048}, {64, 128}});

// Decode under GQA: the `group` query heads of one KV head at one position against `keys`
// cached keys (KV blocks of 64 positions, 8 KV heads of d = 64, the reference model's layout),
// single-threaded. Args: kernel (0 = the 6-row tiled kernel, 1 = what attend_group_avx512
// picks: per-key dot products for groups of 1-4), group, keys. gbytes: K and V bytes read.
void BM_attend_decode(benchmark::State& state) {
  const bool best = state.range(0) == 1;
  const int64_t group = state.range(1), keys = state.range(2), d = 64, bt = 64, ld = 8 * d;
  if (!dk::attend_avx512_supported(d)) {
    state.SkipWithError("no AVX-512 here");
    return;
  }
  const auto q = random_vec(static_cast<size_t>(group * d), 1);
  const KvItem kv(keys, bt, ld);
  const auto& kb = kv.kb;
  const auto& vb = kv.vb;
  std::vector<float> out(static_cast<size_t>(group * d)), scratch;
  const auto fn = best ? &dk::attend_group_avx512 : &dk::attend_group_tiled_avx512;
  for (auto _ : state) {
    fn(q.data(), group, kb.data(), vb.data(), bt, ld, out.data(), keys, d, 0.125f, scratch);
    benchmark::ClobberMemory();
  }
  state.counters["gbytes"] = benchmark::Counter(
      8.0 * static_cast<double>(keys * d) * static_cast<double>(state.iterations()) * 1e-9,
      benchmark::Counter::kIsRate);
  state.SetLabel(best ? "dot products" : "tiled");
}
BENCHMARK(BM_attend_decode)
    ->ArgNames({"best", "group", "keys"})
    ->ArgsProduct({{0, 1}, {1, 2, 4}, {16, 64, 512, 2048}});

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
  state.counters["grows"] = benchmark::Counter(
      static_cast<double>(rows) * state.iterations() * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_softmax_rows)->Arg(8)->Arg(64)->Arg(128);

// ---- --table: best-of-N per-call timing of every implementation on the shapes above.
// On a shared machine a sustained rate mostly measures the neighbours; the fastest of many
// single calls (each 0.05..10 ms, shorter than a scheduler time slice) is what the kernel
// does when it has the cores. Every variant gets the same treatment.

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename F>
double best_call_s(F&& f, double budget_s) {
  f();  // warm caches, scratch and the thread team
  double best = 1e30;
  const double end = now_s() + budget_s;
  for (int i = 0; i < 5 || now_s() < end; ++i) {
    const double t0 = now_s();
    f();
    best = std::min(best, now_s() - t0);
  }
  return best;
}

int run_table(bool json, double budget_s) {
  const int64_t k = 1024, n = 1024;
  const std::vector<int64_t> ms = {1, 4, 8, 16, 32, 64, 128, 256, 512};
  const auto x = random_vec(static_cast<size_t>(512 * k), 1);
  const auto w = random_vec(static_cast<size_t>(n * k), 2);
  std::vector<float> wt(static_cast<size_t>(n * k));  // [K, N] for the NN SGEMM
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j)
      wt[static_cast<size_t>(j * n + i)] = w[static_cast<size_t>(i * k + j)];
  const dk::PackedLinear pf(deltamoe::Tensor::from(w, {n, k}), deltamoe::DType::f32);
  const dk::PackedLinear pb(deltamoe::Tensor::from(w, {n, k}), deltamoe::DType::bf16);
  // Row-major (a mapped checkpoint used in place): our dot kernels, OpenBLAS from blas_rows().
  const deltamoe::Tensor wtensor = deltamoe::Tensor::from(w, {n, k});
  const dk::PackedLinear rf = dk::PackedLinear::row_major(wtensor, deltamoe::DType::f32);
  const dk::PackedLinear rb = dk::PackedLinear::row_major(wtensor, deltamoe::DType::bf16);
  std::vector<float> y(static_cast<size_t>(512 * n));
  std::string rows_json;
  if (!json)
    std::printf("%7s %3s %10s %10s %10s %10s %10s %10s %8s   (GFLOP/s, best call; K=N=1024)\n", "m",
                "thr", "linear_f32", "linear_bf16", "rows_f32", "rows_bf16", "sgemm_nt", "sgemm_nn",
                "f32/blas");
  // Variant-major order with a pause between variants: libgomp's and OpenBLAS's idle worker
  // threads spin for a while after each call, and interleaving the two libraries call by
  // call makes each one's spinners steal the other's cores.
  const int64_t cells = static_cast<int64_t>(ms.size());
  // [threads-1][f32, bf16, sgemm_nt, sgemm_nn, rows_f32, rows_bf16] -> seconds per m
  std::vector<double> t[2][6];
  for (int threads : {1, 2}) {
    deltamoe::set_num_threads(threads);
    for (int v = 0; v < 6; ++v) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      for (int64_t m : ms) {
        t[threads - 1][v].push_back(best_call_s(
            [&] {
              if (v == 2 || v == 3) {
                if (v == 2)
                  dk::sgemm(false, true, m, n, k, 1.0f, x.data(), k, w.data(), k, 0.0f, y.data(),
                            n);
                else
                  dk::sgemm(false, false, m, n, k, 1.0f, x.data(), k, wt.data(), n, 0.0f, y.data(),
                            n);
              } else {
                const dk::PackedLinear& p = v == 0 ? pf : v == 1 ? pb : v == 4 ? rf : rb;
                if (threads == 1)
                  dk::linear_st(x.data(), m, k, p, 0, n, y.data(), n);
                else
                  dk::linear(x.data(), m, k, p, y.data(), n);
              }
            },
            budget_s));
      }
    }
  }
  for (int threads : {1, 2}) {
    for (int64_t i = 0; i < cells; ++i) {
      const int64_t m = ms[static_cast<size_t>(i)];
      const auto& tt = t[threads - 1];
      const double tf = tt[0][i], tb = tt[1][i], tnt = tt[2][i], tnn = tt[3][i];
      const double trf = tt[4][i], trb = tt[5][i];
      const double fl = 2.0 * m * n * k * 1e-9;
      const double blas = std::max(fl / tnt, fl / tnn);
      if (json) {
        char buf[512];
        std::snprintf(buf, sizeof buf,
                      "%s{\"m\":%lld,\"threads\":%d,\"linear_f32_gflops\":%.1f,"
                      "\"linear_bf16_gflops\":%.1f,\"sgemm_nt_gflops\":%.1f,"
                      "\"sgemm_nn_gflops\":%.1f,\"linear_f32_weight_gbs\":%.1f,"
                      "\"linear_bf16_weight_gbs\":%.1f,\"rows_f32_gflops\":%.1f,"
                      "\"rows_bf16_gflops\":%.1f}",
                      rows_json.empty() ? "" : ",", static_cast<long long>(m), threads, fl / tf,
                      fl / tb, fl / tnt, fl / tnn, pf.weight_bytes() / tf * 1e-9,
                      pb.weight_bytes() / tb * 1e-9, fl / trf, fl / trb);
        rows_json += buf;
      } else {
        std::printf("%7lld %3d %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %7.0f%%\n",
                    static_cast<long long>(m), threads, fl / tf, fl / tb, fl / trf, fl / trb,
                    fl / tnt, fl / tnn, 100.0 * (fl / tf) / blas);
      }
    }
  }
  // Decode from DRAM: cycle through 96 MiB (f32) / 48 MiB (bf16) of 1024x1024 matrices,
  // more than the 32 MiB L3, so every call streams its weights from memory.
  double dram_gbs[4][2] = {};  // [packed f32, packed bf16, rows f32, rows bf16][threads-1]
  for (int d = 0; d < 4; ++d) {
    const auto dtype = d % 2 == 0 ? deltamoe::DType::f32 : deltamoe::DType::bf16;
    std::vector<dk::PackedLinear> mats;
    for (int i = 0; i < 24; ++i)
      mats.push_back(d < 2 ? dk::PackedLinear(deltamoe::Tensor::from(w, {n, k}), dtype)
                           : dk::PackedLinear::row_major(deltamoe::Tensor::from(w, {n, k}), dtype));
    for (int threads : {1, 2}) {
      deltamoe::set_num_threads(threads);
      size_t next = 0;
      const double t = best_call_s(
          [&] {
            const dk::PackedLinear& p = mats[next++ % mats.size()];
            if (threads == 1)
              dk::linear_st(x.data(), 1, k, p, 0, n, y.data(), n);
            else
              dk::linear(x.data(), 1, k, p, y.data(), n);
          },
          budget_s);
      dram_gbs[d][threads - 1] = mats[0].weight_bytes() / t * 1e-9;
    }
  }
  if (!json)
    std::printf(
        "decode m=1 from DRAM, weight GB/s (best call): f32 %.1f (1 thr) %.1f (2 thr), "
        "bf16 %.1f (1 thr) %.1f (2 thr); row-major f32 %.1f / %.1f, bf16 %.1f / %.1f\n",
        dram_gbs[0][0], dram_gbs[0][1], dram_gbs[1][0], dram_gbs[1][1], dram_gbs[2][0],
        dram_gbs[2][1], dram_gbs[3][0], dram_gbs[3][1]);
  deltamoe::set_num_threads(0);
  if (json)
    std::printf(
        "{\"dram_gemv_f32_weight_gbs\":[%.1f,%.1f],\"dram_gemv_bf16_weight_gbs\":[%.1f,%.1f],"
        "\"dram_gemv_rows_f32_weight_gbs\":[%.1f,%.1f],"
        "\"dram_gemv_rows_bf16_weight_gbs\":[%.1f,%.1f],",
        dram_gbs[0][0], dram_gbs[0][1], dram_gbs[1][0], dram_gbs[1][1], dram_gbs[2][0],
        dram_gbs[2][1], dram_gbs[3][0], dram_gbs[3][1]);
  if (json)
    std::printf("\"k\":%lld,\"n\":%lld,\"impl_f32\":\"%s\",\"impl_bf16\":\"%s\",\"rows\":[%s]}\n",
                static_cast<long long>(k), static_cast<long long>(n),
                dk::linear_impl_name(deltamoe::DType::f32),
                dk::linear_impl_name(deltamoe::DType::bf16), rows_json.c_str());
  return 0;
}

}  // namespace

// `micro_kernels --table [--json] [--seconds=S]`: the best-of-N table (S seconds of calls per
// cell, default 0.3); anything else goes to Google Benchmark.
int main(int argc, char** argv) {
  bool table = false, json = false;
  double budget = 0.3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--table")
      table = true;
    else if (a == "--json")
      json = true;
    else if (a.rfind("--seconds=", 0) == 0)
      budget = std::stod(a.substr(10));
  }
  if (table) return run_table(json, budget);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
