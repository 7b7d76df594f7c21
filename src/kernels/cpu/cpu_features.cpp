#include "deltamoe/kernels/cpu_features.h"

#include <cstdlib>
#include <fstream>
#include <string>

namespace deltamoe {

namespace {
CpuFeatures detect() {
  CpuFeatures f;
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
#if defined(__GNUC__) && __GNUC__ >= 12
  f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  const char* off = std::getenv("DELTAMOE_DISABLE_AVX512");
  if (off != nullptr && std::string(off) == "1") {
    f.avx512f = f.avx512bw = f.avx512vl = f.avx512_bf16 = false;
  }
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto pos = line.find(':');
      if (pos != std::string::npos) f.model_name = line.substr(pos + 2);
      break;
    }
  }
  if (f.model_name.empty()) f.model_name = "unknown";
  return f;
}
}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace deltamoe
