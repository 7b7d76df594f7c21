// The OpenAI-compatible API's pure parts: request parsing and response / stream-chunk JSON for
// POST /v1/completions and POST /v1/chat/completions, and GET /v1/models. No sockets here, so
// all of it is unit- and fuzz-tested directly.
//
// Supported request fields: model, prompt (string, [string] of one, token ids, [[ids]] of
// one) or messages ([{role, content}], content a string or a list of {type: "text", text}),
// max_tokens (max_completion_tokens for chat), temperature, top_p, seed, stop (string or up
// to 4 strings), stream, stream_options.include_usage, n (1 only), and the extension
// ignore_eos. Fields that would change the output and are not implemented (n > 1, best_of,
// logprobs, echo, tools, response_format other than text, logit_bias) are a 400 with the
// field's name; fields that only describe the caller (user, metadata) and penalties of 0 are
// accepted.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace deltamoe::serve {

struct ChatTurn {
  std::string role, content;
};

struct CompletionRequest {
  bool chat = false;
  std::string model;
  // Completions: the prompt as text, or as token ids when given so.
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  bool prompt_is_ids = false;
  // Chat: the conversation.
  std::vector<ChatTurn> messages;
  std::optional<int64_t> max_tokens;
  double temperature = 1.0;
  double top_p = 1.0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
  bool ignore_eos = false;
};

/// Parses a request body. Throws Error("request") with a one-line reason naming the field (the
/// server answers 400 with it) for anything malformed or unsupported; never crashes on
/// arbitrary bytes (fuzz-tested). Limits: at most 4 stop strings, prompt ids within int32.
CompletionRequest parse_completion_request(std::string_view body, bool chat);

/// What a finished (or streamed) completion reports.
struct CompletionResult {
  std::string text;
  std::string finish_reason;  // "stop" | "length" | "abort" | "error"
  int64_t prompt_tokens = 0, completion_tokens = 0;
  double mean_experts = 0.0;
  double ttft_ms = 0.0;
};

/// The non-streamed response: text_completion or chat.completion, with usage and the
/// extension object "deltamoe": {mean_experts_per_token, ttft_ms}.
std::string completion_response_json(bool chat, const std::string& id, int64_t created,
                                     const std::string& model, const CompletionResult& r);

/// One server-sent event ("data: {...}\n\n") of a streamed response: a text piece (chat: a
/// content delta; `first` adds the assistant role), or with finish_reason the last chunk.
std::string completion_chunk_event(bool chat, const std::string& id, int64_t created,
                                   const std::string& model, std::string_view text, bool first,
                                   const std::string* finish_reason);
/// The usage chunk sent before [DONE] when stream_options.include_usage.
std::string completion_usage_event(bool chat, const std::string& id, int64_t created,
                                   const std::string& model, const CompletionResult& r);
/// "data: [DONE]\n\n".
std::string stream_done_event();

/// GET /v1/models: {"object": "list", "data": [{"id", "object": "model", "created",
/// "owned_by": "deltamoe", "max_model_len"}]}.
std::string models_response_json(const std::string& model, int64_t created, int64_t context);

/// OpenAI's error shape: {"error": {"message", "type", "param": null, "code"}}.
std::string openai_error_json(std::string_view message, std::string_view type, int code);

}  // namespace deltamoe::serve
