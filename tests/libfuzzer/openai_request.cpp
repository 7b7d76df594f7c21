// libFuzzer target: OpenAI-compatible request bodies (serve/openai_api.h). The first byte picks
// /v1/completions or /v1/chat/completions; the rest is the body. Seeds: corpus/openai_request/.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common.h"
#include "deltamoe/serve/openai_api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const auto r = deltamoe::serve::parse_completion_request(body, data[0] & 1);
    deltamoe::serve::CompletionResult res;
    res.text = r.chat ? (r.messages.empty() ? "" : r.messages[0].content) : r.prompt;
    (void)deltamoe::serve::completion_response_json(r.chat, "x", 0, r.model, res);
    (void)deltamoe::serve::completion_chunk_event(r.chat, "x", 0, r.model, res.text, true, nullptr);
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "request");
  }
  return 0;
}
