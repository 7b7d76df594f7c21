// TEMPORARY (branch `train` only, removed once the `kernels` branch lands on main): minimal
// implementations of the kernels the library references, so the CLI and tests link.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "deltamoe/kernels/cpu.h"

namespace deltamoe::kernels {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
              static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

PackedLinear::PackedLinear(const Tensor& w, DType dtype)
    : n_(w.size(0)), k_(w.size(1)), panel_(16), dtype_(DType::f32) {
  (void)dtype;
  data_ = w.to(DType::f32).storage();
}
size_t PackedLinear::weight_bytes() const { return static_cast<size_t>(n_ * k_) * 4; }

void linear_st(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, int64_t n_begin,
               int64_t n_end, float* y, int64_t ldy, bool accumulate) {
  const float* wp = static_cast<const float*>(w.data()) + n_begin * w.in_features();
  if (m == 0 || n_end <= n_begin) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
              static_cast<int>(n_end - n_begin), static_cast<int>(w.in_features()), 1.0f, x,
              static_cast<int>(ldx), wp, static_cast<int>(w.in_features()), accumulate ? 1.0f : 0.0f,
              y + n_begin, static_cast<int>(ldy));
}
void linear(const float* x, int64_t m, int64_t ldx, const PackedLinear& w, float* y, int64_t ldy,
            bool accumulate) {
  linear_st(x, m, ldx, w, 0, w.out_features(), y, ldy, accumulate);
}
void linear_naive(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.0f;
      for (int64_t c = 0; c < k; ++c) s += x[i * k + c] * w[j * k + c];
      y[i * n + j] = s;
    }
}
void silu_st(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}
void gelu_tanh_st(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    y[i] = 0.5f * x[i] * (1.0f + std::tanh(0.7978845608f * (x[i] + 0.044715f * x[i] * x[i] * x[i])));
}
void gelu_st(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678f));
}
void swiglu_st(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
void axpy_st(float alpha, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
void softmax_rows_st(const float* x, float* y, int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const float m = *std::max_element(x + r * d, x + (r + 1) * d);
    float s = 0.0f;
    for (int64_t c = 0; c < d; ++c) s += (y[r * d + c] = std::exp(x[r * d + c] - m));
    for (int64_t c = 0; c < d; ++c) y[r * d + c] /= s;
  }
}
void topk_st(const float* x, int64_t d, int64_t k, int32_t* idx, float* val) {
  std::vector<int32_t> order(static_cast<size_t>(d));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  for (int64_t i = 0; i < k; ++i) {
    idx[i] = order[static_cast<size_t>(i)];
    val[i] = x[order[static_cast<size_t>(i)]];
  }
}
const char* linear_impl_name(DType) { return "tmp-cblas"; }

}  // namespace deltamoe::kernels

// ---- TEMPORARY data and checkpoint I/O for the classifier, replaced by deltamoe::io ----
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "models/data_shim.h"

namespace deltamoe::models::detail {
namespace {
std::vector<uint8_t> read_gz(const std::string& path) {
  DELTAMOE_CHECK(std::filesystem::exists(path), "data", path,
                 " not found (install the Debian package dataset-fashion-mnist)");
  gzFile f = gzopen(path.c_str(), "rb");
  DELTAMOE_CHECK(f != nullptr, "data", "cannot open ", path);
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  gzclose(f);
  DELTAMOE_CHECK(n == 0, "data", "corrupt gzip file ", path);
  return out;
}
uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
Split read_split(const std::string& img, const std::string& lab) {
  auto ib = read_gz(img), lb = read_gz(lab);
  DELTAMOE_CHECK(ib.size() >= 16 && be32(ib.data()) == 0x803, "data", "bad IDX images file ", img);
  DELTAMOE_CHECK(lb.size() >= 8 && be32(lb.data()) == 0x801, "data", "bad IDX labels file ", lab);
  const int64_t n = be32(ib.data() + 4), r = be32(ib.data() + 8), c = be32(ib.data() + 12);
  DELTAMOE_CHECK(static_cast<int64_t>(ib.size()) == 16 + n * r * c && be32(lb.data() + 4) == n &&
                     static_cast<int64_t>(lb.size()) == 8 + n,
                 "data", "size mismatch in ", img, " / ", lab);
  Split s;
  s.images = Tensor({n, r * c});
  for (int64_t i = 0; i < n * r * c; ++i) s.images.data<float>()[i] = ib[16 + i] / 255.0f;
  s.labels.assign(lb.begin() + 8, lb.end());
  return s;
}
}  // namespace

Data load_data(const std::string& dir) {
  Data d;
  d.train = read_split(dir + "/train-images-idx3-ubyte.gz", dir + "/train-labels-idx1-ubyte.gz");
  d.test = read_split(dir + "/t10k-images-idx3-ubyte.gz", dir + "/t10k-labels-idx1-ubyte.gz");
  return d;
}

void save_tensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors) {
  nlohmann::json h = nlohmann::json::object();
  uint64_t off = 0;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", "F32"}, {"shape", t.shape()}, {"data_offsets", {off, off + t.nbytes()}}};
    off += t.nbytes();
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    DELTAMOE_CHECK(f.good(), "io", "cannot write ", tmp);
    const uint64_t n = hs.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
    for (const auto& [name, t] : tensors) f.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    DELTAMOE_CHECK(f.good(), "io", "write failed: ", tmp);
  }
  std::filesystem::rename(tmp, path);
}

std::map<std::string, Tensor> load_tensors(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DELTAMOE_CHECK(f.good(), "safetensors", "cannot open ", path);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  DELTAMOE_CHECK(f.good() && n < 100000000, "safetensors", path, ": bad header length");
  std::string hs(n, ' ');
  f.read(hs.data(), static_cast<std::streamsize>(n));
  auto h = nlohmann::json::parse(hs);
  std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::map<std::string, Tensor> out;
  for (auto& [name, e] : h.items()) {
    if (name == "__metadata__") continue;
    DELTAMOE_CHECK(e["dtype"] == "F32", "safetensors", path, ": tensor '", name, "' is not F32");
    Shape shape = e["shape"].get<Shape>();
    const uint64_t b = e["data_offsets"][0], en = e["data_offsets"][1];
    Tensor t(shape);
    DELTAMOE_CHECK(en <= data.size() && en - b == t.nbytes(), "safetensors", path, ": tensor '", name, "' out of range");
    std::memcpy(t.raw(), data.data() + b, t.nbytes());
    out[name] = t;
  }
  return out;
}

}  // namespace deltamoe::models::detail
