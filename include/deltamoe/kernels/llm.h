// Kernels of the decoder-only language models: RMSNorm, rotary position embeddings (RoPE, the
// Hugging Face half-rotation layout) and causal grouped-query attention over a KV cache.
//
// Conventions as in kernels/cpu.h: row-major f32, leading dimensions in elements, pointers
// caller-owned. `_st` functions are single-threaded and safe to call concurrently on disjoint
// outputs; the others use up to num_threads() threads.
#pragma once

#include <cstdint>
#include <vector>

namespace deltamoe::kernels {

/// y[r, :] = x[r, :] / sqrt(mean(x[r, :]²) + eps) · w  over `rows` rows of `d` floats with
/// leading dimension ld (x and y may alias). The mean is accumulated in double, then the
/// scale applied in f32 as transformers' RMSNorm does (x · rsqrt(var + eps), then · w).
void rms_norm_rows_st(const float* x, const float* w, float* y, int64_t rows, int64_t d, int64_t ld,
                      float eps);

/// RoPE tables: cos and sin of position·θ^(−2i/d) for i < d/2, computed in f32 the way
/// transformers computes them (inv_freq = 1 / θ^(2i/d), angle = pos · inv_freq in f32).
/// Grows on demand; not thread-safe while growing (call ensure() before parallel use).
class RopeTable {
 public:
  RopeTable(int64_t head_dim, double theta);
  /// Makes positions [0, n) available.
  void ensure(int64_t n);
  int64_t head_dim() const { return dim_; }
  /// cos/sin rows of position p: d/2 floats each.
  const float* cos(int64_t p) const { return cos_.data() + p * (dim_ / 2); }
  const float* sin(int64_t p) const { return sin_.data() + p * (dim_ / 2); }

 private:
  int64_t dim_;
  std::vector<float> inv_freq_, cos_, sin_;
  int64_t size_ = 0;
};

/// Rotates `heads` heads of one token in place: x[h·d .. h·d + d) for h < heads, position
/// `pos`, half-rotation layout (x1 = first half, x2 = second half:
/// (x1·cos − x2·sin, x2·cos + x1·sin)).
void rope_st(float* x, int64_t heads, const RopeTable& table, int64_t pos);

/// dst[i] = src[i] rounded to f16 (IEEE binary16, round to nearest even; overflow to ±inf),
/// for i < n: the bits of f32_to_f16 (core/dtype.h) for every non-NaN input (a NaN stays a
/// NaN). With F16C (vcvtps2ph) where the CPU has it: the KV cache stores every new key and
/// value this way, 2·kv_heads·head_dim per token and layer. Thread-safe (no state).
void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n);

/// What causal attention runs on this CPU, in words (for `deltamoe info`).
const char* attention_impl_name();

/// Causal grouped-query attention of one sequence's `n` new query rows against its cache.
///   q[n, heads·d] (row stride ldq), rows at positions start .. start+n−1;
///   k, v [start+n, kv_heads·d] (row stride ldkv): the cache with the new rows appended;
///   out[n, heads·d] (row stride ldo) = softmax(q·kᵀ·scale, causal) · v per head, head h
///   reading kv head h / (heads / kv_heads).
/// Uses up to num_threads() threads over (head, row block); each item through the AVX-512
/// kernel where the CPU has it and d is a multiple of 16, else OpenBLAS (single-threaded).
void causal_attention(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv,
                      float* out, int64_t ldo, int64_t n, int64_t start, int64_t heads,
                      int64_t kv_heads, int64_t d, float scale);

/// One sequence's cached keys and values of one layer, in blocks (a paged KV cache): positions
/// [b·block_tokens, (b+1)·block_tokens) are in k[b] and v[b]; KV head g's columns of position
/// p start at k[p / block_tokens] + (p % block_tokens)·ldkv + g·head_stride (ldkv of the call).
/// head_stride 0 means head_dim: every head's columns side by side in one row of ldkv floats.
/// A cache that keeps each head's rows together (head_stride = block_tokens·head_dim, ldkv =
/// head_dim) lets one head's keys be read as one sequential stream. A contiguous cache is one
/// block as long as the sequence.
/// An f16 cache (half the bytes; `--kv-dtype f16`) sets k16 / v16 instead of k / v, with the
/// same layout in elements.
struct KvBlocks {
  const float* const* k = nullptr;
  const float* const* v = nullptr;
  int64_t block_tokens = 0;
  int64_t head_stride = 0;
  const uint16_t* const* k16 = nullptr;
  const uint16_t* const* v16 = nullptr;
};

/// The same for several sequences at once (a decode batch or mixed prefill): sequence s has
/// n[s] query rows at q + row0[s]·ldq, positions start[s].., cache kv[s] (rows of ldkv
/// floats; head h reads columns (h / (heads / kv_heads))·d ..), output at out + row0[s]·ldo.
/// Parallel over (sequence, head, block of 64 query rows).
void causal_attention_batch(const float* q, int64_t ldq, const std::vector<KvBlocks>& kv,
                            int64_t ldkv, float* out, int64_t ldo, const std::vector<int64_t>& row0,
                            const std::vector<int64_t>& n, const std::vector<int64_t>& start,
                            int64_t heads, int64_t kv_heads, int64_t d, float scale);

}  // namespace deltamoe::kernels
