// Chat templates: the recursive-descent parser (jinja2's grammar and operator precedence).
#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "io/chat_template_internal.h"

namespace deltamoe::io::chat_detail {

namespace {

std::string describe(const Token& t) {
  switch (t.type) {
    case Tok::text:
      return "template text";
    case Tok::var_begin:
      return "'{{'";
    case Tok::var_end:
      return "'}}'";
    case Tok::block_begin:
      return "'{%'";
    case Tok::block_end:
      return "'%}'";
    case Tok::eof:
      return "end of template";
    case Tok::string:
      return "string '" + shown(t.value, 40) + "'";
    default:
      return "'" + shown(t.value, 40) + "'";
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  std::unique_ptr<Program> run() {
    auto p = std::make_unique<Program>();
    std::string end;
    p->body = parse_body({}, end);
    return p;
  }

 private:
  // ---- token helpers
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* v) const { return cur().type == Tok::op && cur().value == v; }
  bool is_name(const char* v) const { return cur().type == Tok::name && cur().value == v; }
  const Token& next() {
    const Token& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  [[noreturn]] void unexpected(const std::string& expected = "") const {
    fail_at(cur().pos, "unexpected " + describe(cur()) +
                           (expected.empty() ? std::string() : ", expected " + expected));
  }
  void expect_op(const char* v) {
    if (!is_op(v)) unexpected(std::string("'") + v + "'");
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::name) unexpected("a name");
    return next().value;
  }
  void expect_block_end() {
    if (cur().type != Tok::block_end) unexpected("'%}'");
    next();
  }

  struct Guard {
    explicit Guard(Parser& p) : p_(p) {
      if (++p_.nesting_ > 4 * kMaxDepth) fail_at(p_.cur().pos, "template nested too deeply");
    }
    ~Guard() { --p_.nesting_; }
    Parser& p_;
  };

  static ExprPtr mk(Op op, Pos pos, std::vector<ExprPtr> args = {}) {
    auto e = std::make_unique<Expr>();
    e->op = op;
    e->pos = pos;
    e->args = std::move(args);
    for (const auto& a : e->args)
      if (a) e->depth = std::max(e->depth, a->depth + 1);
    if (e->depth > kMaxDepth) fail_at(pos, "expression nested too deeply");
    return e;
  }
  static ExprPtr mk2(Op op, Pos pos, ExprPtr a, ExprPtr b) {
    std::vector<ExprPtr> v;
    v.push_back(std::move(a));
    v.push_back(std::move(b));
    return mk(op, pos, std::move(v));
  }
  static void add_kwarg_depth(Expr& e) {
    for (const auto& [k, v] : e.kwargs) e.depth = std::max(e.depth, v->depth + 1);
    if (e.depth > kMaxDepth) fail_at(e.pos, "expression nested too deeply");
  }

  // ---- statements
  Body parse_body(const std::vector<std::string>& ends, std::string& end) {
    Guard g(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::eof) {
        if (ends.empty()) return body;
        fail_at(t.pos, "unexpected end of template, expected '" + ends.back() + "'");
      }
      if (t.type == Tok::text) {
        auto s = std::make_unique<Stmt>();
        s->pos = t.pos;
        s->text = next().value;
        body.push_back(std::move(s));
      } else if (t.type == Tok::var_begin) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::output;
        s->pos = next().pos;
        s->expr = parse_tuple(true);
        if (cur().type != Tok::var_end) unexpected("'}}'");
        next();
        body.push_back(std::move(s));
      } else if (t.type == Tok::block_begin) {
        next();
        const Token& kw = cur();
        if (kw.type != Tok::name) unexpected("a statement name");
        if (std::find(ends.begin(), ends.end(), kw.value) != ends.end()) {
          end = next().value;
          return body;
        }
        parse_statement(body);
      } else {
        unexpected();
      }
    }
  }

  void parse_statement(Body& body) {
    const Token kw = next();
    auto s = std::make_unique<Stmt>();
    s->pos = kw.pos;
    if (kw.value == "if") {
      parse_if(*s);
    } else if (kw.value == "for") {
      parse_for(*s);
    } else if (kw.value == "set") {
      parse_set(*s);
    } else if (kw.value == "break" || kw.value == "continue") {
      if (loops_ == 0) fail_at(kw.pos, "'" + kw.value + "' outside a for loop");
      s->kind = kw.value == "break" ? StmtKind::break_ : StmtKind::continue_;
      expect_block_end();
    } else if (kw.value == "generation") {  // transformers' assistant-mask marker
      expect_block_end();
      std::string end;
      Body inner = parse_body({"endgeneration"}, end);
      expect_block_end();
      for (auto& st : inner) body.push_back(std::move(st));
      return;
    } else if (kw.value == "macro" || kw.value == "call" || kw.value == "include" ||
               kw.value == "import" || kw.value == "from" || kw.value == "extends" ||
               kw.value == "block" || kw.value == "raw" || kw.value == "filter" ||
               kw.value == "with" || kw.value == "autoescape") {
      fail_at(kw.pos, "unsupported statement '" + kw.value + "'");
    } else {
      fail_at(kw.pos, "unknown statement '" + shown(kw.value, 40) + "'");
    }
    body.push_back(std::move(s));
  }

  void parse_if(Stmt& s) {
    s.kind = StmtKind::if_;
    ExprPtr cond = parse_tuple(true);
    while (true) {
      expect_block_end();
      std::string end;
      Body b = parse_body({"elif", "else", "endif"}, end);
      s.branches.emplace_back(std::move(cond), std::move(b));
      if (end == "endif") break;
      if (end == "else") {
        expect_block_end();
        Body e = parse_body({"endif"}, end);
        s.branches.emplace_back(nullptr, std::move(e));
        break;
      }
      cond = parse_tuple(true);
    }
    expect_block_end();
  }

  void parse_for(Stmt& s) {
    s.kind = StmtKind::for_;
    s.targets.push_back(expect_name());
    while (is_op(",")) {
      next();
      s.targets.push_back(expect_name());
    }
    if (!is_name("in")) unexpected("'in'");
    next();
    s.expr = parse_tuple(false);
    if (is_name("if")) {
      next();
      s.filter = parse_tuple(true);
    }
    if (is_name("recursive")) fail_at(cur().pos, "unsupported loop modifier 'recursive'");
    expect_block_end();
    std::string end;
    ++loops_;
    s.body = parse_body({"else", "endfor"}, end);
    --loops_;
    if (end == "else") {
      expect_block_end();
      s.else_body = parse_body({"endfor"}, end);
    }
    expect_block_end();
  }

  void parse_set(Stmt& s) {
    s.kind = StmtKind::set;
    s.targets.push_back(expect_name());
    if (is_op(".")) {
      next();
      s.attr = expect_name();
    } else {
      while (is_op(",")) {
        next();
        s.targets.push_back(expect_name());
      }
    }
    if (cur().type == Tok::block_end && s.attr.empty() && s.targets.size() == 1) {
      s.kind = StmtKind::set_block;
      next();
      std::string end;
      s.body = parse_body({"endset"}, end);
      expect_block_end();
      return;
    }
    expect_op("=");
    s.expr = parse_tuple(true);
    expect_block_end();
  }

  // ---- expressions
  bool is_tuple_end() const {
    return cur().type == Tok::var_end || cur().type == Tok::block_end || is_op(")") ||
           cur().type == Tok::eof;
  }

  ExprPtr parse_tuple(bool with_cond, bool explicit_parens = false) {
    const Pos pos = cur().pos;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (is_tuple_end()) break;
      items.push_back(with_cond ? parse_expression() : parse_or());
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) unexpected("an expression");
    }
    return mk(Op::list, pos, std::move(items));
  }

  ExprPtr parse_expression() {
    Guard g(*this);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const Pos pos = next().pos;
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (is_name("else")) {
        next();
        other = parse_expression();
      }
      std::vector<ExprPtr> v;
      v.push_back(std::move(e));
      v.push_back(std::move(cond));
      v.push_back(std::move(other));
      e = mk(Op::cond, pos, std::move(v));
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Pos pos = next().pos;
      e = mk2(Op::or_, pos, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Pos pos = next().pos;
      e = mk2(Op::and_, pos, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    Guard g(*this);
    if (is_name("not")) {
      const Pos pos = next().pos;
      std::vector<ExprPtr> v;
      v.push_back(parse_not());
      return mk(Op::not_, pos, std::move(v));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    int count = 0;
    while (true) {
      Op op;
      const Pos pos = cur().pos;
      if (cur().type == Tok::op &&
          (cur().value == "==" || cur().value == "!=" || cur().value == "<" ||
           cur().value == "<=" || cur().value == ">" || cur().value == ">=")) {
        const std::string& v = cur().value;
        op = v == "=="   ? Op::eq
             : v == "!=" ? Op::ne
             : v == "<"  ? Op::lt
             : v == "<=" ? Op::le
             : v == ">"  ? Op::gt
                         : Op::ge;
        next();
      } else if (is_name("in")) {
        op = Op::in;
        next();
      } else if (is_name("not") && peek().type == Tok::name && peek().value == "in") {
        op = Op::not_in;
        next();
        next();
      } else {
        return e;
      }
      if (++count > 1) fail_at(pos, "chained comparisons are not supported");
      e = mk2(op, pos, std::move(e), parse_math1());
    }
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Op op = cur().value == "+" ? Op::add : Op::sub;
      const Pos pos = next().pos;
      e = mk2(op, pos, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Pos pos = next().pos;
      e = mk2(Op::concat, pos, std::move(e), parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string v = cur().value;
      const Op op = v == "*" ? Op::mul : v == "/" ? Op::div : v == "//" ? Op::floordiv : Op::mod;
      const Pos pos = next().pos;
      e = mk2(op, pos, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Pos pos = next().pos;
      e = mk2(Op::pow, pos, std::move(e), parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Guard g(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Op op = cur().value == "-" ? Op::neg : Op::pos;
      const Pos pos = next().pos;
      std::vector<ExprPtr> v;
      v.push_back(parse_unary(false));
      e = mk(op, pos, std::move(v));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr literal(Pos pos, Json v) {
    ExprPtr e = mk(Op::literal, pos);
    e->value = Value::of(std::move(v));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    const Pos pos = t.pos;
    if (t.type == Tok::name) {
      const std::string v = next().value;
      if (v == "true" || v == "True") return literal(pos, true);
      if (v == "false" || v == "False") return literal(pos, false);
      if (v == "none" || v == "None") return literal(pos, nullptr);
      ExprPtr e = mk(Op::name, pos);
      e->name = v;
      return e;
    }
    if (t.type == Tok::string) {
      std::string s = next().value;
      while (cur().type == Tok::string) s += next().value;
      return literal(pos, std::move(s));
    }
    if (t.type == Tok::integer) {
      const std::string v = next().value;
      errno = 0;
      char* end = nullptr;
      const long long x = std::strtoll(v.c_str(), &end, 10);
      if (errno != 0 || *end != 0) fail_at(pos, "integer literal out of range");
      return literal(pos, static_cast<int64_t>(x));
    }
    if (t.type == Tok::floating) return literal(pos, std::strtod(next().value.c_str(), nullptr));
    if (is_op("(")) {
      next();
      ExprPtr e = parse_tuple(true, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) return parse_list();
    if (is_op("{")) return parse_dict();
    unexpected("an expression");
  }

  ExprPtr parse_list() {
    const Pos pos = next().pos;
    std::vector<ExprPtr> items;
    while (!is_op("]")) {
      if (!items.empty()) expect_op(",");
      if (is_op("]")) break;
      items.push_back(parse_expression());
    }
    next();
    return mk(Op::list, pos, std::move(items));
  }

  ExprPtr parse_dict() {
    const Pos pos = next().pos;
    std::vector<ExprPtr> items;
    while (!is_op("}")) {
      if (!items.empty()) expect_op(",");
      if (is_op("}")) break;
      items.push_back(parse_expression());
      expect_op(":");
      items.push_back(parse_expression());
    }
    next();
    return mk(Op::dict, pos, std::move(items));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const Pos pos = next().pos;
        if (cur().type == Tok::name) {
          std::vector<ExprPtr> v;
          v.push_back(std::move(e));
          e = mk(Op::attr, pos, std::move(v));
          e->name = next().value;
        } else if (cur().type == Tok::integer) {
          const Pos ipos = cur().pos;
          ExprPtr key =
              literal(ipos, static_cast<int64_t>(std::strtoll(next().value.c_str(), nullptr, 10)));
          e = mk2(Op::item, pos, std::move(e), std::move(key));
        } else {
          unexpected("an attribute name");
        }
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Pos pos = next().pos;
    ExprPtr parts[3];
    bool slice = false;
    int idx = 0;
    while (true) {
      if (is_op(":")) {
        if (++idx > 2) unexpected("']'");
        slice = true;
        next();
        continue;
      }
      if (is_op("]")) break;
      if (parts[idx]) unexpected("']'");
      parts[idx] = parse_expression();
    }
    next();
    if (!slice) {
      if (!parts[0]) fail_at(pos, "empty subscript");
      return mk2(Op::item, pos, std::move(obj), std::move(parts[0]));
    }
    std::vector<ExprPtr> v;
    v.push_back(std::move(obj));
    for (auto& p : parts) v.push_back(std::move(p));
    return mk(Op::slice, pos, std::move(v));
  }

  // Arguments "(a, b, k=v)" into e.args (after those already there) and e.kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == Tok::name && peek().type == Tok::op && peek().value == "=") {
        std::string k = next().value;
        next();
        e.kwargs.emplace_back(std::move(k), parse_expression());
      } else {
        if (!e.kwargs.empty()) fail_at(cur().pos, "positional argument after keyword argument");
        if (is_op("*") || is_op("**")) fail_at(cur().pos, "*args and **kwargs are not supported");
        e.args.push_back(parse_expression());
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
    for (const auto& a : e.args) e.depth = std::max(e.depth, a->depth + 1);
    add_kwarg_depth(e);
  }

  ExprPtr parse_call(ExprPtr callee) {
    const Pos pos = cur().pos;
    std::vector<ExprPtr> v;
    v.push_back(std::move(callee));
    ExprPtr e = mk(Op::call, pos, std::move(v));
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        const Pos pos = next().pos;
        std::vector<ExprPtr> v;
        v.push_back(std::move(e));
        e = mk(Op::filter, pos, std::move(v));
        e->name = expect_name();
        if (!known_filter(e->name)) fail_at(pos, "unknown filter '" + shown(e->name, 60) + "'");
        if (is_op("(")) parse_call_args(*e);
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_test(ExprPtr subject) {
    const Pos pos = next().pos;
    bool negated = false;
    if (is_name("not")) {
      next();
      negated = true;
    }
    std::vector<ExprPtr> v;
    v.push_back(std::move(subject));
    ExprPtr e = mk(Op::test, pos, std::move(v));
    e->negated = negated;
    e->name = expect_name();
    if (!known_test(e->name)) fail_at(pos, "unknown test '" + shown(e->name, 60) + "'");
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == Tok::name || cur().type == Tok::string ||
                cur().type == Tok::integer || cur().type == Tok::floating || is_op("[") ||
                is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail_at(cur().pos, "tests cannot be chained with 'is'");
      Guard g(*this);
      e->args.push_back(parse_postfix(parse_primary()));
      e->depth = std::max(e->depth, e->args.back()->depth + 1);
      if (e->depth > kMaxDepth) fail_at(pos, "expression nested too deeply");
    }
    return e;
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int nesting_ = 0, loops_ = 0;
};

}  // namespace

std::unique_ptr<Program> parse_template(std::string_view source) {
  return Parser(lex_template(source)).run();
}

}  // namespace deltamoe::io::chat_detail
