// `deltamoe info [--json]`: the build (compiler, optional parts, OpenBLAS), the CPU features
// detected and those used after any DELTAMOE_ISA cap, and which implementation each hot
// kernel runs on this CPU.
#include <cblas.h>

#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "command.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/dist/communicator.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "deltamoe/kernels/llm.h"
#include "deltamoe/serve/http_frontend.h"
#include "onednn_moe.h"

namespace {

using json = nlohmann::json;

json features_json(const deltamoe::CpuFeatures& f) {
  return {{"avx2", f.avx2},
          {"fma", f.fma},
          {"f16c", f.f16c},
          {"avx512f", f.avx512f},
          {"avx512bw", f.avx512bw},
          {"avx512vl", f.avx512vl},
          {"avx512_bf16", f.avx512_bf16},
          {"avx512_vnni", f.avx512_vnni},
          {"avx_vnni", f.avx_vnni},
          {"amx_tile", f.amx_tile},
          {"amx_bf16", f.amx_bf16},
          {"amx_int8", f.amx_int8},
          {"amx_permitted_by_os", f.amx_permitted}};
}

std::string features_line(const json& j) {
  std::string out;
  for (const auto& [name, on] : j.items())
    if (on.get<bool>()) out += (out.empty() ? "" : " ") + name;
  return out.empty() ? "(none of the ones deltamoe uses)" : out;
}

json info_json() {
  using deltamoe::DType;
  namespace dk = deltamoe::kernels;
  const auto& used = deltamoe::cpu_features();
  const auto& detected = deltamoe::cpu_features_detected();
  json build = {
    {"version", "0.1.0"},
    {"compiler", std::string("GCC-compatible ") + __VERSION__},
#ifdef NDEBUG
    {"build_type", "release"},
#else
    {"build_type", "debug (assertions on)"},
#endif
#if defined(__SANITIZE_ADDRESS__)
    {"sanitizers", "address"},
#else
    {"sanitizers", "none"},
#endif
#ifdef DELTAMOE_HAVE_CBC
    {"ilp_solver", "COIN-OR CBC"},
#else
    {"ilp_solver", "not built"},
#endif
    {"http_server", deltamoe::serve::http_frontend_available() ? "libmicrohttpd" : "not built"},
    {"onednn", deltamoe::cli::onednn_version()},
    {"mpi", deltamoe::dist::mpi_library_version()},
#ifdef DELTAMOE_PYTHON_DIR
    {"python_package", std::string("deltamoe_sched in ") + DELTAMOE_PYTHON_DIR},
#else
    {"python_package", "not built"},
#endif
    {"cuda", "not part of this version"},
    {"openblas", std::string(openblas_get_config())},
    {"openblas_core", std::string(openblas_get_corename())}
  };
  json kernels = {
      {"linear_packed_f32", dk::linear_impl_name(DType::f32)},
      {"linear_packed_bf16", dk::linear_impl_name(DType::bf16)},
      {"linear_row_major_f32", dk::linear_row_major_impl_name(DType::f32)},
      {"linear_row_major_bf16", dk::linear_row_major_impl_name(DType::bf16)},
      {"linear_int8", dk::linear_row_major_impl_name(DType::int8)},
      {"one_row_prefetch", std::string(dk::one_row_prefetch() ? "on" : "off") +
                               " (the dot kernels read weights ahead in software at one row of x; "
                               "default on for Intel CPUs, DELTAMOE_ONE_ROW_PREFETCH=0|1)"},
      {"elementwise_ops", dk::ops_impl_name()},
      {"attention", dk::attention_impl_name()}};
  return {{"build", build},
          {"cpu", used.model_name},
          {"cpu_features_detected", features_json(detected)},
          {"isa_cap", used.isa_cap.empty() ? json(nullptr) : json(used.isa_cap)},
          {"cpu_features_used", features_json(used)},
          {"threads_default", deltamoe::num_threads()},
          {"kernels", kernels}};
}

deltamoe::cli::CommandRegistrar reg(
    "info",
    "Print the build, the CPU features found (and used, after DELTAMOE_ISA) and the kernel each "
    "hot operation runs",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto as_json = std::make_shared<bool>(false);
      app.add_flag("--json", *as_json, "Print one JSON object on stdout");
      return [as_json]() {
        const json j = info_json();
        if (*as_json) {
          std::cout << j.dump(2) << "\n";
          return 0;
        }
        const json& b = j["build"];
        std::cout << "deltamoe " << b["version"].get<std::string>() << " ("
                  << b["build_type"].get<std::string>() << ", " << b["compiler"].get<std::string>()
                  << ")\n"
                  << "cpu: " << j["cpu"].get<std::string>() << "\n"
                  << "  found: " << features_line(j["cpu_features_detected"]) << "\n";
        if (!j["isa_cap"].is_null())
          std::cout << "  DELTAMOE_ISA=" << j["isa_cap"].get<std::string>()
                    << ", used: " << features_line(j["cpu_features_used"]) << "\n";
        std::cout << "threads: " << j["threads_default"].get<int>() << " by default (--threads)\n"
                  << "kernels:\n";
        for (const auto& [name, impl] : j["kernels"].items())
          std::cout << "  " << name << ": " << impl.get<std::string>() << "\n";
        std::cout << "openblas: " << b["openblas"].get<std::string>() << " (core "
                  << b["openblas_core"].get<std::string>() << ")\n"
                  << "ilp solver: " << b["ilp_solver"].get<std::string>() << "\n"
                  << "http server: " << b["http_server"].get<std::string>() << "\n"
                  << "onednn (bench baseline): " << b["onednn"].get<std::string>() << "\n"
                  << "mpi (--parallel): " << b["mpi"].get<std::string>() << "\n"
                  << "python package: " << b["python_package"].get<std::string>() << "\n"
                  << "sanitizers: " << b["sanitizers"].get<std::string>() << "\n";
        return 0;
      };
    });

}  // namespace
