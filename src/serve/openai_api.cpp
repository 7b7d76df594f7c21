// OpenAI-compatible request parsing and response JSON (see serve/openai_api.h).
#include "deltamoe/serve/openai_api.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"

namespace deltamoe::serve {

namespace {

using json = nlohmann::json;

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

double number_in(const json& doc, const char* key, double lo, double hi, double dflt) {
  if (!doc.contains(key) || doc[key].is_null()) return dflt;
  DELTAMOE_CHECK(doc[key].is_number(), "request", "\"", key, "\" must be a number");
  const double v = doc[key].get<double>();
  DELTAMOE_CHECK(std::isfinite(v) && v >= lo && v <= hi, "request", "\"", key, "\" must be in [",
                 lo, ", ", hi, "], got ", v);
  return v;
}

std::optional<int64_t> count_field(const json& doc, const char* key) {
  if (!doc.contains(key) || doc[key].is_null()) return std::nullopt;
  const json& v = doc[key];
  DELTAMOE_CHECK(v.is_number_integer() || v.is_number_unsigned(), "request", "\"", key,
                 "\" must be an integer");
  const int64_t i = v.is_number_unsigned() && v.get<uint64_t>() > (uint64_t{1} << 31)
                        ? int64_t{-1}
                        : v.get<int64_t>();
  DELTAMOE_CHECK(i >= 1 && i <= (int64_t{1} << 31), "request", "\"", key,
                 "\" must be in [1, 2^31], got ", dump(v));
  return i;
}

std::vector<int32_t> token_ids(const json& arr) {
  std::vector<int32_t> ids;
  for (const json& t : arr) {
    DELTAMOE_CHECK(t.is_number_integer() || t.is_number_unsigned(), "request",
                   "\"prompt\" token ids must be integers");
    const int64_t v =
        t.is_number_unsigned() && t.get<uint64_t>() > INT32_MAX ? int64_t{-1} : t.get<int64_t>();
    DELTAMOE_CHECK(v >= 0 && v <= INT32_MAX, "request", "\"prompt\" token id ", dump(t),
                   " is out of range");
    ids.push_back(static_cast<int32_t>(v));
  }
  return ids;
}

void parse_prompt(const json& p, CompletionRequest& r) {
  if (p.is_string()) {
    r.prompt = p.get<std::string>();
    return;
  }
  DELTAMOE_CHECK(p.is_array() && !p.empty(), "request",
                 "\"prompt\" must be a string, a list of token ids or a list of one of these");
  if (p[0].is_string() || p[0].is_array()) {
    DELTAMOE_CHECK(p.size() == 1, "request", "\"prompt\" with ", p.size(),
                   " prompts: one prompt per request is supported");
    parse_prompt(p[0], r);
    return;
  }
  r.prompt_ids = token_ids(p);
  r.prompt_is_ids = true;
}

std::string content_text(const json& c, size_t i) {
  if (c.is_string()) return c.get<std::string>();
  if (c.is_null()) return {};
  DELTAMOE_CHECK(c.is_array(), "request", "messages[", i,
                 "].content must be a string or a list of parts");
  std::string text;
  for (const json& part : c) {
    DELTAMOE_CHECK(part.is_object() && part.contains("type") && part["type"] == "text" &&
                       part.contains("text") && part["text"].is_string(),
                   "request", "messages[", i,
                   "].content: only {\"type\": \"text\"} parts are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

void parse_messages(const json& m, CompletionRequest& r) {
  DELTAMOE_CHECK(m.is_array() && !m.empty(), "request", "\"messages\" must be a non-empty list");
  for (size_t i = 0; i < m.size(); ++i) {
    const json& msg = m[i];
    DELTAMOE_CHECK(msg.is_object() && msg.contains("role") && msg["role"].is_string(), "request",
                   "messages[", i, "] needs a string \"role\"");
    const std::string role = msg["role"].get<std::string>();
    DELTAMOE_CHECK(role == "system" || role == "user" || role == "assistant" || role == "developer",
                   "request", "messages[", i, "].role \"", role,
                   "\" is not one of system, developer, user, assistant");
    DELTAMOE_CHECK(!msg.contains("tool_calls") || msg["tool_calls"].is_null(), "request",
                   "messages[", i, "].tool_calls: tools are not supported");
    r.messages.push_back({role == "developer" ? "system" : role,
                          content_text(msg.contains("content") ? msg["content"] : json(), i)});
  }
}

void refuse_unsupported(const json& doc) {
  const auto present = [&](const char* k) { return doc.contains(k) && !doc[k].is_null(); };
  for (const char* k : {"tools", "functions", "logit_bias", "suffix"})
    DELTAMOE_CHECK(!present(k) || (doc[k].is_array() && doc[k].empty()) ||
                       (doc[k].is_object() && doc[k].empty()),
                   "request", "\"", k, "\" is not supported");
  for (const char* k : {"n", "best_of"})
    DELTAMOE_CHECK(!present(k) || (doc[k].is_number_integer() && doc[k].get<int64_t>() == 1),
                   "request", "\"", k, "\": one completion per request is supported");
  for (const char* k : {"logprobs", "top_logprobs", "echo"})
    DELTAMOE_CHECK(!present(k) || doc[k] == json(false) || doc[k] == json(0), "request", "\"", k,
                   "\" is not supported");
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    DELTAMOE_CHECK(!present(k) || (doc[k].is_number() && doc[k].get<double>() == 0.0), "request",
                   "\"", k, "\" other than 0 is not supported");
  if (present("response_format"))
    DELTAMOE_CHECK(doc["response_format"].is_object() && doc["response_format"].contains("type") &&
                       doc["response_format"]["type"] == "text",
                   "request", "\"response_format\" other than text is not supported");
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body, bool chat) {
  const json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  DELTAMOE_CHECK(!doc.is_discarded(), "request", "body is not valid JSON");
  DELTAMOE_CHECK(doc.is_object(), "request", "body must be a JSON object");
  CompletionRequest r;
  r.chat = chat;
  if (doc.contains("model")) {
    DELTAMOE_CHECK(doc["model"].is_string(), "request", "\"model\" must be a string");
    r.model = doc["model"].get<std::string>();
  }
  refuse_unsupported(doc);
  if (chat) {
    DELTAMOE_CHECK(doc.contains("messages"), "request", "\"messages\" is required");
    DELTAMOE_CHECK(!doc.contains("prompt"), "request",
                   "\"prompt\" belongs to /v1/completions; chat takes \"messages\"");
    parse_messages(doc["messages"], r);
    r.max_tokens = count_field(doc, "max_completion_tokens");
    if (!r.max_tokens) r.max_tokens = count_field(doc, "max_tokens");
  } else {
    DELTAMOE_CHECK(doc.contains("prompt"), "request", "\"prompt\" is required");
    parse_prompt(doc["prompt"], r);
    r.max_tokens = count_field(doc, "max_tokens");
    if (!r.max_tokens) r.max_tokens = 16;  // OpenAI's default for completions
  }
  r.temperature = number_in(doc, "temperature", 0.0, 2.0, 1.0);
  r.top_p = number_in(doc, "top_p", 0.0, 1.0, 1.0);
  DELTAMOE_CHECK(r.top_p > 0.0, "request", "\"top_p\" must be > 0");
  if (doc.contains("seed") && !doc["seed"].is_null()) {
    const json& s = doc["seed"];
    DELTAMOE_CHECK(s.is_number_integer() || s.is_number_unsigned(), "request",
                   "\"seed\" must be an integer");
    r.seed = s.is_number_unsigned() ? s.get<uint64_t>() : static_cast<uint64_t>(s.get<int64_t>());
  }
  if (doc.contains("stop") && !doc["stop"].is_null()) {
    const json& s = doc["stop"];
    if (s.is_string()) {
      r.stop.push_back(s.get<std::string>());
    } else {
      DELTAMOE_CHECK(s.is_array() && s.size() <= 4, "request",
                     "\"stop\" must be a string or a list of at most 4 strings");
      for (const json& x : s) {
        DELTAMOE_CHECK(x.is_string(), "request", "\"stop\" entries must be strings");
        r.stop.push_back(x.get<std::string>());
      }
    }
    for (const std::string& x : r.stop)
      DELTAMOE_CHECK(!x.empty() && x.size() <= 256, "request",
                     "\"stop\" strings must have 1 to 256 bytes");
  }
  for (const char* k : {"stream", "ignore_eos"})
    if (doc.contains(k) && !doc[k].is_null())
      DELTAMOE_CHECK(doc[k].is_boolean(), "request", "\"", k, "\" must be true or false");
  r.stream = doc.value("stream", json(false)).is_boolean() && doc.value("stream", false);
  r.ignore_eos =
      doc.contains("ignore_eos") && doc["ignore_eos"].is_boolean() && doc["ignore_eos"].get<bool>();
  if (doc.contains("stream_options") && !doc["stream_options"].is_null()) {
    const json& so = doc["stream_options"];
    DELTAMOE_CHECK(so.is_object(), "request", "\"stream_options\" must be an object");
    DELTAMOE_CHECK(r.stream, "request", "\"stream_options\" needs \"stream\": true");
    if (so.contains("include_usage")) {
      DELTAMOE_CHECK(so["include_usage"].is_boolean(), "request",
                     "\"stream_options.include_usage\" must be true or false");
      r.include_usage = so["include_usage"].get<bool>();
    }
  }
  return r;
}

namespace {

json usage_json(const CompletionResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

json finish_json(const std::string& reason) {
  // OpenAI knows stop and length; an aborted or failed generation is reported as it is.
  return reason.empty() ? json() : json(reason);
}

}  // namespace

std::string completion_response_json(bool chat, const std::string& id, int64_t created,
                                     const std::string& model, const CompletionResult& r) {
  json choice = {{"index", 0}, {"finish_reason", finish_json(r.finish_reason)}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", r.text}};
    choice["logprobs"] = nullptr;
  } else {
    choice["text"] = r.text;
    choice["logprobs"] = nullptr;
  }
  const json j = {
      {"id", id},
      {"object", chat ? "chat.completion" : "text_completion"},
      {"created", created},
      {"model", model},
      {"choices", json::array({choice})},
      {"usage", usage_json(r)},
      {"deltamoe", {{"mean_experts_per_token", r.mean_experts}, {"ttft_ms", r.ttft_ms}}}};
  return dump(j);
}

std::string completion_chunk_event(bool chat, const std::string& id, int64_t created,
                                   const std::string& model, std::string_view text, bool first,
                                   const std::string* finish_reason) {
  json choice = {{"index", 0},
                 {"finish_reason", finish_reason ? finish_json(*finish_reason) : json()}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || (first && !finish_reason)) delta["content"] = std::string(text);
    choice["delta"] = delta;
    choice["logprobs"] = nullptr;
  } else {
    choice["text"] = std::string(text);
    choice["logprobs"] = nullptr;
  }
  const json j = {{"id", id},
                  {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created},
                  {"model", model},
                  {"choices", json::array({choice})}};
  return "data: " + dump(j) + "\n\n";
}

std::string completion_usage_event(bool chat, const std::string& id, int64_t created,
                                   const std::string& model, const CompletionResult& r) {
  const json j = {
      {"id", id},
      {"object", chat ? "chat.completion.chunk" : "text_completion"},
      {"created", created},
      {"model", model},
      {"choices", json::array()},
      {"usage", usage_json(r)},
      {"deltamoe", {{"mean_experts_per_token", r.mean_experts}, {"ttft_ms", r.ttft_ms}}}};
  return "data: " + dump(j) + "\n\n";
}

std::string stream_done_event() {
  return "data: [DONE]\n\n";
}

std::string models_response_json(const std::string& model, int64_t created, int64_t context) {
  const json j = {{"object", "list"},
                  {"data", json::array({{{"id", model},
                                         {"object", "model"},
                                         {"created", created},
                                         {"owned_by", "deltamoe"},
                                         {"max_model_len", context}}})}};
  return dump(j);
}

std::string openai_error_json(std::string_view message, std::string_view type, int code) {
  const json j = {{"error",
                   {{"message", std::string(message)},
                    {"type", std::string(type)},
                    {"param", nullptr},
                    {"code", code}}}};
  return dump(j);
}

}  // namespace deltamoe::serve
