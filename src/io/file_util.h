// Small file helpers shared by the io/ readers and writers (private to src/io).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace deltamoe::io::detail {

/// A file written under a temporary name beside `path` and renamed onto it by commit(), so
/// readers never see a half-written file. If commit() is not reached (an exception), the
/// destructor removes the temporary. Errors throw Error(component) naming the path.
/// Not thread-safe; one writer per object.
class AtomicFile {
 public:
  AtomicFile(std::string path, std::string component);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends `bytes` bytes from `data`.
  void write(const void* data, size_t bytes);
  /// fsyncs, closes and renames the temporary onto the final path.
  void commit();

 private:
  std::string path_, tmp_, component_;
  int fd_ = -1;
  bool committed_ = false;
};

/// `s` in single quotes, with non-printable bytes as \xNN and very long strings shortened,
/// so that file-controlled names cannot break the one-line error format.
std::string quote_name(std::string_view s);

/// Replaces control characters by spaces and non-ASCII bytes by '?', and shortens very long
/// text (for wrapping messages of other libraries, which may quote raw input bytes).
std::string one_line(std::string_view s);

/// Parses `text` as one JSON object, strictly: duplicate keys (which JSON libraries resolve
/// silently to one of the values, hiding an ambiguous file) and nesting deeper than
/// `max_depth` are rejected, as are invalid JSON and a top level that is not an object.
/// Each problem is passed to `reject` as one line phrased for `subject` ("" gives
/// "duplicate key 'a'", "header" gives "header has duplicate key 'a'"); `reject` must throw.
nlohmann::json parse_json_object_strict(std::string_view text, int max_depth,
                                        std::string_view subject,
                                        const std::function<void(const std::string&)>& reject);

}  // namespace deltamoe::io::detail
