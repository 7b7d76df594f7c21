// The MoE decoder's per-pass state, shared by the forward files of models/moe_lm.h
// (moe_lm_forward.cpp, moe_lm_offload.cpp). Not a public header.
#pragma once

#include <cstring>
#include <vector>

#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/llm.h"
#include "deltamoe/models/moe_lm.h"

namespace deltamoe::models {

struct MoeLm::Pass {
  std::vector<const int32_t*> toks;
  std::vector<int64_t> counts, row0, start;
  std::vector<KvCache*> caches;
  std::vector<int64_t> resume;   // the layer a held token resumes at; −1: fresh tokens
  std::vector<uint8_t> stopped;  // held at a layer of this pass
  int64_t rows = 0;
  // Scratch, sized for all rows.
  std::vector<float> x, qkv, att, y, hc;
  std::vector<std::vector<const float*>> kblocks, vblocks;
  std::vector<std::vector<const uint16_t*>> kblocks16, vblocks16;  // an f16 cache's
  // Expert cache: the experts prefetched for MoE layer `predicted_layer` (ordinal).
  std::vector<int32_t> predicted;
  int64_t predicted_layer = -1;
};

struct MoeLm::RowSet {
  std::vector<size_t> seqs;                  // indices into the pass
  std::vector<int64_t> row0, counts, start;  // per sequence; rows within the set
  std::vector<KvCache*> caches;
  std::vector<int32_t> seq_of_row;  // pass index of each row
  int64_t rows = 0;
  bool all = false;  // every row of the pass in pass order: h is used as it is

  // The sequences of `p` for which keep(s) holds.
  template <class Keep>
  RowSet(const Pass& p, Keep keep) {
    for (size_t s = 0; s < p.caches.size(); ++s) {
      if (!keep(s)) continue;
      seqs.push_back(s);
      row0.push_back(rows);
      counts.push_back(p.counts[s]);
      start.push_back(p.start[s]);
      caches.push_back(p.caches[s]);
      for (int64_t i = 0; i < p.counts[s]; ++i) seq_of_row.push_back(static_cast<int32_t>(s));
      rows += p.counts[s];
    }
    all = seqs.size() == p.caches.size();
  }
  // Copies the set's rows of `h` (the pass's rows, `w` floats each) to `out`, or back.
  void gather(const Pass& p, const float* h, float* out, int64_t w) const {
    for (size_t j = 0; j < seqs.size(); ++j)
      std::memcpy(out + row0[j] * w, h + p.row0[seqs[j]] * w,
                  static_cast<size_t>(counts[j] * w) * sizeof(float));
  }
  void scatter(const Pass& p, const float* in, float* h, int64_t w) const {
    for (size_t j = 0; j < seqs.size(); ++j)
      std::memcpy(h + p.row0[seqs[j]] * w, in + row0[j] * w,
                  static_cast<size_t>(counts[j] * w) * sizeof(float));
  }
};

// x[n, hd] = RMSNorm(h) with `weight`: an FFN's input.
inline void norm_rows(const float* h, const float* weight, float* x, int64_t n, int64_t hd,
                      float eps) {
  parallel_for(n, 8, [&](int64_t b, int64_t e) {
    kernels::rms_norm_rows_st(h + b * hd, weight, x + b * hd, e - b, hd, hd, eps);
  });
}

inline void add_rows(float* h, const float* y, int64_t n) {
  parallel_for(n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) h[i] += y[i];
  });
}

}  // namespace deltamoe::models
