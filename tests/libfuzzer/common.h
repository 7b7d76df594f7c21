// Shared by the libFuzzer targets: the one rule every parser of untrusted input must keep.
#pragma once

#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <string_view>

#include "deltamoe/core/error.h"

namespace deltamoe::fuzz {

/// A rejected input must give deltamoe::Error with one line starting "[component] ";
/// anything else (another exception, a crash, a sanitizer report) is a finding.
/// `components` lists the "[component]" prefixes the parser under test may use.
inline void check_error(const Error& e, std::initializer_list<std::string_view> components) {
  const std::string msg = e.what();
  bool prefixed = false;
  for (const std::string_view c : components)
    prefixed = prefixed || msg.rfind("[" + std::string(c) + "] ", 0) == 0;
  if (!prefixed || msg.find('\n') != std::string::npos) {
    std::fprintf(stderr, "bad error message: %s\n", msg.c_str());
    std::abort();
  }
}
inline void check_error(const Error& e, std::string_view component) {
  check_error(e, {component});
}

/// A per-process temporary file name ending in `suffix`, for readers that take a path.
inline std::string temp_path(std::string_view suffix) {
  return "/tmp/deltamoe-fuzz-" + std::to_string(::getpid()) + std::string(suffix);
}

/// Writes `size` bytes to `path`, gzip-compressed when `gzip` (so that a target can feed a
/// reader valid gzip around fuzzed content); false on an I/O failure.
inline bool write_file(const std::string& path, const uint8_t* data, size_t size, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    if (f == nullptr) return false;
    const bool ok =
        size == 0 || gzwrite(f, data, static_cast<unsigned>(size)) == static_cast<int>(size);
    return gzclose(f) == Z_OK && ok;
  }
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(data, 1, size, f) == size;
  return std::fclose(f) == 0 && ok;
}

}  // namespace deltamoe::fuzz
