// The OpenAI-compatible LLM server: HTTP routes (HttpFrontend) over the continuous-batching
// engine (LlmEngine).
//
//   POST /v1/completions, POST /v1/chat/completions   OpenAI shapes; "stream": true gives
//                                                     server-sent events ending in [DONE]
//   GET  /v1/models                                   the one model
//   GET  /healthz                                     200 {"status":"ok"}, 503 when draining
//   GET  /metrics                                     Prometheus text (render_llm_prometheus)
//   GET  /                                            the chat page (static HTML)
// Status codes: 400 malformed or impossible request (OpenAI error shape, reason names the
// field); 503 with Retry-After when the engine's queue is full or the server is draining;
// limits of the HTTP layer as in http_frontend.h. A client that goes away mid-stream has its
// request cancelled.
//
// Thread-safety: start()/stop() from one controlling thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "deltamoe/serve/http_frontend.h"
#include "deltamoe/serve/llm_engine.h"
#include "deltamoe/serve/openai_api.h"

namespace deltamoe::serve {

struct LlmServerConfig {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string model_name = "deltamoe";  // the id /v1/models reports
  HttpLimits limits;
  int retry_after_s = 1;
  /// Renders a conversation into the prompt text (the model's chat template, with the
  /// generation prompt). Empty: /v1/chat/completions answers 400 (no chat template).
  std::function<std::string(const std::vector<ChatTurn>&)> render_chat;
};

class LlmServer {
 public:
  /// Registers the routes; does not listen yet. Throws Error("http") when the HTTP layer is
  /// not built in.
  LlmServer(std::shared_ptr<LlmEngine> engine, LlmServerConfig config);
  ~LlmServer();
  LlmServer(const LlmServer&) = delete;
  LlmServer& operator=(const LlmServer&) = delete;

  /// Binds and serves on background threads. Throws Error("http") if it cannot bind.
  void start();
  int port() const;
  /// Graceful stop: /healthz and new requests get 503, accepted requests (streams too) finish,
  /// then the listener closes. Idempotent.
  void stop(double drain_s = 600.0);
  HttpFrontendStats http_stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The chat page served at / (one static HTML document, no external resources).
const std::string& chat_page_html();

}  // namespace deltamoe::serve
