// Reverse pass: one vector-Jacobian product per op. Each VJP adds into its inputs' gradients
// (which start at zero), so an input used by several ops receives the sum.
#include <algorithm>
#include <cmath>

#include "deltamoe/core/parallel.h"
#include "deltamoe/graph/graph.h"
#include "graph/graph_impl.h"

namespace deltamoe::graph {

Tensor& Graph::grad_of(int32_t id) {
  Node& n = nodes_[static_cast<size_t>(id)];
  if (!n.grad.defined()) {
    if (allocator_)
      n.grad = allocator_->allocate(id, n.op, n.inputs, BufferRole::grad, n.value.shape(), true);
    if (!n.grad.defined()) n.grad = Tensor(n.value.shape());
  }
  return n.grad;
}

void Graph::backward(Var loss, const BackwardRelease* release) {
  DELTAMOE_CHECK(grad_enabled_, "graph", "backward() on a graph built without gradients");
  DELTAMOE_CHECK(value(loss).numel() == 1, "graph", "backward() needs a scalar loss, got ",
                 shape_str(value(loss).shape()));
  for (Node& n : nodes_)
    if (n.op != Op::param) n.grad = Tensor();
  if (!node(loss).requires_grad) return;  // nothing trainable reaches the loss
  if (allocator_) allocator_->begin_backward(*this, loss);
  grad_of(loss.id).data<float>()[0] += 1.0f;
  DELTAMOE_CHECK(!release || (release->values_after.size() == nodes_.size() &&
                              release->grads_after.size() == nodes_.size()),
                 "graph", "backward(): a release plan for ",
                 release ? release->values_after.size() : 0, " tape nodes, the tape has ",
                 nodes_.size());
  // A dropped buffer keeps its shape (gradients are sized from values, the memory planner
  // reads sizes) over no memory: a read of it would fault rather than see stale data.
  auto placeholder = [](const Tensor& t) {
    return t.defined() ? Tensor::wrap(nullptr, t.shape(), t.dtype()) : Tensor();
  };
  auto drop_values = [&](const std::vector<int32_t>& ids) {
    for (const int32_t x : ids) {
      Node& d = nodes_[static_cast<size_t>(x)];
      d.value = placeholder(d.value);
      d.saved = placeholder(d.saved);
    }
  };
  if (release) drop_values(release->values_at_start);
  for (int32_t id = loss.id; id >= 0; --id) {
    const Node& n = nodes_[static_cast<size_t>(id)];
    if (!n.requires_grad || !n.grad.defined() || n.op == Op::param || n.op == Op::input) continue;
    vjp(id);
    if (release) {
      drop_values(release->values_after[static_cast<size_t>(id)]);
      for (const int32_t x : release->grads_after[static_cast<size_t>(id)])
        nodes_[static_cast<size_t>(x)].grad = Tensor();
    }
  }
}

void Graph::vjp(int32_t id) {
  // Copies of the handles (Tensor is a shared view): grad_of() may grow nothing, but keeps
  // the code free of references into nodes_ across calls.
  const Node& n = nodes_[static_cast<size_t>(id)];
  const Tensor dy = n.grad;
  const float* g = dy.data<float>();
  const std::vector<int32_t>& in = n.inputs;
  auto val = [&](int k) -> const Tensor& { return nodes_[static_cast<size_t>(in[k])].value; };

  switch (n.op) {
    case Op::input:
    case Op::param:
      return;

    case Op::rms_norm:
    case Op::rope:
    case Op::causal_attention:
      vjp_decoder(id);
      return;

    case Op::linear: {
      const Tensor& x = val(0);
      const Tensor& w = val(1);
      const int64_t rows = x.size(0), kin = x.size(1), out = w.size(0);
      if (wants(nodes_, in[0]))
        gemm(false, false, rows, kin, out, 1.0f, g, out, w.data<float>(), kin, 1.0f,
             grad_of(in[0]).data<float>(), kin);
      if (wants(nodes_, in[1]))
        gemm(true, false, out, kin, rows, 1.0f, g, out, x.data<float>(), kin, 1.0f,
             grad_of(in[1]).data<float>(), kin);
      if (in.size() > 2 && wants(nodes_, in[2])) {
        float* db = grad_of(in[2]).data<float>();
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < out; ++c) db[c] += g[r * out + c];
      }
      return;
    }

    case Op::gelu: {
      if (!wants(nodes_, in[0])) return;
      gelu_backward(val(0).data<float>(), g, grad_of(in[0]).data<float>(), dy.numel());
      return;
    }

    case Op::relu:
    case Op::silu:
    case Op::softplus:
    case Op::sigmoid:
    case Op::scale: {
      if (!wants(nodes_, in[0])) return;
      const float* x = val(0).data<float>();
      float* dx = grad_of(in[0]).data<float>();
      const Op op = n.op;
      const float s = n.fa;
      for_range(dy.numel(), [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          float d = 0.0f;
          switch (op) {
            case Op::relu:
              d = x[i] > 0.0f ? 1.0f : 0.0f;
              break;
            case Op::silu: {
              const float sg = deltamoe::graph::sigmoid(x[i]);
              d = sg * (1.0f + x[i] * (1.0f - sg));
              break;
            }
            case Op::softplus:
              d = deltamoe::graph::sigmoid(x[i]);
              break;
            case Op::sigmoid: {
              const float sg = deltamoe::graph::sigmoid(x[i]);
              d = sg * (1.0f - sg);
              break;
            }
            default:
              d = s;
              break;
          }
          dx[i] += g[i] * d;
        }
      });
      return;
    }

    case Op::add: {
      for (int k = 0; k < 2; ++k)
        if (wants(nodes_, in[k])) {
          float* da = grad_of(in[k]).data<float>();
          for (int64_t i = 0; i < dy.numel(); ++i) da[i] += g[i];
        }
      return;
    }

    case Op::mul: {
      for (int k = 0; k < 2; ++k)
        if (wants(nodes_, in[k])) {
          const float* other = val(1 - k).data<float>();
          float* da = grad_of(in[k]).data<float>();
          for (int64_t i = 0; i < dy.numel(); ++i) da[i] += g[i] * other[i];
        }
      return;
    }

    case Op::add_rows_tiled: {
      const int64_t rows = dy.size(0), d = dy.size(1), grp = val(1).size(0);
      if (wants(nodes_, in[0])) {
        float* da = grad_of(in[0]).data<float>();
        for (int64_t i = 0; i < dy.numel(); ++i) da[i] += g[i];
      }
      if (wants(nodes_, in[1])) {
        float* db = grad_of(in[1]).data<float>();
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < d; ++c) db[(r % grp) * d + c] += g[r * d + c];
      }
      return;
    }

    case Op::sum:
    case Op::mean: {
      if (!wants(nodes_, in[0])) return;
      Tensor& da = grad_of(in[0]);
      const float s = n.op == Op::sum ? g[0] : g[0] / static_cast<float>(da.numel());
      float* dp = da.data<float>();
      for (int64_t i = 0; i < da.numel(); ++i) dp[i] += s;
      return;
    }

    case Op::mean_cols: {
      if (!wants(nodes_, in[0])) return;
      Tensor& da = grad_of(in[0]);
      const int64_t rows = da.size(0), d = da.size(1);
      const float inv = 1.0f / static_cast<float>(rows);
      float* dp = da.data<float>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < d; ++c) dp[r * d + c] += g[c] * inv;
      return;
    }

    case Op::mean_groups: {
      if (!wants(nodes_, in[0])) return;
      const int64_t grp = n.na, rows = dy.size(0), d = dy.size(1);
      const float inv = 1.0f / static_cast<float>(grp);
      float* dp = grad_of(in[0]).data<float>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < grp; ++k)
          for (int64_t c = 0; c < d; ++c) dp[(r * grp + k) * d + c] += g[r * d + c] * inv;
      return;
    }

    case Op::softmax: {
      if (!wants(nodes_, in[0])) return;
      // dx = y ⊙ (dy − Σ dy·y)
      const float* y = n.value.data<float>();
      const int64_t rows = dy.size(0), d = dy.size(1);
      float* dx = grad_of(in[0]).data<float>();
      for (int64_t r = 0; r < rows; ++r) {
        float dot = 0.0f;
        for (int64_t c = 0; c < d; ++c) dot += g[r * d + c] * y[r * d + c];
        for (int64_t c = 0; c < d; ++c) dx[r * d + c] += y[r * d + c] * (g[r * d + c] - dot);
      }
      return;
    }

    case Op::log_softmax: {
      if (!wants(nodes_, in[0])) return;
      // dx = dy − softmax · Σ dy
      const float* y = n.value.data<float>();
      const int64_t rows = dy.size(0), d = dy.size(1);
      float* dx = grad_of(in[0]).data<float>();
      for (int64_t r = 0; r < rows; ++r) {
        float s = 0.0f;
        for (int64_t c = 0; c < d; ++c) s += g[r * d + c];
        for (int64_t c = 0; c < d; ++c) dx[r * d + c] += g[r * d + c] - std::exp(y[r * d + c]) * s;
      }
      return;
    }

    case Op::cross_entropy: {
      if (!wants(nodes_, in[0])) return;
      const float* p = n.saved.data<float>();
      const int64_t rows = n.saved.size(0), d = n.saved.size(1);
      const float s = g[0] / static_cast<float>(rows);
      float* dx = grad_of(in[0]).data<float>();
      // d/dx of −Σ_c q_c log p_c with target q = (1 − ε)·onehot + ε/d: p − q.
      const float eps = n.fa, uniform = eps / static_cast<float>(d);
      parallel_for(rows, 8, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t c = 0; c < d; ++c) dx[r * d + c] += s * (p[r * d + c] - uniform);
          dx[r * d + n.ia[static_cast<size_t>(r)]] -= s * (1.0f - eps);
        }
      });
      return;
    }

    case Op::layer_norm: {
      const Tensor& x = val(0);
      const float* xp = x.data<float>();
      const float* gamma = val(1).data<float>();
      const float* st = n.saved.data<float>();
      const int64_t rows = x.size(0), d = x.size(1);
      if (wants(nodes_, in[1]) || wants(nodes_, in[2])) {
        float* dg = wants(nodes_, in[1]) ? grad_of(in[1]).data<float>() : nullptr;
        float* db = wants(nodes_, in[2]) ? grad_of(in[2]).data<float>() : nullptr;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < d; ++c) {
            const float xh = (xp[r * d + c] - st[2 * r]) * st[2 * r + 1];
            if (dg) dg[c] += g[r * d + c] * xh;
            if (db) db[c] += g[r * d + c];
          }
      }
      if (wants(nodes_, in[0])) {
        float* dx = grad_of(in[0]).data<float>();
        // dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)), ĝ = dy·γ
        for_range(rows, [&](int64_t r0, int64_t r1) {
          for (int64_t r = r0; r < r1; ++r) {
            const float mu = st[2 * r], rstd = st[2 * r + 1];
            float m1 = 0.0f, m2 = 0.0f;
            for (int64_t c = 0; c < d; ++c) {
              const float gh = g[r * d + c] * gamma[c];
              m1 += gh;
              m2 += gh * (xp[r * d + c] - mu) * rstd;
            }
            m1 /= static_cast<float>(d);
            m2 /= static_cast<float>(d);
            for (int64_t c = 0; c < d; ++c) {
              const float gh = g[r * d + c] * gamma[c];
              const float xh = (xp[r * d + c] - mu) * rstd;
              dx[r * d + c] += rstd * (gh - m1 - xh * m2);
            }
          }
        });
      }
      return;
    }

    case Op::gather_rows: {
      if (!wants(nodes_, in[0])) return;
      const int64_t d = dy.size(1);
      float* dx = grad_of(in[0]).data<float>();
      for (size_t j = 0; j < n.ia.size(); ++j) {
        float* dr = dx + static_cast<int64_t>(n.ia[j]) * d;
        const float* gr = g + static_cast<int64_t>(j) * d;
        for (int64_t c = 0; c < d; ++c) dr[c] += gr[c];
      }
      return;
    }

    case Op::gate_weights: {
      if (!wants(nodes_, in[0])) return;
      // w_j = p_{t,c_j} / D_t with D_t = Σ_{c ∈ S_t ∪ X_t} p_{t,c}:
      //   ∂L/∂p_{t,c} = [c ∈ S_t]·dw_c / D_t − [c ∈ S_t ∪ X_t]·Σ_j dw_j·w_j / D_t.
      const Tensor& p = val(0);
      const int64_t tokens = p.size(0), c_all = p.size(1);
      const float* w = n.value.data<float>();
      const float* den = n.saved.data<float>();
      float* dp = grad_of(in[0]).data<float>();
      const bool renorm = n.na != 0;
      const bool has_extra = !n.ic.empty();
      for (int64_t t = 0; t < tokens; ++t) {
        float dot = 0.0f;
        for (int32_t j = n.ia[t]; j < n.ia[t + 1]; ++j) {
          dp[t * c_all + n.ib[j]] += g[j] / den[t];
          dot += g[j] * w[j];
        }
        if (!renorm) continue;
        const float corr = dot / den[t];
        for (int32_t j = n.ia[t]; j < n.ia[t + 1]; ++j) dp[t * c_all + n.ib[j]] -= corr;
        if (has_extra)
          for (int32_t j = n.ic[t]; j < n.ic[t + 1]; ++j) dp[t * c_all + n.id[j]] -= corr;
      }
      return;
    }

    case Op::scatter_add_rows: {
      const int64_t d = dy.size(1);
      if (wants(nodes_, in[0])) {
        float* db = grad_of(in[0]).data<float>();
        for (int64_t i = 0; i < dy.numel(); ++i) db[i] += g[i];
      }
      const bool want_v = wants(nodes_, in[1]), want_w = wants(nodes_, in[2]);
      if (!want_v && !want_w) return;
      const float* v = val(1).data<float>();
      const float* w = val(2).data<float>();
      float* dv = want_v ? grad_of(in[1]).data<float>() : nullptr;
      float* dw = want_w ? grad_of(in[2]).data<float>() : nullptr;
      for (size_t j = 0; j < n.ia.size(); ++j) {
        const float* gr = g + static_cast<int64_t>(n.ia[j]) * d;
        const float* vr = v + static_cast<int64_t>(j) * d;
        const float s = w[n.ib[j]];
        if (dv) {
          float* dvr = dv + static_cast<int64_t>(j) * d;
          for (int64_t c = 0; c < d; ++c) dvr[c] += s * gr[c];
        }
        if (dw) {
          float dot = 0.0f;
          for (int64_t c = 0; c < d; ++c) dot += gr[c] * vr[c];
          dw[n.ib[j]] += dot;
        }
      }
      return;
    }

    case Op::dot_const: {
      if (!wants(nodes_, in[0])) return;
      float* da = grad_of(in[0]).data<float>();
      const float* c = n.saved.data<float>();
      for (int64_t i = 0; i < n.saved.numel(); ++i) da[i] += g[0] * c[i];
      return;
    }

    case Op::cv_squared: {
      if (!wants(nodes_, in[0])) return;
      // cv² = V/(μ²+ε), V = mean((a−μ)²): ∂V/∂a_i = 2(a_i−μ)/k, ∂μ/∂a_i = 1/k.
      const Tensor& a = val(0);
      const int64_t k = a.numel();
      const float* ap = a.data<float>();
      double mu = 0.0;
      for (int64_t i = 0; i < k; ++i) mu += ap[i];
      mu /= static_cast<double>(k);
      double var = 0.0;
      for (int64_t i = 0; i < k; ++i) var += (ap[i] - mu) * (ap[i] - mu);
      var /= static_cast<double>(k);
      const double den = mu * mu + 1e-10;
      float* da = grad_of(in[0]).data<float>();
      for (int64_t i = 0; i < k; ++i) {
        const double dv = 2.0 * (ap[i] - mu) / static_cast<double>(k);
        const double dden = 2.0 * mu / static_cast<double>(k);
        da[i] += static_cast<float>(g[0] * (dv / den - var * dden / (den * den)));
      }
      return;
    }

    case Op::scatter_cols: {
      if (!wants(nodes_, in[0])) return;
      float* dw = grad_of(in[0]).data<float>();
      for (size_t j = 0; j < n.ia.size(); ++j) dw[j] += g[n.ia[j]];
      return;
    }

    case Op::noisy_load: {
      // load_c = Σ_t Φ(z_tc), z = (clean − thr)/std: ∂z/∂clean = 1/std, ∂z/∂std = −z/std.
      const Tensor& z = n.saved;
      const float* zp = z.data<float>();
      const float* sp = val(2).data<float>();
      const int64_t tokens = z.size(0), c_all = z.size(1);
      float* dc = wants(nodes_, in[0]) ? grad_of(in[0]).data<float>() : nullptr;
      float* ds = wants(nodes_, in[2]) ? grad_of(in[2]).data<float>() : nullptr;
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t c = 0; c < c_all; ++c) {
          const int64_t i = t * c_all + c;
          const float base = g[c] * normal_pdf(zp[i]) / sp[i];
          if (dc) dc[i] += base;
          if (ds) ds[i] -= base * zp[i];
        }
      return;
    }
  }
}

}  // namespace deltamoe::graph
