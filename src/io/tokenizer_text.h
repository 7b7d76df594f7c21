// Text helpers for the tokenizers (private to src/io): UTF-8, Unicode classes and
// normalisation (utf8proc), regexes (PCRE2), and GPT-2's byte <-> unicode alphabet.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace deltamoe::io::text {

/// The U+FFFD replacement character in UTF-8.
inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

/// `s` with each maximal invalid UTF-8 subsequence replaced by U+FFFD (the Unicode
/// "maximal subpart" rule, which Python's errors="replace" and Rust's from_utf8_lossy use).
std::string to_valid_utf8(std::string_view s);
/// Length of the valid UTF-8 sequence starting at byte `i` of `s` (1-4), or 0 when the bytes
/// there are not one (overlong forms, surrogates and values above U+10FFFF are invalid).
size_t valid_sequence_length(std::string_view s, size_t i);
/// Whether `s` is valid UTF-8.
bool is_valid_utf8(std::string_view s);
/// Decodes the code point at byte `i` of the valid UTF-8 string `s` and advances `i`.
char32_t next_code_point(std::string_view s, size_t& i);
/// Byte length of the UTF-8 sequence starting with `lead` (1 for continuation bytes).
size_t utf8_length(unsigned char lead);
/// Appends `cp` to `out` as UTF-8.
void append_utf8(std::string& out, char32_t cp);
/// Number of code points of valid UTF-8 `s`.
size_t count_code_points(std::string_view s);

/// Unicode White_Space (what Rust's char::is_whitespace and regex \s test).
bool is_white_space(char32_t cp);
/// Rust regex \w: letters, marks, decimal and letter numbers, connector punctuation.
bool is_word_char(char32_t cp);
/// Rust char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(char32_t cp);

enum class NormalForm { nfc, nfd, nfkc, nfkd };
/// `s` (valid UTF-8) in the given Unicode normal form. Throws Error("tokenizer") if
/// utf8proc fails (it does not on valid input).
std::string normalize_unicode(std::string_view s, NormalForm form);

/// A compiled PCRE2 regex (UTF + UCP: \p{L}, \s, \w are Unicode-aware; look-around works).
/// Immutable once built; find_all is safe to call concurrently (match data per call).
class Regex {
 public:
  /// Compiles `pattern` (`literal` escapes it first). Throws Error("tokenizer") with PCRE2's
  /// message and the offset of the problem.
  Regex(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// Every non-overlapping match in the valid UTF-8 string `s`, as [begin, end) byte
  /// offsets, left to right. After an empty match the search resumes one character later
  /// (the iteration of Rust's regex and Oniguruma). Throws Error("tokenizer") on a PCRE2
  /// matching error (e.g. its backtracking limit).
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view s) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The split regex of GPT-2's byte-level pre-tokenizer (ByteLevel with use_regex).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// GPT-2's byte-level alphabet: the UTF-8 string of the character standing for each byte.
const std::array<std::string, 256>& byte_to_unicode();
/// The byte a GPT-2 alphabet character stands for, or -1 when `cp` is not in the alphabet.
int unicode_to_byte(char32_t cp);

}  // namespace deltamoe::io::text
