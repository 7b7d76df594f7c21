// HTTP front end on cpp-httplib (built only when CMake found it; a stub otherwise).
#include "deltamoe/serve/http_server.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"

#ifdef DELTAMOE_HAVE_HTTPLIB
#include <httplib.h>
#endif

namespace deltamoe::serve {

#ifdef DELTAMOE_HAVE_HTTPLIB

bool http_available() { return true; }

namespace {

// Debian's cpp-httplib is compiled with a listen backlog of 5: a burst of new connections
// then overflows the accept queue, and clients see resets and read errors under load.
// Calling listen() again on the bound socket raises the backlog (POSIX allows it; Linux
// applies the new value).
class Server final : public httplib::Server {
 public:
  bool raise_backlog(int backlog) { return ::listen(svr_sock_, backlog) == 0; }
};

}  // namespace

struct HttpServer::Impl {
  std::shared_ptr<serve::ExpertQueueRuntime> runtime;
  ServerConfig config;
  Server server;
  std::thread thread;
  mutable std::mutex mu;
  HttpCounters counters;
  std::atomic<bool> ready{true};
  std::atomic<int> inflight_requests{0};
  int max_inflight_requests = 1;
  bool stopped = false;

  void count(int status, double seconds, bool timed) {
    std::lock_guard<std::mutex> lk(mu);
    ++counters.responses_by_status[status];
    if (timed) counters.request_seconds.observe(seconds);
  }

  void reply_error(httplib::Response& res, int status, std::string_view reason) {
    res.status = status;
    if (status == 503) res.set_header("Retry-After", std::to_string(config.retry_after_s));
    res.set_content(error_json(reason), "application/json");
  }

  void classify(const httplib::Request& req, httplib::Response& res) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto elapsed = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    if (!ready.load()) {
      reply_error(res, 503, "server is draining");
      count(503, elapsed(), true);
      return;
    }
    // Under overload most requests are turned away; deciding before the body is parsed
    // (base64 and JSON were a fifth of the server's CPU at 2x capacity) leaves that CPU to
    // the requests that are admitted.
    if (runtime->reject_if_full()) {
      reply_error(res, 503, "queues full, retry later");
      count(503, elapsed(), true);
      return;
    }
    if (inflight_requests.fetch_add(1) >= max_inflight_requests) {
      inflight_requests.fetch_sub(1);
      reply_error(res, 503, "too many requests in flight, retry later");
      count(503, elapsed(), true);
      return;
    }
    struct Release {
      std::atomic<int>& n;
      ~Release() { n.fetch_sub(1); }
    } release{inflight_requests};
    ParsedImages images;
    try {
      images = parse_classify_body(req.body, runtime->model().input_dim(),
                                   std::min(config.max_images, runtime->config().max_request_samples));
    } catch (const Error& e) {
      reply_error(res, 400, e.what());
      count(400, elapsed(), true);
      return;
    }
    auto promise = std::make_shared<std::promise<serve::RequestResult>>();
    auto future = promise->get_future();
    const bool admitted = runtime->submit(images.pixels.data(), images.count,
                                          [promise](serve::RequestResult&& r) { promise->set_value(std::move(r)); });
    if (!admitted) {
      reply_error(res, 503, "queues full, retry later");
      count(503, elapsed(), true);
      return;
    }
    const serve::RequestResult result = future.get();  // admitted: always answered
    res.status = 200;
    res.set_content(classify_response_json(result), "application/json");
    count(200, elapsed(), true);
  }
};

HttpServer::HttpServer(std::shared_ptr<serve::ExpertQueueRuntime> runtime, ServerConfig config)
    : impl_(std::make_unique<Impl>()) {
  DELTAMOE_CHECK(runtime, "serve", "server needs a runtime");
  DELTAMOE_CHECK(config.threads >= 1, "serve", "--http-threads must be >= 1");
  DELTAMOE_CHECK(config.max_inflight_requests >= 0, "serve", "--max-inflight-requests must be >= 0");
  impl_->runtime = std::move(runtime);
  impl_->config = std::move(config);
  Impl* impl = impl_.get();
  impl->max_inflight_requests = impl->config.max_inflight_requests > 0 ? impl->config.max_inflight_requests
                                                                        : std::max(1, impl->config.threads / 2);
  auto& svr = impl->server;
  const int threads = impl->config.threads;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  svr.set_payload_max_length(impl->config.max_body_bytes);
  svr.set_keep_alive_max_count(1000000);
  svr.set_tcp_nodelay(true);  // else Nagle + delayed ACK add ~40 ms to small responses
  svr.Post("/v1/classify", [impl](const httplib::Request& req, httplib::Response& res) { impl->classify(req, res); });
  svr.Get("/healthz", [impl](const httplib::Request&, httplib::Response& res) {
    const bool ok = impl->ready.load();
    res.status = ok ? 200 : 503;
    nlohmann::json body = {{"status", ok ? "ok" : "draining"}, {"model", impl->runtime->model().name()},
                           {"routing", impl->runtime->policy().name()},
                           {"mode", serve::batching_mode_name(impl->runtime->config().mode)},
                           {"queue_size", impl->runtime->config().max_batch},
                           {"queue_timeout_us", impl->runtime->config().timeout_us}};
    res.set_content(body.dump(), "application/json");
    impl->count(res.status, 0.0, false);
  });
  svr.Get("/metrics", [impl](const httplib::Request&, httplib::Response& res) {
    HttpCounters c;
    {
      std::lock_guard<std::mutex> lk(impl->mu);
      c = impl->counters;
    }
    c.ready = impl->ready.load();
    res.set_content(render_prometheus(impl->runtime->stats(), c), "text/plain; version=0.0.4");
    impl->count(200, 0.0, false);
  });
  // Errors httplib produces itself (413 for oversized bodies, 404, 400 on broken HTTP) get a
  // JSON reason like ours.
  svr.set_error_handler([impl](const httplib::Request&, httplib::Response& res) {
    // httplib calls this for every status >= 400, ours included; those already have a body
    // and were counted.
    if (!res.body.empty()) return;
    const char* reason = res.status == 413 ? "body too large" : res.status == 404 ? "no such endpoint" : "bad request";
    res.set_content(error_json(reason), "application/json");
    impl->count(res.status, 0.0, false);
  });
  svr.set_exception_handler([impl](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    impl->reply_error(res, 500, what);
    impl->count(500, 0.0, false);
  });
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::start() {
  auto& svr = impl_->server;
  if (impl_->config.port == 0) {
    port_ = svr.bind_to_any_port(impl_->config.host);
    DELTAMOE_CHECK(port_ > 0, "serve", "cannot bind ", impl_->config.host, " to a free port");
  } else {
    DELTAMOE_CHECK(svr.bind_to_port(impl_->config.host, impl_->config.port), "serve", "cannot bind ",
                   impl_->config.host, ":", impl_->config.port, " (in use?)");
    port_ = impl_->config.port;
  }
  DELTAMOE_CHECK(svr.raise_backlog(4096), "serve", "cannot set the listen backlog");
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
}

void HttpServer::stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  impl_->ready = false;
  // Drain first: handlers blocked on admitted requests get their answers (T = ∞ included);
  // requests arriving meanwhile are turned away with 503.
  impl_->runtime->shutdown();
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

HttpCounters HttpServer::counters() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  HttpCounters c = impl_->counters;
  c.ready = impl_->ready.load();
  return c;
}

#else  // no cpp-httplib

bool http_available() { return false; }
struct HttpServer::Impl {};
HttpServer::HttpServer(std::shared_ptr<serve::ExpertQueueRuntime>, ServerConfig) {
  fail("serve", "deltamoe was built without cpp-httplib (install libcpp-httplib-dev and reconfigure)");
}
HttpServer::~HttpServer() = default;
void HttpServer::start() {}
void HttpServer::stop() {}
HttpCounters HttpServer::counters() const { return {}; }

#endif

}  // namespace deltamoe::serve
