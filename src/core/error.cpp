#include "deltamoe/core/error.h"

namespace deltamoe {

namespace {
std::string bracketed(std::string_view component, const std::string& message) {
  std::string text;
  text.reserve(component.size() + message.size() + 3);
  text.push_back('[');
  text.append(component);
  text.append("] ");
  text.append(message);
  return text;
}
}  // namespace

Error::Error(std::string_view component, const std::string& message)
    : std::runtime_error(bracketed(component, message)) {}

}  // namespace deltamoe

namespace deltamoe::detail {

void assert_fail(const char* expr, const char* file, int line, const std::string& msg) {
  std::string text = std::string("[internal] assertion failed: ") + expr + " at " + file + ":" +
                     std::to_string(line);
  if (!msg.empty()) text += ": " + msg;
  throw InternalError(text);
}

}  // namespace deltamoe::detail
