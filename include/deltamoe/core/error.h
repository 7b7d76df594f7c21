// Error handling for deltamoe.
//
// Two kinds of failure:
//  - deltamoe::Error: bad input reaching an API boundary (a malformed file, a wrong shape,
//    an unknown flag value). The message starts with the component in brackets, e.g.
//    "[safetensors] header length 9e18 exceeds file size 1024". The CLI turns it into a
//    one-line message and a non-zero exit; the server into an HTTP error.
//  - DELTAMOE_ASSERT: an internal invariant that cannot fail unless deltamoe has a bug.
//    It throws deltamoe::InternalError with file and line (never aborts, so tests can
//    catch it and the server can stay up).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace deltamoe {

/// Bad input at an API boundary. what() is one line: "[component] message".
class Error : public std::runtime_error {
 public:
  /// `component` is the module name without brackets ("safetensors", "sched", ...).
  Error(std::string_view component, const std::string& message);
};

/// A broken internal invariant (a deltamoe bug).
class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& message) : std::logic_error(message) {}
};

namespace detail {
/// Concatenates any streamable values into a string (used by the macros below).
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const std::string& msg);
}  // namespace detail

/// Throws Error(component, concat(args...)). Use for user-facing failures.
template <typename... Args>
[[noreturn]] void fail(std::string_view component, Args&&... args) {
  throw Error(component, detail::concat(std::forward<Args>(args)...));
}

}  // namespace deltamoe

/// Internal invariant check; active in every build type (the checks are cheap and a wrong
/// answer is worse than a slow one). Extra arguments are streamed into the message.
#define DELTAMOE_ASSERT(cond, ...)                                                          \
  do {                                                                                      \
    if (!(cond)) [[unlikely]]                                                               \
      ::deltamoe::detail::assert_fail(#cond, __FILE__, __LINE__,                            \
                                      ::deltamoe::detail::concat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

/// User-facing check: throws deltamoe::Error("component", message...) when cond is false.
#define DELTAMOE_CHECK(cond, component, ...)                                   \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::deltamoe::fail(component __VA_OPT__(, ) __VA_ARGS__);                  \
  } while (0)
