// The decoder (language-model) ops of the tape: RMSNorm, RoPE and causal grouped-query
// attention, forward through the inference kernels (kernels/llm.h) so that a model trained
// here computes what `generate` computes, and their VJPs (tests/unit/test_graph_decoder.cpp
// checks each against finite differences and the forward against naive formulas).
#include <algorithm>
#include <cmath>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/graph/graph.h"
#include "deltamoe/kernels/llm.h"
#include "graph/graph_impl.h"

namespace deltamoe::graph {

namespace {

// 1 / √(mean(x²) + eps) of one row, the mean accumulated in double as the kernel does.
float rms_scale(const float* x, int64_t d, float eps) {
  double ss = 0.0;
  for (int64_t c = 0; c < d; ++c) ss += static_cast<double>(x[c]) * x[c];
  return 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
}

}  // namespace

Var Graph::rms_norm(Var x, Var w, float eps) {
  const Tensor& xv = value(x);
  DELTAMOE_CHECK(xv.dim() == 2 && value(w).numel() == xv.size(1), "graph", "rms_norm: x ",
                 shape_str(xv.shape()), " w ", shape_str(value(w).shape()));
  DELTAMOE_CHECK(eps > 0.0f, "graph", "rms_norm: eps must be > 0, got ", eps);
  const int64_t rows = xv.size(0), d = xv.size(1);
  Tensor y = alloc(Op::rms_norm, {x.id, w.id}, BufferRole::value, xv.shape());
  kernels::rms_norm_rows_st(xv.data<float>(), value(w).data<float>(), y.data<float>(), rows, d, d,
                            eps);
  Node n;
  n.op = Op::rms_norm;
  n.inputs = {x.id, w.id};
  n.fa = eps;
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::rope(Var x, int64_t head_dim, int64_t seq_len, double theta) {
  const Tensor& xv = value(x);
  DELTAMOE_CHECK(xv.dim() == 2 && head_dim > 0 && head_dim % 2 == 0 && xv.size(1) % head_dim == 0,
                 "graph", "rope: x ", shape_str(xv.shape()), " head_dim ", head_dim,
                 " (even, dividing the width)");
  DELTAMOE_CHECK(seq_len > 0 && xv.size(0) % seq_len == 0, "graph", "rope: ", xv.size(0),
                 " rows are not whole sequences of ", seq_len);
  DELTAMOE_CHECK(theta > 0.0, "graph", "rope: theta must be > 0, got ", theta);
  const int64_t rows = xv.size(0), width = xv.size(1), heads = width / head_dim;
  kernels::RopeTable table(head_dim, theta);
  table.ensure(seq_len);
  Tensor y = alloc(Op::rope, {x.id}, BufferRole::value, xv.shape());
  const float* xp = xv.data<float>();
  float* yp = y.data<float>();
  std::copy(xp, xp + rows * width, yp);
  for (int64_t r = 0; r < rows; ++r) kernels::rope_st(yp + r * width, heads, table, r % seq_len);
  Node n;
  n.op = Op::rope;
  n.inputs = {x.id};
  n.na = head_dim;
  n.ia = {static_cast<int32_t>(seq_len)};
  n.fa = static_cast<float>(theta);
  DELTAMOE_CHECK(static_cast<double>(n.fa) == theta, "graph", "rope: theta ", theta,
                 " is not exact in f32");
  n.value = std::move(y);
  return push(std::move(n));
}

Var Graph::causal_attention(Var q, Var k, Var v, int64_t heads, int64_t kv_heads, int64_t seq_len) {
  const Tensor &qv = value(q), &kv = value(k), &vv = value(v);
  DELTAMOE_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "graph",
                 "causal_attention: ", heads, " heads are not a multiple of ", kv_heads,
                 " kv heads");
  DELTAMOE_CHECK(qv.dim() == 2 && qv.size(1) % heads == 0, "graph", "causal_attention: q ",
                 shape_str(qv.shape()), " for ", heads, " heads");
  const int64_t rows = qv.size(0), d = qv.size(1) / heads;
  DELTAMOE_CHECK(kv.dim() == 2 && vv.dim() == 2 && kv.size(0) == rows && vv.size(0) == rows &&
                     kv.size(1) == kv_heads * d && vv.size(1) == kv_heads * d,
                 "graph", "causal_attention: q ", shape_str(qv.shape()), " k ",
                 shape_str(kv.shape()), " v ", shape_str(vv.shape()), " for ", heads, "/", kv_heads,
                 " heads of ", d);
  DELTAMOE_CHECK(seq_len > 0 && rows % seq_len == 0, "graph", "causal_attention: ", rows,
                 " rows are not whole sequences of ", seq_len);
  Tensor y = alloc(Op::causal_attention, {q.id, k.id, v.id}, BufferRole::value, qv.shape());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t ldq = heads * d, ldkv = kv_heads * d;
  for (int64_t s = 0; s < rows / seq_len; ++s) {
    const int64_t r0 = s * seq_len;
    kernels::causal_attention(qv.data<float>() + r0 * ldq, ldq, kv.data<float>() + r0 * ldkv,
                              vv.data<float>() + r0 * ldkv, ldkv, y.data<float>() + r0 * ldq, ldq,
                              seq_len, 0, heads, kv_heads, d, scale);
  }
  Node n;
  n.op = Op::causal_attention;
  n.inputs = {q.id, k.id, v.id};
  n.ia = {static_cast<int32_t>(heads), static_cast<int32_t>(kv_heads),
          static_cast<int32_t>(seq_len)};
  n.value = std::move(y);
  return push(std::move(n));
}

void Graph::vjp_decoder(int32_t id) {
  const Node& n = nodes_[static_cast<size_t>(id)];
  const Tensor dy = n.grad;
  const float* g = dy.data<float>();
  const std::vector<int32_t>& in = n.inputs;
  auto val = [&](int k) -> const Tensor& { return nodes_[static_cast<size_t>(in[k])].value; };

  switch (n.op) {
    case Op::rms_norm: {
      // y = x·r·w, r = (mean(x²) + eps)^(−1/2):
      //   dx = r·(dy·w) − x·r³/d · Σ(dy·w·x),  dw = Σ_rows dy·x·r
      const float* xp = val(0).data<float>();
      const float* w = val(1).data<float>();
      const int64_t rows = val(0).size(0), d = val(0).size(1);
      float* dx = wants(nodes_, in[0]) ? grad_of(in[0]).data<float>() : nullptr;
      float* dw = wants(nodes_, in[1]) ? grad_of(in[1]).data<float>() : nullptr;
      for (int64_t r = 0; r < rows; ++r) {
        const float* x = xp + r * d;
        const float* gr = g + r * d;
        const float s = rms_scale(x, d, n.fa);
        if (dw)
          for (int64_t c = 0; c < d; ++c) dw[c] += gr[c] * x[c] * s;
        if (dx) {
          double dot = 0.0;
          for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(gr[c]) * w[c] * x[c];
          const float k = static_cast<float>(dot) * s * s * s / static_cast<float>(d);
          for (int64_t c = 0; c < d; ++c) dx[r * d + c] += s * gr[c] * w[c] - k * x[c];
        }
      }
      return;
    }

    case Op::rope: {
      // A rotation by the position's angles: its VJP rotates dy back (by the negated angles).
      if (!wants(nodes_, in[0])) return;
      const int64_t head_dim = n.na, seq_len = n.ia[0], half = head_dim / 2;
      const int64_t rows = dy.size(0), width = dy.size(1), heads = width / head_dim;
      kernels::RopeTable table(head_dim, static_cast<double>(n.fa));
      table.ensure(seq_len);
      float* dx = grad_of(in[0]).data<float>();
      for (int64_t r = 0; r < rows; ++r) {
        const float* c = table.cos(r % seq_len);
        const float* sn = table.sin(r % seq_len);
        for (int64_t h = 0; h < heads; ++h) {
          const float* d1 = g + r * width + h * head_dim;
          float* o = dx + r * width + h * head_dim;
          for (int64_t i = 0; i < half; ++i) {
            o[i] += d1[i] * c[i] + d1[i + half] * sn[i];
            o[i + half] += d1[i + half] * c[i] - d1[i] * sn[i];
          }
        }
      }
      return;
    }

    case Op::causal_attention: {
      const int64_t heads = n.ia[0], kv_heads = n.ia[1], seq_len = n.ia[2];
      const Tensor &q = val(0), &k = val(1), &v = val(2);
      const int64_t rows = q.size(0), d = q.size(1) / heads, group = heads / kv_heads;
      const int64_t ldq = heads * d, ldkv = kv_heads * d, T = seq_len;
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      float* dq = wants(nodes_, in[0]) ? grad_of(in[0]).data<float>() : nullptr;
      float* dk = wants(nodes_, in[1]) ? grad_of(in[1]).data<float>() : nullptr;
      float* dv = wants(nodes_, in[2]) ? grad_of(in[2]).data<float>() : nullptr;
      std::vector<float> p(static_cast<size_t>(T * T)), dp(static_cast<size_t>(T * T));
      for (int64_t s = 0; s < rows / T; ++s) {
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t kvh = h / group;
          const float* qh = q.data<float>() + s * T * ldq + h * d;
          const float* kh = k.data<float>() + s * T * ldkv + kvh * d;
          const float* vh = v.data<float>() + s * T * ldkv + kvh * d;
          const float* go = g + s * T * ldq + h * d;
          // P = softmax(scale·Q·Kᵀ) with the causal mask, recomputed.
          gemm(false, true, T, T, d, scale, qh, ldq, kh, ldkv, 0.0f, p.data(), T);
          for (int64_t i = 0; i < T; ++i) {
            float* pr = p.data() + i * T;
            float mx = pr[0];
            for (int64_t j = 1; j <= i; ++j) mx = std::max(mx, pr[j]);
            double sum = 0.0;
            for (int64_t j = 0; j <= i; ++j) {
              pr[j] = std::exp(pr[j] - mx);
              sum += pr[j];
            }
            const float inv = static_cast<float>(1.0 / sum);
            for (int64_t j = 0; j <= i; ++j) pr[j] *= inv;
            for (int64_t j = i + 1; j < T; ++j) pr[j] = 0.0f;
          }
          // dV += Pᵀ·dO
          if (dv)
            gemm(true, false, T, d, T, 1.0f, p.data(), T, go, ldq, 1.0f,
                 dv + s * T * ldkv + kvh * d, ldkv);
          if (!dq && !dk) continue;
          // dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P))
          gemm(false, true, T, T, d, 1.0f, go, ldq, vh, ldkv, 0.0f, dp.data(), T);
          for (int64_t i = 0; i < T; ++i) {
            float* pr = p.data() + i * T;
            float* dr = dp.data() + i * T;
            double dot = 0.0;
            for (int64_t j = 0; j <= i; ++j) dot += static_cast<double>(dr[j]) * pr[j];
            for (int64_t j = 0; j < T; ++j)
              dr[j] = j <= i ? pr[j] * (dr[j] - static_cast<float>(dot)) : 0.0f;
          }
          // dQ += scale·dS·K,  dK += scale·dSᵀ·Q
          if (dq)
            gemm(false, false, T, d, T, scale, dp.data(), T, kh, ldkv, 1.0f,
                 dq + s * T * ldq + h * d, ldq);
          if (dk)
            gemm(true, false, T, d, T, scale, dp.data(), T, qh, ldq, 1.0f,
                 dk + s * T * ldkv + kvh * d, ldkv);
        }
      }
      return;
    }

    default:
      DELTAMOE_ASSERT(false, "vjp_decoder on ", op_name(n.op));
  }
}

}  // namespace deltamoe::graph
