// Chat templates: the lexer, jinja2's rules with trim_blocks=True and lstrip_blocks=True.
#include <algorithm>
#include <cctype>
#include <cstring>

#include "io/chat_template_internal.h"

namespace deltamoe::io::chat_detail {

namespace {

// jinja2 normalises every newline to "\n" and drops one trailing newline
// (keep_trailing_newline=False).
std::string normalize_newlines(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    bool line_starting = true;
    size_t i = 0;
    const size_t n = src_.size();
    while (i < n) {
      size_t k = i;
      while (k + 1 < n && !(src_[k] == '{' && std::strchr("{%#", src_[k + 1]) != nullptr)) ++k;
      if (k + 1 >= n) {
        push(Tok::text, src_.substr(i), i);
        break;
      }
      const char kind = src_[k + 1];
      size_t j = k + 2;
      const char sign = j < n && (src_[j] == '-' || src_[j] == '+') ? src_[j] : 0;
      if (sign) ++j;
      std::string text = src_.substr(i, k - i);
      if (sign == '-') {
        text = py_strip(text, nullptr, false, true);
      } else if (sign != '+' && kind != '{') {  // lstrip_blocks
        const size_t nl = text.rfind('\n');
        const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() && all_space(text, l_pos))
          text.resize(l_pos);
      }
      if (!text.empty()) push(Tok::text, std::move(text), i);
      if (kind == '#') {
        i = lex_comment(k, j);
      } else {
        push(kind == '{' ? Tok::var_begin : Tok::block_begin, "", k);
        i = lex_tag(kind == '%', j, k);
      }
      line_starting = i > 0 && src_[i - 1] == '\n';
    }
    push(Tok::eof, "", n);
    return std::move(tokens_);
  }

  // Line and column (in characters) of `offset`. Offsets mostly come in increasing order,
  // so the column is counted on from the previous one (linear in the source overall).
  Pos pos_of(size_t offset) {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
    const size_t start = *(it - 1);
    if (last_offset_ < start || last_offset_ > offset) {
      last_offset_ = start;
      last_col_ = 1;
    }
    for (size_t i = last_offset_; i < offset && i < src_.size(); ++i)
      if ((static_cast<unsigned char>(src_[i]) & 0xC0) != 0x80) ++last_col_;
    last_offset_ = offset;
    return Pos{static_cast<int>(it - line_starts_.begin()), last_col_};
  }

 private:
  void push(Tok t, std::string v, size_t offset) {
    tokens_.push_back(Token{t, std::move(v), pos_of(offset)});
  }

  bool all_space(const std::string& s, size_t from) const {
    for (size_t i = from; i < s.size();) {
      size_t len = 0;
      if (!py_space(utf8_decode_at(s, i, len))) return false;
      i += len;
    }
    return true;
  }

  size_t skip_space(size_t i) const {
    while (i < src_.size()) {
      size_t len = 0;
      if (!py_space(utf8_decode_at(src_, i, len))) break;
      i += len;
    }
    return i;
  }

  // The comment opened at `begin`, its content from `j`; returns the offset after it.
  size_t lex_comment(size_t begin, size_t j) {
    const size_t e = src_.find("#}", j);
    if (e == std::string::npos) fail_at(pos_of(begin), "missing end of comment tag '#}'");
    if (e > j && src_[e - 1] == '-') return skip_space(e + 2);
    if (e > j && src_[e - 1] == '+') return e + 2;
    return e + 2 < src_.size() && src_[e + 2] == '\n' ? e + 3 : e + 2;  // trim_blocks
  }

  // Tokens of a {% %} (block) or {{ }} tag from `i` to its end; returns the offset after it.
  size_t lex_tag(bool block, size_t i, size_t begin) {
    std::vector<char> balance;
    const size_t n = src_.size();
    const char close = block ? '%' : '}';
    while (true) {
      if (balance.empty()) {
        if (block && src_.compare(i, 3, "+%}") == 0) return end_tag(block, i, i + 3);
        if (src_.compare(i, 2, std::string("-") + close) == 0 && i + 2 < n && src_[i + 2] == '}')
          return end_tag(block, i, skip_space(i + 3));
        if (src_.compare(i, 2, std::string(1, close) + "}") == 0) {
          size_t e = i + 2;
          if (block && e < n && src_[e] == '\n') ++e;  // trim_blocks
          return end_tag(block, i, e);
        }
      }
      if (i >= n)
        fail_at(pos_of(begin), block ? "missing end of block tag '%}'" : "missing end of '}}'");
      size_t len = 0;
      const char32_t c = utf8_decode_at(src_, i, len);
      if (py_space(c)) {
        i += len;
      } else if (c >= '0' && c <= '9') {
        i = lex_number(i);
      } else if (c == '_' || (c < 128 && std::isalpha(static_cast<int>(c)))) {
        size_t e = i;
        while (e < n && (src_[e] == '_' || std::isalnum(static_cast<unsigned char>(src_[e])))) ++e;
        push(Tok::name, src_.substr(i, e - i), i);
        i = e;
      } else if (c == '\'' || c == '"') {
        i = lex_string(i);
      } else {
        i = lex_operator(i, balance);
      }
    }
  }

  size_t end_tag(bool block, size_t at, size_t after) {
    push(block ? Tok::block_end : Tok::var_end, "", at);
    return after;
  }

  size_t lex_number(size_t i) {
    const size_t n = src_.size();
    const auto digits = [&](size_t p) {  // (\d+_)*\d+ from p; returns the end or p
      size_t e = p;
      while (e < n && (std::isdigit(static_cast<unsigned char>(src_[e])) ||
                       (src_[e] == '_' && e > p && e + 1 < n &&
                        std::isdigit(static_cast<unsigned char>(src_[e + 1])))))
        ++e;
      return e;
    };
    size_t e = digits(i);
    bool is_float = false;
    if (i == 0 || src_[i - 1] != '.') {  // float_re's (?<!\.)
      if (e + 1 < n && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
        e = digits(e + 1);
        is_float = true;
      }
      if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
        size_t p = e + 1;
        if (p < n && (src_[p] == '+' || src_[p] == '-')) ++p;
        if (p < n && std::isdigit(static_cast<unsigned char>(src_[p]))) {
          e = digits(p);
          is_float = true;
        }
      }
    }
    std::string text;
    for (size_t k = i; k < e; ++k)
      if (src_[k] != '_') text.push_back(src_[k]);
    push(is_float ? Tok::floating : Tok::integer, text, i);
    return e;
  }

  // A quoted string with Python's unicode-escape rules (as jinja2 decodes literals).
  size_t lex_string(size_t i) {
    const char q = src_[i];
    std::string out;
    size_t k = i + 1;
    const auto bad = [&](size_t at) { fail_at(pos_of(at), "invalid escape in string literal"); };
    const auto hex = [&](size_t at, int count) {
      char32_t v = 0;
      for (int d = 0; d < count; ++d) {
        if (at + d >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[at + d])))
          bad(at - 2);
        const char ch = static_cast<char>(std::tolower(static_cast<unsigned char>(src_[at + d])));
        v = v * 16 + static_cast<char32_t>(ch <= '9' ? ch - '0' : ch - 'a' + 10);
      }
      return v;
    };
    while (true) {
      if (k >= src_.size()) fail_at(pos_of(i), "unterminated string literal");
      const char c = src_[k];
      if (c == q) break;
      if (c != '\\') {
        out.push_back(c);
        ++k;
        continue;
      }
      if (k + 1 >= src_.size()) fail_at(pos_of(i), "unterminated string literal");
      const char e = src_[k + 1];
      k += 2;
      switch (e) {
        case '\n':
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
          text::append_utf8(out, hex(k, 2));
          k += 2;
          break;
        case 'u': {
          const char32_t v = hex(k, 4);
          if (v >= 0xD800 && v < 0xE000) bad(k - 2);
          text::append_utf8(out, v);
          k += 4;
          break;
        }
        case 'U': {
          const char32_t v = hex(k, 8);
          if (v > 0x10FFFF || (v >= 0xD800 && v < 0xE000)) bad(k - 2);
          text::append_utf8(out, v);
          k += 8;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            char32_t v = static_cast<char32_t>(e - '0');
            for (int d = 0; d < 2 && k < src_.size() && src_[k] >= '0' && src_[k] <= '7'; ++d, ++k)
              v = v * 8 + static_cast<char32_t>(src_[k] - '0');
            text::append_utf8(out, v);
          } else {  // unknown escapes stay as written
            out.push_back('\\');
            k -= 1;
          }
      }
    }
    push(Tok::string, std::move(out), i);
    return k + 1;
  }

  size_t lex_operator(size_t i, std::vector<char>& balance) {
    static const char* const kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : kTwo)
      if (src_.compare(i, 2, op) == 0) {
        push(Tok::op, op, i);
        return i + 2;
      }
    const char c = src_[i];
    if (std::strchr("+-/*%~[](){}><=.:|,;", c) == nullptr || c == 0) {
      size_t len = 0;
      utf8_decode_at(src_, i, len);
      fail_at(pos_of(i), "unexpected character '" + shown(src_.substr(i, len)) + "'");
    }
    if (c == '(' || c == '[' || c == '{') {
      balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance.empty() || balance.back() != c)
        fail_at(pos_of(i), std::string("unexpected '") + c + "'");
      balance.pop_back();
    }
    push(Tok::op, std::string(1, c), i);
    return i + 1;
  }

  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
  size_t last_offset_ = 0;
  int last_col_ = 1;
};

}  // namespace

std::vector<Token> lex_template(std::string_view source) {
  if (source.size() > kMaxSourceBytes)
    fail(kComponent, "chat template of ", source.size(), " bytes exceeds the limit of ",
         kMaxSourceBytes);
  return Lexer(normalize_newlines(source)).run();
}

}  // namespace deltamoe::io::chat_detail
