// A library baseline for `deltamoe bench moe-layer --onednn`: the experts of an MoE layer as a
// loop of oneDNN matmul primitives over experts (oneDNN has no grouped GEMM; this is its
// equivalent), for a routing computed by our MoeBlock. Benchmark only: the engine does not run
// on it. Built when Debian's libdnnl-dev was found at configure time (DELTAMOE_HAVE_ONEDNN);
// otherwise every entry point says at run time that it was not built.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "deltamoe/core/dtype.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/routing.h"

namespace deltamoe::cli {

/// Whether this build has oneDNN.
bool onednn_available();
/// "oneDNN 2.6.3 (cpu runtime OMP)", or "not built" without it.
std::string onednn_version();

/// SwiGLU experts prepared for oneDNN matmuls. Not thread-safe (one caller at a time; each
/// matmul uses oneDNN's OpenMP threads, num_threads() of them).
class OnednnMoe {
 public:
  /// Prepares the SwiGLU experts of `w` in `dtype`: f32; bf16 (bf16 weights and activations,
  /// f32 results); int8 (s8 weights with one f32 scale per output row, 7 bits without VNNI,
  /// s8 activations with one scale per expert batch, f32 results: what oneDNN 2.x's int8
  /// matmul takes; coarser than our per-32 blocks). Throws Error("onednn") when oneDNN was not
  /// built, for GELU experts, or when oneDNN has no implementation for the dtype on this CPU.
  /// prepacked: weights reordered once into the layout oneDNN chooses (`format_tag::any`) and
  /// one primitive per expert row count, created on first use (oneDNN's blocked AMX / AVX-512
  /// kernels take no run-time sizes; creation is not timed once every row count was seen);
  /// otherwise weights as PyTorch stores them and one primitive with a run-time row count.
  OnednnMoe(const moe::MoeWeights& w, DType dtype, bool prepacked = false);
  ~OnednnMoe();
  OnednnMoe(const OnednnMoe&) = delete;
  OnednnMoe& operator=(const OnednnMoe&) = delete;

  /// y[tokens, H] = Σ_j w_j · E_{e_j}(x) for `routing` (MoeBlock::route of the same x).
  /// x and y are row-major f32 [tokens, H]; y is overwritten.
  void forward(const float* x, int64_t tokens, const moe::RoutingResult& routing, float* y);

  /// The oneDNN implementations chosen, e.g. "up gemm:jit, down gemm:jit".
  std::string impl() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deltamoe::cli
