// The classifier's HTTP API on the event-driven HTTP layer (http_frontend.h): POST /v1/classify,
// GET /healthz, GET /metrics.
//
// Status codes: 200 answered; 400 malformed body (reason in {"error": ...}); 413 body larger
// than max_body_bytes, whatever the transfer encoding; 503 with Retry-After when the runtime's
// admission bound or max_inflight_requests is reached, or the server is draining; and the
// layer's: 404, 405 (with Allow), 414, 431. An admitted request is always answered (the
// runtime never drops).
// Threads: handlers run on the layer's polling threads and never wait: a classify body is
// parsed there and submitted to the runtime, whose callback (on a worker thread) replies. An
// open connection costs no thread, whether idle, slow, or waiting for its answer.
// Thread-safety: start()/stop() from one controlling thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "deltamoe/serve/expert_queue.h"
#include "deltamoe/serve/http_api.h"
#include "deltamoe/serve/http_frontend.h"

namespace deltamoe::serve {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0 = any free port (see HttpServer::port())
  /// Polling threads of the HTTP layer (epoll), each holding any number of connections. They
  /// also parse classify bodies, so more than a few help only when parsing is the bottleneck.
  int threads = 2;
  /// Classify requests admitted at once over HTTP (parsed and in the runtime); beyond it, 503
  /// with Retry-After. 0 = no bound here (the runtime's max_inflight_samples still applies).
  int max_inflight_requests = 256;
  size_t max_body_bytes = 4 << 20;
  int64_t max_images = 64;
  int retry_after_s = 1;
  /// Open connections; more are closed at accept.
  int max_connections = 1024;
  /// A connection silent this long is closed (0 = never).
  int idle_timeout_s = 60;
  /// stop(): how long the answers of admitted requests may take to be sent, after the runtime
  /// has drained.
  double drain_timeout_s = 30.0;
};

/// True when the library was built with libmicrohttpd (the serve command needs it).
bool http_available();

class HttpServer {
 public:
  /// Does not listen yet. Throws Error("http") when libmicrohttpd is not built in.
  HttpServer(std::shared_ptr<serve::ExpertQueueRuntime> runtime, ServerConfig config);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// Binds host:port and serves on background polling threads. Throws Error("http") if it
  /// cannot bind.
  void start();
  /// The bound port (after start()).
  int port() const { return port_; }
  /// Graceful stop: /healthz turns 503, new requests get 503, every admitted request is
  /// answered (the runtime drains) and its answer sent, then every connection is closed.
  /// Idempotent.
  void stop();

  /// Snapshot of the HTTP counters.
  HttpCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace deltamoe::serve
