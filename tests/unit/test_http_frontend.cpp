// The event-driven HTTP layer over loopback with raw sockets: routing (404, 405 + Allow), the
// limits (413 by Content-Length and mid-chunked-body, 414, 431, connection limit, idle
// timeout), asynchronous replies and streams from other threads, client_gone(), a dropped
// exchange, hundreds of idle and half-sent connections, and stop() draining. No timing
// thresholds: every wait is bounded (30 s socket timeouts, 10 s polls) and only generous.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/serve/http_frontend.h"
#include "unit/http_test_util.h"

using namespace deltamoe;
using namespace deltamoe::serve;
using deltamoe::test::raw_request;
using deltamoe::test::RawConn;
using deltamoe::test::RawResponse;

#ifdef DELTAMOE_HAVE_MICROHTTPD

namespace {

template <typename F>
bool eventually(F cond, double seconds = 10.0) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

std::string error_of(const RawResponse& r) {
  const auto j = nlohmann::json::parse(r.body, nullptr, false);
  return j.is_object() && j.contains("error") && j["error"].is_string()
             ? j["error"].get<std::string>()
             : "<not an error JSON: " + r.body + ">";
}

// An error response: the status and a JSON reason that contains `needle`.
void expect_error(const RawResponse& r, int status, const std::string& needle) {
  EXPECT_EQ(r.status, status);
  const auto type = r.headers.find("content-type");
  EXPECT_TRUE(type != r.headers.end() && type->second == "application/json");
  EXPECT_NE(error_of(r).find(needle), std::string::npos) << r.body;
}

// A frontend with the routes the tests use; producer threads are joined before it stops.
class HttpFrontendTest : public ::testing::Test {
 protected:
  void SetUp() override { start({}); }
  void TearDown() override {
    for (auto& t : workers_) t.join();
    http_->stop(1.0);
  }

  void start(HttpLimits limits) {
    if (http_) http_->stop(0.0);
    limits.max_body_bytes = 256 << 10;
    http_ = std::make_unique<HttpFrontend>(limits);
    http_->route("GET", "/hello",
                 [](std::shared_ptr<HttpExchange> ex) { ex->reply(200, "text/plain", "hello"); });
    http_->route("POST", "/echo", [](std::shared_ptr<HttpExchange> ex) {
      const HttpRequest& rq = ex->request();
      const auto q = rq.query.find("q");
      const auto h = rq.headers.find("x-test");
      ex->reply(200, "application/octet-stream", rq.body,
                {{"X-Query", q == rq.query.end() ? "" : q->second},
                 {"X-Header", h == rq.headers.end() ? "" : h->second}});
    });
    http_->route("GET", "/later", [this](std::shared_ptr<HttpExchange> ex) {
      spawn([ex] {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        ex->reply(200, "text/plain", "later");
      });
    });
    http_->route("GET", "/stream", [this](std::shared_ptr<HttpExchange> ex) {
      spawn([this, ex] {
        ex->begin_stream(200, "text/event-stream");
        for (const char* part : {"data: a\n\n", "data: bb\n\n", "data: ccc\n\n"}) {
          std::this_thread::sleep_for(std::chrono::milliseconds(stream_gap_ms_));
          ex->write(part);
        }
        stream_ended_ = true;  // before end(): stop() may return as soon as the end is sent
        ex->end();
      });
    });
    http_->route("GET", "/endless", [this](std::shared_ptr<HttpExchange> ex) {
      ex->begin_stream(200, "text/plain");
      spawn([this, ex] {  // writes until the client is gone (30 s at most)
        for (int i = 0; i < 3000 && !ex->client_gone(); ++i) {
          ex->write("tick " + std::to_string(i) + "\n");
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        saw_client_gone_ = ex->client_gone();
        ex->end();
      });
    });
    http_->route("GET", "/drop", [](std::shared_ptr<HttpExchange>) {});
    http_->route("GET", "/throw",
                 [](std::shared_ptr<HttpExchange>) { throw std::runtime_error("handler failed"); });
    http_->route("GET", "/never", [this](std::shared_ptr<HttpExchange> ex) {
      std::lock_guard<std::mutex> lk(mu_);
      held_.push_back(ex);
    });
    http_->start("127.0.0.1", 0);
    ASSERT_GT(http_->port(), 0);
  }

  template <typename F>
  void spawn(F f) {
    std::lock_guard<std::mutex> lk(mu_);
    workers_.emplace_back(std::move(f));
  }

  RawResponse get(const std::string& bytes) {
    RawConn c(http_->port());
    EXPECT_TRUE(c.ok());
    c.send_all(bytes);
    return c.read_response();
  }

  std::unique_ptr<HttpFrontend> http_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
  std::vector<std::shared_ptr<HttpExchange>> held_;
  int stream_gap_ms_ = 20;
  std::atomic<bool> stream_ended_{false};
  std::atomic<bool> saw_client_gone_{false};
};

TEST_F(HttpFrontendTest, RoutesAnd404And405WithAllow) {
  EXPECT_TRUE(http_frontend_available());
  RawResponse r = get(raw_request("GET", "/hello"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello");
  expect_error(get(raw_request("GET", "/nope")), 404, "no such endpoint");
  r = get(raw_request("DELETE", "/echo"));
  expect_error(r, 405, "DELETE is not allowed here (allowed: POST)");
  EXPECT_EQ(r.headers["allow"], "POST");
  const auto st = http_->stats();
  EXPECT_EQ(st.responses_by_status.at(200), 1u);
  EXPECT_EQ(st.responses_by_status.at(404), 1u);
  EXPECT_EQ(st.responses_by_status.at(405), 1u);
  EXPECT_GE(st.connections_total, 3u);
}

TEST_F(HttpFrontendTest, PassesBodyQueryAndLowerCasedHeaders) {
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  // Two requests on one keep-alive connection, the second with a chunked body.
  ASSERT_TRUE(c.send_all(raw_request("POST", "/echo?q=a%20b&z", "body!", "X-Test: yes\r\n")));
  RawResponse r = c.read_response();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "body!");
  EXPECT_EQ(r.headers["x-query"], "a b");
  EXPECT_EQ(r.headers["x-header"], "yes");
  ASSERT_TRUE(
      c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
  r = c.read_response();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "hello world");
}

TEST_F(HttpFrontendTest, ContentLengthOverTheLimitGets413BeforeTheBody) {
  // Only the headers: the answer must come without the body being sent.
  RawResponse r = get("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n");
  expect_error(r, 413, "body larger than 262144 bytes");
  EXPECT_EQ(r.headers["connection"], "close");
  // A client waiting for 100 Continue gets the 413 instead.
  expect_error(get("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n"
                   "Expect: 100-continue\r\n\r\n"),
               413, "body larger than 262144 bytes");
}

// A transfer coding other than chunked has no end but the close: 501 at once.
TEST_F(HttpFrontendTest, UnknownTransferCodingGets501AtOnce) {
  expect_error(get("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"), 501,
               "transfer coding \"gzip\"");
}

// A refused request with a small body (up to 1 MiB): the body is read and dropped, then the
// refusal sent, and the connection stays usable.
TEST_F(HttpFrontendTest, SmallRefusedBodiesAreDroppedAndTheConnectionKept) {
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.send_all(raw_request("POST", "/echo", std::string(300 << 10, 'x'))));
  RawResponse r = c.read_response();
  expect_error(r, 413, "body larger than 262144 bytes");
  ASSERT_TRUE(c.send_all(raw_request("POST", "/nope", "some body")));
  EXPECT_EQ(c.read_response().status, 404);
  ASSERT_TRUE(c.send_all(raw_request("POST", "/echo", "after")));
  r = c.read_response();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "after");
}

// 50 MB chunked against a 256 KiB limit: 413 arrives, and the server stops reading (the sender
// cannot push all of it), so nothing near 50 MB is ever buffered.
TEST_F(HttpFrontendTest, ChunkedBodyOverTheLimitGets413AndIsNotBuffered) {
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.send_all("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"));
  const size_t total = 50u << 20, piece = 64u << 10;
  std::atomic<size_t> sent{0};
  std::thread sender([&] {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "%zx\r\n", piece);
    const std::string chunk = hex + std::string(piece, 'x') + "\r\n";
    while (sent < total && c.send_all(chunk)) sent += piece;
  });
  RawResponse r = c.read_response();
  sender.join();
  expect_error(r, 413, "body larger than 262144 bytes");
  EXPECT_EQ(r.headers["connection"], "close");
  EXPECT_LT(sent.load(), total) << "the server read the whole 50 MB";
  std::printf("chunked flood: %.1f MB sent before the server closed\n", sent.load() / 1e6);
  EXPECT_EQ(http_->stats().responses_by_status.at(413), 1u);
  // The server still serves.
  EXPECT_EQ(get(raw_request("GET", "/hello")).status, 200);
}

TEST_F(HttpFrontendTest, LongRequestLinesGet414) {
  // Over max_url_bytes (8 KiB) but within libmicrohttpd's buffer: our 414 with a JSON reason.
  expect_error(get(raw_request("GET", "/hello?x=" + std::string(10 << 10, 'a'))), 414,
               "request line longer than 8192 bytes");
  // 1 MB: libmicrohttpd's buffer overflows first, it answers 414 itself.
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  c.send_all("GET /hello?x=" + std::string(1 << 20, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(c.read_response().status, 414);
  EXPECT_TRUE(eventually([&] {
    return http_->stats().responses_by_status.count(414) &&
           http_->stats().responses_by_status.at(414) == 2;
  }));
}

TEST_F(HttpFrontendTest, LargeHeadersGet431) {
  const std::string big = "X-Big: " + std::string(40 << 10, 'b') + "\r\n";
  expect_error(get(raw_request("GET", "/hello", "", big)), 431, "headers larger than 32768 bytes");
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  c.send_all(raw_request("GET", "/hello", "", "X-Huge: " + std::string(1 << 20, 'h') + "\r\n"));
  EXPECT_EQ(c.read_response().status, 431);
}

TEST_F(HttpFrontendTest, ReplyFromAnotherThreadAfterADelay) {
  const RawResponse r = get(raw_request("GET", "/later"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "later");
}

TEST_F(HttpFrontendTest, StreamWrittenFromAnotherThreadIsChunked) {
  RawResponse r = get(raw_request("GET", "/stream"));
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.chunked);
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(r.headers["content-type"], "text/event-stream");
  EXPECT_EQ(r.body, "data: a\n\ndata: bb\n\ndata: ccc\n\n");
}

TEST_F(HttpFrontendTest, ClientGoneAfterTheClientLeavesMidStream) {
  {
    RawConn c(http_->port());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c.send_all(raw_request("GET", "/endless")));
    char buf[256];
    ASSERT_GT(::recv(c.fd(), buf, sizeof(buf), 0), 0);  // the stream has begun
  }                                                     // closed
  std::unique_lock<std::mutex> lk(mu_);
  ASSERT_EQ(workers_.size(), 1u);
  std::thread producer = std::move(workers_.back());
  workers_.clear();
  lk.unlock();
  producer.join();  // it stops when client_gone() turns true (or after 30 s)
  EXPECT_TRUE(saw_client_gone_);
}

TEST_F(HttpFrontendTest, DroppedExchangeOrThrowingHandlerGets500) {
  expect_error(get(raw_request("GET", "/drop")), 500, "without a reply");
  expect_error(get(raw_request("GET", "/throw")), 500, "handler failed");
}

// 300 idle connections and 50 that sent half a request hold no thread: a new request is
// answered at once (bounded here by 10 s, printed).
TEST_F(HttpFrontendTest, IdleAndHalfSentConnectionsDoNotStarveOthers) {
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < 350; ++i) {
    conns.push_back(std::make_unique<RawConn>(http_->port()));
    ASSERT_TRUE(conns.back()->ok()) << i;
    if (i >= 300) conns.back()->send_all("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Len");
  }
  ASSERT_TRUE(eventually([&] { return http_->stats().connections_open >= 350; }));
  const auto t0 = std::chrono::steady_clock::now();
  RawConn c(http_->port(), 10);
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.send_all(raw_request("GET", "/hello")));
  const RawResponse r = c.read_response();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("GET /hello with 300 idle + 50 half-sent connections: %.2f ms\n", s * 1e3);
  EXPECT_EQ(r.status, 200);
  EXPECT_LT(s, 10.0);
}

TEST_F(HttpFrontendTest, StopFinishesAStreamInProgress) {
  stream_gap_ms_ = 50;
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.send_all(raw_request("GET", "/stream")));
  ASSERT_TRUE(eventually([&] { return http_->stats().responses_by_status.count(200) > 0; }));
  RawResponse r;
  std::thread reader([&] { r = c.read_response(); });
  http_->stop(30.0);
  const bool ended_when_stopped = stream_ended_;
  reader.join();
  EXPECT_TRUE(ended_when_stopped);
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(r.body, "data: a\n\ndata: bb\n\ndata: ccc\n\n");
  // No longer listening.
  RawConn late(http_->port());
  EXPECT_FALSE(late.ok() && late.send_all(raw_request("GET", "/hello")) &&
               late.read_response().status == 200);
}

// A handler that never answers: stop() waits the drain, then closes the connection (it must
// neither hang nor trip libmicrohttpd's check for suspended connections); a reply after the
// stop is a no-op.
TEST_F(HttpFrontendTest, StopDoesNotWaitForeverForAMissingReply) {
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE(c.send_all(raw_request("GET", "/never")));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard<std::mutex> lk(mu_);
    return !held_.empty();
  }));
  http_->stop(0.2);
  const RawResponse r = c.read_response();
  EXPECT_TRUE(r.status == 503 || r.status == -1) << r.status;
  std::lock_guard<std::mutex> lk(mu_);
  held_[0]->reply(200, "text/plain", "too late");
  held_.clear();
}

TEST_F(HttpFrontendTest, ConnectionLimitClosesNewConnectionsAtAccept) {
  HttpLimits limits;
  limits.max_connections = 4;
  start(limits);
  std::vector<std::unique_ptr<RawConn>> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(std::make_unique<RawConn>(http_->port()));
  ASSERT_TRUE(eventually([&] { return http_->stats().connections_open == 4; }));
  RawConn extra(http_->port());
  ASSERT_TRUE(extra.ok());  // the kernel accepts; the server closes it at once
  EXPECT_TRUE(extra.closed_by_peer());
  EXPECT_EQ(http_->stats().connections_refused, 1u);
  conns.clear();
  ASSERT_TRUE(eventually([&] { return http_->stats().connections_open == 0; }));
  EXPECT_EQ(get(raw_request("GET", "/hello")).status, 200);
}

TEST_F(HttpFrontendTest, IdleConnectionsAreClosedAfterTheTimeout) {
  HttpLimits limits;
  limits.idle_timeout_s = 1;
  start(limits);
  RawConn c(http_->port());
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c.closed_by_peer());  // within the 30 s receive timeout
}

}  // namespace

#else

TEST(HttpFrontend, StubSaysItWasNotBuilt) {
  EXPECT_FALSE(http_frontend_available());
  EXPECT_THROW(HttpFrontend{}, Error);
}

#endif
