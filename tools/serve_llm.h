// `deltamoe serve --model DIR` for language models: the OpenAI-compatible server on the
// continuous-batching engine. cmd_serve.cpp picks it when --model is a Hugging Face model
// directory (config.json), and the classifier server otherwise.
#pragma once

#include <signal.h>

#include <CLI/CLI.hpp>
#include <string>

#include "deltamoe/models/moe_lm.h"
#include "deltamoe/serve/http_frontend.h"
#include "lm_common.h"

namespace deltamoe::cli {

/// Flags that only language models take (the rest of serve's vocabulary is shared).
struct LlmServeOptions {
  std::string dtype = "auto";  // auto | f32 | bf16 | int8 (LmCliOptions::dtype)
  std::string weight_layout = "mapped";
  std::string kv_dtype = "auto";  // auto | f32 | f16 (LmCliOptions::kv_dtype)
  int threads = 2;                // set from serve's shared --threads
  double kv_cache_mb = 1024;
  int64_t kv_block = 32;
  int64_t max_batch_tokens = 256;
  int64_t max_running = 16;
  int64_t max_waiting = 256;
  std::string model_name;          // empty: the directory's name
  models::ExpertQueueRule queues;  // from the shared --mode / --queue-size / --queue-timeout-us
  OffloadCliOptions offload;       // --expert-cache and its companions
  std::string parallel = "none";   // --parallel under mpirun: only rank 0 listens
  std::string ep_placement;        // --ep-placement

  /// Sets `queues` from serve's shared flags: --mode continuous (the default for language
  /// models) or per-expert, which needs --queue-size B and --queue-timeout-us T ≥ 0 given
  /// explicitly (the classifier's defaults mean nothing for decode steps). Throws
  /// Error("serve") on a combination that would be ignored or cannot run.
  void set_queues(const std::string& mode, int64_t queue_size, int64_t queue_timeout_us,
                  bool mode_given, bool size_given, bool timeout_given);

  /// Adds the flags (their help says "language models").
  void add(CLI::App& app);
};

/// What both servers share: where to listen and the HTTP limits.
struct ServeHttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string port_file;
  serve::HttpLimits limits;
  int retry_after_s = 1;
};

/// True when `path` is a directory holding config.json (a language model).
bool is_lm_dir(const std::string& path);

/// Loads the model, tokenizer and chat template of `model_dir`, serves until SIGTERM/SIGINT
/// (blocked in the caller's `signals`, taken with sigwait), drains, and returns the exit code
/// (0 when every accepted request was answered).
int run_llm_server(const std::string& model_dir, const std::string& routing,
                   const LlmServeOptions& o, const ServeHttpOptions& http, const sigset_t& signals);

}  // namespace deltamoe::cli
