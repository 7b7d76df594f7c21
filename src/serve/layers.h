// Private to serve/: the packed linear layer both serving models use, row-independent so
// that batched and unbatched answers agree (GELU and LayerNorm are kernels::gelu_st and
// kernels::layer_norm_rows_st).
#pragma once

#include <cstdint>
#include <vector>

#include "deltamoe/kernels/cpu.h"

namespace deltamoe::serve::detail {

/// y[m, out] = x[m, in] · Wᵀ + b through the engine's packed f32 kernels (weights packed
/// once, so a single row pays no packing cost). Each row is computed independently.
struct PackedLayer {
  std::vector<float> w, b;  // W[out, in] (PyTorch layout), b[out]
  kernels::PackedLinear packed;
  int64_t out = 0, in = 0;
  /// Takes W[out, in] and b[out] (b may be empty: no bias) and packs W.
  void set(std::vector<float> weight, std::vector<float> bias, int64_t out_features, int64_t in_features);
  void apply(const float* x, int64_t m, float* y) const;
};

}  // namespace deltamoe::serve::detail
