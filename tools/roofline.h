// Machine ceilings measured in the same run as a benchmark (these machines are noisy, so a
// ratio is only meaningful against a ceiling measured beside it).
#pragma once

#include <cstddef>
#include <cstdint>

#include "deltamoe/core/tensor.h"

namespace deltamoe::cli {

/// Bytes that evict the last-level cache: twice its size as the OS reports it, rounded up to
/// 2 MiB, between 96 MiB and 2 GiB. (A VM on a large server may report a shared L3 of hundreds
/// of MiB; a smaller buffer leaves part of it in that cache and flatters a bandwidth figure.)
size_t llc_flush_bytes();

/// Times single read passes of a given size over fresh (not cached) memory, for comparing a
/// memory-bound step with a plain stream of the same bytes measured right beside it.
/// Not thread-safe; one per benchmark.
class StreamProbe {
 public:
  /// Allocates and touches `buffer_bytes` (should be many times the last-level cache).
  explicit StreamProbe(size_t buffer_bytes);
  /// The DRAM probe: a buffer of max(512 MiB, llc_flush_bytes()), so that a pass over it
  /// cannot be served from the last-level cache.
  StreamProbe();
  StreamProbe(const StreamProbe&) = delete;
  StreamProbe& operator=(const StreamProbe&) = delete;
  /// Seconds to read the next `bytes` of the buffer (wrapping around) on `threads` threads,
  /// each reading a contiguous share, as one parallel region.
  double time_pass_s(size_t bytes, int threads);
  /// DRAM read bandwidth in GB/s (1e9 bytes/s): the best of `repeats` passes over the whole
  /// buffer on `threads` threads.
  double best_pass_gbps(int threads, int repeats = 3);

 private:
  Storage storage_;  // 2 MiB pages, like the weights
  float* buf_;
  size_t n_;  // floats
  size_t offset_ = 0;
};

/// Peak of `vdpbf16ps` in GFLOP/s (64 flops per instruction) on `threads` threads, from a
/// register-only loop; 0 when the CPU has no AVX-512 BF16.
double measure_bf16_dot_peak_gflops(int threads);
/// Peak of AMX-BF16 `tdpbf16ps` in GFLOP/s (16 x 16 x 32 multiply-adds per instruction) on
/// `threads` threads, from a register-only loop; 0 when linear_st does not use AMX here.
double measure_amx_bf16_peak_gflops(int threads);
/// Peak of f32 FMA in GFLOP/s from a register-only loop: zmm (32 flops per instruction) on
/// AVX-512 CPUs, ymm (16) on AVX2 + FMA ones; 0 without either.
double measure_fma_peak_gflops(int threads);
/// Peak of the int8 kernels' block step (vpmaddubsw + vpmaddwd + convert + FMA, AVX2), in
/// GOP/s counting 2 per multiply-add, on `threads` threads; 0 without AVX2 + FMA.
double measure_int8_dot_peak_gops(int threads);

}  // namespace deltamoe::cli
