// peer_ggml_moe: llama.cpp's MoE FFN layer (ggml's CPU backend) on the shapes of
// `deltamoe bench moe-layer`, timed the same way, as a peer baseline for one layer.
//
// Not part of the deltamoe build: bench/peer_llamacpp.py compiles it against a llama.cpp build
// (ggml/include, libggml*.so) with `peer_llamacpp.py build` and runs it with `moe-layer`.
//
// usage: peer_ggml_moe [--dtype f32|bf16|q8_0] [--tokens 1,16,128,512] [--hidden 1024]
//                      [--inter 512] [--experts 32] [--top-k 8] [--threads 2]
//                      [--min-seconds 0.5] [--seed 0] [--hugepages 1] [--check-tokens 8]
//   --dtype        expert weights: f32, bf16 (ggml's conversion) or q8_0 (ggml_quantize_chunk:
//                  int8 with one f16 scale per 32; activations quantised per 32 by ggml)
//   --tokens       token counts T, comma-separated; one graph is built per T
//   --hidden H, --inter I, --experts E, --top-k K: the layer (E SwiGLU experts, f32 router)
//   --threads      threads of ggml's graph compute (a persistent ggml_threadpool)
//   --min-seconds  least timed time per T (and at least 5 timed runs)
//   --seed         weights: normal(0, 0.02); inputs: normal(0, 1) from seed + 1
//   --hugepages    1: weights on 2 MiB-aligned memory with MADV_HUGEPAGE (as deltamoe keeps its
//                  expert weights); 0: ggml-style posix_memalign (4 KiB pages without THP)
//   --check-tokens tokens per T compared with a naive double-precision loop (first and last)
//
// The graph is Mixtral's MoE FFN as llama.cpp builds it: logits = router·x, softmax, top-k
// (ggml_argsort_top_k), weights = the top-k probabilities renormalised to sum 1, gate and up by
// ggml_mul_mat_id, swiglu, down by ggml_mul_mat_id, scaled by the weights and summed over k.
// Timing: only ggml_graph_compute. T = 1 (decode): 64 different inputs in turn, the caches
// flushed (a buffer of twice the L3, at least 128 MiB, written then read on all threads) before
// every step, untimed;
// T > 1: 4 inputs in turn. The median of at least 5 runs and --min-seconds.
// Prints one JSON object on stdout; logs go to stderr. Exit status 2 on bad arguments, 1 when
// the f32 output differs from the naive loop by more than 1e-3 of its largest magnitude.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

namespace {

[[noreturn]] void die(const std::string& msg, int code = 2) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  std::exit(code);
}

struct Options {
  std::string dtype = "f32";
  std::vector<int64_t> tokens{1, 16, 128, 512};
  int64_t hidden = 1024, inter = 512, experts = 32, top_k = 8;
  int threads = 2;
  double min_seconds = 0.5;
  uint64_t seed = 0;
  bool hugepages = true;
  int check_tokens = 8;
};

int64_t parse_int(const std::string& flag, const std::string& s, int64_t lo, int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi)
    die(flag + " " + s + ": expected an integer in " + std::to_string(lo) + ".." +
        std::to_string(hi));
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i], val;
    if (key == "-h" || key == "--help") {
      std::fprintf(stderr, "see the comment at the top of bench/peer_ggml_moe.cpp\n");
      std::exit(0);
    }
    const size_t eq = key.find('=');
    if (eq != std::string::npos) {
      val = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      die(key + ": missing value");
    }
    if (key == "--dtype") {
      if (val != "f32" && val != "bf16" && val != "q8_0")
        die("--dtype " + val + ": expected f32, bf16 or q8_0");
      o.dtype = val;
    } else if (key == "--tokens") {
      o.tokens.clear();
      size_t p = 0;
      while (p <= val.size()) {
        const size_t c = std::min(val.find(',', p), val.size());
        o.tokens.push_back(parse_int("--tokens", val.substr(p, c - p), 1, 1 << 16));
        p = c + 1;
      }
    } else if (key == "--hidden") {
      o.hidden = parse_int(key, val, 1, 1 << 16);
    } else if (key == "--inter") {
      o.inter = parse_int(key, val, 1, 1 << 16);
    } else if (key == "--experts") {
      o.experts = parse_int(key, val, 1, 4096);
    } else if (key == "--top-k") {
      o.top_k = parse_int(key, val, 1, 4096);
    } else if (key == "--threads") {
      o.threads = static_cast<int>(parse_int(key, val, 1, GGML_MAX_N_THREADS));
    } else if (key == "--seed") {
      o.seed = static_cast<uint64_t>(parse_int(key, val, 0, INT64_MAX));
    } else if (key == "--hugepages") {
      o.hugepages = parse_int(key, val, 0, 1) == 1;
    } else if (key == "--check-tokens") {
      o.check_tokens = static_cast<int>(parse_int(key, val, 0, 64));
    } else if (key == "--min-seconds") {
      char* end = nullptr;
      o.min_seconds = std::strtod(val.c_str(), &end);
      if (val.empty() || *end != '\0' || !(o.min_seconds >= 0) || o.min_seconds > 3600)
        die("--min-seconds " + val + ": expected a number of seconds in 0..3600");
    } else {
      die("unknown argument " + key + " (see the comment at the top of bench/peer_ggml_moe.cpp)");
    }
  }
  if (o.top_k > o.experts) die("--top-k must be at most --experts");
  if (o.dtype == "q8_0" && (o.hidden % 32 != 0 || o.inter % 32 != 0))
    die("--dtype q8_0 needs --hidden and --inter divisible by 32");
  return o;
}

ggml_type weight_type(const std::string& dtype) {
  return dtype == "f32" ? GGML_TYPE_F32 : dtype == "bf16" ? GGML_TYPE_BF16 : GGML_TYPE_Q8_0;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// --- weights ------------------------------------------------------------------------------

// The router and the stacked experts in one ggml context whose memory we allocate ourselves
// (so that it can sit on 2 MiB pages).
struct Weights {
  ggml_context* ctx = nullptr;
  void* mem = nullptr;
  ggml_tensor* router = nullptr;  // f32 [H, E]
  ggml_tensor* gate = nullptr;    // [H, I, E]
  ggml_tensor* up = nullptr;      // [H, I, E]
  ggml_tensor* down = nullptr;    // [I, H, E]
};

// Expert e's slice of a stacked [n, m, E] tensor from m rows of n floats, in the tensor's type.
void store_expert(ggml_tensor* t, int64_t e, const std::vector<float>& rows) {
  const int64_t n = t->ne[0], m = t->ne[1];
  char* dst = static_cast<char*>(t->data) + e * t->nb[2];
  if (t->type == GGML_TYPE_F32) {
    std::memcpy(dst, rows.data(), sizeof(float) * n * m);
  } else if (t->type == GGML_TYPE_BF16) {
    ggml_fp32_to_bf16_row(rows.data(), reinterpret_cast<ggml_bf16_t*>(dst), n * m);
  } else {
    ggml_quantize_chunk(t->type, rows.data(), dst, 0, m, n, nullptr);
  }
}

// Expert e's slice of a stacked tensor back in f32 (m rows of n).
std::vector<float> load_expert(const ggml_tensor* t, int64_t e) {
  const int64_t n = t->ne[0], m = t->ne[1];
  std::vector<float> out(static_cast<size_t>(n * m));
  const char* src = static_cast<const char*>(t->data) + e * t->nb[2];
  if (t->type == GGML_TYPE_F32)
    std::memcpy(out.data(), src, sizeof(float) * n * m);
  else
    ggml_get_type_traits(t->type)->to_float(src, out.data(), n * m);
  return out;
}

Weights make_weights(const Options& o) {
  const ggml_type type = weight_type(o.dtype);
  const int64_t H = o.hidden, I = o.inter, E = o.experts;
  const size_t bytes = sizeof(float) * H * E + 2 * ggml_row_size(type, H) * I * E +
                       ggml_row_size(type, I) * H * E + 4 * (ggml_tensor_overhead() + 64) +
                       (size_t{1} << 20);
  Weights w;
  const size_t align = o.hugepages ? size_t{2} << 20 : 64;
  const size_t rounded = (bytes + align - 1) / align * align;
  w.mem = std::aligned_alloc(align, rounded);
  if (!w.mem) die("cannot allocate " + std::to_string(rounded) + " bytes of weights", 1);
#ifdef MADV_HUGEPAGE
  if (o.hugepages) (void)madvise(w.mem, rounded, MADV_HUGEPAGE);  // a hint
#endif
  std::memset(w.mem, 0, rounded);
  ggml_init_params params{rounded, w.mem, false};
  w.ctx = ggml_init(params);
  w.router = ggml_new_tensor_2d(w.ctx, GGML_TYPE_F32, H, E);
  w.gate = ggml_new_tensor_3d(w.ctx, type, H, I, E);
  w.up = ggml_new_tensor_3d(w.ctx, type, H, I, E);
  w.down = ggml_new_tensor_3d(w.ctx, type, I, H, E);

  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> rows(static_cast<size_t>(H * I));
  for (int64_t i = 0; i < H * E; ++i) static_cast<float*>(w.router->data)[i] = normal(rng);
  for (ggml_tensor* t : {w.gate, w.up, w.down})
    for (int64_t e = 0; e < E; ++e) {
      for (float& v : rows) v = normal(rng);
      store_expert(t, e, rows);
    }
  return w;
}

size_t expert_bytes(const Weights& w) {
  return w.gate->nb[2] + w.up->nb[2] + w.down->nb[2];
}

// --- the graph ------------------------------------------------------------------------------

// One MoE FFN graph for T tokens, its tensors allocated by ggml's graph allocator (which
// reuses intermediate buffers as llama.cpp's scheduler does) and its compute plan.
struct MoeGraph {
  ggml_context* ctx = nullptr;
  ggml_cgraph* gf = nullptr;
  ggml_gallocr_t galloc = nullptr;
  ggml_tensor* x = nullptr;    // f32 [H, T]
  ggml_tensor* out = nullptr;  // f32 [H, T]
  ggml_cplan plan{};
  std::vector<uint8_t> work;
  int64_t tokens = 0;
};

MoeGraph build_graph(const Weights& w, const Options& o, int64_t T, ggml_threadpool* pool) {
  const int64_t H = o.hidden, E = o.experts, K = o.top_k;
  MoeGraph g;
  g.tokens = T;
  ggml_init_params params{
      ggml_tensor_overhead() * static_cast<size_t>(64 + 2 * K) + ggml_graph_overhead(), nullptr,
      true};
  g.ctx = ggml_init(params);
  ggml_context* c = g.ctx;
  g.x = ggml_new_tensor_2d(c, GGML_TYPE_F32, H, T);
  ggml_set_input(g.x);

  // routing: probabilities over the experts, the k largest, renormalised over those k
  ggml_tensor* probs = ggml_soft_max(c, ggml_mul_mat(c, w.router, g.x));              // [E, T]
  ggml_tensor* chosen = ggml_argsort_top_k(c, probs, static_cast<int>(K));            // i32 [K, T]
  ggml_tensor* gates = ggml_get_rows(c, ggml_reshape_3d(c, probs, 1, E, T), chosen);  // [1,K,T]
  ggml_tensor* flat = ggml_reshape_2d(c, gates, K, T);
  flat = ggml_div(c, flat, ggml_sum_rows(c, flat));  // [K, T] / [1, T]
  gates = ggml_reshape_3d(c, flat, 1, K, T);

  // the chosen experts: down(silu(gate·x) * up·x), each token's k results weighted and summed
  ggml_tensor* xk = ggml_reshape_3d(c, g.x, H, 1, T);      // one input row shared by the k experts
  ggml_tensor* up = ggml_mul_mat_id(c, w.up, xk, chosen);  // [I, K, T]
  ggml_tensor* gate = ggml_mul_mat_id(c, w.gate, xk, chosen);   // [I, K, T]
  ggml_tensor* act = ggml_swiglu_split(c, gate, up);            // silu(gate) * up
  ggml_tensor* down = ggml_mul_mat_id(c, w.down, act, chosen);  // [H, K, T]
  down = ggml_mul(c, down, gates);
  ggml_tensor* sum = nullptr;
  for (int64_t k = 0; k < K; ++k) {
    ggml_tensor* part = ggml_view_2d(c, down, H, T, down->nb[2], k * down->nb[1]);
    sum = sum ? ggml_add(c, sum, part) : part;
  }
  g.out = K == 1 ? ggml_cont(c, sum) : sum;
  ggml_set_output(g.out);

  g.gf = ggml_new_graph(c);
  ggml_build_forward_expand(g.gf, g.out);
  g.galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
  if (!ggml_gallocr_alloc_graph(g.galloc, g.gf)) die("ggml_gallocr_alloc_graph failed", 1);
  g.plan = ggml_graph_plan(g.gf, o.threads, pool);
  g.work.resize(g.plan.work_size);
  g.plan.work_data = g.work.empty() ? nullptr : g.work.data();
  return g;
}

void free_graph(MoeGraph& g) {
  ggml_gallocr_free(g.galloc);
  ggml_free(g.ctx);
}

void compute(MoeGraph& g) {
  if (ggml_graph_compute(g.gf, &g.plan) != GGML_STATUS_SUCCESS) die("ggml_graph_compute failed", 1);
}

void set_input(MoeGraph& g, const std::vector<float>& x) {
  std::memcpy(g.x->data, x.data(), ggml_nbytes(g.x));
}

// --- the naive reference -------------------------------------------------------------------

// The layer for one token in double precision, from the weights as stored (dequantised).
std::vector<double> naive_token(const Weights& w, const Options& o, const float* x) {
  const int64_t H = o.hidden, I = o.inter, E = o.experts, K = o.top_k;
  const float* router = static_cast<const float*>(w.router->data);
  std::vector<double> logit(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    double s = 0;
    for (int64_t h = 0; h < H; ++h) s += static_cast<double>(router[e * H + h]) * x[h];
    logit[e] = s;
  }
  std::vector<int64_t> order(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) order[e] = e;
  std::partial_sort(order.begin(), order.begin() + K, order.end(),
                    [&](int64_t a, int64_t b) { return logit[a] > logit[b]; });
  // softmax over all experts then renormalised over the k chosen = softmax over the k chosen
  double zsum = 0;
  std::vector<double> weight(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k) zsum += weight[k] = std::exp(logit[order[k]] - logit[order[0]]);
  std::vector<double> y(static_cast<size_t>(H), 0.0), act(static_cast<size_t>(I));
  for (int64_t k = 0; k < K; ++k) {
    const int64_t e = order[k];
    const auto gate = load_expert(w.gate, e), up = load_expert(w.up, e),
               down = load_expert(w.down, e);
    for (int64_t i = 0; i < I; ++i) {
      double gs = 0, us = 0;
      for (int64_t h = 0; h < H; ++h) {
        gs += static_cast<double>(gate[i * H + h]) * x[h];
        us += static_cast<double>(up[i * H + h]) * x[h];
      }
      act[i] = gs / (1.0 + std::exp(-gs)) * us;
    }
    for (int64_t h = 0; h < H; ++h) {
      double s = 0;
      for (int64_t i = 0; i < I; ++i) s += static_cast<double>(down[h * I + i]) * act[i];
      y[h] += weight[k] / zsum * s;
    }
  }
  return y;
}

struct CheckResult {
  double max_abs_error = 0, max_abs_output = 0;
};

// ggml's output for the graph's current input against the naive loop, on the first and the
// last few tokens.
CheckResult check_output(const Weights& w, const Options& o, const MoeGraph& g,
                         const std::vector<float>& x) {
  CheckResult r;
  const int64_t T = g.tokens, n = std::min<int64_t>(T, o.check_tokens);
  const float* out = static_cast<const float*>(g.out->data);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t t = j < (n + 1) / 2 ? j : T - (n - j);
    const auto ref = naive_token(w, o, x.data() + t * o.hidden);
    for (int64_t h = 0; h < o.hidden; ++h) {
      r.max_abs_error = std::max(r.max_abs_error, std::abs(out[t * o.hidden + h] - ref[h]));
      r.max_abs_output = std::max(r.max_abs_output, std::abs(ref[h]));
    }
  }
  return r;
}

// --- timing ---------------------------------------------------------------------------------

// Evicts the caches before a decode step, as the rest of a model between two visits of this
// layer would: a 128 MiB buffer written, then read, by all threads (ggml's OpenMP team).
// Twice the last-level cache as the OS reports it, at least 128 MiB (the same rule as deltamoe
// bench moe-layer: a VM may report a shared L3 of hundreds of MiB).
size_t flush_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t twice = l3 > 0 ? 2 * static_cast<size_t>(l3) : 0;
  return std::clamp<size_t>(twice, size_t{128} << 20, size_t{2} << 30);
}

class CacheFlusher {
 public:
  explicit CacheFlusher(int threads) : threads_(threads), buf_(flush_bytes() >> 2, 1.0f) {}
  size_t bytes() const { return buf_.size() * sizeof(float); }
  void operator()() {
    float* p = buf_.data();
    const int64_t n = static_cast<int64_t>(buf_.size());
#pragma omp parallel for num_threads(threads_)
    for (int64_t i = 0; i < n; i += 16) p[i] += 1.0f;
    float s = 0;
#pragma omp parallel for reduction(+ : s) num_threads(threads_)
    for (int64_t i = 0; i < n; i += 16) s += p[i];
    sink_ = s;
  }

 private:
  int threads_;
  std::vector<float> buf_;
  volatile float sink_ = 0;
};

struct Timing {
  double median_s = 0;
  int steps = 0;
};

// Median seconds of ggml_graph_compute over the input pool (inputs copied in, and for decode
// the caches flushed, outside the timer).
Timing time_graph(MoeGraph& g, const std::vector<std::vector<float>>& pool, bool flush_each,
                  CacheFlusher& flush, double min_seconds) {
  size_t next = 0;
  set_input(g, pool[next++ % pool.size()]);
  compute(g);  // warm-up
  std::vector<double> times;
  double timed = 0;
  while (times.size() < 5 || timed < min_seconds) {
    if (flush_each) flush();
    set_input(g, pool[next++ % pool.size()]);
    const double t0 = now_s();
    compute(g);
    times.push_back(now_s() - t0);
    timed += times.back();
    // A flush of a large L3 costs tens of ms: fewer steps then.
    if (times.size() >= (flush_each && flush.bytes() > (size_t{256} << 20) ? 60u : 1000u)) break;
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], static_cast<int>(times.size())};
}

std::vector<float> random_input(int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

// --- output ---------------------------------------------------------------------------------

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t p = line.find(':');
      std::string v = p == std::string::npos ? "" : line.substr(p + 1);
      v.erase(0, v.find_first_not_of(' '));
      return v;
    }
  return "";
}

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    if (static_cast<unsigned char>(ch) >= 0x20) out += ch;
  }
  return out + "\"";
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string cpu_features() {
  std::string f;
  const std::pair<const char*, int> has[] = {{"avx", ggml_cpu_has_avx()},
                                             {"avx2", ggml_cpu_has_avx2()},
                                             {"fma", ggml_cpu_has_fma()},
                                             {"f16c", ggml_cpu_has_f16c()},
                                             {"avx_vnni", ggml_cpu_has_avx_vnni()},
                                             {"avx512", ggml_cpu_has_avx512()},
                                             {"avx512_bf16", ggml_cpu_has_avx512_bf16()},
                                             {"avx512_vnni", ggml_cpu_has_avx512_vnni()},
                                             {"amx_int8", ggml_cpu_has_amx_int8()},
                                             {"llamafile", ggml_cpu_has_llamafile()}};
  for (const auto& [name, on] : has)
    if (on) f += (f.empty() ? "" : ", ") + quoted(name);
  return "[" + f + "]";
}

void log_quiet(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  ggml_log_set(log_quiet, nullptr);
  ggml_cpu_init();
  std::fprintf(stderr, "peer_ggml_moe: H=%lld I=%lld E=%lld K=%lld dtype=%s threads=%d (ggml %s)\n",
               static_cast<long long>(o.hidden), static_cast<long long>(o.inter),
               static_cast<long long>(o.experts), static_cast<long long>(o.top_k), o.dtype.c_str(),
               o.threads, ggml_version());
  const Weights w = make_weights(o);
  ggml_threadpool_params tpp = ggml_threadpool_params_default(o.threads);
  ggml_threadpool* pool = ggml_threadpool_new(&tpp);
  if (!pool) die("ggml_threadpool_new failed", 1);
  CacheFlusher flush(o.threads);
  std::mt19937_64 rng(o.seed + 1);

  const int64_t H = o.hidden, I = o.inter, E = o.experts, K = o.top_k;
  const double router_bytes = 4.0 * static_cast<double>(H * E);
  CheckResult worst;
  std::string rows;
  for (int64_t T : o.tokens) {
    std::fprintf(stderr, "  tokens=%lld\n", static_cast<long long>(T));
    MoeGraph g = build_graph(w, o, T, pool);
    std::vector<std::vector<float>> inputs;
    for (int i = 0; i < (T == 1 ? 64 : 4); ++i) inputs.push_back(random_input(T * H, rng));
    set_input(g, inputs[0]);
    compute(g);
    const CheckResult chk = check_output(w, o, g, inputs[0]);
    worst.max_abs_error = std::max(worst.max_abs_error, chk.max_abs_error);
    worst.max_abs_output = std::max(worst.max_abs_output, chk.max_abs_output);
    const Timing tm = time_graph(g, inputs, T == 1, flush, o.min_seconds);
    free_graph(g);

    const double flops =
        6.0 * static_cast<double>(T * K * H * I) + 2.0 * static_cast<double>(T * H * E);
    std::string row = "{\"tokens\": " + std::to_string(T) +
                      ", \"time_ms\": " + num(tm.median_s * 1e3) +
                      ", \"gflops\": " + num(flops / tm.median_s / 1e9) +
                      ", \"timed_runs\": " + std::to_string(tm.steps) +
                      ", \"max_abs_error_vs_naive\": " + num(chk.max_abs_error) +
                      ", \"max_abs_output\": " + num(chk.max_abs_output);
    if (T == 1) {
      const double bytes =
          static_cast<double>(K) * static_cast<double>(expert_bytes(w)) + router_bytes;
      row += ", \"active_weight_bytes\": " + num(bytes) +
             ", \"achieved_gbps\": " + num(bytes / tm.median_s / 1e9);
    }
    rows += (rows.empty() ? "" : ", ") + row + "}";
  }
  ggml_threadpool_free(pool);

  const double rel = worst.max_abs_output > 0 ? worst.max_abs_error / worst.max_abs_output : 0;
  const bool ok = o.dtype != "f32" || rel <= 1e-3;
  std::printf(
      "{\"benchmark\": \"ggml-moe-layer\", \"dtype\": %s, \"ggml_type\": %s, \"threads\": %d, "
      "\"hidden\": %lld, \"inter\": %lld, \"experts\": %lld, \"top_k\": %lld, "
      "\"weight_bytes_per_expert\": %zu, \"router_bytes\": %.0f, \"hugepages\": %s, "
      "\"ggml_version\": %s, \"ggml_commit\": %s, \"cpu\": %s, \"ggml_cpu_features\": %s, "
      "\"select_op\": \"ggml_argsort_top_k\", \"decode_input_pool\": 64, \"prefill_input_pool\": "
      "4, "
      "\"max_abs_error_vs_naive\": %s, \"max_abs_output\": %s, \"rel_error_vs_naive\": %s, "
      "\"check_tolerance_rel\": %s, \"check_pass\": %s, \"results\": [%s]}\n",
      quoted(o.dtype).c_str(), quoted(ggml_type_name(weight_type(o.dtype))).c_str(), o.threads,
      static_cast<long long>(H), static_cast<long long>(I), static_cast<long long>(E),
      static_cast<long long>(K), expert_bytes(w), router_bytes, o.hugepages ? "true" : "false",
      quoted(ggml_version()).c_str(), quoted(ggml_commit()).c_str(),
      quoted(cpu_model_name()).c_str(), cpu_features().c_str(), num(worst.max_abs_error).c_str(),
      num(worst.max_abs_output).c_str(), num(rel).c_str(), o.dtype == "f32" ? "0.001" : "null",
      ok ? "true" : "false", rows.c_str());
  ggml_free(w.ctx);
  std::free(w.mem);
  if (!ok) {
    std::fprintf(stderr, "error: f32 output differs from the naive loop by %.3g of its max\n", rel);
    return 1;
  }
  return 0;
}
