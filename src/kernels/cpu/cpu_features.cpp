#include "deltamoe/kernels/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdio>
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
  unsigned a = 0, b = 0, c = 0, d = 0;
  // Vendor string in ebx, edx, ecx: "Genu" "ineI" "ntel".
  if (__get_cpuid(0, &a, &b, &c, &d))
    f.intel = b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;
  // F16C from CPUID (clang's __builtin_cpu_supports does not know "f16c").
  if (__get_cpuid(1, &a, &b, &c, &d)) f.f16c = (c >> 29) & 1;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx512_vnni = (c >> 11) & 1;
    f.amx_bf16 = (d >> 22) & 1;
    f.amx_tile = (d >> 24) & 1;
    f.amx_int8 = (d >> 25) & 1;
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx_vnni = (a >> 4) & 1;
  if (f.amx_tile) {
    // Linux (5.16+) hands out the 8 KiB tile state only on request, per process.
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    f.amx_permitted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
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

// Applies DELTAMOE_ISA (or the older DELTAMOE_DISABLE_AVX512=1) to the detected features.
CpuFeatures capped(CpuFeatures f) {
  std::string cap;
  if (const char* isa = std::getenv("DELTAMOE_ISA"); isa != nullptr && *isa != '\0') {
    cap = isa;
    if (cap != "portable" && cap != "avx2" && cap != "avx512") {
      std::fprintf(stderr,
                   "deltamoe: warning: [cpu] DELTAMOE_ISA=%s ignored (expected portable, avx2 or "
                   "avx512)\n",
                   isa);
      cap.clear();
    }
  } else if (const char* off = std::getenv("DELTAMOE_DISABLE_AVX512");
             off != nullptr && std::string(off) == "1") {
    cap = "avx2";
  }
  f.isa_cap = cap;
  if (cap.empty()) return f;
  f.amx_tile = f.amx_bf16 = f.amx_int8 = f.amx_permitted = false;
  if (cap == "avx512") return f;
  f.avx512f = f.avx512bw = f.avx512vl = f.avx512_bf16 = f.avx512_vnni = false;
  if (cap == "avx2") return f;
  f.avx2 = f.fma = f.f16c = f.avx_vnni = false;
  return f;
}
}  // namespace

const CpuFeatures& cpu_features_detected() {
  static const CpuFeatures features = detect();
  return features;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = capped(cpu_features_detected());
  return features;
}

}  // namespace deltamoe
