// A raw HTTP/1.1 client over loopback sockets for the HTTP tests: it sends exactly the bytes a
// test gives (broken, oversized or half-sent requests included) and parses one response,
// decoding a chunked body. Every receive and send has a 30 s timeout, so no test can hang.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <string>

namespace deltamoe::test {

struct RawResponse {
  int status = -1;                             // -1: no complete status line and headers arrived
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;                            // de-chunked
  bool chunked = false;
  bool complete = false;  // the whole body arrived (by length, last chunk, or close)
};

class RawConn {
 public:
  explicit RawConn(int port, int timeout_s = 30) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      ::close(fd_);
      fd_ = -1;
      return;
    }
    timeval tv{timeout_s, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  ~RawConn() { close(); }
  RawConn(const RawConn&) = delete;
  RawConn& operator=(const RawConn&) = delete;

  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  /// Sends all of `bytes`; false when the connection refused them (closed or reset).
  bool send_all(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  /// Reads one response (what arrived of it, if the connection ends early).
  RawResponse read_response() {
    RawResponse r;
    size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos)
      if (!fill()) return r;
    const std::string head = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    size_t pos = head.find("\r\n");
    const std::string status_line = head.substr(0, pos);
    if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) return r;
    r.status = std::atoi(status_line.c_str() + 9);
    while (pos != std::string::npos && pos + 2 < head.size()) {
      const size_t next = head.find("\r\n", pos + 2);
      const std::string line =
          head.substr(pos + 2, next == std::string::npos ? next : next - pos - 2);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        size_t v = colon + 1;
        while (v < line.size() && line[v] == ' ') ++v;
        r.headers[name] = line.substr(v);
      }
      pos = next;
    }
    const auto te = r.headers.find("transfer-encoding");
    r.chunked = te != r.headers.end() && te->second == "chunked";
    const auto cl = r.headers.find("content-length");
    if (r.chunked) {
      r.complete = read_chunked(r.body);
    } else if (cl != r.headers.end()) {
      const size_t n = std::strtoull(cl->second.c_str(), nullptr, 10);
      while (buf_.size() < n)
        if (!fill()) break;
      r.complete = buf_.size() >= n;
      r.body = buf_.substr(0, n);
      buf_.erase(0, std::min(n, buf_.size()));
    } else {
      while (fill()) {
      }
      r.body.swap(buf_);
      r.complete = true;
    }
    return r;
  }

  /// True when the server closed the connection (EOF or reset) within the receive timeout.
  bool closed_by_peer() {
    char c;
    const ssize_t n = ::recv(fd_, &c, 1, 0);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
  }

 private:
  bool fill() {
    char tmp[65536];
    const ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<size_t>(n));
    return true;
  }
  bool read_line(std::string& line) {
    size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos)
      if (!fill()) return false;
    line = buf_.substr(0, eol);
    buf_.erase(0, eol + 2);
    return true;
  }
  bool read_chunked(std::string& body) {
    for (std::string line;;) {
      if (!read_line(line)) return false;
      const size_t n = std::strtoull(line.c_str(), nullptr, 16);
      if (n == 0) {  // trailers, then the empty line
        while (read_line(line) && !line.empty()) {
        }
        return true;
      }
      while (buf_.size() < n + 2)
        if (!fill()) return false;
      body.append(buf_, 0, n);
      buf_.erase(0, n + 2);
    }
  }

  int fd_ = -1;
  std::string buf_;
};

/// "METHOD path HTTP/1.1" with Host, the given extra header lines, Content-Length and body.
inline std::string raw_request(const std::string& method, const std::string& path,
                               const std::string& body = "", const std::string& extra = "") {
  return method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

}  // namespace deltamoe::test
