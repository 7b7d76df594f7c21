#include "io/file_util.h"

#include <filesystem>

#include "deltamoe/io/output.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <vector>

#include "deltamoe/core/error.h"

namespace deltamoe::io::detail {

namespace {
// Two writers in one process (threads) must not pick the same temporary name.
std::atomic<uint64_t> g_tmp_counter{0};
}  // namespace

AtomicFile::AtomicFile(std::string path, std::string component)
    : path_(std::move(path)), component_(std::move(component)) {
  tmp_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_tmp_counter++);
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(component_, path_, ": cannot create '", tmp_, "': ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(component_, path_, ": write failed: ", std::strerror(errno));
    }
    p += n;
    bytes -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  // fsync before rename: otherwise a crash can leave the new name pointing at empty data.
  if (::fsync(fd_) != 0) fail(component_, path_, ": fsync failed: ", std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) fail(component_, path_, ": close failed: ", std::strerror(errno));
  if (std::rename(tmp_.c_str(), path_.c_str()) != 0)
    fail(component_, path_, ": cannot rename '", tmp_, "' onto it: ", std::strerror(errno));
  committed_ = true;
}

std::string quote_name(std::string_view s) {
  constexpr size_t kMax = 120;
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "'";
}

std::string one_line(std::string_view s) {
  // Library messages quote input bytes verbatim (nlohmann's "last read: ..."); keep them
  // printable ASCII and short so the error stays one readable, valid-UTF-8 line.
  constexpr size_t kMax = 240;
  std::string out(s.substr(0, kMax));
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) c = u >= 0x80 ? '?' : ' ';
  }
  if (s.size() > kMax) out += "...";
  return out;
}

nlohmann::json parse_json_object_strict(std::string_view text, int max_depth,
                                        std::string_view subject,
                                        const std::function<void(const std::string&)>& reject) {
  using json = nlohmann::json;
  const std::string sub(subject);
  const std::string is = sub.empty() ? "" : sub + " is ";
  const auto say = [&](const std::string& msg) {
    reject(msg);
    throw InternalError("parse_json_object_strict: reject returned");
  };
  std::vector<std::set<std::string>> keys;
  const json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > max_depth)
      say((sub.empty() ? "" : sub + " ") + "JSON nests deeper than " + std::to_string(max_depth) +
          " levels");
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second)
        say((sub.empty() ? "" : sub + " has ") + "duplicate key " + quote_name(k));
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), cb);
  } catch (const json::exception& e) {
    say(is + "not valid JSON: " + one_line(e.what()));
  }
  if (!j.is_object())
    say((sub.empty() ? "a JSON " : is + "a JSON ") + j.type_name() + ", not an object");
  return j;
}

}  // namespace deltamoe::io::detail

namespace deltamoe::io {

void check_writable(const std::string& path, const std::string& component) {
  namespace fs = std::filesystem;
  DELTAMOE_CHECK(!path.empty(), component, "empty output path");
  std::error_code ec;
  DELTAMOE_CHECK(!fs::is_directory(path, ec), component, path,
                 ": is a directory, expected a file path");
  const fs::path dir = fs::path(path).parent_path();
  if (!dir.empty()) {
    fs::create_directories(dir, ec);
    DELTAMOE_CHECK(!ec, component, path, ": cannot create its directory '", dir.string(),
                   "': ", ec.message());
  }
  // The writers' own temporary, created and (not committed) removed again.
  detail::AtomicFile probe(path, component);
}

void check_writable_dir(const std::string& dir, const std::string& component) {
  namespace fs = std::filesystem;
  DELTAMOE_CHECK(!dir.empty(), component, "empty output directory");
  std::error_code ec;
  fs::create_directories(dir, ec);
  DELTAMOE_CHECK(!ec, component, dir, ": cannot create: ", ec.message());
  DELTAMOE_CHECK(fs::is_directory(dir, ec), component, dir, ": not a directory");
  detail::AtomicFile probe((fs::path(dir) / ".deltamoe-write-check").string(), component);
}

namespace fs = std::filesystem;

OutputDir::OutputDir(const std::string& out, bool force, std::string component)
    : out_(fs::absolute(out).lexically_normal()), component_(std::move(component)) {
  if (out_.filename().empty()) out_ = out_.parent_path();
  std::error_code ec;
  if (fs::exists(out_, ec)) {
    if (!fs::is_directory(out_)) fail(component_, out_.string(), ": exists and is not a directory");
    if (!fs::is_empty(out_) && !force)
      fail(component_, out_.string(), ": exists and is not empty (use --force to replace it)");
  }
  fs::create_directories(out_.parent_path(), ec);
  if (ec) fail(component_, out_.parent_path().string(), ": cannot create: ", ec.message());
  tmp_ =
      out_.parent_path() / ("." + out_.filename().string() + ".tmp." + std::to_string(::getpid()));
  fs::remove_all(tmp_, ec);
  if (!fs::create_directory(tmp_, ec) || ec)
    fail(component_, out_.parent_path().string(), ": not writable: cannot create '",
         tmp_.filename().string(), "': ", ec ? ec.message() : "exists");
}

OutputDir::~OutputDir() {
  std::error_code ec;
  if (!committed_) fs::remove_all(tmp_, ec);
}

void OutputDir::check_space(uint64_t bytes) const {
  struct statvfs st {};
  if (::statvfs(tmp_.c_str(), &st) != 0) return;
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  if (free_bytes < bytes + (16u << 20))
    fail(component_, out_.parent_path().string(), ": the model needs ", bytes / 1e9, " GB, only ",
         free_bytes / 1e9, " GB free");
}

void OutputDir::commit() {
  std::error_code ec;
  if (fs::exists(out_)) {  // empty, or --force: move the old one aside, then drop it
    const fs::path old = tmp_.string() + ".old";
    fs::rename(out_, old, ec);
    if (ec) fail(component_, out_.string(), ": cannot replace: ", ec.message());
    fs::rename(tmp_, out_, ec);
    if (ec) {
      fs::rename(old, out_);
      fail(component_, out_.string(), ": cannot rename the new model into place: ", ec.message());
    }
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmp_, out_, ec);
    if (ec)
      fail(component_, out_.string(), ": cannot rename the new model into place: ", ec.message());
  }
  committed_ = true;
}

}  // namespace deltamoe::io
