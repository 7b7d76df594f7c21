// Private to kernels/cpu: the attention kernels behind causal_attention_batch (kernels/llm.h),
// so tests can run each one this CPU supports in one process.
#pragma once

#include <cstdint>
#include <vector>

namespace deltamoe::kernels {

/// One (sequence, head) work item of causal attention: query rows [r0, r1) of a sequence whose
/// first new row is at position `start`, against keys [0, start + r1) with the causal mask.
/// q: row 0 of the sequence, already offset to the head's d columns (row stride ldq); k[b],
/// v[b]: block b's first row (block_tokens rows each), offset to the KV head's columns (row
/// stride ldkv); out: the sequence's row 0 at the head's columns (row stride ldo). `scratch`
/// is reused between calls of one thread. Single-threaded.
using AttendFn = void (*)(const float* q, int64_t ldq, const float* const* k, const float* const* v,
                          int64_t block_tokens, int64_t ldkv, float* out, int64_t ldo, int64_t r0,
                          int64_t r1, int64_t start, int64_t d, float scale,
                          std::vector<float>& scratch);

/// Scores through OpenBLAS sgemm (several rows) or dot products (one row), softmax, then · V.
void attend_blas(const float* q, int64_t ldq, const float* const* k, const float* const* v,
                 int64_t block_tokens, int64_t ldkv, float* out, int64_t ldo, int64_t r0,
                 int64_t r1, int64_t start, int64_t d, float scale, std::vector<float>& scratch);

/// AVX-512 (F) for several query rows: scores of 6 rows x 64 keys per microkernel call against
/// keys transposed 16 at a time in registers, key blocks past a row group's last visible key
/// skipped, softmax, then 6 rows x 64 output columns per call reading V rows in place. Needs
/// attend_avx512_supported(d); a single row goes to attend_blas.
void attend_avx512(const float* q, int64_t ldq, const float* const* k, const float* const* v,
                   int64_t block_tokens, int64_t ldkv, float* out, int64_t ldo, int64_t r0,
                   int64_t r1, int64_t start, int64_t d, float scale, std::vector<float>& scratch);

/// Decode under grouped-query attention: the `group` query heads of one KV head at one
/// position, each seeing `keys` keys; head i's query at q + i·d, its output at out + i·d. K and
/// V are read once for the group: groups of 1-4 by per-key dot products (the single-row path of
/// attend_avx512), larger ones by its 6-row kernel. Needs attend_avx512_supported(d).
void attend_group_avx512(const float* q, int64_t group, const float* const* k,
                         const float* const* v, int64_t block_tokens, int64_t ldkv, float* out,
                         int64_t keys, int64_t d, float scale, std::vector<float>& scratch);

/// attend_group_avx512 through the 6-row kernel whatever the group size (what groups of 1-4
/// took before the dot-product path; for tests and benchmarks).
void attend_group_tiled_avx512(const float* q, int64_t group, const float* const* k,
                               const float* const* v, int64_t block_tokens, int64_t ldkv,
                               float* out, int64_t keys, int64_t d, float scale,
                               std::vector<float>& scratch);

/// attend_group_avx512 and attend_avx512 on an f16 cache (k, v: f16 rows, widened in
/// registers as they are read). Need attend_avx512_supported(d).
void attend_group_f16_avx512(const float* q, int64_t group, const uint16_t* const* k,
                             const uint16_t* const* v, int64_t block_tokens, int64_t ldkv,
                             float* out, int64_t keys, int64_t d, float scale,
                             std::vector<float>& scratch);
void attend_f16_avx512(const float* q, int64_t ldq, const uint16_t* const* k,
                       const uint16_t* const* v, int64_t block_tokens, int64_t ldkv, float* out,
                       int64_t ldo, int64_t r0, int64_t r1, int64_t start, int64_t d, float scale,
                       std::vector<float>& scratch);

/// Whether attend_avx512 runs here for head size d (AVX-512F usable and d a multiple of 16).
bool attend_avx512_supported(int64_t d);

/// The kernel causal_attention_batch uses for head size d on this CPU.
AttendFn best_attend(int64_t d);

}  // namespace deltamoe::kernels
