// The HTTP front end (cpp-httplib): POST /v1/classify, GET /healthz, GET /metrics.
//
// Status codes: 200 answered; 400 malformed body (reason in {"error": ...}); 413 body larger
// than max_body_bytes; 503 with Retry-After when the runtime's admission bound is reached or
// the server is draining. An admitted request is always answered (the runtime never drops).
// Thread-safety: start()/stop() from one controlling thread; handlers run on the server's
// thread pool (one thread per connection, blocked while its request is in the runtime).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "deltamoe/serve/expert_queue.h"
#include "deltamoe/serve/http_api.h"

namespace deltamoe::serve {

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0 = any free port (see HttpServer::port())
  /// Connection threads. Each holds one request while it waits in the runtime, so this bounds
  /// the requests in flight over HTTP; keep it at or above max_inflight_samples / images per
  /// request if batches are to fill.
  int threads = 256;
  /// Classify requests admitted at once over HTTP; beyond it, 503 with Retry-After. 0 means
  /// threads / 2. A handler thread holds its request until it is answered, so without this
  /// bound one-image requests could never reach the runtime's admission bound (max_inflight
  /// samples > threads): the excess would wait, unanswered, in the TCP backlog. Keeping it
  /// below `threads` leaves threads free to turn requests away.
  int max_inflight_requests = 0;
  size_t max_body_bytes = 4 << 20;
  int64_t max_images = 64;
  int retry_after_s = 1;
};

/// True when the library was built with cpp-httplib (the serve command needs it).
bool http_available();

class HttpServer {
 public:
  /// Does not listen yet. Throws Error("serve") when cpp-httplib is not built in.
  HttpServer(std::shared_ptr<serve::ExpertQueueRuntime> runtime, ServerConfig config);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// Binds host:port and serves on a background thread. Throws Error("serve") if it cannot bind.
  void start();
  /// The bound port (after start()).
  int port() const { return port_; }
  /// Graceful stop: /healthz turns 503, new requests get 503, every admitted request is
  /// answered (the runtime drains), then the listener and connection threads stop. Idempotent.
  void stop();

  /// Snapshot of the HTTP counters.
  HttpCounters counters() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace deltamoe::serve
