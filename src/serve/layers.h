// Private to serve/: the building blocks both serving models use (a packed linear layer,
// GELU, LayerNorm), row-independent so that batched and unbatched answers agree.
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

/// Exact-erf GELU, 0.5·x·(1 + erf(x/√2)), in place. With AVX-512 the erf is a vectorised
/// rational/exponential approximation (absolute error ≤ 2e-7, i.e. within a few float ulps
/// of std::erf for the results); otherwise std::erf. Element-wise, so row-independent.
void gelu_inplace(float* x, int64_t n);

/// Row-wise LayerNorm of x[rows, d] into y with γ, β (eps 1e-5, biased variance; the same
/// arithmetic order as the training graph's layer_norm).
void layer_norm_rows(const float* x, int64_t rows, int64_t d, const float* gamma, const float* beta,
                     float* y, float eps = 1e-5f);

}  // namespace deltamoe::serve::detail
