// The event-driven HTTP layer every server of deltamoe stands on (libmicrohttpd from Debian;
// why that library: docs/design.md). A few polling threads (epoll) hold any number of
// connections, so idle or slow clients cost a socket and a little memory, never a thread.
//
// Handlers never block: they run on a polling thread, look at the request, and either reply
// at once or hand the HttpExchange to another thread, which replies (or streams) later. The
// connection is suspended meanwhile and resumed when the reply or the next chunk arrives.
//
// Limits, enforced before a handler sees the request:
//   request line longer than max_url_bytes                      → 414
//   request line + headers larger than max_header_bytes         → 431
//   body larger than max_body_bytes, whatever the transfer encoding (Content-Length, chunked,
//     or read until close): refused as soon as the excess arrives, never buffered → 413
//   a path with routes but not for this method                  → 405 with an Allow header
//   no route                                                    → 404
//   more than max_connections open connections: new ones are closed at accept
//   no byte from a client for idle_timeout_s: the connection is closed
// Every error body is {"error": "..."} (one line, application/json).
//
// As built on libmicrohttpd 0.9.75 (docs/design.md, "The HTTP layer", has the reasons):
//  - 414 and 431 come with a JSON reason up to about twice the limits; beyond that the request
//    line or headers overflow libmicrohttpd's per-connection memory (2 x max(max_url_bytes,
//    max_header_bytes) + 16 KiB) and it answers 414 (line) or 431 (headers) itself, with its
//    own HTML body. It also answers 400 for broken chunked encoding or Content-Length.
//  - A refused request whose body is on its way (404, 405, 413 by Content-Length, ...) has up
//    to 1 MiB of it read and dropped, then the refusal sent (the connection stays open); a
//    client that sent "Expect: 100-continue" is answered at once. A larger body, or a kept body
//    passing max_body_bytes mid-transfer, gets the answer at once (Connection: close); up to
//    1 MiB more is then dropped, for 2 s at most, before the connection is closed.
//  - A transfer coding other than chunked → 501 at once (libmicrohttpd would read such a body
//    until the client closes).
//  - While stop() runs, new requests → 503 with Connection: close; replies are sent with
//    Connection: close.
//  - The connection limit is exact up to a race between polling threads (one more per thread).
//  - A client that leaves while its connection waits for an answer or the next chunk is
//    noticed when that answer or chunk fails to send (libmicrohttpd does not watch suspended
//    connections): client_gone() turns true then.
//
// Thread-safety: route() before start(); start()/stop() from one controlling thread;
// HttpExchange methods from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace deltamoe::serve {

struct HttpLimits {
  size_t max_body_bytes = 4 << 20;
  size_t max_url_bytes = 8 << 10;
  size_t max_header_bytes = 32 << 10;
  int max_connections = 1024;
  int idle_timeout_s = 60;
  int threads = 2;  // polling threads
};

/// One request as the handler sees it (the body complete and within the limits).
struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string path;    // without the query string
  std::map<std::string, std::string> query;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

/// The reply channel of one request. Exactly one of reply() or begin_stream() (followed by
/// any number of write() and one end()) is called; later calls are ignored. Dropping the last
/// reference without replying sends 500. Thread-safe.
class HttpExchange {
 public:
  virtual ~HttpExchange() = default;
  virtual const HttpRequest& request() const = 0;
  /// A complete response.
  virtual void reply(int status, std::string content_type, std::string body,
                     std::vector<std::pair<std::string, std::string>> headers = {}) = 0;
  /// Starts a response whose body follows in chunks (chunked transfer encoding): server-sent
  /// events, for one.
  virtual void begin_stream(int status, std::string content_type,
                            std::vector<std::pair<std::string, std::string>> headers = {}) = 0;
  /// Appends bytes to a streamed body (queued; sent as the client reads).
  virtual void write(std::string chunk) = 0;
  /// Ends a streamed body.
  virtual void end() = 0;
  /// True once the connection closed before the response was complete: the client left (seen
  /// when a send fails), it timed out, or the server stopped. The producer may stop early.
  virtual bool client_gone() const = 0;
};

using HttpHandler = std::function<void(std::shared_ptr<HttpExchange>)>;

/// Counters of the HTTP layer.
struct HttpFrontendStats {
  uint64_t connections_open = 0;
  uint64_t connections_total = 0;
  uint64_t connections_refused = 0;  // closed at accept: max_connections were open
  /// Every response sent: the handlers', the layer's refusals (404, 405, 413, ...) and those
  /// libmicrohttpd sends by itself (counted from its log).
  std::map<int, uint64_t> responses_by_status;
};

/// True when built with libmicrohttpd (servers need it; a stub otherwise says so at run time).
bool http_frontend_available();

class HttpFrontend {
 public:
  explicit HttpFrontend(HttpLimits limits = {});
  ~HttpFrontend();
  HttpFrontend(const HttpFrontend&) = delete;
  HttpFrontend& operator=(const HttpFrontend&) = delete;

  /// Registers a handler for method + exact path. Before start().
  void route(const std::string& method, const std::string& path, HttpHandler handler);
  /// Binds host:port (0 = any free port) and serves on background polling threads. Throws
  /// Error("http") when it cannot bind or libmicrohttpd is not built in.
  void start(const std::string& host, int port);
  /// The bound port (after start()).
  int port() const;
  /// Answers new requests 503 (the listener stays open until the end), waits up to `drain_s` for
  /// replies still owed (streams included) to be sent, then closes every connection. Idempotent. A
  /// reply still owed after the drain is answered 503 (a stream is cut short); calls on its
  /// exchange are then ignored. The destructor stops with no drain.
  void stop(double drain_s = 30.0);
  HttpFrontendStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace deltamoe::serve
