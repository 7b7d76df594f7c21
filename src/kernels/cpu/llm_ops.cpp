// RMSNorm, RoPE and causal GQA attention (see kernels/llm.h).
#include <algorithm>
#include <cmath>
#include <limits>

#include <immintrin.h>
#include <omp.h>

#include "deltamoe/core/dtype.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"
#include "deltamoe/kernels/cpu_features.h"
#include "deltamoe/kernels/llm.h"
#include "kernels/cpu/attention_impl.h"

namespace deltamoe::kernels {

namespace {
__attribute__((target("avx,f16c"))) void f32_to_f16_row_f16c(const float* src, uint16_t* dst,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}
}  // namespace

void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n) {
  if (cpu_features().f16c) {
    f32_to_f16_row_f16c(src, dst, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_f16(src[i]);
}

void rms_norm_rows_st(const float* x, const float* w, float* y, int64_t rows, int64_t d, int64_t ld,
                      float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld;
    float* yr = y + r * ld;
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(d)) + eps);
    for (int64_t i = 0; i < d; ++i) yr[i] = w[i] * (xr[i] * scale);
  }
}

RopeTable::RopeTable(int64_t head_dim, double theta) : dim_(head_dim) {
  DELTAMOE_CHECK(head_dim > 0 && head_dim % 2 == 0, "kernels", "RoPE needs an even head size, got ",
                 head_dim);
  DELTAMOE_CHECK(theta > 0, "kernels", "RoPE theta must be positive, got ", theta);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq_.push_back(1.0f / std::pow(static_cast<float>(theta), expo));
  }
}

void RopeTable::ensure(int64_t n) {
  if (n <= size_) return;
  const int64_t half = dim_ / 2;
  int64_t grow = std::max<int64_t>(n, 2 * size_);
  cos_.resize(static_cast<size_t>(grow * half));
  sin_.resize(static_cast<size_t>(grow * half));
  for (int64_t p = size_; p < grow; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv_freq_[static_cast<size_t>(i)];
      cos_[static_cast<size_t>(p * half + i)] = std::cos(angle);
      sin_[static_cast<size_t>(p * half + i)] = std::sin(angle);
    }
  size_ = grow;
}

void rope_st(float* x, int64_t heads, const RopeTable& table, int64_t pos) {
  const int64_t d = table.head_dim(), half = d / 2;
  const float* c = table.cos(pos);
  const float* s = table.sin(pos);
  for (int64_t h = 0; h < heads; ++h) {
    float* xh = x + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = xh[i], x2 = xh[i + half];
      xh[i] = x1 * c[i] - x2 * s[i];
      xh[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

void attend_blas(const float* q, int64_t ldq, const float* const* k, const float* const* v,
                 int64_t bt, int64_t ldkv, float* out, int64_t ldo, int64_t r0, int64_t r1,
                 int64_t start, int64_t d, float scale, std::vector<float>& scores) {
  const int64_t rows = r1 - r0, keys = start + r1, nblocks = (keys + bt - 1) / bt;
  scores.resize(static_cast<size_t>(rows * keys));
  float* s = scores.data();
  const auto block_len = [&](int64_t b) { return std::min(bt, keys - b * bt); };
  if (rows == 1) {
    const float* qr = q + r0 * ldq;
    for (int64_t b = 0; b < nblocks; ++b)
      for (int64_t j = 0, nb = block_len(b); j < nb; ++j) {
        const float* kj = k[b] + j * ldkv;
        float acc = 0.0f;
        for (int64_t c = 0; c < d; ++c) acc += qr[c] * kj[c];
        s[b * bt + j] = acc * scale;
      }
  } else {
    for (int64_t b = 0; b < nblocks; ++b)
      sgemm(false, true, rows, block_len(b), d, scale, q + r0 * ldq, ldq, k[b], ldkv, 0.0f,
            s + b * bt, keys);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t visible = start + r0 + r + 1;
    float* sr = s + r * keys;
    for (int64_t j = visible; j < keys; ++j) sr[j] = 0.0f;
    softmax_rows_st(sr, sr, 1, visible);
  }
  if (rows == 1) {
    float* o = out + r0 * ldo;
    std::fill(o, o + d, 0.0f);
    for (int64_t b = 0; b < nblocks; ++b)
      for (int64_t j = 0, nb = block_len(b); j < nb; ++j)
        axpy_st(s[b * bt + j], v[b] + j * ldkv, o, d);
  } else {
    for (int64_t b = 0; b < nblocks; ++b)
      sgemm(false, false, rows, d, block_len(b), 1.0f, s + b * bt, keys, v[b], ldkv,
            b == 0 ? 0.0f : 1.0f, out + r0 * ldo, ldo);
  }
}

void causal_attention(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv,
                      float* out, int64_t ldo, int64_t n, int64_t start, int64_t heads,
                      int64_t kv_heads, int64_t d, float scale) {
  const float* kb[1] = {k};
  const float* vb[1] = {v};
  causal_attention_batch(q, ldq, {KvBlocks{kb, vb, std::max<int64_t>(1, start + n)}}, ldkv, out,
                         ldo, {0}, {n}, {start}, heads, kv_heads, d, scale);
}

namespace {

// Rows [0, keys) of an f16 cache (blocks of bt rows, row stride ld, d values each) as f32 rows
// of d (F16C where the CPU has it).
__attribute__((target("avx,f16c"))) void widen_f16_rows_f16c(const uint16_t* const* blocks,
                                                             int64_t bt, int64_t ld, int64_t keys,
                                                             int64_t d, float* dst) {
  for (int64_t p = 0; p < keys; ++p) {
    const uint16_t* src = blocks[p / bt] + (p % bt) * ld;
    float* row = dst + p * d;
    int64_t c = 0;
    for (; c + 8 <= d; c += 8)
      _mm256_storeu_ps(row + c,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c))));
    for (; c < d; ++c) row[c] = f16_to_f32(src[c]);
  }
}

void widen_f16_rows(const uint16_t* const* blocks, int64_t bt, int64_t ld, int64_t keys, int64_t d,
                    float* dst) {
  if (cpu_features().f16c) {
    widen_f16_rows_f16c(blocks, bt, ld, keys, d, dst);
    return;
  }
  for (int64_t p = 0; p < keys; ++p)
    for (int64_t c = 0; c < d; ++c) dst[p * d + c] = f16_to_f32(blocks[p / bt][(p % bt) * ld + c]);
}

}  // namespace

void causal_attention_batch(const float* q, int64_t ldq, const std::vector<KvBlocks>& kv,
                            int64_t ldkv, float* out, int64_t ldo, const std::vector<int64_t>& row0,
                            const std::vector<int64_t>& n, const std::vector<int64_t>& start,
                            int64_t heads, int64_t kv_heads, int64_t d, float scale) {
  DELTAMOE_CHECK(kv_heads > 0 && heads % kv_heads == 0, "kernels", "attention: ", heads,
                 " heads are not a multiple of ", kv_heads, " KV heads");
  const size_t seqs = n.size();
  DELTAMOE_ASSERT(kv.size() == seqs && row0.size() == seqs && start.size() == seqs);
  for (const KvBlocks& c : kv)
    DELTAMOE_ASSERT(c.block_tokens > 0 && (c.k16 != nullptr) == (c.v16 != nullptr) &&
                    (c.k16 != nullptr) != (c.k != nullptr));
  const int64_t group = heads / kv_heads;
  // Work items: (sequence, head, block of query rows). Blocks of 64 rows keep the score
  // matrix in cache and give a long prompt enough items for every thread; causal rows near
  // the end see more keys, so items are handed out dynamically.
  // A decode row (one new token) under the AVX-512 kernel is one item per KV head: its query
  // heads read the head's keys and values once, together.
  struct Item {
    int64_t s, h, r0, r1;
    int64_t heads;  // query heads from h: 1, or the KV head's group (decode)
  };
  std::vector<Item> items;
  constexpr int64_t kBlock = 64;
  const bool grouped_decode = group > 1 && attend_avx512_supported(d);
  for (size_t s = 0; s < seqs; ++s) {
    const int64_t si = static_cast<int64_t>(s);
    if (grouped_decode && n[s] == 1) {
      for (int64_t h = 0; h < heads; h += group) items.push_back({si, h, 0, 1, group});
      continue;
    }
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r = 0; r < n[s]; r += kBlock)
        items.push_back({si, h, r, std::min(n[s], r + kBlock), 1});
  }
  // Longest first (most keys), so the dynamic schedule ends evenly.
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    return start[a.s] + a.r1 > start[b.s] + b.r1;
  });
  BlasThreadsGuard blas(1);
  const AttendFn attend = best_attend(d);
  const int threads =
      static_cast<int>(std::min<int64_t>(num_threads(), static_cast<int64_t>(items.size())));
#pragma omp parallel num_threads(std::max(1, threads))
  {
    std::vector<float> scores, widened;
    std::vector<const float*> kb, vb;
    std::vector<const uint16_t*> kb16, vb16;
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < items.size(); ++i) {
      const Item& it = items[i];
      const size_t s = static_cast<size_t>(it.s);
      const KvBlocks& c = kv[s];
      const int64_t keys = start[s] + it.r1;
      const int64_t nblocks = (keys + c.block_tokens - 1) / c.block_tokens;
      const int64_t col = (it.h / group) * (c.head_stride > 0 ? c.head_stride : d);
      int64_t bt = c.block_tokens, ld = ldkv;
      if (c.k16 != nullptr) {
        kb16.resize(static_cast<size_t>(nblocks));
        vb16.resize(static_cast<size_t>(nblocks));
        for (int64_t b = 0; b < nblocks; ++b) {
          kb16[static_cast<size_t>(b)] = c.k16[b] + col;
          vb16[static_cast<size_t>(b)] = c.v16[b] + col;
        }
        // The AVX-512 kernels read the f16 rows in place, widening them in registers; OpenBLAS
        // gets this head's keys and values widened once into scratch.
        if (attend_avx512_supported(d)) {
          if (it.heads > 1) {
            attend_group_f16_avx512(q + row0[s] * ldq + it.h * d, it.heads, kb16.data(),
                                    vb16.data(), bt, ld, out + row0[s] * ldo + it.h * d, keys, d,
                                    scale, scores);
          } else {
            attend_f16_avx512(q + row0[s] * ldq + it.h * d, ldq, kb16.data(), vb16.data(), bt, ld,
                              out + row0[s] * ldo + it.h * d, ldo, it.r0, it.r1, start[s], d, scale,
                              scores);
          }
          continue;
        }
        widened.resize(static_cast<size_t>(2 * keys * d));
        widen_f16_rows(kb16.data(), bt, ld, keys, d, widened.data());
        widen_f16_rows(vb16.data(), bt, ld, keys, d, widened.data() + keys * d);
        kb.assign(1, widened.data());
        vb.assign(1, widened.data() + keys * d);
        bt = keys;
        ld = d;
      } else {
        kb.resize(static_cast<size_t>(nblocks));
        vb.resize(static_cast<size_t>(nblocks));
        for (int64_t b = 0; b < nblocks; ++b) {
          kb[static_cast<size_t>(b)] = c.k[b] + col;
          vb[static_cast<size_t>(b)] = c.v[b] + col;
        }
      }
      if (it.heads > 1) {
        attend_group_avx512(q + row0[s] * ldq + it.h * d, it.heads, kb.data(), vb.data(), bt, ld,
                            out + row0[s] * ldo + it.h * d, start[s] + 1, d, scale, scores);
      } else {
        attend(q + row0[s] * ldq + it.h * d, ldq, kb.data(), vb.data(), bt, ld,
               out + row0[s] * ldo + it.h * d, ldo, it.r0, it.r1, start[s], d, scale, scores);
      }
    }
  }
}

}  // namespace deltamoe::kernels
