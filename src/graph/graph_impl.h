// Private helpers shared by the graph builders and their VJPs.
#pragma once

#include <cstdint>

#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/graph/graph.h"

namespace deltamoe::graph {

/// Runs fn(0, n) on the calling thread. The element-wise ops are memory-bound and short;
/// opening OpenMP regions for them left OpenMP threads spin-waiting against OpenBLAS's own
/// threads, which made a training step 10x slower on a loaded 2-core machine. The GEMMs
/// (OpenBLAS threads) carry the parallelism instead.
template <typename F>
inline void for_range(int64_t n, F&& fn) {
  if (n > 0) fn(int64_t{0}, n);
}

/// An f32 tensor whose contents are undefined (not zero-filled), 64-byte aligned: for op
/// outputs that are overwritten entirely (zero-filling them was 4-9% of a step).
Tensor uninit_tensor(const Shape& shape);
/// y[i] = gelu(x[i]) for n elements (kernels::gelu_st).
void gelu_forward(const float* x, float* y, int64_t n);
/// dx[i] += dy[i]·gelu'(x[i]) for n elements (kernels::gelu_grad_acc_st).
void gelu_backward(const float* x, const float* dy, float* dx, int64_t n);
float sigmoid(float x);
float softplus_fwd(float x);
float normal_cdf(float x);
float normal_pdf(float x);
/// True when tape node i exists and needs a gradient (an input of a VJP that flows into it).
inline bool wants(const std::vector<Node>& nodes, int32_t i) {
  return i >= 0 && nodes[static_cast<size_t>(i)].requires_grad;
}
/// Row-major C = alpha·op(A)·op(B) + beta·C through OpenBLAS; empty shapes are no-ops.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace deltamoe::graph
