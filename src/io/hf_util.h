// Helpers shared by the Hugging Face config and checkpoint readers (private to src/io).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace deltamoe::io::detail {

/// Component name of every Hugging Face error: "[hf] ...".
inline constexpr const char* kHfComponent = "hf";

/// Largest config.json / index.json accepted, in bytes. Real ones are a few KB (a sharded
/// index of a 1 T-parameter model is a few MB); the cap bounds memory on hostile input.
inline constexpr uint64_t kHfMaxJsonBytes = 64ull << 20;

/// Reads a whole text file of at most kHfMaxJsonBytes. Throws Error("hf") naming `path`.
std::string read_hf_text_file(const std::string& path);

/// Parses `text` as a JSON object, rejecting duplicate keys (which JSON libraries resolve
/// silently, hiding an ambiguous file) and nesting deeper than `max_depth`. Throws
/// Error("hf") "<path>: ..." on any problem.
nlohmann::json parse_hf_json_object(const std::string& text, const std::string& path,
                                    int max_depth);

}  // namespace deltamoe::io::detail
