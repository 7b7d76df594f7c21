// CPU feature detection (run time), used to pick kernels.
#pragma once

#include <string>

namespace deltamoe {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  std::string model_name;  // from /proc/cpuinfo when available
};

/// Features of the CPU this process runs on (detected once, thread-safe).
/// Setting the environment variable DELTAMOE_DISABLE_AVX512=1 reports no AVX-512, which
/// forces the portable kernels (used by tests to cover the fallback path).
const CpuFeatures& cpu_features();

}  // namespace deltamoe
