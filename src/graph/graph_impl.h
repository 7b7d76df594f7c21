// Private helpers shared by the graph builders and their VJPs.
#pragma once

#include <cstdint>

namespace deltamoe::graph {

float gelu_fwd(float x);
/// d gelu / dx.
float gelu_grad(float x);
float sigmoid(float x);
float softplus_fwd(float x);
float normal_cdf(float x);
float normal_pdf(float x);
/// Row-major C = alpha·op(A)·op(B) + beta·C through OpenBLAS; empty shapes are no-ops.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace deltamoe::graph
