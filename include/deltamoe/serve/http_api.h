// The HTTP API's pure parts: request body parsing, response JSON, Prometheus text, base64.
// No sockets here, so all of it is unit- and fuzz-tested directly.
//
// POST /v1/classify bodies (JSON object, exactly one of):
//   {"images": [[784 numbers in 0..255], ...]}
//   {"images_b64": ["base64 of 784 raw bytes", ...]}
// Response: {"classes": [c, ...], "probabilities": [[C floats], ...],
//            "experts_used": [[e, ...], ...], "latency_us": [..]}
#pragma once

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "deltamoe/serve/expert_queue.h"
#include "deltamoe/serve/http_frontend.h"
#include "deltamoe/serve/llm_engine.h"

namespace deltamoe::serve {

/// Images decoded from a classify body: pixels[count × dim], values in 0..255.
struct ParsedImages {
  std::vector<float> pixels;
  int64_t count = 0;
};

/// Parses a classify body for images of `dim` pixels, at most `max_images` of them.
/// Throws Error("request") with a one-line reason (the server sends it back with 400) on any
/// malformed body: not JSON, wrong keys, wrong lengths, values outside 0..255, bad base64.
/// Never crashes on arbitrary bytes (fuzz-tested).
ParsedImages parse_classify_body(std::string_view body, int64_t dim, int64_t max_images);

/// The response JSON of one finished request: {"classes": [c], "probabilities": [[C floats]],
/// "experts_used": [[[ids of layer 0], [ids of layer 1], ...]] (per image, per MoE layer, in
/// routing order), "mean_experts": [mean experts per layer], "latency_us": [...]}.
std::string classify_response_json(const serve::RequestResult& result);

/// {"error": reason} (one line).
std::string error_json(std::string_view reason);

/// Standard base64 (RFC 4648, with padding). decode throws Error("request") on bad input.
std::string base64_encode(std::string_view bytes);
std::string base64_decode(std::string_view text);

/// HTTP-level counters the server keeps next to the runtime's.
struct HttpCounters {
  std::map<int, uint64_t> responses_by_status;
  serve::Histogram request_seconds{
      {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5}};
  bool ready = true;
  uint64_t connections_open = 0;
  uint64_t connections_total = 0;
  uint64_t connections_refused = 0;  // closed at accept (the connection limit)
};

/// Prometheus text exposition (format 0.0.4) of the runtime and HTTP counters: request counts
/// by status, request latency histogram (seconds), HTTP connections, sample latency histogram,
/// per-queue depth, batch limit, realised batch sizes, flushes by reason, in-flight samples.
std::string render_prometheus(const serve::RuntimeStats& rt, const HttpCounters& http);

/// Appends histogram `h` in Prometheus text form (cumulative buckets, _sum, _count) as metric
/// `name` with `labels` (e.g. `queue="expert3"`, or empty); values are multiplied by `scale`.
void histogram_text(std::ostringstream& os, const std::string& name, const std::string& labels,
                    const serve::Histogram& h, double scale);

/// Prometheus text of the LLM server: HTTP responses by status and open connections, time to
/// first token and time per output token histograms, batch sizes (sequences and tokens per
/// step), tokens and requests counters, running / waiting requests, KV-cache blocks, mean
/// experts per token, tokens routed to each expert, and each expert's rows in the latest step.
std::string render_llm_prometheus(const LlmEngineStats& st, const HttpFrontendStats& http,
                                  bool ready);

}  // namespace deltamoe::serve
