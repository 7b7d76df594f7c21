// CPU feature detection (run time), used to pick kernels.
#pragma once

#include <string>

namespace deltamoe {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;  // vcvtph2ps: the int8 kernels' f16 block scales
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  // AVX-512 VNNI, AVX-VNNI and the AMX tile extensions, as CPUID says.
  bool avx512_vnni = false;
  bool avx_vnni = false;
  bool amx_tile = false;
  bool amx_bf16 = false;
  bool amx_int8 = false;
  /// Linux granted this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM for
  /// XTILEDATA, requested once at detection when CPUID has amx_tile). Without it the first
  /// tile instruction would kill the process, so AMX kernels need this as well.
  bool amx_permitted = false;
  /// CPUID vendor "GenuineIntel". Its L2 streamer does not follow a stream across 4 KiB pages,
  /// so the single-stream decode kernels read ahead in software there (one_row_prefetch()).
  bool intel = false;
  std::string model_name;  // from /proc/cpuinfo when available
  /// The cap set by DELTAMOE_ISA ("portable", "avx2", "avx512"), empty when none.
  std::string isa_cap;
};

/// Features of the CPU this process runs on (detected once, thread-safe).
/// The environment variable DELTAMOE_ISA caps what is reported, so that kernels take a lower
/// path (for comparisons and for tests of the fallbacks): `avx512` (no AMX), `avx2` (no
/// AVX-512 either), `portable` (no AVX2/FMA either). DELTAMOE_DISABLE_AVX512=1 is the older
/// spelling of DELTAMOE_ISA=avx2. Another value is ignored with a warning on stderr.
const CpuFeatures& cpu_features();
/// The features before any DELTAMOE_ISA cap.
const CpuFeatures& cpu_features_detected();

}  // namespace deltamoe
