// oneDNN baseline of the MoE layer's experts (onednn_moe.h): per expert, gather its rows,
// gate and up matmuls, SwiGLU, down matmul, weighted scatter-add. One matmul primitive per
// weight shape with a run-time row count (DNNL_RUNTIME_DIM_VAL), created once; weights in
// PyTorch's [N, K] row-major layout (oneDNN's `ba` for a K x N weight).
#include "onednn_moe.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"

#if DELTAMOE_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace deltamoe::cli {

#if DELTAMOE_HAVE_ONEDNN

namespace {

using dnnl::memory;
using Dt = memory::data_type;

Dt dnnl_type(DType t) {
  return t == DType::bf16 ? Dt::bf16 : t == DType::int8 ? Dt::s8 : Dt::f32;
}

// int8 weights: without VNNI, oneDNN's AVX2 s8 x s8 kernels shift the source to u8 for
// vpmaddubsw, whose int16 pair sums then saturate with full 8-bit weights, so they get 7 bits
// (±63), oneDNN's own advice for such CPUs (measured on Zen 3: 20% output error with ±127,
// 2-2.5% with ±63). With VNNI, 8 bits.
float weight_max() {
  const CpuFeatures& f = cpu_features();
  return f.avx512_vnni || f.avx_vnni ? 127.0f : 63.0f;
}

// A weight [N, K] (PyTorch layout) in the src dtype: raw bytes, and for int8 one scale per row.
struct Weight {
  std::vector<uint8_t> bytes;
  std::vector<float> row_scale;  // int8 only
  memory mem;
};

Weight make_weight(const Tensor& w, DType dtype, const dnnl::engine& eng) {
  const Tensor f = w.to(DType::f32);
  const int64_t n = f.size(0), k = f.size(1);
  const float* src = f.data<float>();
  Weight out;
  out.bytes.resize(static_cast<size_t>(n * k) * dtype_size(dtype));
  if (dtype == DType::f32) {
    std::copy(src, src + n * k, reinterpret_cast<float*>(out.bytes.data()));
  } else if (dtype == DType::bf16) {
    auto* dst = reinterpret_cast<uint16_t*>(out.bytes.data());
    for (int64_t i = 0; i < n * k; ++i) dst[i] = f32_to_bf16(src[i]);
  } else {
    auto* dst = reinterpret_cast<int8_t*>(out.bytes.data());
    out.row_scale.resize(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) {
      float amax = 0.0f;
      for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(src[r * k + c]));
      const float qmax = weight_max();
      const float s = amax / qmax, inv = amax > 0 ? qmax / amax : 0.0f;
      out.row_scale[static_cast<size_t>(r)] = s;
      for (int64_t c = 0; c < k; ++c)
        dst[r * k + c] = static_cast<int8_t>(std::nearbyint(src[r * k + c] * inv));
    }
  }
  // Logical K x N, stored N-major: oneDNN's `ba`.
  out.mem = memory({{k, n}, dnnl_type(dtype), memory::format_tag::ba}, eng, out.bytes.data());
  return out;
}

// Converts m rows of f32 (row stride ld, k wide) into dst in `dtype`; int8 returns the one
// per-tensor scale (max|x| / 127), others 1.
float convert_rows(const float* x, int64_t m, int64_t k, DType dtype, void* dst) {
  if (dtype == DType::f32) {
    std::copy(x, x + m * k, static_cast<float*>(dst));
    return 1.0f;
  }
  if (dtype == DType::bf16) {
    auto* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < m * k; ++i) d[i] = f32_to_bf16(x[i]);
    return 1.0f;
  }
  float amax = 0.0f;
  for (int64_t i = 0; i < m * k; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  auto* d = static_cast<int8_t*>(dst);
  for (int64_t i = 0; i < m * k; ++i) d[i] = static_cast<int8_t>(std::nearbyint(x[i] * inv));
  return amax / 127.0f;
}

}  // namespace

struct OnednnMoe::Impl {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  DType dtype = DType::f32;
  bool prepacked = false;
  int64_t experts = 0, hidden = 0, inter = 0;
  std::vector<Weight> w1, w3, w2;
  dnnl::matmul up, down;
  std::string up_impl, down_impl;
  // Prepacked: the weights' layout oneDNN chose (`any`) per (k, n), and one primitive per
  // (row count, k, n), created on first use (oneDNN's fast kernels take no run-time sizes).
  std::map<std::pair<int64_t, int64_t>, memory::desc> packed_desc;
  std::map<std::tuple<int64_t, int64_t, int64_t>, dnnl::matmul> by_rows;
  // Scratch reused across calls.
  std::vector<int32_t> order, count, next, token_of;
  std::vector<float> xg, h1, h3, act, ye, scales;
  std::vector<uint8_t> xs, as;

  dnnl::matmul make(int64_t k, int64_t n, std::string& impl_name) {
    const Dt t = dnnl_type(dtype);
    const memory::desc src({DNNL_RUNTIME_DIM_VAL, k}, t, memory::format_tag::ab);
    const memory::desc wts({k, n}, t, memory::format_tag::ba);
    const memory::desc dst({DNNL_RUNTIME_DIM_VAL, n}, Dt::f32, memory::format_tag::ab);
    dnnl::primitive_attr attr;
    if (dtype == DType::int8) attr.set_output_scales(1 << 1, {DNNL_RUNTIME_F32_VAL});
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wts, dst), attr, eng);
      impl_name = pd.impl_info_str();
      return dnnl::matmul(pd);
    } catch (const dnnl::error& e) {
      fail("onednn", "no ", dtype_name(dtype), " matmul with a run-time row count on this CPU (",
           e.what(), ")");
    }
  }

  dnnl::primitive_attr attr() const {
    dnnl::primitive_attr a;
    if (dtype == DType::int8) a.set_output_scales(1 << 1, {DNNL_RUNTIME_F32_VAL});
    return a;
  }

  // Prepacked: the layout oneDNN wants for [k, n] weights (asked for 64 rows) and the weight
  // reordered into it; records the implementation in impl_name.
  void pack(Weight& w, int64_t k, int64_t n, std::string& impl_name) {
    const Dt t = dnnl_type(dtype);
    auto it = packed_desc.find({k, n});
    if (it == packed_desc.end()) {
      const memory::desc src({64, k}, t, memory::format_tag::ab);
      const memory::desc wts({k, n}, t, memory::format_tag::any);
      const memory::desc dst({64, n}, Dt::f32, memory::format_tag::ab);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wts, dst), attr(), eng);
      impl_name = pd.impl_info_str();
      it = packed_desc.emplace(std::make_pair(k, n), pd.weights_desc()).first;
    }
    memory packed(it->second, eng);
    dnnl::reorder(w.mem, packed).execute(strm, w.mem, packed);
    strm.wait();
    w.mem = packed;
  }

  const dnnl::matmul& rows_primitive(int64_t m, int64_t k, int64_t n) {
    auto it = by_rows.find({m, k, n});
    if (it != by_rows.end()) return it->second;
    const Dt t = dnnl_type(dtype);
    const memory::desc src({m, k}, t, memory::format_tag::ab);
    const memory::desc dst({m, n}, Dt::f32, memory::format_tag::ab);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, packed_desc.at({k, n}), dst),
                                          attr(), eng);
    return by_rows.emplace(std::make_tuple(m, k, n), dnnl::matmul(pd)).first->second;
  }

  // dst[m, n] = src[m, k] · Wᵀ; int8: scaled by sx · row scale of W.
  void run(const dnnl::matmul& p_runtime, const Weight& w, const void* src, int64_t m, int64_t k,
           int64_t n, float sx, float* dst) {
    const dnnl::matmul& p = prepacked ? rows_primitive(m, k, n) : p_runtime;
    const Dt t = dnnl_type(dtype);
    memory s({{m, k}, t, memory::format_tag::ab}, eng, const_cast<void*>(src));
    memory d({{m, n}, Dt::f32, memory::format_tag::ab}, eng, dst);
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, s}, {DNNL_ARG_WEIGHTS, w.mem}, {DNNL_ARG_DST, d}};
    memory sc;
    if (dtype == DType::int8) {
      scales.resize(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j)
        scales[static_cast<size_t>(j)] = sx * w.row_scale[static_cast<size_t>(j)];
      sc = memory({{n}, Dt::f32, memory::format_tag::a}, eng, scales.data());
      args.insert({DNNL_ARG_ATTR_OUTPUT_SCALES, sc});
    }
    p.execute(strm, args);
    strm.wait();
  }
};

bool onednn_available() {
  return true;
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
         std::to_string(v->patch) + " (cpu runtime " +
         (v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other") + ")";
}

OnednnMoe::OnednnMoe(const moe::MoeWeights& w, DType dtype, bool prepacked)
    : impl_(std::make_unique<Impl>()) {
  DELTAMOE_CHECK(w.kind == moe::ExpertKind::swiglu, "onednn", "only SwiGLU experts");
  DELTAMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::int8, "onednn",
                 "dtype must be f32, bf16 or int8, not ", dtype_name(dtype));
  Impl& m = *impl_;
  m.dtype = dtype;
  m.experts = w.experts();
  m.hidden = w.hidden();
  m.inter = w.inter();
  m.up = m.make(m.hidden, m.inter, m.up_impl);
  m.down = m.make(m.inter, m.hidden, m.down_impl);
  for (int64_t e = 0; e < m.experts; ++e) {
    m.w1.push_back(make_weight(w.w1[static_cast<size_t>(e)], dtype, m.eng));
    m.w3.push_back(make_weight(w.w3[static_cast<size_t>(e)], dtype, m.eng));
    m.w2.push_back(make_weight(w.w2[static_cast<size_t>(e)], dtype, m.eng));
  }
  m.prepacked = prepacked;
  if (!prepacked) return;
  try {
    for (int64_t e = 0; e < m.experts; ++e) {
      m.pack(m.w1[static_cast<size_t>(e)], m.hidden, m.inter, m.up_impl);
      m.pack(m.w3[static_cast<size_t>(e)], m.hidden, m.inter, m.up_impl);
      m.pack(m.w2[static_cast<size_t>(e)], m.inter, m.hidden, m.down_impl);
    }
  } catch (const dnnl::error& err) {
    fail("onednn", "cannot prepack ", dtype_name(dtype), " weights on this CPU (", err.what(), ")");
  }
}

OnednnMoe::~OnednnMoe() = default;

std::string OnednnMoe::impl() const {
  return "up " + impl_->up_impl + ", down " + impl_->down_impl;
}

void OnednnMoe::forward(const float* x, int64_t tokens, const moe::RoutingResult& r, float* y) {
  Impl& m = *impl_;
  const int64_t h = m.hidden, i = m.inter;
  std::fill(y, y + tokens * h, 0.0f);
  // Routed pairs grouped by expert (counting sort of the CSR positions).
  const auto pairs = static_cast<int64_t>(r.expert_ids.size());
  m.count.assign(static_cast<size_t>(m.experts + 1), 0);
  for (int32_t e : r.expert_ids) ++m.count[static_cast<size_t>(e) + 1];
  for (int64_t e = 0; e < m.experts; ++e)
    m.count[static_cast<size_t>(e) + 1] += m.count[static_cast<size_t>(e)];
  m.order.resize(static_cast<size_t>(pairs));
  m.next.assign(m.count.begin(), m.count.end() - 1);
  for (int64_t p = 0; p < pairs; ++p)
    m.order[static_cast<size_t>(
        m.next[static_cast<size_t>(r.expert_ids[static_cast<size_t>(p)])]++)] =
        static_cast<int32_t>(p);
  m.token_of.resize(static_cast<size_t>(pairs));
  std::vector<int32_t>& token_of = m.token_of;
  for (int64_t t = 0; t < tokens; ++t)
    for (int32_t p = r.offsets[static_cast<size_t>(t)]; p < r.offsets[static_cast<size_t>(t) + 1];
         ++p)
      token_of[static_cast<size_t>(p)] = static_cast<int32_t>(t);
  for (int64_t e = 0; e < m.experts; ++e) {
    const int32_t b = m.count[static_cast<size_t>(e)], n = m.count[static_cast<size_t>(e) + 1] - b;
    if (n == 0) continue;
    m.xg.resize(static_cast<size_t>(n * h));
    for (int32_t j = 0; j < n; ++j) {
      const int32_t t = token_of[static_cast<size_t>(m.order[static_cast<size_t>(b + j)])];
      std::copy(x + t * h, x + (t + 1) * h, m.xg.data() + j * h);
    }
    m.xs.resize(static_cast<size_t>(n * h) * 4);
    const float sx = convert_rows(m.xg.data(), n, h, m.dtype, m.xs.data());
    m.h1.resize(static_cast<size_t>(n * i));
    m.h3.resize(static_cast<size_t>(n * i));
    m.act.resize(static_cast<size_t>(n * i));
    m.run(m.up, m.w1[static_cast<size_t>(e)], m.xs.data(), n, h, i, sx, m.h1.data());
    m.run(m.up, m.w3[static_cast<size_t>(e)], m.xs.data(), n, h, i, sx, m.h3.data());
    kernels::swiglu_st(m.h1.data(), m.h3.data(), m.act.data(), n * i);
    m.as.resize(static_cast<size_t>(n * i) * 4);
    const float sa = convert_rows(m.act.data(), n, i, m.dtype, m.as.data());
    m.ye.resize(static_cast<size_t>(n * h));
    m.run(m.down, m.w2[static_cast<size_t>(e)], m.as.data(), n, i, h, sa, m.ye.data());
    for (int32_t j = 0; j < n; ++j) {
      const int32_t p = m.order[static_cast<size_t>(b + j)];
      kernels::axpy_st(r.weights[static_cast<size_t>(p)], m.ye.data() + j * h,
                       y + token_of[static_cast<size_t>(p)] * h, h);
    }
  }
}

#else  // no oneDNN in this build

struct OnednnMoe::Impl {};

bool onednn_available() {
  return false;
}

std::string onednn_version() {
  return "not built";
}

OnednnMoe::OnednnMoe(const moe::MoeWeights&, DType, bool) {
  fail("onednn",
       "this build has no oneDNN (install Debian's libdnnl-dev, or run "
       "scripts/install-deps.sh, and reconfigure)");
}

OnednnMoe::~OnednnMoe() = default;

std::string OnednnMoe::impl() const {
  return "not built";
}

void OnednnMoe::forward(const float*, int64_t, const moe::RoutingResult&, float*) {
  fail("onednn", "this build has no oneDNN");
}

#endif

}  // namespace deltamoe::cli
