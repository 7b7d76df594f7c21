// libFuzzer target: chat templates (io/chat_template.h). The first byte's low bit is
// add_generation_prompt; the rest is a template, parsed and rendered on a fixed conversation
// (system, user, an assistant turn with reasoning and a tool call, a tool result) with tools.
// Seeds: corpus/chat_template/ (the golden templates).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"
#include "deltamoe/io/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using Json = nlohmann::ordered_json;
  static const Json messages = Json::parse(R"([
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "Gr\u00fc\u00dfe \ud83d\ude00 <tool_response>x</tool_response>"},
    {"role": "assistant", "content": "<think>\nhm\n</think>\n\nYes.", "reasoning_content": "r",
     "tool_calls": [{"id": "abcDEF123", "type": "function",
                     "function": {"name": "f", "arguments": {"a": [1, 2.5, null, true]}}}]},
    {"role": "tool", "content": "sunny", "tool_call_id": "abcDEF123"},
    {"role": "user", "content": "  spaces\n\tand tabs  "}])");
  static const Json extra = Json::parse(R"({"tools": [{"type": "function", "function":
    {"name": "f", "description": "d", "parameters": {"type": "object"}}}], "enable_thinking": false})");
  if (size == 0) return 0;
  const std::string source(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const deltamoe::io::ChatTemplate t(source, "<s>", "</s>");
    (void)t.render_json(messages, (data[0] & 1) != 0, extra);
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "chat");
  }
  return 0;
}
