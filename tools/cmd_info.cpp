// `deltamoe info`: build configuration and CPU features.
#include <iostream>

#include "command.h"
#include "deltamoe/kernels/cpu_features.h"

namespace {
deltamoe::cli::CommandRegistrar reg("info", "Print build options and the CPU features deltamoe uses",
  [](CLI::App& app) -> deltamoe::cli::Action {
    return []() {
      const auto& f = deltamoe::cpu_features();
      std::cout << "deltamoe 0.1.0\n"
                << "cpu: " << f.model_name << "\n"
                << "avx2: " << f.avx2 << "  fma: " << f.fma << "  avx512f: " << f.avx512f
                << "  avx512_bf16: " << f.avx512_bf16 << "\n"
#ifdef DELTAMOE_HAVE_CBC
                << "ilp solver: COIN-OR CBC\n"
#else
                << "ilp solver: not built\n"
#endif
          ;
      return 0;
    };
  });
}  // namespace
