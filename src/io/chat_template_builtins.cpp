// Chat templates: the built-in filters, tests, string and dict methods and global functions
// (jinja2's, with transformers' tojson, raise_exception and namespace).
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>

#include "io/chat_template_internal.h"

namespace deltamoe::io::chat_detail {

namespace {

constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox MAX_RANGE

const char* const kFilters[] = {
    "trim", "length",  "count", "upper",  "lower",  "capitalize", "title",      "tojson", "default",
    "d",    "first",   "last",  "join",   "string", "replace",    "list",       "int",    "float",
    "abs",  "reverse", "items", "unique", "map",    "selectattr", "rejectattr", "indent"};
const char* const kTests[] = {"defined",     "undefined", "none",        "string", "number",
                              "integer",     "float",     "boolean",     "true",   "false",
                              "mapping",     "iterable",  "sequence",    "even",   "odd",
                              "divisibleby", "eq",        "equalto",     "==",     "ne",
                              "!=",          "lt",        "lessthan",    "<",      "le",
                              "<=",          "gt",        "greaterthan", ">",      "ge",
                              ">=",          "in",        "sameas",      "lower",  "upper"};

bool is_int(const Json& j) {
  return j.is_number_integer() || j.is_number_unsigned();
}

const std::string& str_of(const Value& v, const char* what, Pos pos) {
  if (v.is_undefined() || v.is_namespace() || !v.j().is_string())
    fail_at(pos, std::string(what) + " expects a string, got '" + type_name(v) + "'");
  return v.j().get_ref<const std::string&>();
}

int64_t int_of(const Value& v, const char* what, Pos pos) {
  if (v.is_undefined() || v.is_namespace() || !(is_int(v.j()) || v.j().is_boolean()))
    fail_at(pos, std::string(what) + " expects an integer, got '" + type_name(v) + "'");
  if (v.j().is_boolean()) return v.j().get<bool>() ? 1 : 0;
  if (v.j().is_number_unsigned())
    return static_cast<int64_t>(std::min<uint64_t>(v.j().get<uint64_t>(), INT64_MAX));
  return v.j().get<int64_t>();
}

const std::string* opt_str(const Args& a, size_t i, const char* name, const char* what, Pos pos) {
  const Value* v = a.get(i, name);
  if (!v || v->is_undefined() || (!v->is_namespace() && v->j().is_null())) return nullptr;
  return &str_of(*v, what, pos);
}

std::string map_case(const std::string& s, bool upper) {
  std::string out;
  for (char32_t c : utf8_decode(s)) {
    const auto cp = static_cast<utf8proc_int32_t>(c);
    if (upper && c == 0xDF)  // Python's full mapping of the commonest special case: ß -> SS
      out += "SS";
    else
      text::append_utf8(out,
                        static_cast<char32_t>(upper ? utf8proc_toupper(cp) : utf8proc_tolower(cp)));
  }
  return out;
}

bool is_cased_letter(char32_t c) {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
      return true;
    default:
      return false;
  }
}

// Python's str.title(): a cased letter after a non-cased character is title-cased.
std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (char32_t c : utf8_decode(s)) {
    const auto cp = static_cast<utf8proc_int32_t>(c);
    text::append_utf8(
        out, static_cast<char32_t>(prev_cased ? utf8proc_tolower(cp) : utf8proc_totitle(cp)));
    prev_cased = is_cased_letter(c);
  }
  return out;
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (size_t i = 0; i < u.size(); ++i) {
    const auto cp = static_cast<utf8proc_int32_t>(u[i]);
    u[i] = static_cast<char32_t>(i == 0 ? utf8proc_totitle(cp) : utf8proc_tolower(cp));
  }
  return utf8_encode(u);
}

std::string py_replace(Renderer& r, const std::string& s, const std::string& old,
                       const std::string& with, int64_t count, Pos pos) {
  std::string out;
  int64_t done = 0;
  if (old.empty()) {  // Python inserts `with` around every character
    const std::u32string u = utf8_decode(s);
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      if (i < u.size()) text::append_utf8(out, u[i]);
      r.check_size(out.size(), pos);
    }
    return out;
  }
  size_t at = 0;
  while (count < 0 || done < count) {
    const size_t k = s.find(old, at);
    if (k == std::string::npos) break;
    out.append(s, at, k - at);
    out += with;
    at = k + old.size();
    ++done;
    r.check_size(out.size(), pos);
  }
  out.append(s, at, std::string::npos);
  r.check_size(out.size(), pos);
  return out;
}

Json py_split(const std::string& s, const std::string* sep, int64_t maxsplit, Pos pos) {
  Json out = Json::array();
  if (sep) {
    if (sep->empty()) fail_at(pos, "split: empty separator");
    size_t at = 0;
    while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
      const size_t k = s.find(*sep, at);
      if (k == std::string::npos) break;
      out.push_back(s.substr(at, k - at));
      at = k + sep->size();
    }
    out.push_back(s.substr(at));
    return out;
  }
  const std::u32string u = utf8_decode(s);
  size_t i = 0;
  while (true) {
    while (i < u.size() && py_space(u[i])) ++i;
    if (i == u.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      size_t e = u.size();
      while (e > i && py_space(u[e - 1])) --e;
      out.push_back(utf8_encode(std::u32string_view(u).substr(i, e - i)));
      break;
    }
    size_t e = i;
    while (e < u.size() && !py_space(u[e])) ++e;
    out.push_back(utf8_encode(std::u32string_view(u).substr(i, e - i)));
    i = e;
  }
  return out;
}

// Python's str.splitlines() (without keepends).
std::vector<std::string> py_splitlines(const std::string& s) {
  std::vector<std::string> lines;
  const std::u32string u = utf8_decode(s);
  std::u32string cur;
  for (size_t i = 0; i < u.size(); ++i) {
    const char32_t c = u[i];
    if (c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0x1C || c == 0x1D || c == 0x1E ||
        c == 0x85 || c == 0x2028 || c == 0x2029) {
      if (c == '\r' && i + 1 < u.size() && u[i + 1] == '\n') ++i;
      lines.push_back(utf8_encode(cur));
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  if (!cur.empty()) lines.push_back(utf8_encode(cur));
  return lines;
}

Value filter_tojson(const Value& v, const Args& a, Pos pos) {
  if (v.is_undefined()) fail_at(pos, "tojson: Object of type Undefined is not JSON serializable");
  if (v.is_namespace()) fail_at(pos, "tojson: Object of type Namespace is not JSON serializable");
  const Value* ascii = a.get(0, "ensure_ascii");
  const Value* indent = a.get(1, "indent");
  const Value* seps = a.get(2, "separators");
  const Value* sort = a.get(3, "sort_keys");
  std::string ind;
  bool has_indent = false;
  if (indent && !indent->is_undefined() && !indent->j().is_null()) {
    has_indent = true;
    if (indent->j().is_string())
      ind = indent->j().get<std::string>();
    else
      ind.assign(
          static_cast<size_t>(std::clamp<int64_t>(int_of(*indent, "tojson indent", pos), 0, 64)),
          ' ');
  }
  std::string item_sep = has_indent ? "," : ", ", key_sep = ": ";
  if (seps && !seps->is_undefined() && !seps->j().is_null()) {
    const Json& s = seps->j();
    if (!s.is_array() || s.size() != 2 || !s[0].is_string() || !s[1].is_string())
      fail_at(pos, "tojson: separators must be a pair of strings");
    item_sep = s[0].get<std::string>();
    key_sep = s[1].get<std::string>();
  }
  std::string out =
      py_json_dumps(v.j(), has_indent ? &ind : nullptr, item_sep, key_sep, sort && truthy(*sort));
  if (ascii && truthy(*ascii)) {
    std::string esc;
    for (char32_t c : utf8_decode(out)) {
      if (c < 0x80) {
        esc.push_back(static_cast<char>(c));
        continue;
      }
      char b[16];
      if (c >= 0x10000) {
        const char32_t x = c - 0x10000;
        std::snprintf(b, sizeof(b), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (x >> 10)),
                      static_cast<unsigned>(0xDC00 + (x & 0x3FF)));
      } else {
        std::snprintf(b, sizeof(b), "\\u%04x", static_cast<unsigned>(c));
      }
      esc += b;
    }
    out = std::move(esc);
  }
  Renderer::check_size(out.size(), pos);
  return Value::of(std::move(out));
}

Value filter_indent(const Value& v, const Args& a, Pos pos) {
  const std::string s = to_str(v) + "\n";
  const Value* w = a.get(0, "width");
  std::string ind = "    ";
  if (w && !w->is_undefined() && w->j().is_string())
    ind = w->j().get<std::string>();
  else if (w)
    ind.assign(static_cast<size_t>(std::clamp<int64_t>(int_of(*w, "indent", pos), 0, 256)), ' ');
  const Value* first = a.get(1, "first");
  const Value* blank = a.get(2, "blank");
  std::vector<std::string> lines = py_splitlines(s);
  std::string rv;
  if (blank && truthy(*blank)) {
    for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
  } else if (!lines.empty()) {
    rv = lines[0];
    for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind) + lines[i];
  }
  if (first && truthy(*first)) rv = ind + rv;
  Renderer::check_size(rv.size(), pos);
  return Value::of(std::move(rv));
}

// The attribute `name` ("a.b" walks) of an item, as selectattr / map / join read it.
Value attribute_of(const Value& item, const std::string& name) {
  Value cur = item;
  size_t at = 0;
  while (true) {
    const size_t dot = name.find('.', at);
    const std::string part =
        name.substr(at, dot == std::string::npos ? std::string::npos : dot - at);
    if (cur.is_undefined() || !cur.j().is_object())
      return Value::undefined("no attribute '" + part + "'");
    const auto it = cur.j().find(part);
    if (it == cur.j().end()) return Value::undefined("no attribute '" + part + "'");
    cur = cur.child(*it);
    if (dot == std::string::npos) return cur;
    at = dot + 1;
  }
}

Value filter_select(Renderer& r, const std::string& name, const Value& v, const Args& a, Pos pos) {
  const bool reject = name == "rejectattr";
  const std::string& attr = str_of(a.pos.empty() ? Value() : a.pos[0], name.c_str(), pos);
  std::string test = "truthy";
  Args targs;
  if (a.pos.size() > 1) test = str_of(a.pos[1], name.c_str(), pos);
  for (size_t i = 2; i < a.pos.size(); ++i) targs.pos.push_back(a.pos[i]);
  Json out = Json::array();
  for (const Value& item : r.iterate(v, pos)) {
    const Value x = attribute_of(item, attr);
    const bool ok = test == "truthy" ? truthy(x) : apply_test(test, x, targs, pos);
    if (ok != reject) out.push_back(item.j());
  }
  return Value::of(std::move(out));
}

Value filter_map(Renderer& r, const Value& v, const Args& a, Pos pos) {
  Json out = Json::array();
  const Value* attr = nullptr;
  for (const auto& [k, x] : a.kw)
    if (k == "attribute") attr = &x;
  if (attr) {
    const std::string& name = str_of(*attr, "map", pos);
    const Value* dflt = nullptr;
    for (const auto& [k, x] : a.kw)
      if (k == "default") dflt = &x;
    for (const Value& item : r.iterate(v, pos)) {
      Value x = attribute_of(item, name);
      if (x.is_undefined() && dflt) x = *dflt;
      out.push_back(x.j());
    }
    return Value::of(std::move(out));
  }
  if (a.pos.empty()) fail_at(pos, "map needs a filter name or attribute=");
  const std::string& filter = str_of(a.pos[0], "map", pos);
  Args fargs;
  for (size_t i = 1; i < a.pos.size(); ++i) fargs.pos.push_back(a.pos[i]);
  for (const Value& item : r.iterate(v, pos))
    out.push_back(apply_filter(r, filter, item, fargs, pos).j());
  return Value::of(std::move(out));
}

Value first_or_last(Renderer& r, const Value& v, bool last, Pos pos) {
  if (!v.is_undefined() && v.j().is_array()) {
    if (v.j().empty()) return Value::undefined("no first or last item, the sequence is empty");
    return v.child(last ? v.j().back() : v.j().front());
  }
  std::vector<Value> items = r.iterate(v, pos);
  if (items.empty()) return Value::undefined("no first or last item, the sequence is empty");
  return last ? items.back() : items.front();
}

Value filter_misc(Renderer& r, const std::string& name, const Value& v, const Args& a, Pos pos) {
  if (name == "list") {
    Json out = Json::array();
    for (const Value& x : r.iterate(v, pos)) out.push_back(x.j());
    return Value::of(std::move(out));
  }
  if (name == "int" || name == "float") {
    const Value* dflt = a.get(0, "default");
    const Json& j = v.j();
    if (!v.is_undefined() && !v.is_namespace()) {
      double d = 0;
      bool ok = true;
      if (j.is_boolean() || is_int(j) || j.is_number_float()) {
        d = j.is_boolean() ? (j.get<bool>() ? 1 : 0) : j.get<double>();
        if (name == "int" && is_int(j)) return Value::of(j);
      } else if (j.is_string()) {
        const std::string s = py_strip(j.get<std::string>(), nullptr, true, true);
        char* end = nullptr;
        d = std::strtod(s.c_str(), &end);
        ok = !s.empty() && end == s.c_str() + s.size();
      } else {
        ok = false;
      }
      if (ok && std::isfinite(d)) {
        if (name == "float") return Value::of(d);
        if (std::fabs(d) < 9.2e18) return Value::of(static_cast<int64_t>(d));
      }
    }
    if (dflt) return *dflt;
    return name == "int" ? Value::of(0) : Value::of(0.0);
  }
  if (name == "abs") {
    const Json& j = v.j();
    if (v.is_undefined() || v.is_namespace() || !(j.is_number() || j.is_boolean()))
      fail_at(pos, "abs expects a number, got '" + type_name(v) + "'");
    if (j.is_number_float()) return Value::of(std::fabs(j.get<double>()));
    const int64_t x = int_of(v, "abs", pos);
    if (x == INT64_MIN) fail_at(pos, "integer overflow");
    return Value::of(x < 0 ? -x : x);
  }
  if (name == "reverse") {
    if (!v.is_undefined() && v.j().is_string()) {
      std::u32string u = utf8_decode(v.j().get_ref<const std::string&>());
      std::reverse(u.begin(), u.end());
      return Value::of(utf8_encode(u));
    }
    Json out = Json::array();
    std::vector<Value> items = r.iterate(v, pos);
    for (auto it = items.rbegin(); it != items.rend(); ++it) out.push_back(it->j());
    return Value::of(std::move(out));
  }
  if (name == "items") {
    Json out = Json::array();
    if (v.is_undefined()) return Value::of(std::move(out));
    if (!v.j().is_object()) fail_at(pos, "items expects a mapping, got '" + type_name(v) + "'");
    for (const auto& [k, x] : v.j().items()) out.push_back(Json::array({k, x}));
    return Value::of(std::move(out));
  }
  // unique (case-insensitive for strings, as jinja2's default)
  Json out = Json::array();
  std::vector<Json> seen;
  for (const Value& x : r.iterate(v, pos)) {
    const Json key = x.j().is_string() ? Json(map_case(x.j().get<std::string>(), false)) : x.j();
    if (std::none_of(seen.begin(), seen.end(), [&](const Json& s) { return py_equal(s, key); })) {
      seen.push_back(key);
      out.push_back(x.j());
    }
  }
  return Value::of(std::move(out));
}

}  // namespace

bool known_filter(const std::string& name) {
  return std::find(std::begin(kFilters), std::end(kFilters), name) != std::end(kFilters);
}

bool known_test(const std::string& name) {
  return std::find(std::begin(kTests), std::end(kTests), name) != std::end(kTests);
}

Value apply_filter(Renderer& r, const std::string& name, const Value& v, const Args& a, Pos pos) {
  r.charge(Renderer::units_of(v.j()), pos);
  if (name == "trim")
    return Value::of(py_strip(to_str(v), opt_str(a, 0, "chars", "trim", pos), true, true));
  if (name == "length" || name == "count") {
    if (v.is_undefined()) return Value::of(0);
    const Json& j = v.j();
    if (v.is_namespace() || !(j.is_string() || j.is_array() || j.is_object()))
      fail_at(pos, "object of type '" + type_name(v) + "' has no len()");
    return Value::of(static_cast<int64_t>(
        j.is_string() ? utf8_decode(j.get_ref<const std::string&>()).size() : j.size()));
  }
  if (name == "upper" || name == "lower") return Value::of(map_case(to_str(v), name == "upper"));
  if (name == "capitalize") return Value::of(py_capitalize(to_str(v)));
  if (name == "title") {  // jinja2's do_title: words start after - whitespace ( { [ <
    std::string out;
    bool start = true;
    for (char32_t c : utf8_decode(to_str(v))) {
      const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_space(c);
      const auto cp = static_cast<utf8proc_int32_t>(c);
      text::append_utf8(out, static_cast<char32_t>(sep     ? cp
                                                   : start ? utf8proc_toupper(cp)
                                                           : utf8proc_tolower(cp)));
      start = sep;
    }
    return Value::of(std::move(out));
  }
  if (name == "tojson") {
    Value out = filter_tojson(v, a, pos);
    r.charge(Renderer::units_of(out.j()), pos);
    return out;
  }
  if (name == "default" || name == "d") {
    const Value* dflt = a.get(0, "default_value");
    const Value* boolean = a.get(1, "boolean");
    const bool use = v.is_undefined() || (boolean && truthy(*boolean) && !truthy(v));
    if (!use) return v;
    return dflt ? *dflt : Value::of("");
  }
  if (name == "first" || name == "last") return first_or_last(r, v, name == "last", pos);
  if (name == "join") {
    const std::string* sep = opt_str(a, 0, "d", "join", pos);
    const std::string* attr = opt_str(a, 1, "attribute", "join", pos);
    std::string out;
    bool first = true;
    for (const Value& x : r.iterate(v, pos)) {
      if (!first && sep) out += *sep;
      first = false;
      out += to_str(attr ? attribute_of(x, *attr) : x);
      Renderer::check_size(out.size(), pos);
    }
    return Value::of(std::move(out));
  }
  if (name == "string") return Value::of(to_str(v));
  if (name == "replace") {
    if (a.pos.size() < 2) fail_at(pos, "replace needs the old and the new string");
    const Value* count = a.get(2, "count");
    return Value::of(py_replace(r, to_str(v), to_str(a.pos[0]), to_str(a.pos[1]),
                                count ? int_of(*count, "replace", pos) : -1, pos));
  }
  if (name == "map") return filter_map(r, v, a, pos);
  if (name == "selectattr" || name == "rejectattr") return filter_select(r, name, v, a, pos);
  if (name == "indent") return filter_indent(v, a, pos);
  if (known_filter(name)) return filter_misc(r, name, v, a, pos);
  fail_at(pos, "unknown filter '" + shown(name, 60) + "'");
}

bool apply_test(const std::string& name, const Value& v, const Args& a, Pos pos) {
  const Json& j = v.j();
  const bool plain = !v.is_undefined() && !v.is_namespace();
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return plain && j.is_null();
  if (name == "string") return plain && j.is_string();
  if (name == "number") return plain && (j.is_number() || j.is_boolean());
  if (name == "integer") return plain && is_int(j);
  if (name == "float") return plain && j.is_number_float();
  if (name == "boolean") return plain && j.is_boolean();
  if (name == "true") return plain && j.is_boolean() && j.get<bool>();
  if (name == "false") return plain && j.is_boolean() && !j.get<bool>();
  if (name == "mapping") return plain && j.is_object();
  if (name == "iterable")
    return v.is_undefined() || (plain && (j.is_string() || j.is_array() || j.is_object()));
  if (name == "sequence") return plain && (j.is_string() || j.is_array() || j.is_object());
  if (name == "lower" || name == "upper") {
    if (!plain || !j.is_string()) return false;
    const std::string& s = j.get_ref<const std::string&>();
    return map_case(s, name == "upper") == s;
  }
  if (name == "even" || name == "odd") {
    const int64_t x = int_of(v, name.c_str(), pos);
    return (x % 2 == 0) == (name == "even");
  }
  const Value* arg = a.get(0, "other");
  if (!known_test(name)) fail_at(pos, "unknown test '" + shown(name, 60) + "'");
  if (!arg) fail_at(pos, "test '" + name + "' needs an argument");
  if (name == "divisibleby") {
    const int64_t d = int_of(*arg, "divisibleby", pos);
    if (d == 0) fail_at(pos, "divisibleby 0");
    return int_of(v, "divisibleby", pos) % d == 0;
  }
  if (name == "in") {
    const Json& c = arg->j();
    if (arg->is_undefined()) return false;
    if (c.is_string())
      return plain && j.is_string() &&
             c.get_ref<const std::string&>().find(j.get_ref<const std::string&>()) !=
                 std::string::npos;
    if (c.is_array())
      return plain &&
             std::any_of(c.begin(), c.end(), [&](const Json& x) { return py_equal(j, x); });
    if (c.is_object()) return plain && j.is_string() && c.contains(j.get<std::string>());
    fail_at(pos, "test 'in' needs a container");
  }
  const bool eq = v.is_undefined() || arg->is_undefined() ? v.is_undefined() && arg->is_undefined()
                                                          : py_equal(j, arg->j());
  if (name == "eq" || name == "equalto" || name == "==" || name == "sameas") return eq;
  if (name == "ne" || name == "!=") return !eq;
  if (!plain || arg->is_undefined() || arg->is_namespace())
    fail_at(pos, "test '" + name + "' cannot order '" + type_name(v) + "' and '" + type_name(*arg) +
                     "'");
  bool ok = true;
  bool r;
  if (name == "lt" || name == "lessthan" || name == "<")
    r = py_less(j, arg->j(), ok);
  else if (name == "gt" || name == "greaterthan" || name == ">")
    r = py_less(arg->j(), j, ok);
  else if (name == "le" || name == "<=")
    r = !py_less(arg->j(), j, ok);
  else
    r = !py_less(j, arg->j(), ok);
  if (!ok)
    fail_at(pos, "test '" + name + "' cannot order '" + type_name(v) + "' and '" + type_name(*arg) +
                     "'");
  return r;
}

namespace {

Value string_method(Renderer& r, const std::string& s, const std::string& name, const Args& a,
                    Pos pos, bool& found) {
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return Value::of(
        py_strip(s, opt_str(a, 0, "chars", name.c_str(), pos), name != "rstrip", name != "lstrip"));
  if (name == "startswith" || name == "endswith") {
    const Value* p = a.get(0, "prefix");
    if (!p) fail_at(pos, name + " needs an argument");
    std::vector<std::string> options;
    if (!p->is_undefined() && p->j().is_array()) {
      for (const auto& x : p->j()) options.push_back(str_of(Value::of(x), name.c_str(), pos));
    } else {
      options.push_back(str_of(*p, name.c_str(), pos));
    }
    for (const std::string& o : options) {
      if (o.size() > s.size()) continue;
      if (name == "startswith" ? s.compare(0, o.size(), o) == 0
                               : s.compare(s.size() - o.size(), o.size(), o) == 0)
        return Value::of(true);
    }
    return Value::of(false);
  }
  if (name == "split") {
    const Value* mx = a.get(1, "maxsplit");
    return Value::of(
        py_split(s, opt_str(a, 0, "sep", "split", pos), mx ? int_of(*mx, "split", pos) : -1, pos));
  }
  if (name == "upper" || name == "lower") return Value::of(map_case(s, name == "upper"));
  if (name == "title") return Value::of(py_title(s));
  if (name == "capitalize") return Value::of(py_capitalize(s));
  if (name == "replace") {
    if (a.pos.size() < 2) fail_at(pos, "replace needs the old and the new string");
    const Value* count = a.get(2, "count");
    return Value::of(py_replace(r, s, str_of(a.pos[0], "replace", pos),
                                str_of(a.pos[1], "replace", pos),
                                count ? int_of(*count, "replace", pos) : -1, pos));
  }
  if (name == "find" || name == "count") {
    const Value* sub = a.get(0, "sub");
    if (!sub) fail_at(pos, name + " needs an argument");
    const std::string& t = str_of(*sub, name.c_str(), pos);
    if (name == "find") {
      const size_t k = s.find(t);
      return Value::of(k == std::string::npos
                           ? int64_t{-1}
                           : static_cast<int64_t>(utf8_decode(s.substr(0, k)).size()));
    }
    if (t.empty()) return Value::of(static_cast<int64_t>(utf8_decode(s).size() + 1));
    int64_t n = 0;
    for (size_t k = s.find(t); k != std::string::npos; k = s.find(t, k + t.size())) ++n;
    return Value::of(n);
  }
  if (name == "join") {
    const Value* items = a.get(0, "iterable");
    if (!items) fail_at(pos, "join needs an argument");
    std::string out;
    bool first = true;
    for (const Value& x : r.iterate(*items, pos)) {
      if (!first) out += s;
      first = false;
      out += str_of(x, "join", pos);
      Renderer::check_size(out.size(), pos);
    }
    return Value::of(std::move(out));
  }
  found = false;
  return {};
}

}  // namespace

Value call_method(Renderer& r, const Value& self, const std::string& name, const Args& a, Pos pos,
                  bool& found) {
  found = true;
  if (self.is_namespace()) {
    found = false;
    return {};
  }
  const Json& j = self.j();
  r.charge(Renderer::units_of(j), pos);
  if (j.is_string()) return string_method(r, j.get_ref<const std::string&>(), name, a, pos, found);
  if (j.is_object()) {
    if (name == "items") {
      Json out = Json::array();
      for (const auto& [k, x] : j.items()) out.push_back(Json::array({k, x}));
      return Value::of(std::move(out));
    }
    if (name == "keys" || name == "values") {
      Json out = Json::array();
      for (const auto& [k, x] : j.items()) out.push_back(name == "keys" ? Json(k) : x);
      return Value::of(std::move(out));
    }
    if (name == "get") {
      const Value* key = a.get(0, "key");
      if (!key) fail_at(pos, "get needs a key");
      if (!key->is_undefined() && key->j().is_string()) {
        const auto it = j.find(key->j().get<std::string>());
        if (it != j.end()) return self.child(*it);
      }
      const Value* dflt = a.get(1, "default");
      return dflt ? *dflt : Value::of(nullptr);
    }
  }
  found = false;
  return {};
}

Value call_global(Renderer& r, const std::string& name, const Args& a, Pos pos, bool& found) {
  found = true;
  if (name == "raise_exception") {
    const Value* msg = a.get(0, "message");
    fail(kComponent, shown(msg ? to_str(*msg) : std::string(), 1000));
  }
  if (name == "namespace" || name == "dict") {
    Json obj = Json::object();
    if (!a.pos.empty()) {
      if (a.pos.size() > 1 || a.pos[0].is_undefined() || !a.pos[0].j().is_object())
        fail_at(pos, name + "() takes keyword arguments or one dict");
      obj = a.pos[0].j();
    }
    for (const auto& [k, v] : a.kw) obj[k] = v.j();
    if (name == "dict") return Value::of(std::move(obj));
    for (const auto& [k, v] : obj.items())
      if (!k.empty() && k[0] == '_')
        fail_at(pos, "namespace attributes cannot start with '_': '" + shown(k, 60) + "'");
    return Value{{}, std::make_shared<Json>(std::move(obj)), {}};
  }
  if (name == "range") {
    if (a.pos.empty() || a.pos.size() > 3 || !a.kw.empty())
      fail_at(pos, "range() takes 1 to 3 integers");
    int64_t start = 0, stop = 0, step = 1;
    if (a.pos.size() == 1) {
      stop = int_of(a.pos[0], "range", pos);
    } else {
      start = int_of(a.pos[0], "range", pos);
      stop = int_of(a.pos[1], "range", pos);
      if (a.pos.size() == 3) step = int_of(a.pos[2], "range", pos);
    }
    if (step == 0) fail_at(pos, "range() step must not be zero");
    Json out = Json::array();
    r.step(pos);
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      r.step(pos);
      if (static_cast<int64_t>(out.size()) >= kMaxRange)
        fail_at(pos, "range() longer than " + std::to_string(kMaxRange) + " items");
      out.push_back(i);
      if ((step > 0 && i > INT64_MAX - step) || (step < 0 && i < INT64_MIN - step)) break;
    }
    return Value::of(std::move(out));
  }
  if (name == "strftime_now") {
    const Value* fmt = a.get(0, "format");
    const std::string f = fmt ? to_str(*fmt) : std::string();
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[512];
    const size_t n = f.size() < 200 ? std::strftime(buf, sizeof(buf), f.c_str(), &tm) : 0;
    return Value::of(std::string(buf, n));
  }
  found = false;
  return {};
}

}  // namespace deltamoe::io::chat_detail
