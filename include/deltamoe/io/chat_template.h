// Chat templates of Hugging Face model directories: a Jinja2 subset that renders a
// conversation into the prompt text a chat model was trained on.
//
// Correctness is defined as equality with transformers' apply_chat_template(tokenize=False)
// (jinja2's ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True,
// loop controls, and transformers' tojson / raise_exception / namespace globals); the golden
// cases in tests/golden/chat/ are rendered by it (python/make_golden_chat.py). docs/llm.md
// ("Chat templates") lists the supported subset; in short:
//  - syntax: {{ }}, {% %}, {# #}, whitespace control (-, +), trim_blocks, lstrip_blocks,
//    a single trailing newline of the template dropped (keep_trailing_newline=False);
//  - statements: if/elif/else, for (else, `if` filter, tuple unpacking, loop.index/index0/
//    revindex/revindex0/first/last/length), break, continue, set (names,
//    tuples, namespace attributes, block set), generation (rendered as its body);
//  - expressions: literals, lists, dicts, tuples (as lists), [] . and slices, + - * / // %
//    **, ~, comparisons, and/or/not, in/not in, a if b else c, filters, tests, calls;
//  - filters: trim length count upper lower capitalize title tojson default d first last join
//    string replace list int float abs reverse items unique map selectattr rejectattr indent;
//  - tests: defined undefined none string number integer float boolean true false mapping
//    iterable sequence even odd divisibleby eq ne lt le gt ge in sameas lower upper;
//  - methods: str strip lstrip rstrip startswith endswith split upper lower replace title
//    capitalize find count join; dict items keys values get;
//  - globals: raise_exception, namespace, range, dict, strftime_now.
// Not supported: macros, call blocks, include/import/extends, raw blocks, the `recursive`
// loop modifier, chained comparisons, string % formatting; tuples print as lists.
// Strings are UTF-8; length, indexing and slicing count code points as Python does.
//
// Limits (so that no template can hang or exhaust memory or stack): templates above 1 MB,
// syntax nested deeper than 128, output or any string above 1 MB, lists above 1,000,000
// items, and more than 10,000,000 evaluation steps are errors.
//
// Errors: every failure is a deltamoe::Error whose what() is one line starting "[chat] ".
// Syntax errors name line and column ("chat template 3:17: unexpected '}'"); errors while
// rendering name the line and column of the expression at fault; raise_exception(msg)
// gives exactly "[chat] " + msg (control characters shown as spaces).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace deltamoe::io {

/// One message of a conversation.
struct ChatMessage {
  std::string role, content;
};

namespace chat_detail {
struct Program;
}

/// A parsed chat template. Immutable after construction; render() is const and thread-safe.
class ChatTemplate {
 public:
  /// Loads the template of a model directory: `chat_template.jinja` when present, else the
  /// `chat_template` of `tokenizer_config.json` (a string, or a list of {name, template}
  /// objects of which the one named "default" is taken). bos_token / eos_token come from
  /// tokenizer_config.json (strings or {"content": ...} objects; absent or null gives "").
  /// Throws Error("chat") naming the file when the directory has no template, a file cannot
  /// be read or parsed, or the template has a syntax error.
  static ChatTemplate load(const std::string& model_dir);
  /// As load(), but a directory with no template at all gives nullopt (a model that serves
  /// completions only); a template that is there but broken still throws.
  static std::optional<ChatTemplate> load_if_present(const std::string& model_dir);

  /// An empty template (has_template() is false; render() throws).
  ChatTemplate() = default;
  /// Parses template `source`. `bos_token` / `eos_token` are the values of the variables of
  /// those names; an empty string leaves the variable undefined, as transformers does for a
  /// tokenizer without that token. Throws Error("chat") on a syntax error (line and column).
  ChatTemplate(std::string source, std::string bos_token, std::string eos_token);

  /// Renders `messages` ({role, content} each) with add_generation_prompt, bos_token,
  /// eos_token, tools = none, documents = none, and the variables of the JSON object
  /// `extra` (which override those). Throws Error("chat") on a template error, a limit
  /// exceeded, or raise_exception.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;
  /// As above with messages as a JSON list of objects (tool_calls, reasoning_content and
  /// other fields are visible to the template; keys whose value is null are dropped, as
  /// transformers does). Object key order is kept (it shows in tojson output).
  std::string render_json(
      const nlohmann::ordered_json& messages, bool add_generation_prompt,
      const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  /// Whether a template was loaded or parsed (false only for a default-constructed object).
  bool has_template() const { return program_ != nullptr; }
  /// The template source as given (before newline normalisation).
  const std::string& source() const { return source_; }
  /// The bos_token given at construction ("" when none).
  const std::string& bos_token() const { return bos_token_; }
  /// The eos_token given at construction ("" when none).
  const std::string& eos_token() const { return eos_token_; }

 private:
  static std::optional<ChatTemplate> load_dir(const std::string& model_dir, bool required);
  std::string source_, bos_token_, eos_token_;
  std::shared_ptr<const chat_detail::Program> program_;
};

/// The reference chat template of a model family, as `deltamoe make-model` writes it into
/// tokenizer_config.json: "mixtral" (Mixtral-8x7B-Instruct-v0.1's, with system message),
/// "qwen2_moe" (Qwen1.5-MoE-A2.7B-Chat's ChatML), "qwen3_moe" (Qwen3's ChatML with thinking
/// and tools), "olmoe" (OLMoE-1B-7B-0924-Instruct's). They are the templates of the golden
/// cases (tests/golden/chat/), so their rendering is checked against transformers. Throws
/// Error("chat") for another family name.
const std::string& reference_chat_template(std::string_view family);

}  // namespace deltamoe::io
