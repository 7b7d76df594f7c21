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

/// `bytes` with a binary unit and two decimals ("2.25 GiB"; bytes without: "512 B"). Thread-safe.
std::string format_bytes(uint64_t bytes);

}  // namespace deltamoe
