// Small file helpers shared by the io/ readers and writers (private to src/io).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

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

}  // namespace deltamoe::io::detail
