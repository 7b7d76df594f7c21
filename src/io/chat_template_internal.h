// Chat templates (io/chat_template.h): the parsed program, values and the pieces shared by
// the lexer/parser (chat_template_parse.cpp), the values (chat_template_value.cpp), the
// evaluator (chat_template_eval.cpp) and the built-in filters, tests, methods and functions
// (chat_template_builtins.cpp). Private to src/io.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "deltamoe/core/error.h"
#include "io/tokenizer_text.h"

namespace deltamoe::io::chat_detail {

using Json = nlohmann::ordered_json;

inline constexpr const char* kComponent = "chat";
inline constexpr size_t kMaxSourceBytes = size_t{1} << 20;
inline constexpr size_t kMaxStringBytes = size_t{1} << 20;  // output and any string value
inline constexpr size_t kMaxListItems = 1'000'000;
inline constexpr int kMaxDepth = 128;  // syntax nesting (expressions and blocks)
inline constexpr uint64_t kMaxSteps = 10'000'000;

/// A place in the (newline-normalised) template source, 1-based.
struct Pos {
  int line = 1, col = 1;
};

/// Throws Error("chat", "chat template L:C: " + message).
[[noreturn]] void fail_at(Pos pos, const std::string& message);

/// `s` made safe for a one-line message: control characters become spaces, long text is cut.
std::string shown(std::string_view s, size_t max_bytes = 200);

// ---- values --------------------------------------------------------------------------------

/// A template value: undefined, an immutable JSON value shared without copies (sub-values
/// alias their parent), or a namespace() object (a mutable dict shared by reference).
struct Value {
  std::shared_ptr<const Json> json;  // set unless undefined or namespace
  std::shared_ptr<Json> ns;          // set for a namespace
  std::string missing;               // for undefined: what was missing, for messages

  static Value of(Json v) { return Value{std::make_shared<const Json>(std::move(v)), {}, {}}; }
  static Value undefined(std::string what) { return Value{{}, {}, std::move(what)}; }
  /// `child` (which lives inside this value's JSON) as a value sharing its ownership.
  Value child(const Json& child) const;

  bool is_undefined() const { return !json && !ns; }
  bool is_namespace() const { return ns != nullptr; }
  /// The JSON (the namespace's dict for a namespace). Undefined: a null.
  const Json& j() const;
};

/// Python's truth value (undefined, none, false, 0, "", [] and {} are false).
bool truthy(const Value& v);
/// Python's str() of the value, as {{ }} prints it (undefined: "").
std::string to_str(const Value& v);
/// Python's repr() of a JSON value (strings quoted, None/True/False, [..], {..}).
std::string py_repr(const Json& j);
/// Python's repr() of a float ("1.0", "0.1", "1e+16", "nan").
std::string float_repr(double d);
/// Python's json.dumps(x, ensure_ascii=False, indent=..., separators=..., sort_keys=...).
/// `indent` null means None (one line). Throws when the text exceeds kMaxStringBytes.
std::string py_json_dumps(const Json& j, const std::string* indent, const std::string& item_sep,
                          const std::string& key_sep, bool sort_keys);
/// Python's == between JSON values (1 == 1.0 == True).
bool py_equal(const Json& a, const Json& b);
/// Python's < ; returns false and sets `ok` false when the types do not order.
bool py_less(const Json& a, const Json& b, bool& ok);
/// The Python type name of a value, for messages ("str", "int", "list", "dict", ...).
std::string type_name(const Value& v);

/// UTF-8 helpers (on top of io/tokenizer_text.h): the code point at byte `i` and its length
/// (an invalid sequence decodes to U+FFFD, one byte), all code points of `s`, and back.
char32_t utf8_decode_at(std::string_view s, size_t i, size_t& len);
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
/// Python's str.isspace() for one code point.
bool py_space(char32_t c);
/// Python's str.strip / lstrip / rstrip: `chars` null strips whitespace.
std::string py_strip(std::string_view s, const std::string* chars, bool left, bool right);

// ---- tokens --------------------------------------------------------------------------------

enum class Tok {
  text,
  var_begin,
  var_end,
  block_begin,
  block_end,
  name,
  string,
  integer,
  floating,
  op,
  eof
};

/// One token: template text, a tag delimiter, or a token inside a tag (names, string
/// literals already unescaped, numbers, operators).
struct Token {
  Tok type = Tok::eof;
  std::string value;
  Pos pos;
};

/// The tokens of `source` (newlines normalised, one trailing newline dropped, whitespace
/// control and trim_blocks / lstrip_blocks applied to the text), ending with Tok::eof.
/// Throws Error("chat") with line and column on a lexical error or a source above 1 MB.
std::vector<Token> lex_template(std::string_view source);

// ---- syntax tree ---------------------------------------------------------------------------

enum class Op {
  literal,
  name,
  list,
  dict,
  attr,
  item,
  slice,
  call,
  filter,
  test,
  not_,
  neg,
  pos,
  add,
  sub,
  mul,
  div,
  floordiv,
  mod,
  pow,
  concat,
  and_,
  or_,
  cond,
  eq,
  ne,
  lt,
  le,
  gt,
  ge,
  in,
  not_in
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

/// One expression node. Children by kind:
///  literal: value; name: name; list: args; dict: args = k0, v0, k1, v1, ...;
///  attr: args[0] . name; item: args[0][args[1]]; slice: args[0][args[1]:args[2]:args[3]]
///  (absent parts null); call: args[0](args[1..], kwargs); filter: args[0] | name(args[1..],
///  kwargs); test: args[0] is [not] name(args[1..]) (negated); unary ops: args[0]; binary
///  ops and comparisons: args[0], args[1]; cond: args[0] if args[1] else args[2] (null).
struct Expr {
  Op op = Op::literal;
  Pos pos;
  int depth = 1;  // height of the subtree
  bool negated = false;
  std::string name;
  Value value;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind { text, output, if_, for_, set, set_block, break_, continue_ };

/// One statement. text: text; output: expr; if_: branches (cond null for else);
/// for_: targets in expr [if filter] body [else else_body]; set: targets (or targets[0].attr
/// when attr is set) = expr; set_block: targets[0] = rendered body.
struct Stmt {
  StmtKind kind = StmtKind::text;
  Pos pos;
  std::string text, attr;
  std::vector<std::string> targets;
  ExprPtr expr, filter;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
};

/// A parsed template.
struct Program {
  Body body;
};

/// Lexes and parses `source` (newlines normalised, one trailing newline dropped). Throws
/// Error("chat") with line and column on a syntax error or a limit exceeded.
std::unique_ptr<Program> parse_template(std::string_view source);

// ---- evaluation ----------------------------------------------------------------------------

class Renderer;

/// Arguments of a built-in call, evaluated.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  /// Positional `i`, else keyword `name`, else null (absent).
  const Value* get(size_t i, std::string_view name) const;
};

/// Whether `name` is a supported filter / test (checked when parsing, as jinja2 does).
bool known_filter(const std::string& name);
bool known_test(const std::string& name);

/// Applies filter `name` to `v`. Throws (at `pos`) on an unknown filter or a bad argument.
Value apply_filter(Renderer& r, const std::string& name, const Value& v, const Args& a, Pos pos);
/// Evaluates test `name` on `v`. Throws (at `pos`) on an unknown test.
bool apply_test(const std::string& name, const Value& v, const Args& a, Pos pos);
/// Calls method `name` of `self` (a string or a dict). Sets `found` false when the value has
/// no such method (the caller reports it).
Value call_method(Renderer& r, const Value& self, const std::string& name, const Args& a, Pos pos,
                  bool& found);
/// Calls global function `name` (raise_exception, namespace, range, dict, strftime_now).
/// Sets `found` false when there is no such function.
Value call_global(Renderer& r, const std::string& name, const Args& a, Pos pos, bool& found);

/// Renders a program. One per render() call.
class Renderer {
 public:
  Renderer(const Program& program, Json globals);
  std::string run();

  /// Counts one evaluation step; throws when the budget is spent.
  void step(Pos pos) { charge(1, pos); }
  /// Counts `units` steps for work proportional to a value's size (an item, 64 bytes).
  void charge(uint64_t units, Pos pos);
  /// The step units of a value's top level (items of a list or dict, 64-byte blocks of a
  /// string, 1 otherwise).
  static uint64_t units_of(const Json& j);
  /// Throws (at `pos`) when a string of `bytes` bytes would exceed the limit.
  static void check_size(size_t bytes, Pos pos);

  /// `s` iterated as Jinja does (list items, dict keys, string characters).
  std::vector<Value> iterate(const Value& v, Pos pos);

 private:
  friend struct EvalAccess;
  Value eval(const Expr& e);
  Value eval_binary(const Expr& e);
  Value eval_compare(const Expr& e);
  Value eval_call(const Expr& e);
  Value eval_item(const Value& obj, const Value& key, Pos pos);
  Value eval_slice(const Expr& e);
  Args eval_args(const Expr& e, size_t first);
  Value lookup(const std::string& name) const;
  void assign(const std::string& name, Value v);
  enum class Flow { normal, break_, continue_ };
  Flow exec(const Body& body);
  Flow exec_for(const Stmt& s);
  void exec_set(const Stmt& s);
  void emit(std::string_view s, Pos pos);

  const Program& program_;
  std::vector<std::vector<std::pair<std::string, Value>>> scopes_;
  std::vector<std::string> outputs_;  // output stack (set blocks render into a new one)
  uint64_t steps_ = 0;
  int loop_depth_ = 0;
};

}  // namespace deltamoe::io::chat_detail
