// Byte sizes as people write them on command lines ("4GiB", "500MB", "1000000").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace deltamoe {

/// Parses a positive byte count: digits, then an optional unit B, KB, MB, GB, TB (powers of
/// 1000) or KiB, MiB, GiB, TiB (powers of 1024). Throws Error(component) naming `flag` and
/// the text when it is not such a size, is zero, or exceeds 2^50 bytes. Thread-safe.
uint64_t parse_byte_size(const std::string& text, std::string_view component,
                         std::string_view flag);

/// A budget as people write it: bytes, or a share of something the caller knows.
struct ByteBudget {
  uint64_t bytes = 0;     // > 0 when given as a size
  double fraction = 0.0;  // in (0, 1] when given as a percentage (then bytes == 0)
};
/// Parses `SIZE` (as parse_byte_size) or `PCT%` with PCT in (0, 100]. Throws Error(component)
/// naming `flag` and the text otherwise. Thread-safe.
ByteBudget parse_byte_budget(const std::string& text, std::string_view component,
                             std::string_view flag);

/// `bytes` with a binary unit and two decimals ("2.25 GiB"; bytes without: "512 B"). Thread-safe.
std::string format_bytes(uint64_t bytes);

}  // namespace deltamoe
