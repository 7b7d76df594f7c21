// `deltamoe bench model`: prompt processing and generation of a whole language model in
// llama-bench's sense, with the same-run bandwidth roofline of decode and resident memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lm_common.h"

namespace deltamoe::cli {

struct ModelBenchOptions {
  std::string model;
  std::string routing;  // empty: the model's own
  // mapped | packed (LmCliOptions::weight_layout); two to compare them in one process.
  std::vector<std::string> weight_layouts = {"mapped"};
  // auto | f32 | f16 (LmCliOptions::kv_dtype); two to compare them in one process.
  std::vector<std::string> kv_dtypes = {"auto"};
  int64_t prompt = 512;  // -p: tokens of the prompt-processing test (0 = skip)
  int64_t gen = 128;     // -n: tokens of the generation test (0 = skip)
  int64_t depth = 0;     // -d: tokens in the KV cache before each test (prefilled, untimed)
  int repetitions = 3;   // -r
  /// -b: sequences decoding together in the tg test (one forward_batch per step, as a
  /// continuous-batching server runs them); tokens/s counts all of them.
  int64_t decode_batch = 1;
  uint64_t seed = 1;
  OffloadCliOptions offload;      // --expert-cache and its companions
  std::string parallel = "none";  // --parallel (mpirun -np N)
  std::string ep_placement;       // empty: balanced under --parallel ep
  bool threads_explicit = false;  // --threads given
};

/// Runs the benchmark; `dtype` auto|f32|bf16|int8 (auto: models::MoeLm::native_dtype), `threads`,
/// one JSON object on stdout when `json`.
int run_model_bench(const ModelBenchOptions& o, const std::string& dtype, int threads, bool json);

}  // namespace deltamoe::cli
