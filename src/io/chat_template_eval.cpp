// Chat templates: the evaluator (statements, scopes, expressions with Python's operator
// semantics), bounded in steps, output size and list size.
#include <cmath>
#include <limits>

#include "io/chat_template_internal.h"

namespace deltamoe::io::chat_detail {

namespace {

bool is_num(const Json& j) {
  return j.is_number() || j.is_boolean();
}
bool is_int(const Json& j) {
  return j.is_number_integer() || j.is_number_unsigned() || j.is_boolean();
}
int64_t to_int(const Json& j) {
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  if (j.is_number_unsigned()) {
    const uint64_t u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(kComponent, "integer ", u, " is out of range");
    return static_cast<int64_t>(u);
  }
  return j.get<int64_t>();
}
double to_double(const Json& j) {
  return is_int(j) ? static_cast<double>(to_int(j)) : j.get<double>();
}

[[noreturn]] void undefined_error(const Value& v, Pos pos) {
  fail_at(pos, v.missing.empty() ? std::string("value is undefined") : v.missing);
}

[[noreturn]] void operand_error(const char* op, const Value& a, const Value& b, Pos pos) {
  fail_at(pos, std::string("unsupported operand types for ") + op + ": '" + type_name(a) +
                   "' and '" + type_name(b) + "'");
}

// Python's slice.indices(): the positions selected by [start:stop:step] of `n` items.
std::vector<size_t> slice_positions(int64_t n, const Json* start, const Json* stop,
                                    const Json* stepj, Pos pos) {
  const int64_t step = stepj ? to_int(*stepj) : 1;
  if (step == 0) fail_at(pos, "slice step cannot be zero");
  const auto clamp = [&](const Json* j, int64_t dflt) {
    if (!j) return dflt;
    int64_t v = to_int(*j);
    if (v < 0) {
      v += n;
      if (v < 0) v = step < 0 ? -1 : 0;
    } else if (v >= n) {
      v = step < 0 ? n - 1 : n;
    }
    return v;
  };
  const int64_t b = clamp(start, step < 0 ? n - 1 : 0);
  const int64_t e = clamp(stop, step < 0 ? -1 : n);
  std::vector<size_t> out;
  if (step > 0)
    for (int64_t i = b; i < e; i += step) out.push_back(static_cast<size_t>(i));
  else
    for (int64_t i = b; i > e; i += step) out.push_back(static_cast<size_t>(i));
  return out;
}

}  // namespace

const Value* Args::get(size_t i, std::string_view name) const {
  if (i < pos.size()) return &pos[i];
  for (const auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}

Renderer::Renderer(const Program& program, Json globals) : program_(program) {
  const Value root = Value::of(std::move(globals));
  scopes_.emplace_back();
  for (const auto& [k, v] : root.j().items()) scopes_[0].emplace_back(k, root.child(v));
}

std::string Renderer::run() {
  outputs_.emplace_back();
  exec(program_.body);
  return std::move(outputs_.back());
}

uint64_t Renderer::units_of(const Json& j) {
  if (j.is_string()) return 1 + j.get_ref<const std::string&>().size() / 64;
  if (j.is_array() || j.is_object()) return 1 + j.size();
  return 1;
}

void Renderer::charge(uint64_t units, Pos pos) {
  steps_ += units;
  if (steps_ > kMaxSteps)
    fail_at(pos, "rendering exceeded " + std::to_string(kMaxSteps) + " evaluation steps");
}

void Renderer::check_size(size_t bytes, Pos pos) {
  if (bytes > kMaxStringBytes)
    fail_at(pos, "output or string value exceeds " + std::to_string(kMaxStringBytes) + " bytes");
}

void Renderer::emit(std::string_view s, Pos pos) {
  std::string& out = outputs_.back();
  check_size(out.size() + s.size(), pos);
  charge(s.size() / 64, pos);
  out.append(s);
}

Value Renderer::lookup(const std::string& name) const {
  for (auto s = scopes_.rbegin(); s != scopes_.rend(); ++s)
    for (const auto& [k, v] : *s)
      if (k == name) return v;
  return Value::undefined("'" + shown(name, 60) + "' is undefined");
}

void Renderer::assign(const std::string& name, Value v) {
  auto& scope = scopes_.back();
  for (auto& [k, old] : scope)
    if (k == name) {
      old = std::move(v);
      return;
    }
  scope.emplace_back(name, std::move(v));
}

std::vector<Value> Renderer::iterate(const Value& v, Pos pos) {
  std::vector<Value> items;
  if (v.is_undefined()) return items;
  if (v.is_namespace()) fail_at(pos, "'Namespace' object is not iterable");
  const Json& j = v.j();
  if (j.is_array()) {
    for (const auto& x : j) items.push_back(v.child(x));
  } else if (j.is_object()) {
    for (const auto& [k, x] : j.items()) items.push_back(Value::of(k));
  } else if (j.is_string()) {
    for (char32_t c : utf8_decode(j.get_ref<const std::string&>())) {
      std::string s;
      text::append_utf8(s, c);
      items.push_back(Value::of(std::move(s)));
    }
  } else {
    fail_at(pos, "'" + type_name(v) + "' object is not iterable");
  }
  charge(items.size(), pos);
  return items;
}

// ---- statements ----------------------------------------------------------------------------

Renderer::Flow Renderer::exec(const Body& body) {
  for (const auto& sp : body) {
    const Stmt& s = *sp;
    step(s.pos);
    switch (s.kind) {
      case StmtKind::text:
        emit(s.text, s.pos);
        break;
      case StmtKind::output:
        emit(to_str(eval(*s.expr)), s.pos);
        break;
      case StmtKind::if_:
        for (const auto& [cond, b] : s.branches)
          if (!cond || truthy(eval(*cond))) {
            const Flow f = exec(b);
            if (f != Flow::normal) return f;
            break;
          }
        break;
      case StmtKind::for_:
        exec_for(s);
        break;
      case StmtKind::set:
        exec_set(s);
        break;
      case StmtKind::set_block: {
        outputs_.emplace_back();
        const Flow f = exec(s.body);
        std::string text = std::move(outputs_.back());
        outputs_.pop_back();
        assign(s.targets[0], Value::of(std::move(text)));
        if (f != Flow::normal) return f;
        break;
      }
      case StmtKind::break_:
        return Flow::break_;
      case StmtKind::continue_:
        return Flow::continue_;
    }
  }
  return Flow::normal;
}

namespace {
// Binds the loop targets to one item (tuple unpacking for several targets).
void bind_targets(const Stmt& s, const Value& item,
                  std::vector<std::pair<std::string, Value>>& scope) {
  if (s.targets.size() == 1) {
    scope.emplace_back(s.targets[0], item);
    return;
  }
  const Json& j = item.j();
  if (item.is_undefined() || item.is_namespace() || !j.is_array())
    fail_at(s.pos, "cannot unpack a '" + type_name(item) + "' into " +
                       std::to_string(s.targets.size()) + " names");
  if (j.size() != s.targets.size())
    fail_at(s.pos, "cannot unpack " + std::to_string(j.size()) + " values into " +
                       std::to_string(s.targets.size()) + " names");
  for (size_t i = 0; i < j.size(); ++i) scope.emplace_back(s.targets[i], item.child(j[i]));
}
}  // namespace

Renderer::Flow Renderer::exec_for(const Stmt& s) {
  std::vector<Value> items = iterate(eval(*s.expr), s.pos);
  if (s.filter) {
    std::vector<Value> kept;
    for (auto& item : items) {
      scopes_.emplace_back();
      bind_targets(s, item, scopes_.back());
      const bool keep = truthy(eval(*s.filter));
      scopes_.pop_back();
      if (keep) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) return exec(s.else_body);
  const auto n = static_cast<int64_t>(items.size());
  for (int64_t i = 0; i < n; ++i) {
    step(s.pos);
    scopes_.emplace_back();
    bind_targets(s, items[static_cast<size_t>(i)], scopes_.back());
    Json loop = {
        {"index", i + 1},  {"index0", i},        {"revindex", n - i}, {"revindex0", n - i - 1},
        {"first", i == 0}, {"last", i == n - 1}, {"length", n},       {"depth", 1},
        {"depth0", 0}};
    scopes_.back().emplace_back("loop", Value::of(std::move(loop)));
    const Flow f = exec(s.body);
    scopes_.pop_back();
    if (f == Flow::break_) break;
  }
  return Flow::normal;
}

void Renderer::exec_set(const Stmt& s) {
  Value v = eval(*s.expr);
  if (!s.attr.empty()) {
    const Value target = lookup(s.targets[0]);
    if (!target.is_namespace())
      fail_at(s.pos, "cannot assign attribute on non-namespace object '" + s.targets[0] + "'");
    if (s.attr[0] == '_')
      fail_at(s.pos, "namespace attributes cannot start with '_': '" + s.attr + "'");
    charge(units_of(v.j()), s.pos);
    if (v.is_undefined())
      target.ns->erase(s.attr);
    else
      (*target.ns)[s.attr] = v.j();
    return;
  }
  if (s.targets.size() == 1) {
    assign(s.targets[0], std::move(v));
    return;
  }
  std::vector<std::pair<std::string, Value>> bound;
  bind_targets(s, v, bound);
  for (auto& [k, x] : bound) assign(k, std::move(x));
}

// ---- expressions ---------------------------------------------------------------------------

Args Renderer::eval_args(const Expr& e, size_t first) {
  Args a;
  for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(eval(*e.args[i]));
  for (const auto& [k, x] : e.kwargs) a.kw.emplace_back(k, eval(*x));
  return a;
}

Value Renderer::eval(const Expr& e) {
  step(e.pos);
  switch (e.op) {
    case Op::literal:
      return e.value;
    case Op::name:
      return lookup(e.name);
    case Op::list: {
      Json arr = Json::array();
      for (const auto& a : e.args) {
        const Value v = eval(*a);
        arr.push_back(v.j());
      }
      return Value::of(std::move(arr));
    }
    case Op::dict: {
      Json obj = Json::object();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        const Value k = eval(*e.args[i]);
        if (k.is_undefined() || !k.j().is_string())
          fail_at(e.args[i]->pos, "dict keys must be strings");
        obj[k.j().get<std::string>()] = eval(*e.args[i + 1]).j();
      }
      return Value::of(std::move(obj));
    }
    case Op::attr: {
      const Value obj = eval(*e.args[0]);
      if (obj.is_undefined()) undefined_error(obj, e.pos);
      const Json& j = obj.j();
      if (j.is_object()) {
        const auto it = j.find(e.name);
        if (it != j.end()) {
          if (obj.is_namespace()) charge(units_of(*it), e.pos);  // copied out
          return obj.child(*it);
        }
      }
      return Value::undefined("'" + type_name(obj) + " object' has no attribute '" +
                              shown(e.name, 60) + "'");
    }
    case Op::item: {
      const Value obj = eval(*e.args[0]);
      return eval_item(obj, eval(*e.args[1]), e.pos);
    }
    case Op::slice:
      return eval_slice(e);
    case Op::call:
      return eval_call(e);
    case Op::filter: {
      const Value v = eval(*e.args[0]);
      return apply_filter(*this, e.name, v, eval_args(e, 1), e.pos);
    }
    case Op::test: {
      const Value v = eval(*e.args[0]);
      return Value::of(apply_test(e.name, v, eval_args(e, 1), e.pos) != e.negated);
    }
    case Op::not_:
      return Value::of(!truthy(eval(*e.args[0])));
    case Op::neg:
    case Op::pos: {
      const Value v = eval(*e.args[0]);
      if (v.is_undefined()) undefined_error(v, e.pos);
      const Json& j = v.j();
      if (!is_num(j))
        fail_at(e.pos, "bad operand type for unary " + std::string(e.op == Op::neg ? "-" : "+") +
                           ": '" + type_name(v) + "'");
      if (e.op == Op::pos) return Value::of(is_int(j) ? Json(to_int(j)) : j);
      if (!is_int(j)) return Value::of(-j.get<double>());
      const int64_t x = to_int(j);
      if (x == std::numeric_limits<int64_t>::min()) fail_at(e.pos, "integer overflow");
      return Value::of(-x);
    }
    case Op::and_: {
      Value a = eval(*e.args[0]);
      return truthy(a) ? eval(*e.args[1]) : a;
    }
    case Op::or_: {
      Value a = eval(*e.args[0]);
      return truthy(a) ? a : eval(*e.args[1]);
    }
    case Op::cond:
      if (truthy(eval(*e.args[1]))) return eval(*e.args[0]);
      if (e.args[2]) return eval(*e.args[2]);
      return Value::undefined("the conditional expression has no else branch");
    case Op::eq:
    case Op::ne:
    case Op::lt:
    case Op::le:
    case Op::gt:
    case Op::ge:
    case Op::in:
    case Op::not_in:
      return eval_compare(e);
    default:
      return eval_binary(e);
  }
}

Value Renderer::eval_item(const Value& obj, const Value& key, Pos pos) {
  if (obj.is_undefined()) undefined_error(obj, pos);
  const Json& j = obj.j();
  if (j.is_string() || obj.is_namespace()) charge(units_of(j), pos);
  const Json& k = key.j();
  const auto missing = [&] {
    return Value::undefined("'" + type_name(obj) + " object' has no element " +
                            shown(to_str(key), 60));
  };
  if (j.is_object()) {
    if (!k.is_string() || key.is_undefined()) return missing();
    const auto it = j.find(k.get_ref<const std::string&>());
    return it == j.end() ? missing() : obj.child(*it);
  }
  if ((j.is_array() || j.is_string()) && !key.is_undefined() && is_int(k)) {
    const int64_t idx = to_int(k);
    if (j.is_array()) {
      const auto n = static_cast<int64_t>(j.size());
      const int64_t i = idx < 0 ? idx + n : idx;
      if (i < 0 || i >= n) return missing();
      return obj.child(j[static_cast<size_t>(i)]);
    }
    const std::u32string u = utf8_decode(j.get_ref<const std::string&>());
    const auto n = static_cast<int64_t>(u.size());
    const int64_t i = idx < 0 ? idx + n : idx;
    if (i < 0 || i >= n) return missing();
    std::string s;
    text::append_utf8(s, u[static_cast<size_t>(i)]);
    return Value::of(std::move(s));
  }
  return missing();
}

Value Renderer::eval_slice(const Expr& e) {
  const Value obj = eval(*e.args[0]);
  Value parts[3];
  const Json* p[3] = {nullptr, nullptr, nullptr};
  for (int i = 0; i < 3; ++i) {
    if (!e.args[static_cast<size_t>(i) + 1]) continue;
    parts[i] = eval(*e.args[static_cast<size_t>(i) + 1]);
    if (parts[i].is_undefined() || parts[i].j().is_null()) continue;
    if (!is_int(parts[i].j())) fail_at(e.pos, "slice indices must be integers or none");
    p[i] = &parts[i].j();
  }
  if (obj.is_undefined()) undefined_error(obj, e.pos);
  const Json& j = obj.j();
  charge(units_of(j), e.pos);
  if (j.is_array()) {
    Json out = Json::array();
    for (size_t i : slice_positions(static_cast<int64_t>(j.size()), p[0], p[1], p[2], e.pos))
      out.push_back(j[i]);
    return Value::of(std::move(out));
  }
  if (j.is_string()) {
    const std::u32string u = utf8_decode(j.get_ref<const std::string&>());
    std::u32string out;
    for (size_t i : slice_positions(static_cast<int64_t>(u.size()), p[0], p[1], p[2], e.pos))
      out.push_back(u[i]);
    return Value::of(utf8_encode(out));
  }
  fail_at(e.pos, "'" + type_name(obj) + "' object is not subscriptable");
}

Value Renderer::eval_call(const Expr& e) {
  const Expr& callee = *e.args[0];
  if (callee.op == Op::attr) {
    const Value self = eval(*callee.args[0]);
    if (self.is_undefined()) undefined_error(self, e.pos);
    const Args a = eval_args(e, 1);
    bool found = true;
    Value r = call_method(*this, self, callee.name, a, e.pos, found);
    if (found) return r;
    fail_at(e.pos,
            "'" + type_name(self) + "' object has no method '" + shown(callee.name, 60) + "'");
  }
  if (callee.op == Op::name) {
    const Value v = lookup(callee.name);
    if (!v.is_undefined()) fail_at(e.pos, "'" + type_name(v) + "' object is not callable");
    const Args a = eval_args(e, 1);
    bool found = true;
    Value r = call_global(*this, callee.name, a, e.pos, found);
    if (found) return r;
    fail_at(e.pos, "'" + shown(callee.name, 60) + "' is undefined");
  }
  const Value v = eval(callee);
  fail_at(e.pos, "'" + type_name(v) + "' object is not callable");
}

Value Renderer::eval_compare(const Expr& e) {
  const Value a = eval(*e.args[0]);
  const Value b = eval(*e.args[1]);
  charge(units_of(a.j()) + units_of(b.j()), e.pos);
  switch (e.op) {
    case Op::eq:
    case Op::ne: {
      bool eq;
      if (a.is_undefined() || b.is_undefined())
        eq = a.is_undefined() && b.is_undefined();
      else if (a.is_namespace() || b.is_namespace())
        eq = a.ns == b.ns;
      else
        eq = py_equal(a.j(), b.j());
      return Value::of(eq == (e.op == Op::eq));
    }
    case Op::in:
    case Op::not_in: {
      bool found = false;
      if (b.is_undefined()) {
        found = false;
      } else if (b.is_namespace()) {
        fail_at(e.pos, "argument of type 'Namespace' is not iterable");
      } else if (b.j().is_string()) {
        if (a.is_undefined() || a.is_namespace() || !a.j().is_string())
          fail_at(e.pos, "'in <string>' requires string as left operand, not " + type_name(a));
        found = b.j().get_ref<const std::string&>().find(a.j().get_ref<const std::string&>()) !=
                std::string::npos;
      } else if (b.j().is_array()) {
        if (!a.is_undefined())
          for (const auto& x : b.j())
            if (py_equal(a.j(), x)) {
              found = true;
              break;
            }
      } else if (b.j().is_object()) {
        found = !a.is_undefined() && a.j().is_string() && b.j().contains(a.j().get<std::string>());
      } else {
        fail_at(e.pos, "argument of type '" + type_name(b) + "' is not iterable");
      }
      return Value::of(found == (e.op == Op::in));
    }
    default: {
      if (a.is_undefined()) undefined_error(a, e.pos);
      if (b.is_undefined()) undefined_error(b, e.pos);
      bool ok = true;
      bool r = false;
      if (!a.is_namespace() && !b.is_namespace()) {
        switch (e.op) {
          case Op::lt:
            r = py_less(a.j(), b.j(), ok);
            break;
          case Op::gt:
            r = py_less(b.j(), a.j(), ok);
            break;
          case Op::le:
            r = !py_less(b.j(), a.j(), ok);
            break;
          default:
            r = !py_less(a.j(), b.j(), ok);
            break;
        }
      }
      if (a.is_namespace() || b.is_namespace() || !ok)
        fail_at(e.pos, "ordering comparison not supported between '" + type_name(a) + "' and '" +
                           type_name(b) + "'");
      return Value::of(r);
    }
  }
}

Value Renderer::eval_binary(const Expr& e) {
  const Value a = eval(*e.args[0]);
  const Value b = eval(*e.args[1]);
  charge(units_of(a.j()) + units_of(b.j()), e.pos);
  if (e.op == Op::concat) {
    std::string s = to_str(a);
    const std::string t = to_str(b);
    check_size(s.size() + t.size(), e.pos);
    return Value::of(s + t);
  }
  if (a.is_undefined()) undefined_error(a, e.pos);
  if (b.is_undefined()) undefined_error(b, e.pos);
  const Json& x = a.j();
  const Json& y = b.j();
  static const char* const kSym[] = {"+", "-", "*", "/", "//", "%", "**"};
  const char* sym = kSym[static_cast<int>(e.op) - static_cast<int>(Op::add)];
  if (a.is_namespace() || b.is_namespace()) operand_error(sym, a, b, e.pos);
  if (is_num(x) && is_num(y)) {
    if (is_int(x) && is_int(y) && e.op != Op::div) {
      const int64_t p = to_int(x), q = to_int(y);
      int64_t r = 0;
      bool over = false;
      switch (e.op) {
        case Op::add:
          over = __builtin_add_overflow(p, q, &r);
          break;
        case Op::sub:
          over = __builtin_sub_overflow(p, q, &r);
          break;
        case Op::mul:
          over = __builtin_mul_overflow(p, q, &r);
          break;
        case Op::floordiv:
        case Op::mod: {
          if (q == 0) fail_at(e.pos, "integer division or modulo by zero");
          if (p == std::numeric_limits<int64_t>::min() && q == -1)
            fail_at(e.pos, "integer overflow");
          int64_t d = p / q, m = p % q;
          if (m != 0 && ((m < 0) != (q < 0))) {
            --d;
            m += q;
          }
          r = e.op == Op::mod ? m : d;
          break;
        }
        default: {  // pow, by squaring
          if (q < 0) return Value::of(std::pow(static_cast<double>(p), static_cast<double>(q)));
          r = 1;
          int64_t base = p, ex = q;
          while (ex > 0 && !over) {
            if (ex & 1) over = __builtin_mul_overflow(r, base, &r);
            ex >>= 1;
            if (ex > 0 && !over) over = __builtin_mul_overflow(base, base, &base);
          }
        }
      }
      if (over) fail_at(e.pos, "integer overflow");
      return Value::of(r);
    }
    const double p = to_double(x), q = to_double(y);
    switch (e.op) {
      case Op::add:
        return Value::of(p + q);
      case Op::sub:
        return Value::of(p - q);
      case Op::mul:
        return Value::of(p * q);
      case Op::pow:
        return Value::of(std::pow(p, q));
      default:
        break;
    }
    if (q == 0) fail_at(e.pos, "float division by zero");
    if (e.op == Op::div) return Value::of(p / q);
    if (e.op == Op::floordiv) return Value::of(std::floor(p / q));
    double m = std::fmod(p, q);
    if (m != 0 && ((m < 0) != (q < 0))) m += q;
    return Value::of(m);
  }
  if (e.op == Op::add && x.is_string() && y.is_string()) {
    check_size(x.get_ref<const std::string&>().size() + y.get_ref<const std::string&>().size(),
               e.pos);
    return Value::of(x.get<std::string>() + y.get<std::string>());
  }
  if (e.op == Op::add && x.is_array() && y.is_array()) {
    if (x.size() + y.size() > kMaxListItems) fail_at(e.pos, "list too long");
    Json r = x;
    for (const auto& v : y) r.push_back(v);
    return Value::of(std::move(r));
  }
  const bool x_seq = x.is_string() || x.is_array(), y_seq = y.is_string() || y.is_array();
  if (e.op == Op::mul &&
      ((x_seq && is_int(y) && !y.is_boolean()) || (y_seq && is_int(x) && !x.is_boolean()))) {
    const Json& seq = x.is_string() || x.is_array() ? x : y;
    const int64_t times = std::max<int64_t>(0, to_int(x.is_string() || x.is_array() ? y : x));
    if (seq.is_string()) {
      const std::string& s = seq.get_ref<const std::string&>();
      if (!s.empty() && static_cast<uint64_t>(times) > kMaxStringBytes / s.size())
        check_size(kMaxStringBytes + 1, e.pos);
      std::string r;
      for (int64_t i = 0; i < times; ++i) r += s;
      return Value::of(std::move(r));
    }
    if (!seq.empty() && static_cast<uint64_t>(times) > kMaxListItems / seq.size())
      fail_at(e.pos, "list too long");
    Json r = Json::array();
    for (int64_t i = 0; i < times; ++i)
      for (const auto& v : seq) r.push_back(v);
    return Value::of(std::move(r));
  }
  operand_error(sym, a, b, e.pos);
}

}  // namespace deltamoe::io::chat_detail
