// Load generator for LLM traffic against an OpenAI-compatible server (ours, or any other on
// loopback): open-loop Poisson arrivals (or closed loop), prompt and output lengths drawn
// from uniform ranges, streaming. Latencies count from each request's SCHEDULED send time
// (no coordinated omission): TTFT (to the first streamed chunk with a choice, text or not), TPOT
// ((end − first token) / (tokens − 1)), end-to-end; goodput is the requests per second that met
// both SLOs.
//
// Prompts are token ids (exact lengths whatever the tokenizer) sent to /v1/completions with
// "ignore_eos": true so that every request generates exactly its drawn output length, as
// vLLM's benchmark does.
// Thread-safety: each call is self-contained.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace deltamoe::serve {

struct LlmLoadConfig {
  double rate_rps = 2.0;     // open loop: mean arrival rate
  double duration_s = 10.0;  // arrivals are scheduled over this long (≤ 600)
  bool closed_loop = false;  // closed loop: `concurrency` requests always outstanding
  int concurrency = 64;      // open loop: most requests in flight (senders); closed loop: all
  int64_t prompt_min = 32, prompt_max = 128;  // prompt tokens, uniform
  int64_t output_min = 32, output_max = 128;  // generated tokens, uniform
  int32_t vocab_lo = 10, vocab_hi = 250;      // prompt ids drawn from [lo, hi)
  double temperature = 0.0;
  bool stream = true;
  std::string model;  // "model" field sent (empty: omitted)
  double slo_ttft_ms = 2000.0, slo_tpot_ms = 200.0;
  /// Open loop, optional second phase: Poisson arrivals at then_rate_rps for then_duration_s
  /// after `duration_s` (e.g. a light load right after an overload, to see recovery).
  double then_rate_rps = 0.0, then_duration_s = 0.0;
  double grace_s = 120.0;  // after the arrivals: wait this long for answers
  uint64_t seed = 1;
};

/// One request of a run, for timelines: times in seconds from the start of the run.
struct LlmRequestRecord {
  double scheduled_s = 0, done_s = 0;
  int status = 0;  // HTTP status, 0 when the transport failed or it was never sent
  double ttft_ms = 0, tpot_ms = 0;
  bool met_slo = false;
};

struct LlmLoadResult {
  std::string mode;
  double offered_rps = 0.0, duration_s = 0.0, wall_s = 0.0;
  int64_t sent = 0, ok = 0, not_sent = 0, met_slo = 0;
  std::map<std::string, int64_t> errors;         // by HTTP status or "transport:..."
  std::vector<double> ttft_ms, tpot_ms, e2e_ms;  // answered requests
  int64_t prompt_tokens = 0, output_tokens = 0;  // over answered requests
  int64_t window_output_tokens = 0;  // tokens of requests finished inside [start, start+duration]
  double mean_experts_sum = 0.0;     // Σ of the server's mean experts per token (deltamoe only)
  std::vector<LlmRequestRecord> requests;  // every request, in schedule order
  /// With a second phase: seconds from its start until every later-scheduled request met
  /// both SLOs (−1 when none did from some point on).
  double recovery_s = -1.0;
};

/// Runs the load against `url` (loopback only). Throws Error("loadgen") on a bad config.
LlmLoadResult run_llm_http_load(const std::string& url, const LlmLoadConfig& config);

/// The timeline as CSV: scheduled_s,done_s,status,ttft_ms,tpot_ms,met_slo per request.
std::string llm_load_timeline_csv(const LlmLoadResult& r);

/// One JSON object: counts, offered and achieved request rates, output tokens/s (over the
/// wall time and over the window), TTFT / TPOT / e2e percentiles (p50, p90, p99, mean) in
/// ms, goodput_rps and slo_attainment, errors by status.
std::string llm_load_result_json(const LlmLoadResult& r, const LlmLoadConfig& c);

}  // namespace deltamoe::serve
