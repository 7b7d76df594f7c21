// Shared by the libFuzzer targets: the one rule every parser of untrusted input must keep.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "deltamoe/core/error.h"

namespace deltamoe::fuzz {

/// A rejected input must give deltamoe::Error with one line starting "[component] ";
/// anything else (another exception, a crash, a sanitizer report) is a finding.
inline void check_error(const Error& e, std::string_view component) {
  const std::string msg = e.what();
  const std::string prefix = "[" + std::string(component) + "] ";
  if (msg.rfind(prefix, 0) != 0 || msg.find('\n') != std::string::npos) {
    std::fprintf(stderr, "bad error message: %s\n", msg.c_str());
    std::abort();
  }
}

}  // namespace deltamoe::fuzz
