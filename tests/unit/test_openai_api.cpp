// The OpenAI-compatible API's request parsing and response shapes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "deltamoe/core/error.h"
#include "deltamoe/serve/openai_api.h"

using namespace deltamoe;
using namespace deltamoe::serve;
using json = nlohmann::json;

namespace {

std::string error_of(const std::string& body, bool chat) {
  try {
    parse_completion_request(body, chat);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(OpenAiApi, ParsesCompletionRequests) {
  auto r = parse_completion_request(
      R"({"model":"m","prompt":"Hi","max_tokens":8,"temperature":0,"top_p":0.5,"seed":7,)"
      R"("stop":"\n","stream":true,"stream_options":{"include_usage":true},"user":"u"})",
      false);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt, "Hi");
  EXPECT_EQ(*r.max_tokens, 8);
  EXPECT_EQ(r.temperature, 0.0);
  EXPECT_EQ(r.top_p, 0.5);
  EXPECT_EQ(*r.seed, 7u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r.stream && r.include_usage);
  r = parse_completion_request(R"({"prompt":[[5,6,7]]})", false);
  EXPECT_TRUE(r.prompt_is_ids);
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(*r.max_tokens, 16);  // OpenAI's completions default
  EXPECT_EQ(r.temperature, 1.0);
  EXPECT_FALSE(r.seed.has_value());
  r = parse_completion_request(R"({"prompt":["one"],"n":1,"logprobs":null,"echo":false})", false);
  EXPECT_EQ(r.prompt, "one");
}

TEST(OpenAiApi, ParsesChatRequests) {
  const auto r = parse_completion_request(
      R"({"messages":[{"role":"developer","content":"Be brief."},)"
      R"({"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],)"
      R"("max_completion_tokens":5,"ignore_eos":true})",
      true);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "Hi there");
  EXPECT_EQ(*r.max_tokens, 5);
  EXPECT_TRUE(r.ignore_eos);
  EXPECT_FALSE(parse_completion_request(R"({"messages":[{"role":"user","content":"x"}]})", true)
                   .max_tokens.has_value());  // chat: up to the context
}

TEST(OpenAiApi, BadRequestsNameTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {"not json", "not valid JSON"},
      {"[1]", "JSON object"},
      {R"({})", "\"prompt\" is required"},
      {R"({"prompt":5})", "\"prompt\" must be"},
      {R"({"prompt":["a","b"]})", "one prompt per request"},
      {R"({"prompt":[1,-2]})", "out of range"},
      {R"({"prompt":[1,4294967296]})", "out of range"},
      {R"({"prompt":"x","max_tokens":0})", "\"max_tokens\" must be in"},
      {R"({"prompt":"x","max_tokens":1.5})", "\"max_tokens\" must be an integer"},
      {R"({"prompt":"x","temperature":3})", "\"temperature\" must be in [0, 2]"},
      {R"({"prompt":"x","top_p":0})", "\"top_p\" must be > 0"},
      {R"({"prompt":"x","n":2})", "\"n\": one completion"},
      {R"({"prompt":"x","logprobs":2})", "\"logprobs\" is not supported"},
      {R"({"prompt":"x","stop":["a","b","c","d","e"]})", "at most 4"},
      {R"({"prompt":"x","stop":[""]})", "1 to 256 bytes"},
      {R"({"prompt":"x","stream":"yes"})", "\"stream\" must be true or false"},
      {R"({"prompt":"x","stream_options":{"include_usage":true}})", "needs \"stream\": true"},
      {R"({"prompt":"x","presence_penalty":0.5})", "presence_penalty"},
      {R"({"prompt":"x","tools":[{"type":"function"}]})", "\"tools\" is not supported"},
  };
  for (const auto& [body, want] : cases) {
    const std::string e = error_of(body, false);
    EXPECT_NE(e.find(want), std::string::npos) << body << " -> " << e;
    EXPECT_EQ(e.rfind("[request] ", 0), 0u) << e;
  }
  EXPECT_NE(error_of(R"({"messages":[]})", true).find("non-empty list"), std::string::npos);
  EXPECT_NE(
      error_of(R"({"messages":[{"role":"tool","content":"x"}]})", true).find("messages[0].role"),
      std::string::npos);
  EXPECT_NE(error_of(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", true)
                .find("only {\"type\": \"text\"}"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"messages":[{"role":"user","content":[{"type":5}]}]})", true)
                .find("only {\"type\": \"text\"}"),
            std::string::npos);
  EXPECT_NE(
      error_of(R"({"prompt":"x","response_format":{"type":[1]}})", false).find("response_format"),
      std::string::npos);
  EXPECT_NE(error_of(R"({"prompt":"x","messages":[{"role":"user","content":"x"}]})", true)
                .find("belongs to /v1/completions"),
            std::string::npos);
}

TEST(OpenAiApi, ResponsesHaveOpenAisShape) {
  CompletionResult r;
  r.text = "Hello";
  r.finish_reason = "length";
  r.prompt_tokens = 3;
  r.completion_tokens = 2;
  r.mean_experts = 2.0;
  auto j = json::parse(completion_response_json(false, "cmpl-1", 100, "m", r));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "Hello");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
  EXPECT_EQ(j["deltamoe"]["mean_experts_per_token"], 2.0);
  j = json::parse(completion_response_json(true, "chatcmpl-1", 100, "m", r));
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello");
  const std::string ev = completion_chunk_event(true, "c", 1, "m", "", true, nullptr);
  ASSERT_EQ(ev.rfind("data: ", 0), 0u);
  ASSERT_EQ(ev.substr(ev.size() - 2), "\n\n");
  j = json::parse(ev.substr(6));
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["choices"][0]["delta"]["role"], "assistant");
  const std::string stop = "stop";
  j = json::parse(completion_chunk_event(true, "c", 1, "m", "", false, &stop).substr(6));
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["delta"].empty());
  j = json::parse(completion_chunk_event(false, "c", 1, "m", "ab", false, nullptr).substr(6));
  EXPECT_EQ(j["choices"][0]["text"], "ab");
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(stream_done_event(), "data: [DONE]\n\n");
  // Invalid UTF-8 in text never throws: replaced.
  r.text = "\xff";
  EXPECT_NO_THROW(completion_response_json(false, "x", 0, "m", r));
  j = json::parse(models_response_json("tiny", 5, 256));
  EXPECT_EQ(j["data"][0]["id"], "tiny");
  EXPECT_EQ(j["data"][0]["max_model_len"], 256);
  j = json::parse(openai_error_json("bad", "invalid_request_error", 400));
  EXPECT_EQ(j["error"]["message"], "bad");
  EXPECT_EQ(j["error"]["code"], 400);
}

// Random mutations of valid bodies: a result or one "[request] ..." line, never a crash.
TEST(OpenAiApi, MutatedBodiesGiveOneLineErrors) {
  const std::string seeds[] = {
      R"({"model":"m","prompt":"Hello","max_tokens":8,"temperature":0.5,"stop":["\n","."],"seed":3,"stream":true})",
      R"({"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_completion_tokens":16})"};
  const char* tokens[] = {"{",           "}",    "[",    "]",  ",",     ":",
                          "\"",          "null", "true", "-1", "1e308", "18446744073709551616",
                          "\"\\ud800\"", "0.0"};
  std::mt19937 rng(1);
  int parsed = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string b = seeds[i % 2];
    for (int m = 0; m < 1 + static_cast<int>(rng() % 4); ++m) {
      const size_t at = rng() % (b.size() + 1);
      switch (rng() % 4) {
        case 0:
          b.insert(at, tokens[rng() % std::size(tokens)]);
          break;
        case 1:
          if (at < b.size()) b.erase(at, 1 + rng() % 8);
          break;
        case 2:
          if (at < b.size()) b[at] = static_cast<char>(rng());
          break;
        default:
          b.resize(at);
      }
    }
    try {
      const auto r = parse_completion_request(b, i % 2);
      CompletionResult res;
      res.text = r.prompt;
      (void)completion_response_json(r.chat, "x", 0, r.model, res);
      ++parsed;
    } catch (const Error& e) {
      const std::string msg = e.what();
      ASSERT_EQ(msg.rfind("[request] ", 0), 0u) << msg;
      ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  EXPECT_GT(parsed, 100);  // the mutator does not only make garbage
}
