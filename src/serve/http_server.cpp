// The classifier's HTTP API on HttpFrontend (the layer has a stub when libmicrohttpd is absent).
#include "deltamoe/serve/http_server.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"

namespace deltamoe::serve {

bool http_available() {
  return http_frontend_available();
}

namespace {

using SteadyTime = std::chrono::steady_clock;
using Headers = std::vector<std::pair<std::string, std::string>>;

}  // namespace

struct HttpServer::Impl {
  std::shared_ptr<serve::ExpertQueueRuntime> runtime;
  ServerConfig config;
  std::unique_ptr<HttpFrontend> http;
  mutable std::mutex mu;
  serve::Histogram request_seconds = HttpCounters{}.request_seconds;  // classify only
  std::atomic<bool> ready{true};
  std::atomic<int> inflight_requests{0};
  bool stopped = false;

  void observe(SteadyTime::time_point t0) {
    const double s = std::chrono::duration<double>(SteadyTime::now() - t0).count();
    std::lock_guard<std::mutex> lk(mu);
    request_seconds.observe(s);
  }

  void reply_error(HttpExchange& ex, int status, std::string_view reason) {
    Headers headers;
    if (status == 503) headers.emplace_back("Retry-After", std::to_string(config.retry_after_s));
    ex.reply(status, "application/json", error_json(reason), std::move(headers));
  }

  // On a polling thread: admission, parsing, and submission; the runtime's callback replies.
  void classify(const std::shared_ptr<HttpExchange>& ex) {
    const auto t0 = SteadyTime::now();
    const auto refuse = [&](int status, std::string_view reason) {
      observe(t0);
      reply_error(*ex, status, reason);
    };
    if (!ready.load()) return refuse(503, "server is draining");
    // Under overload most requests are turned away; deciding before the body is parsed
    // (base64 and JSON were a fifth of the server's CPU at 2x capacity) leaves that CPU to
    // the requests that are admitted.
    if (runtime->reject_if_full()) return refuse(503, "queues full, retry later");
    const int bound = config.max_inflight_requests;
    if (inflight_requests.fetch_add(1) >= bound && bound > 0) {
      inflight_requests.fetch_sub(1);
      return refuse(503, "too many requests in flight, retry later");
    }
    ParsedImages images;
    try {
      images =
          parse_classify_body(ex->request().body, runtime->model().input_dim(),
                              std::min(config.max_images, runtime->config().max_request_samples));
    } catch (const Error& e) {
      inflight_requests.fetch_sub(1);
      return refuse(400, e.what());
    }
    // Counters first, then the reply: a client that reads its answer and asks /metrics (or
    // sends its next request) sees them.
    const bool admitted = runtime->submit(images.pixels.data(), images.count,
                                          [this, ex, t0](serve::RequestResult&& r) {
                                            std::string body = classify_response_json(r);
                                            inflight_requests.fetch_sub(1);
                                            observe(t0);
                                            ex->reply(200, "application/json", std::move(body));
                                          });
    if (!admitted) {
      inflight_requests.fetch_sub(1);
      refuse(503, "queues full, retry later");
    }
  }

  void healthz(HttpExchange& ex) {
    const bool ok = ready.load();
    const nlohmann::json body = {{"status", ok ? "ok" : "draining"},
                                 {"model", runtime->model().name()},
                                 {"routing", runtime->policy().name()},
                                 {"mode", serve::batching_mode_name(runtime->config().mode)},
                                 {"queue_size", runtime->config().max_batch},
                                 {"queue_timeout_us", runtime->config().timeout_us}};
    ex.reply(ok ? 200 : 503, "application/json", body.dump());
  }

  HttpCounters counters() const {
    HttpCounters c;
    {
      std::lock_guard<std::mutex> lk(mu);
      c.request_seconds = request_seconds;
    }
    const HttpFrontendStats s = http->stats();
    c.responses_by_status = s.responses_by_status;
    c.connections_open = s.connections_open;
    c.connections_total = s.connections_total;
    c.connections_refused = s.connections_refused;
    c.ready = ready.load();
    return c;
  }
};

HttpServer::HttpServer(std::shared_ptr<serve::ExpertQueueRuntime> runtime, ServerConfig config)
    : impl_(std::make_unique<Impl>()) {
  DELTAMOE_CHECK(runtime, "serve", "server needs a runtime");
  DELTAMOE_CHECK(config.threads >= 1, "serve", "--http-threads must be >= 1");
  DELTAMOE_CHECK(config.max_inflight_requests >= 0, "serve",
                 "--max-inflight-requests must be >= 0");
  impl_->runtime = std::move(runtime);
  impl_->config = std::move(config);
  const ServerConfig& sc = impl_->config;
  HttpLimits limits;
  limits.max_body_bytes = sc.max_body_bytes;
  limits.max_connections = sc.max_connections;
  limits.idle_timeout_s = sc.idle_timeout_s;
  limits.threads = sc.threads;
  impl_->http = std::make_unique<HttpFrontend>(limits);
  Impl* impl = impl_.get();
  impl->http->route("POST", "/v1/classify",
                    [impl](std::shared_ptr<HttpExchange> ex) { impl->classify(ex); });
  impl->http->route("GET", "/healthz",
                    [impl](std::shared_ptr<HttpExchange> ex) { impl->healthz(*ex); });
  impl->http->route("GET", "/metrics", [impl](std::shared_ptr<HttpExchange> ex) {
    ex->reply(200, "text/plain; version=0.0.4",
              render_prometheus(impl->runtime->stats(), impl->counters()));
  });
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::start() {
  impl_->http->start(impl_->config.host, impl_->config.port);
  port_ = impl_->http->port();
}

void HttpServer::stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  impl_->ready = false;
  // Drain first: admitted requests get their answers (T = ∞ included) while the layer still
  // serves; requests arriving meanwhile are turned away with 503. Then the layer waits until
  // those answers are sent and closes every connection.
  impl_->runtime->shutdown();
  impl_->http->stop(impl_->config.drain_timeout_s);
}

HttpCounters HttpServer::counters() const {
  return impl_->counters();
}

}  // namespace deltamoe::serve
