// Chat templates: values with Python's semantics (truth, str, repr, ==, <, json.dumps) and
// the UTF-8 helpers the string filters and methods share.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "io/chat_template_internal.h"

namespace deltamoe::io::chat_detail {

void fail_at(Pos pos, const std::string& message) {
  fail(kComponent, "chat template ", pos.line, ":", pos.col, ": ", message);
}

std::string shown(std::string_view s, size_t max_bytes) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < max_bytes; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out.push_back(c < 0x20 || c == 0x7F ? ' ' : static_cast<char>(c));
  }
  if (out.size() < s.size()) {
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
    if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
    out += "...";
  }
  return out;
}

Value Value::child(const Json& c) const {
  if (ns) return Value::of(c);  // a namespace may change under an alias: copy
  return Value{std::shared_ptr<const Json>(json, &c), {}, {}};
}

const Json& Value::j() const {
  static const Json kNull;
  if (ns) return *ns;
  return json ? *json : kNull;
}

bool truthy(const Value& v) {
  if (v.is_undefined()) return false;
  if (v.is_namespace()) return true;
  const Json& j = v.j();
  switch (j.type()) {
    case Json::value_t::null:
      return false;
    case Json::value_t::boolean:
      return j.get<bool>();
    case Json::value_t::number_integer:
      return j.get<int64_t>() != 0;
    case Json::value_t::number_unsigned:
      return j.get<uint64_t>() != 0;
    case Json::value_t::number_float:
      return j.get<double>() != 0.0;
    case Json::value_t::string:
      return !j.get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object:
      return !j.empty();
    default:
      return true;
  }
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  const std::string s(buf, r.ptr);
  const size_t e_at = s.find('e');
  std::string mant = s.substr(0, e_at);
  const int exp = std::stoi(s.substr(e_at + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  const int n = static_cast<int>(digits.size());
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp >= n - 1) {
      out += digits + std::string(static_cast<size_t>(exp - (n - 1)), '0') + ".0";
    } else if (exp >= 0) {
      out += digits.substr(0, static_cast<size_t>(exp) + 1) + "." +
             digits.substr(static_cast<size_t>(exp) + 1);
    } else {
      out += "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof(eb), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return out;
}

namespace {

// Python's str.isprintable() for the characters repr() escapes (an approximation beyond
// Latin-1: line/paragraph separators and zero-width format characters).
bool py_unprintable(char32_t c) {
  return c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD || (c >= 0x200B && c <= 0x200F) ||
         c == 0x2028 || c == 0x2029 || c == 0xFEFF;
}

void repr_string(std::string& out, const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  out.push_back(q);
  for (char32_t c : utf8_decode(s)) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == static_cast<char32_t>(q)) {
      out.push_back('\\');
      out.push_back(q);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (py_unprintable(c)) {
      char b[16];
      if (c < 0x100)
        std::snprintf(b, sizeof(b), "\\x%02x", static_cast<unsigned>(c));
      else
        std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(c));
      out += b;
    } else {
      text::append_utf8(out, c);
    }
  }
  out.push_back(q);
}

// A scalar as Python's repr() (`json` false) or json.dumps() (`json` true) writes it; false
// for strings, lists and dicts.
bool scalar_into(std::string& out, const Json& j, bool json) {
  switch (j.type()) {
    case Json::value_t::null:
      out += json ? "null" : "None";
      return true;
    case Json::value_t::boolean:
      out += j.get<bool>() ? (json ? "true" : "True") : (json ? "false" : "False");
      return true;
    case Json::value_t::number_integer:
      out += std::to_string(j.get<int64_t>());
      return true;
    case Json::value_t::number_unsigned:
      out += std::to_string(j.get<uint64_t>());
      return true;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      if (json && (std::isnan(d) || std::isinf(d)))
        out += std::isnan(d) ? "NaN" : (d > 0 ? "Infinity" : "-Infinity");
      else
        out += float_repr(d);
      return true;
    }
    default:
      return false;
  }
}

void repr_into(std::string& out, const Json& j) {
  if (scalar_into(out, j, false)) return;
  switch (j.type()) {
    case Json::value_t::string:
      repr_string(out, j.get_ref<const std::string&>());
      return;
    case Json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& x : j) {
        if (!first) out += ", ";
        first = false;
        repr_into(out, x);
        if (out.size() > kMaxStringBytes) return;
      }
      out.push_back(']');
      return;
    }
    case Json::value_t::object: {
      out.push_back('{');
      bool first = true;
      for (const auto& [k, v] : j.items()) {
        if (!first) out += ", ";
        first = false;
        repr_string(out, k);
        out += ": ";
        repr_into(out, v);
        if (out.size() > kMaxStringBytes) return;
      }
      out.push_back('}');
      return;
    }
    default:
      out += "None";
      return;
  }
}

void json_string(std::string& out, const std::string& s) {
  out.push_back('"');
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof(b), "\\u%04x", c);
          out += b;
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

struct Dumper {
  const std::string* indent;
  const std::string &item_sep, &key_sep;
  bool sort_keys;
  std::string out;

  void newline(int level) {
    out.push_back('\n');
    for (int i = 0; i < level && out.size() <= kMaxStringBytes; ++i) out += *indent;
  }

  void dump(const Json& j, int level) {
    if (out.size() > kMaxStringBytes)
      fail(kComponent, "tojson output exceeds ", kMaxStringBytes, " bytes");
    if (scalar_into(out, j, true)) return;
    switch (j.type()) {
      case Json::value_t::string:
        json_string(out, j.get_ref<const std::string&>());
        return;
      case Json::value_t::array: {
        if (j.empty()) {
          out += "[]";
          return;
        }
        out.push_back('[');
        bool first = true;
        for (const auto& x : j) {
          if (!first) out += item_sep;
          first = false;
          if (indent) newline(level + 1);
          dump(x, level + 1);
        }
        if (indent) newline(level);
        out.push_back(']');
        return;
      }
      case Json::value_t::object: {
        if (j.empty()) {
          out += "{}";
          return;
        }
        std::vector<std::pair<const std::string*, const Json*>> items;
        for (const auto& [k, v] : j.items()) items.emplace_back(&k, &v);
        if (sort_keys)
          std::stable_sort(items.begin(), items.end(),
                           [](const auto& a, const auto& b) { return *a.first < *b.first; });
        out.push_back('{');
        bool first = true;
        for (const auto& [k, v] : items) {
          if (!first) out += item_sep;
          first = false;
          if (indent) newline(level + 1);
          json_string(out, *k);
          out += key_sep;
          dump(*v, level + 1);
        }
        if (indent) newline(level);
        out.push_back('}');
        return;
      }
      default:
        out += "null";
        return;
    }
  }
};

bool is_number(const Json& j) {
  return j.is_number() || j.is_boolean();
}

double as_double(const Json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  return j.get<double>();
}

bool both_integral(const Json& a, const Json& b) {
  return (a.is_number_integer() || a.is_boolean()) && (b.is_number_integer() || b.is_boolean());
}

int64_t as_int(const Json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  if (j.is_number_unsigned()) return static_cast<int64_t>(j.get<uint64_t>());
  return j.get<int64_t>();
}

}  // namespace

std::string py_repr(const Json& j) {
  std::string out;
  repr_into(out, j);
  return out;
}

std::string to_str(const Value& v) {
  if (v.is_undefined()) return "";
  if (v.is_namespace()) return "<Namespace " + py_repr(*v.ns) + ">";
  const Json& j = v.j();
  if (j.is_string()) return j.get<std::string>();
  return py_repr(j);
}

std::string py_json_dumps(const Json& j, const std::string* indent, const std::string& item_sep,
                          const std::string& key_sep, bool sort_keys) {
  Dumper d{indent, item_sep, key_sep, sort_keys, {}};
  d.dump(j, 0);
  return std::move(d.out);
}

bool py_equal(const Json& a, const Json& b) {
  if (is_number(a) && is_number(b)) {
    if (both_integral(a, b)) return as_int(a) == as_int(b);
    return as_double(a) == as_double(b);
  }
  if (a.type() != b.type()) {
    return false;
  }
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!py_equal(a[i], b[i])) return false;
    return true;
  }
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (const auto& [k, v] : a.items()) {
      const auto it = b.find(k);
      if (it == b.end() || !py_equal(v, *it)) return false;
    }
    return true;
  }
  return a == b;
}

bool py_less(const Json& a, const Json& b, bool& ok) {
  ok = true;
  if (is_number(a) && is_number(b)) {
    if (both_integral(a, b)) return as_int(a) < as_int(b);
    return as_double(a) < as_double(b);
  }
  if (a.is_string() && b.is_string())
    return a.get_ref<const std::string&>() < b.get_ref<const std::string&>();
  if (a.is_array() && b.is_array()) {
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (py_equal(a[i], b[i])) continue;
      return py_less(a[i], b[i], ok);
    }
    return a.size() < b.size();
  }
  ok = false;
  return false;
}

std::string type_name(const Value& v) {
  if (v.is_undefined()) return "Undefined";
  if (v.is_namespace()) return "Namespace";
  switch (v.j().type()) {
    case Json::value_t::null:
      return "NoneType";
    case Json::value_t::boolean:
      return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "int";
    case Json::value_t::number_float:
      return "float";
    case Json::value_t::string:
      return "str";
    case Json::value_t::array:
      return "list";
    case Json::value_t::object:
      return "dict";
    default:
      return "object";
  }
}

// ---- UTF-8 ---------------------------------------------------------------------------------

char32_t utf8_decode_at(std::string_view s, size_t i, size_t& len) {
  len = text::valid_sequence_length(s, i);
  if (len == 0) {
    len = 1;
    return 0xFFFD;
  }
  size_t at = i;
  return text::next_code_point(s, at);
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0, len = 0; i < s.size(); i += len) out.push_back(utf8_decode_at(s, i, len));
  return out;
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) text::append_utf8(out, c);
  return out;
}

bool py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right) {
  const std::u32string set = chars ? utf8_decode(*chars) : std::u32string();
  const auto strip = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : py_space(c);
  };
  // Byte offsets of the code points, so that the kept part is the input's own bytes.
  std::vector<size_t> starts;
  std::u32string u;
  for (size_t i = 0, len = 0; i < s.size(); i += len) {
    starts.push_back(i);
    u.push_back(utf8_decode_at(s, i, len));
  }
  starts.push_back(s.size());
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip(u[b])) ++b;
  if (right)
    while (e > b && strip(u[e - 1])) --e;
  return std::string(s.substr(starts[b], starts[e] - starts[b]));
}

}  // namespace deltamoe::io::chat_detail
