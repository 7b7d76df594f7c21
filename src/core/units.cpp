#include "deltamoe/core/units.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "deltamoe/core/error.h"

namespace deltamoe {

uint64_t parse_byte_size(const std::string& text, std::string_view component,
                         std::string_view flag) {
  size_t pos = 0;
  uint64_t v = 0;
  const bool digits = !text.empty() && text[0] >= '0' && text[0] <= '9';
  try {
    if (digits) v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos > 0) {
    const std::string unit = text.substr(pos);
    const std::pair<const char*, uint64_t> units[] = {{"", 1},
                                                      {"B", 1},
                                                      {"KB", 1000},
                                                      {"MB", 1000000},
                                                      {"GB", 1000000000},
                                                      {"TB", 1000000000000},
                                                      {"KiB", uint64_t{1} << 10},
                                                      {"MiB", uint64_t{1} << 20},
                                                      {"GiB", uint64_t{1} << 30},
                                                      {"TiB", uint64_t{1} << 40}};
    for (const auto& [u, mult] : units)
      if (unit == u && v > 0 && v <= (uint64_t{1} << 50) / mult) return v * mult;
  }
  fail(component, flag, " '", text, "' is not a positive size (e.g. 4GiB, 500MB, 1000000)");
}

ByteBudget parse_byte_budget(const std::string& text, std::string_view component,
                             std::string_view flag) {
  ByteBudget b;
  if (!text.empty() && text.back() == '%') {
    const std::string num = text.substr(0, text.size() - 1);
    size_t pos = 0;
    double v = -1.0;
    try {
      v = std::stod(num, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    DELTAMOE_CHECK(pos == num.size() && pos > 0 && v > 0.0 && v <= 100.0, component, flag, " '",
                   text, "' is not a percentage in (0, 100]");
    b.fraction = v / 100.0;
    return b;
  }
  b.bytes = parse_byte_size(text, component, flag);
  return b;
}

std::string format_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(units)) {
    v /= 1024.0;
    ++u;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

}  // namespace deltamoe
