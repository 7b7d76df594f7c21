// The event-driven HTTP layer on libmicrohttpd (MHD); the contract is in http_frontend.h, the
// choice of library in docs/design.md ("The HTTP layer"). Without MHD a stub refuses to start.
//
// How a request flows (all MHD callbacks run on a polling thread):
//   URI log callback      a RequestCtx per request, with the raw request-target's length;
//   access handler, 1st   limits (414, 431), route (404, 405), transfer coding (501),
//                         Content-Length (413); a refusal is queued at once when no body
//                         follows, else after the body is read and dropped (refuse());
//   access handler, body  bytes counted and kept; past max_body_bytes, or past kLingerBytes of
//                         a refused body, the answer goes straight to the socket (MHD cannot
//                         queue a response mid-body), the write side is shut, and the rest is
//                         dropped for a short while (refuse_now());
//   access handler, last  the handler gets a shared_ptr<HttpExchange>; unless it already
//                         answered, the connection is suspended until reply()/begin_stream()
//                         resume it, and the next call queues the response;
//   content reader        a stream's queued chunks; when none is queued the connection is
//                         suspended (returning 0 is not allowed with internal polling threads:
//                         MHD would busy-wait) and write()/end() resume it;
//   completion callback   the request is over (sent, or the connection closed: client_gone()).
// MHD aborts in MHD_stop_daemon() while a connection is suspended, so stop() forbids new
// suspensions and resumes every suspended connection first.
#include "deltamoe/serve/http_frontend.h"

#include "deltamoe/core/error.h"

#ifdef DELTAMOE_HAVE_MICROHTTPD
#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstring>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "deltamoe/serve/http_api.h"
#endif

namespace deltamoe::serve {

#ifdef DELTAMOE_HAVE_MICROHTTPD

namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

// A refused request's body is read and dropped up to this many bytes before the answer is
// queued; past it (or past max_body_bytes of a body being kept) the answer goes out at once,
// and this many more bytes are dropped (for kLingerSeconds at most) before the connection is
// closed: closing a socket with unread data sends a reset, which some clients act on before
// they read the answer.
constexpr size_t kLingerBytes = 1 << 20;
constexpr unsigned kLingerSeconds = 2;
constexpr size_t kStreamBlock = 16 << 10;

struct Core;

// What one dispatched request shares between MHD's callbacks and its HttpExchange (which any
// thread may hold, and which may outlive the frontend). Guarded by `mu`.
struct Channel : std::enable_shared_from_this<Channel> {
  Channel(std::shared_ptr<Core> c, MHD_Connection* connection)
      : core(std::move(c)), conn(connection) {}
  const std::shared_ptr<Core> core;
  MHD_Connection* const conn;  // resumed only while `suspended` (MHD keeps it until resumed)
  std::mutex mu;
  bool suspended = false;  // by us: waiting for an answer or the next chunk
  bool answered = false;   // reply() or begin_stream() was called
  bool streaming = false;
  bool ended = false;     // end() was called
  bool aborted = false;   // the exchange was dropped mid-stream: the body is cut short
  bool finished = false;  // MHD is done with the request (answered, or the connection closed)
  int status = 0;
  std::string content_type;
  std::string body;
  Headers headers;
  std::deque<std::string> chunks;  // streamed bytes not yet handed to MHD
  size_t chunk_offset = 0;         // into chunks.front()
  std::atomic<bool> gone{false};
};

struct Core : std::enable_shared_from_this<Core> {
  HttpLimits limits;
  std::map<std::string, std::map<std::string, HttpHandler>> routes;  // path -> method -> handler
  MHD_Daemon* daemon = nullptr;
  bool started = false;
  bool stopped = false;
  int port = 0;
  std::atomic<bool> draining{false};  // stop() began: new requests get 503 and Connection: close

  std::atomic<uint64_t> connections_open{0}, connections_total{0}, connections_refused{0};
  mutable std::mutex stats_mu;
  std::map<int, uint64_t> by_status;

  // Requests handed to a handler whose response is not yet sent: stop() waits for them.
  std::mutex owed_mu;
  std::condition_variable owed_cv;
  int64_t owed = 0;

  // The connections we suspended; once `closing` is set (under suspended_mu) none is suspended
  // again, so stop() can resume them all before MHD_stop_daemon().
  std::mutex suspended_mu;
  bool closing = false;
  std::unordered_map<Channel*, std::shared_ptr<Channel>> suspended;
  // MHD_resume_connection() runs under a shared lock while `daemon_alive`; stop() clears it
  // under the exclusive lock before MHD_stop_daemon() frees the connections.
  std::shared_mutex daemon_mu;
  bool daemon_alive = false;

  void count(int status) {
    std::lock_guard<std::mutex> lk(stats_mu);
    ++by_status[status];
  }
  void owed_done() {
    std::lock_guard<std::mutex> lk(owed_mu);
    if (--owed == 0) owed_cv.notify_all();
  }
};

// On the polling thread (from the access handler or the content reader), with ch.mu held:
// suspends the connection until wake(). False once stop() forbids it.
bool suspend(Channel& ch) {
  Core& c = *ch.core;
  {
    std::lock_guard<std::mutex> lk(c.suspended_mu);
    if (c.closing) return false;
    c.suspended.emplace(&ch, ch.shared_from_this());
  }
  MHD_suspend_connection(ch.conn);
  ch.suspended = true;
  return true;
}

// Any thread, with ch.mu held: resumes the connection if we suspended it.
void wake(Channel& ch) {
  if (!ch.suspended) return;
  ch.suspended = false;
  Core& c = *ch.core;
  {
    std::lock_guard<std::mutex> lk(c.suspended_mu);
    c.suspended.erase(&ch);  // the caller holds another reference
  }
  std::shared_lock<std::shared_mutex> lk(c.daemon_mu);
  if (c.daemon_alive) MHD_resume_connection(ch.conn);
}

class ExchangeImpl final : public HttpExchange {
 public:
  ExchangeImpl(std::shared_ptr<Channel> ch, HttpRequest req)
      : ch_(std::move(ch)), req_(std::move(req)) {}
  ~ExchangeImpl() override {
    std::lock_guard<std::mutex> lk(ch_->mu);
    if (!ch_->answered) {
      ch_->answered = true;
      ch_->status = 500;
      ch_->content_type = "application/json";
      ch_->body = error_json("the handler dropped the request without a reply");
    } else if (ch_->streaming && !ch_->ended) {
      ch_->ended = ch_->aborted = true;
    }
    wake(*ch_);
  }
  ExchangeImpl(const ExchangeImpl&) = delete;
  ExchangeImpl& operator=(const ExchangeImpl&) = delete;

  const HttpRequest& request() const override { return req_; }
  void reply(int status, std::string content_type, std::string body, Headers headers) override {
    answer(status, std::move(content_type), std::move(body), std::move(headers), false);
  }
  void begin_stream(int status, std::string content_type, Headers headers) override {
    answer(status, std::move(content_type), {}, std::move(headers), true);
  }
  void write(std::string chunk) override {
    if (chunk.empty()) return;
    std::lock_guard<std::mutex> lk(ch_->mu);
    if (!ch_->streaming || ch_->ended || ch_->finished) return;
    ch_->chunks.push_back(std::move(chunk));
    wake(*ch_);
  }
  void end() override {
    std::lock_guard<std::mutex> lk(ch_->mu);
    if (!ch_->streaming || ch_->ended) return;
    ch_->ended = true;
    wake(*ch_);
  }
  bool client_gone() const override { return ch_->gone.load(); }

 private:
  void answer(int status, std::string content_type, std::string body, Headers headers,
              bool stream) {
    std::lock_guard<std::mutex> lk(ch_->mu);
    if (ch_->answered) return;
    ch_->answered = true;
    ch_->streaming = stream;
    ch_->status = status;
    ch_->content_type = std::move(content_type);
    ch_->body = std::move(body);
    ch_->headers = std::move(headers);
    wake(*ch_);
  }

  std::shared_ptr<Channel> ch_;
  HttpRequest req_;
};

// What becomes of a request's body bytes.
enum class BodyMode {
  collect,  // kept for the handler (at most max_body_bytes)
  drop,     // the request is refused: dropped, and the refusal queued once the body is in
  linger,   // the refusal went straight to the socket: dropped, then the connection closed
};

struct Refusal {
  int status = 0;
  std::string reason;
  Headers headers;
};

// One request as the polling thread tracks it (MHD's per-request context pointer).
struct RequestCtx {
  size_t uri_bytes = 0;  // the raw request-target, query included
  bool checked = false;  // limits and route checked (first access-handler call)
  const HttpHandler* handler = nullptr;
  std::map<std::string, std::string> headers;  // lower-cased names
  size_t header_bytes = 0;                     // as received: "name: value\r\n" per header
  uint64_t content_length = 0;
  bool body_follows = false;  // a body is on its way (Content-Length > 0 or a transfer coding)
  bool unframed = false;      // a transfer coding other than chunked: no end but the close
  BodyMode mode = BodyMode::collect;
  std::string body;
  size_t dropped = 0;                // in drop or linger mode
  Refusal refusal;                   // drop and linger modes
  std::shared_ptr<Channel> channel;  // set once handed to the handler
};

// ---- Responses -------------------------------------------------------------------------

void free_string(void* p) {
  delete static_cast<std::string*>(p);
}
void free_stream(void* p) {
  delete static_cast<std::shared_ptr<Channel>*>(p);
}

ssize_t read_stream(void* cls, uint64_t /*pos*/, char* buf, size_t max) {
  Channel& ch = **static_cast<std::shared_ptr<Channel>*>(cls);
  std::lock_guard<std::mutex> lk(ch.mu);
  size_t n = 0;
  while (n < max && !ch.chunks.empty()) {
    const std::string& front = ch.chunks.front();
    const size_t take = std::min(max - n, front.size() - ch.chunk_offset);
    std::memcpy(buf + n, front.data() + ch.chunk_offset, take);
    n += take;
    ch.chunk_offset += take;
    if (ch.chunk_offset == front.size()) {
      ch.chunks.pop_front();
      ch.chunk_offset = 0;
    }
  }
  if (n > 0) return static_cast<ssize_t>(n);
  if (ch.aborted) return MHD_CONTENT_READER_END_WITH_ERROR;
  if (ch.ended) return MHD_CONTENT_READER_END_OF_STREAM;
  if (suspend(ch)) return 0;                 // write() or end() resumes
  return MHD_CONTENT_READER_END_WITH_ERROR;  // stop(): the stream did not end within the drain
}

MHD_Response* buffer_response(std::string body) {
  auto* owned = new std::string(std::move(body));
  MHD_Response* r = MHD_create_response_from_buffer_with_free_callback_cls(
      owned->size(), owned->data(), free_string, owned);
  if (r == nullptr) delete owned;
  return r;
}

void add_headers(MHD_Response* r, const std::string& content_type, const Headers& headers,
                 bool close) {
  if (!content_type.empty()) MHD_add_response_header(r, "Content-Type", content_type.c_str());
  for (const auto& [name, value] : headers)
    MHD_add_response_header(r, name.c_str(), value.c_str());  // refused if not a valid header
  if (close) MHD_add_response_header(r, "Connection", "close");
}

MHD_Result queue(Core& c, MHD_Connection* conn, int status, MHD_Response* r) {
  if (r == nullptr) return MHD_NO;  // out of memory: MHD closes the connection
  const MHD_Result ok = MHD_queue_response(conn, static_cast<unsigned>(status), r);
  MHD_destroy_response(r);
  if (ok == MHD_YES) c.count(status);
  return ok;
}

MHD_Result queue_error(Core& c, MHD_Connection* conn, int status, const std::string& reason,
                       const Headers& headers = {}) {
  MHD_Response* r = buffer_response(error_json(reason));
  if (r != nullptr) add_headers(r, "application/json", headers, c.draining.load());
  return queue(c, conn, status, r);
}

// The response of a dispatched request, once answered (or 503 when stop() cut the wait).
MHD_Result respond(Core& c, MHD_Connection* conn, Channel& ch) {
  std::unique_lock<std::mutex> lk(ch.mu);
  if (!ch.answered) {
    if (suspend(ch)) return MHD_YES;  // reply() or begin_stream() resumes
    ch.answered = true;
    ch.status = 503;
    ch.content_type = "application/json";
    ch.body = error_json("the server stopped before the handler answered");
  }
  const int status = ch.status;
  MHD_Response* r = ch.streaming
                        ? MHD_create_response_from_callback(
                              MHD_SIZE_UNKNOWN, kStreamBlock, read_stream,
                              new std::shared_ptr<Channel>(ch.shared_from_this()), free_stream)
                        : buffer_response(std::move(ch.body));
  if (r != nullptr) add_headers(r, ch.content_type, ch.headers, c.draining.load());
  lk.unlock();
  return queue(c, conn, status, r);
}

// ---- Requests --------------------------------------------------------------------------

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

MHD_Result collect_header(void* cls, MHD_ValueKind, const char* key, size_t key_size,
                          const char* value, size_t value_size) {
  auto& rq = *static_cast<RequestCtx*>(cls);
  rq.header_bytes += key_size + 2 + value_size + 2;
  std::string& slot = rq.headers[lower(std::string(key, key_size))];
  if (!slot.empty()) slot += ", ";  // a repeated header: one comma-separated list
  if (value != nullptr) slot.append(value, value_size);
  return MHD_YES;
}

MHD_Result collect_query(void* cls, MHD_ValueKind, const char* key, const char* value) {
  (*static_cast<std::map<std::string, std::string>*>(cls))[key] = value ? value : "";
  return MHD_YES;
}

// The refusal of a request in drop mode that passed kLingerBytes, or of a mid-body 413: MHD can
// queue a response only before the body or after all of it, so the answer goes straight to
// the socket (MHD has nothing of its own to send at this point: any 100 Continue is out) and
// the write side is shut. The rest is dropped, kLingerBytes or kLingerSeconds at most, so that
// the reset of a close with unread data does not destroy the answer on its way.
void refuse_now(Core& c, MHD_Connection* conn, RequestCtx& rq) {
  rq.mode = BodyMode::linger;
  rq.dropped = 0;
  rq.body = std::string();
  const Refusal& f = rq.refusal;
  const std::string body = error_json(f.reason);
  const char* phrase = MHD_get_reason_phrase_for(static_cast<unsigned>(f.status));
  std::string msg =
      "HTTP/1.1 " + std::to_string(f.status) + " " + phrase +
      "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
      "\r\nConnection: close\r\n";
  for (const auto& [name, value] : f.headers) msg += name + ": " + value + "\r\n";
  msg += "\r\n" + body;
  const MHD_ConnectionInfo* info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (info != nullptr) {
    c.count(f.status);  // before the client can see it
    // A fresh answer of a few hundred bytes fits in the empty send buffer at once.
    [[maybe_unused]] const ssize_t sent =
        ::send(info->connect_fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(info->connect_fd, SHUT_WR);
  }
  MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, kLingerSeconds);
}

// Refuses a request at its first call. Without a body on its way (or with the client waiting
// for 100 Continue) the answer is queued at once and MHD closes the connection after it. A
// body of up to kLingerBytes is read and dropped first, and the answer queued after it (the
// connection stays open). A larger one, or one with no end but the close, gets the answer at
// once on the socket (refuse_now()).
MHD_Result refuse(Core& c, MHD_Connection* conn, RequestCtx& rq, int status, std::string reason,
                  Headers headers = {}) {
  const auto expect = rq.headers.find("expect");
  const bool waits = expect != rq.headers.end() && lower(expect->second) == "100-continue";
  if (!rq.body_follows || waits) return queue_error(c, conn, status, reason, headers);
  rq.mode = BodyMode::drop;
  rq.refusal = {status, std::move(reason), std::move(headers)};
  if (rq.content_length > kLingerBytes || rq.unframed) refuse_now(c, conn, rq);
  return MHD_YES;
}

// First call for a request (headers in, body not yet read): everything that can be refused
// before the body is.
MHD_Result on_headers(Core& c, MHD_Connection* conn, RequestCtx& rq, const char* url,
                      const char* method, const char* version) {
  rq.checked = true;
  const HttpLimits& lim = c.limits;
  MHD_get_connection_values_n(conn, MHD_HEADER_KIND, collect_header, &rq);
  const auto te = rq.headers.find("transfer-encoding");
  const auto cl = rq.headers.find("content-length");
  if (cl != rq.headers.end())  // MHD checked it is a number
    rq.content_length = std::strtoull(cl->second.c_str(), nullptr, 10);
  rq.body_follows = te != rq.headers.end() || rq.content_length > 0;
  // MHD decodes only chunked; any other transfer coding it would read until the client closes.
  rq.unframed = te != rq.headers.end() && lower(te->second) != "chunked";
  if (c.draining) return refuse(c, conn, rq, 503, "the server is stopping");
  const size_t line = std::strlen(method) + 1 + rq.uri_bytes + 1 + std::strlen(version) + 2;
  if (line > lim.max_url_bytes)
    return refuse(c, conn, rq, 414,
                  "request line longer than " + std::to_string(lim.max_url_bytes) + " bytes");
  if (line + rq.header_bytes + 2 > lim.max_header_bytes)
    return refuse(
        c, conn, rq, 431,
        "request line and headers larger than " + std::to_string(lim.max_header_bytes) + " bytes");
  const auto path = c.routes.find(url);
  if (path == c.routes.end()) return refuse(c, conn, rq, 404, "no such endpoint");
  const auto route = path->second.find(method);
  if (route == path->second.end()) {
    std::string allow;
    for (const auto& [m, h] : path->second) allow += (allow.empty() ? "" : ", ") + m;
    return refuse(c, conn, rq, 405,
                  std::string(method) + " is not allowed here (allowed: " + allow + ")",
                  {{"Allow", allow}});
  }
  rq.handler = &route->second;
  if (rq.unframed)
    return refuse(c, conn, rq, 501, "transfer coding \"" + te->second + "\" is not supported");
  if (rq.content_length > lim.max_body_bytes)
    return refuse(c, conn, rq, 413,
                  "body larger than " + std::to_string(lim.max_body_bytes) + " bytes");
  rq.body.reserve(static_cast<size_t>(rq.content_length));
  return MHD_YES;
}

// Body bytes, whatever the transfer encoding (MHD has decoded chunks). Never more than
// max_body_bytes is kept.
MHD_Result on_body(Core& c, MHD_Connection* conn, RequestCtx& rq, const char* data, size_t n) {
  switch (rq.mode) {
    case BodyMode::collect:
      if (rq.body.size() + n <= c.limits.max_body_bytes) {
        rq.body.append(data, n);
      } else {
        rq.refusal = {
            413, "body larger than " + std::to_string(c.limits.max_body_bytes) + " bytes", {}};
        refuse_now(c, conn, rq);
      }
      return MHD_YES;
    case BodyMode::drop:
      rq.dropped += n;
      if (rq.dropped > kLingerBytes) refuse_now(c, conn, rq);
      return MHD_YES;
    case BodyMode::linger:
      rq.dropped += n;
      return rq.dropped > kLingerBytes ? MHD_NO : MHD_YES;  // MHD_NO: close
  }
  return MHD_NO;
}

// The request is complete: hand it to its handler.
void dispatch(Core& c, MHD_Connection* conn, RequestCtx& rq, const char* url, const char* method) {
  rq.channel = std::make_shared<Channel>(c.shared_from_this(), conn);
  HttpRequest req;
  req.method = method;
  req.path = url;
  MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, collect_query, &req.query);
  req.headers = std::move(rq.headers);
  req.body = std::move(rq.body);
  {
    std::lock_guard<std::mutex> lk(c.owed_mu);
    ++c.owed;
  }
  std::shared_ptr<HttpExchange> ex = std::make_shared<ExchangeImpl>(rq.channel, std::move(req));
  try {
    (*rq.handler)(ex);
  } catch (const std::exception& e) {
    ex->reply(500, "application/json", error_json(e.what()));
  } catch (...) {
    ex->reply(500, "application/json", error_json("internal error"));
  }
}

// ---- MHD callbacks ---------------------------------------------------------------------

MHD_Result on_access(void* cls, MHD_Connection* conn, const char* url, const char* method,
                     const char* version, const char* data, size_t* size, void** con_cls) {
  Core& c = *static_cast<Core*>(cls);
  auto* rq = static_cast<RequestCtx*>(*con_cls);
  if (rq == nullptr) *con_cls = rq = new RequestCtx;  // (the URI log callback made it already)
  if (!rq->checked) return on_headers(c, conn, *rq, url, method, version);
  if (*size != 0) {
    const size_t n = *size;
    *size = 0;
    return on_body(c, conn, *rq, data, n);
  }
  if (rq->mode == BodyMode::linger) return MHD_NO;  // answered on the socket already: close
  if (rq->mode == BodyMode::drop) {
    const Refusal& f = rq->refusal;
    return queue_error(c, conn, f.status, f.reason, f.headers);
  }
  if (!rq->channel) dispatch(c, conn, *rq, url, method);
  return respond(c, conn, *rq->channel);
}

void* on_uri(void*, const char* uri, MHD_Connection*) {
  auto* rq = new RequestCtx;
  rq->uri_bytes = std::strlen(uri);
  return rq;
}

void on_completed(void* cls, MHD_Connection*, void** con_cls, MHD_RequestTerminationCode toe) {
  auto* rq = static_cast<RequestCtx*>(*con_cls);
  *con_cls = nullptr;
  if (rq == nullptr) return;
  if (rq->channel) {
    {
      std::lock_guard<std::mutex> lk(rq->channel->mu);
      rq->channel->finished = true;
      if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) rq->channel->gone = true;
    }
    static_cast<Core*>(cls)->owed_done();
  }
  delete rq;
}

void on_connection(void* cls, MHD_Connection*, void**, MHD_ConnectionNotificationCode code) {
  Core& c = *static_cast<Core*>(cls);
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    ++c.connections_open;
    ++c.connections_total;
  } else {
    --c.connections_open;
  }
}

MHD_Result on_accept(void* cls, const sockaddr*, socklen_t) {
  Core& c = *static_cast<Core*>(cls);
  if (c.connections_open.load() < static_cast<uint64_t>(c.limits.max_connections)) return MHD_YES;
  ++c.connections_refused;
  return MHD_NO;  // MHD closes the socket
}

// MHD's own refusals (a request line or headers larger than its per-connection memory, broken
// chunked encoding, ...) are counted from its log line; other messages are dropped.
void on_log(void* cls, const char* fm, va_list ap) {
  static constexpr char kPrefix[] = "Error processing request (HTTP response code is %u";
  if (std::strncmp(fm, kPrefix, sizeof(kPrefix) - 1) != 0) return;
  va_list args;
  va_copy(args, ap);
  const unsigned status = va_arg(args, unsigned);
  va_end(args);
  static_cast<Core*>(cls)->count(static_cast<int>(status));
}

sockaddr_storage resolve(const std::string& host, int port, bool& ipv6) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  DELTAMOE_CHECK(rc == 0 && res != nullptr, "http", "cannot resolve ", host, ": ",
                 gai_strerror(rc));
  sockaddr_storage addr{};
  std::memcpy(&addr, res->ai_addr, res->ai_addrlen);
  ipv6 = res->ai_family == AF_INET6;
  freeaddrinfo(res);
  return addr;
}

}  // namespace

bool http_frontend_available() {
  return true;
}

struct HttpFrontend::Impl {
  std::shared_ptr<Core> core = std::make_shared<Core>();
};

HttpFrontend::HttpFrontend(HttpLimits limits) : impl_(std::make_unique<Impl>()) {
  DELTAMOE_CHECK(limits.threads >= 1, "http", "polling threads must be >= 1, not ", limits.threads);
  DELTAMOE_CHECK(limits.max_connections >= 1, "http", "max_connections must be >= 1");
  DELTAMOE_CHECK(limits.idle_timeout_s >= 0, "http", "idle_timeout_s must be >= 0");
  DELTAMOE_CHECK(limits.max_url_bytes >= 64 && limits.max_header_bytes >= 256, "http",
                 "max_url_bytes must be >= 64 and max_header_bytes >= 256");
  impl_->core->limits = limits;
}

HttpFrontend::~HttpFrontend() {
  stop(0.0);
}

void HttpFrontend::route(const std::string& method, const std::string& path, HttpHandler handler) {
  DELTAMOE_CHECK(!impl_->core->started, "http", "route() after start()");
  impl_->core->routes[path][method] = std::move(handler);
}

void HttpFrontend::start(const std::string& host, int port) {
  Core& c = *impl_->core;
  DELTAMOE_CHECK(!c.started, "http", "start() called twice");
  bool ipv6 = false;
  sockaddr_storage addr = resolve(host, port, ipv6);
  const HttpLimits& lim = c.limits;
  // MHD reads the request line and headers into a per-connection pool and answers 414 (line)
  // or 431 (headers) itself when they do not fit; twice our limits plus room for its
  // bookkeeping and the response header means our own checks (JSON bodies) see every request
  // up to the limits. The pool is mmap-ed: an idle connection touches a page or two of it.
  const size_t pool = 2 * std::max(lim.max_header_bytes, lim.max_url_bytes) + (16 << 10);
  const unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                         MHD_USE_ERROR_LOG | (ipv6 ? MHD_USE_IPv6 : 0);
  // MHD's own connection limit is a backstop (it stops accepting there); on_accept() closes
  // connections beyond max_connections.
  const auto mhd_limit = static_cast<unsigned>(2 * lim.max_connections + 64);
  c.started = true;
  c.daemon = MHD_start_daemon(
      flags, 0, on_accept, &c, on_access, &c, MHD_OPTION_EXTERNAL_LOGGER, on_log, &c,
      MHD_OPTION_SOCK_ADDR, reinterpret_cast<sockaddr*>(&addr), MHD_OPTION_THREAD_POOL_SIZE,
      static_cast<unsigned>(lim.threads), MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
      MHD_OPTION_CONNECTION_TIMEOUT, static_cast<unsigned>(lim.idle_timeout_s),
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u,
      MHD_OPTION_URI_LOG_CALLBACK, on_uri, &c, MHD_OPTION_NOTIFY_COMPLETED, on_completed, &c,
      MHD_OPTION_NOTIFY_CONNECTION, on_connection, &c, MHD_OPTION_END);
  DELTAMOE_CHECK(c.daemon != nullptr, "http", "cannot listen on ", host, ":", port,
                 " (in use, or not an address of this host?)");
  const MHD_DaemonInfo* info = MHD_get_daemon_info(c.daemon, MHD_DAEMON_INFO_BIND_PORT);
  c.port = info != nullptr ? info->port : port;
  std::unique_lock<std::shared_mutex> lk(c.daemon_mu);
  c.daemon_alive = true;
}

int HttpFrontend::port() const {
  return impl_->core->port;
}

void HttpFrontend::stop(double drain_s) {
  Core& c = *impl_->core;
  if (c.daemon == nullptr || c.stopped) return;
  c.stopped = true;
  c.draining = true;
  // No MHD_quiesce_daemon(): in libmicrohttpd 0.9.75 with epoll polling threads it races
  // the threads removing the listen socket from their epoll sets and aborts the process
  // ("Failed to remove listen FD from epoll set", seen on SIGTERM). The listener stays
  // open while draining instead; new requests get 503 (on_access, `draining`), and
  // MHD_stop_daemon() closes it.
  {
    const double wait_s = std::clamp(drain_s, 0.0, 1e7);
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(wait_s));
    std::unique_lock<std::mutex> lk(c.owed_mu);
    c.owed_cv.wait_until(lk, deadline, [&] { return c.owed == 0; });
  }
  std::vector<std::shared_ptr<Channel>> waiting;
  {
    std::lock_guard<std::mutex> lk(c.suspended_mu);
    c.closing = true;
    for (const auto& [p, ch] : c.suspended) waiting.push_back(ch);
  }
  for (const auto& ch : waiting) {
    std::lock_guard<std::mutex> lk(ch->mu);
    wake(*ch);  // its callback then answers 503 or cuts its stream
  }
  {
    std::unique_lock<std::shared_mutex> lk(c.daemon_mu);
    c.daemon_alive = false;
  }
  MHD_stop_daemon(c.daemon);
  c.daemon = nullptr;
}

HttpFrontendStats HttpFrontend::stats() const {
  const Core& c = *impl_->core;
  HttpFrontendStats s;
  s.connections_open = c.connections_open.load();
  s.connections_total = c.connections_total.load();
  s.connections_refused = c.connections_refused.load();
  std::lock_guard<std::mutex> lk(c.stats_mu);
  s.responses_by_status = c.by_status;
  return s;
}

#else  // no libmicrohttpd

bool http_frontend_available() {
  return false;
}
struct HttpFrontend::Impl {};
HttpFrontend::HttpFrontend(HttpLimits) {
  fail("http",
       "deltamoe was built without libmicrohttpd (install libmicrohttpd-dev and reconfigure)");
}
HttpFrontend::~HttpFrontend() = default;
void HttpFrontend::route(const std::string&, const std::string&, HttpHandler) {}
void HttpFrontend::start(const std::string&, int) {
  fail("http",
       "deltamoe was built without libmicrohttpd (install libmicrohttpd-dev and reconfigure)");
}
int HttpFrontend::port() const {
  return 0;
}
void HttpFrontend::stop(double) {}
HttpFrontendStats HttpFrontend::stats() const {
  return {};
}

#endif

}  // namespace deltamoe::serve
