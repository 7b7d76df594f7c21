// Serving building blocks (see layers.h).
#include "serve/layers.h"

#include <algorithm>
#include <cmath>

#include "deltamoe/core/error.h"
#include "deltamoe/core/tensor.h"
#include "deltamoe/kernels/cpu.h"

namespace deltamoe::serve::detail {

void PackedLayer::set(std::vector<float> weight, std::vector<float> bias, int64_t out_features,
                      int64_t in_features) {
  DELTAMOE_CHECK(static_cast<int64_t>(weight.size()) == out_features * in_features &&
                     (bias.empty() || static_cast<int64_t>(bias.size()) == out_features),
                 "serve", "layer weights do not match ", out_features, "x", in_features);
  w = std::move(weight);
  b = std::move(bias);
  out = out_features;
  in = in_features;
  packed = kernels::PackedLinear(Tensor::wrap(w.data(), {out, in}, DType::f32), DType::f32);
}

void PackedLayer::apply(const float* x, int64_t m, float* y) const {
  if (b.empty()) {
    kernels::linear_st(x, m, in, packed, 0, out, y, out, /*accumulate=*/false);
    return;
  }
  for (int64_t r = 0; r < m; ++r) std::copy(b.begin(), b.end(), y + r * out);
  kernels::linear_st(x, m, in, packed, 0, out, y, out, /*accumulate=*/true);
}

}  // namespace deltamoe::serve::detail
