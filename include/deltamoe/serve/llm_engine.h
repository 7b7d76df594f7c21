// The LLM serving engine: continuous batching (iteration-level scheduling, as Orca and vLLM do)
// over a paged KV cache.
//
// One engine thread runs steps. Each step takes one decode token from every running sequence
// and fills the rest of a token budget (max_batch_tokens) with prefill chunks of sequences
// still reading their prompts, then runs them all in one MoeLm::forward_batch, so every MoE
// layer sees the routed tokens of all sequences as one set of per-expert batches. New
// requests join between steps. KV memory comes in blocks from one pool: a request is
// admitted when its prompt's blocks are free; when decode growth runs the pool dry, the
// newest sequence is preempted (its blocks freed, recomputed later from its tokens so far;
// the client sees nothing of it). Past max_waiting queued requests, submit() refuses
// (HTTP 503); nothing admitted is ever dropped.
//
// With per-expert queues across steps (LlmEngineConfig::expert_queues), a decode token whose
// experts' queues are not ready stops at that MoE layer and its sequence skips the step's
// output; the next steps carry it on from there (MoeLm::forward_batch).
//
// Thread-safety: submit(), cancel(), drain() and stats() from any thread. Token callbacks run
// on the engine thread, in order per request, and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "deltamoe/dist/communicator.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/serve/expert_queue.h"

namespace deltamoe::serve {

struct LlmEngineConfig {
  int64_t kv_block_tokens = 32;  // positions per KV block
  /// KV pool size in blocks; 0: as many as kv_cache_bytes holds.
  int64_t kv_blocks = 0;
  size_t kv_cache_bytes = size_t{1} << 30;
  int64_t max_batch_tokens = 256;  // token rows per step (decode tokens + prefill chunks)
  int64_t max_running = 16;        // sequences in the running batch
  int64_t max_waiting = 256;       // queued requests beyond which submit() refuses
  /// Per-expert queues across steps (B rows or T seconds, models::ExpertQueueRule); the
  /// default never holds a token (plain continuous batching).
  models::ExpertQueueRule expert_queues;
  /// serve --parallel, on rank 0 of a model loaded with a parallel layout: every step is
  /// broadcast on this communicator before it runs, so that the other ranks run the same
  /// forward_batch calls (follow_llm_steps). Not owned; outlives the engine. Its collectives
  /// are then called from the engine thread (MPI_THREAD_SERIALIZED).
  dist::Communicator* mirror = nullptr;
};

/// Sampling and stopping of one request.
struct GenerationParams {
  int64_t max_tokens = 16;
  double temperature = 1.0;  // 0: greedy
  double top_p = 1.0;
  uint64_t seed = 0;
  bool has_seed = false;          // else a random seed
  std::vector<std::string> stop;  // generation ends before the first of these strings
  bool ignore_eos = false;
};

/// What a token callback receives.
struct TokenEvent {
  int32_t token = -1;  // −1 on the final event when it carries no new token
  std::string text;    // new text, held back while it could still start a stop string
  bool finished = false;
  std::string finish_reason;  // when finished: "stop", "length", "abort" (cancelled or drained
                              // before it ran), "error" (error holds the reason)
  std::string error;
  // Set on the final event:
  int64_t prompt_tokens = 0, completion_tokens = 0;
  double mean_experts = 0.0;  // real experts per token and MoE layer over this request
  double ttft_s = 0.0;        // submit → first token
};

using TokenCallback = std::function<void(const TokenEvent&)>;

struct LlmEngineStats {
  uint64_t requests_submitted = 0, requests_rejected = 0, requests_finished = 0;
  uint64_t preemptions = 0, steps = 0;
  uint64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_used = 0, kv_blocks_total = 0;
  size_t kv_block_bytes = 0;
  Histogram ttft_s{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
  Histogram tpot_s{{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
  Histogram batch_sequences{{1, 2, 4, 8, 16, 32, 64, 128}};
  Histogram batch_tokens{{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}};
  std::vector<uint64_t> expert_tokens;  // per routed expert, summed over MoE layers
  /// Per routed expert: rows it ran in the latest step, summed over MoE layers (its queue
  /// at that step: every routed token of the step joins its expert's batch).
  std::vector<uint64_t> expert_step_rows;
  /// Per routed expert: rows waiting in its queues (all MoE layers) after the latest step,
  /// from tokens held there (per-expert queues across steps; all 0 without them).
  std::vector<uint64_t> expert_queue_rows;
  uint64_t expert_runs = 0;       // (MoE layer, expert) batches run; rows per run = sum of
                                  // expert_tokens / expert_runs (weights read once per run)
  int64_t held_tokens = 0;        // sequences whose token waits at an MoE layer now
  uint64_t held_token_steps = 0;  // steps that ended with a sequence's token held, summed
  double busy_s = 0.0;            // time in forward passes
  double mean_experts = 0.0;      // real experts per token and MoE layer, all requests
  /// The model's expert cache (--expert-cache), when it has one: its counters since load.
  bool has_expert_cache = false;
  models::ExpertCacheStats expert_cache;
  int64_t expert_cache_slots = 0, expert_cache_experts = 0;
};

class LlmEngine {
 public:
  /// Starts the engine thread. Throws Error("engine") on a bad config (a pool that cannot
  /// hold one block, a zero budget).
  LlmEngine(std::shared_ptr<const models::MoeLm> model,
            std::shared_ptr<const io::Tokenizer> tokenizer, LlmEngineConfig config);
  /// Drains (as drain()) and joins the engine thread.
  ~LlmEngine();
  LlmEngine(const LlmEngine&) = delete;
  LlmEngine& operator=(const LlmEngine&) = delete;

  /// Queues a request. Returns its id (≥ 0), or −1 when max_waiting requests are queued or the
  /// engine is draining (the caller answers 503). Throws Error("request") when it can never
  /// run: empty prompt, prompt + max_tokens beyond the model's context, or a prompt needing
  /// more KV blocks than the pool has.
  int64_t submit(std::vector<int32_t> prompt, GenerationParams params, TokenCallback on_token);
  /// Ends a request early (its client went away): finish_reason "abort". Unknown ids: no-op.
  void cancel(int64_t id);
  /// Stops taking requests, lets every accepted one finish, returns when all have (or after
  /// timeout_s, cancelling the rest). Idempotent.
  void drain(double timeout_s = 600.0);

  LlmEngineStats stats() const;
  const models::MoeLm& model() const { return *model_; }
  const io::Tokenizer& tokenizer() const { return *tok_; }
  const LlmEngineConfig& config() const { return config_; }
  /// Context length requests are checked against.
  int64_t context() const { return context_; }

 private:
  struct Impl;
  std::shared_ptr<const models::MoeLm> model_;
  std::shared_ptr<const io::Tokenizer> tok_;
  LlmEngineConfig config_;
  int64_t context_ = 0;
  std::unique_ptr<Impl> impl_;
};

/// The other ranks' side of LlmEngineConfig::mirror: receives the KV pool's shape, then each
/// step rank 0's engine runs (its sequences' ids, cache positions and tokens, and which
/// sequences are still alive), keeps one KV cache per live sequence and runs the same
/// forward_batch on `model` (the same parallel layout and communicator), until rank 0's
/// engine stops. Throws Error("engine") when a step does not continue a sequence's cache.
/// Call on every rank but 0, on the thread that may call MPI.
void follow_llm_steps(const models::MoeLm& model, dist::Communicator& comm);

/// Length of the longest suffix of `text` that is a proper prefix of one of `stops`: the bytes
/// a stream must hold back because a stop string may be starting there.
size_t stop_holdback(const std::string& text, const std::vector<std::string>& stops);

}  // namespace deltamoe::serve
