// The OpenAI-compatible LLM server (see serve/llm_server.h).
#include "deltamoe/serve/llm_server.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"
#include "deltamoe/serve/http_api.h"

namespace deltamoe::serve {

namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One completion in flight: what the engine's callback needs to answer it.
struct Pending {
  std::mutex mu;  // held by the handler across submit + begin_stream, and by every callback
  std::shared_ptr<HttpExchange> ex;
  LlmEngine* engine = nullptr;
  bool chat = false, stream = false, include_usage = false, first = true;
  std::string id, model;
  int64_t created = 0, engine_id = -1;
  std::string text;

  void on_event(const TokenEvent& ev) {
    std::lock_guard<std::mutex> lk(mu);
    if (!stream) {
      text += ev.text;
      if (!ev.finished) return;
      if (ev.finish_reason == "error") {
        ex->reply(500, "application/json", openai_error_json(ev.error, "server_error", 500));
        return;
      }
      ex->reply(200, "application/json",
                completion_response_json(chat, id, created, model, result_of(ev, text)));
      return;
    }
    // One chunk per generated token, as vLLM sends them, also when the token's text is still
    // held back (part of a character, a byte-fallback run, a possible stop string): the client
    // sees each token arrive (its first-token time) and the text once it is final.
    if (!ev.text.empty() || (ev.token >= 0 && !ev.finished)) {
      ex->write(completion_chunk_event(chat, id, created, model, ev.text, first, nullptr));
      first = false;
    }
    if (ev.finished) {
      ex->write(completion_chunk_event(chat, id, created, model, "", first, &ev.finish_reason));
      if (include_usage)
        ex->write(completion_usage_event(chat, id, created, model, result_of(ev, {})));
      ex->write(stream_done_event());
      ex->end();
    } else if (ex->client_gone() && engine_id >= 0) {
      engine->cancel(engine_id);
    }
  }

  static CompletionResult result_of(const TokenEvent& ev, const std::string& text) {
    CompletionResult r;
    r.text = text;
    r.finish_reason = ev.finish_reason;
    r.prompt_tokens = ev.prompt_tokens;
    r.completion_tokens = ev.completion_tokens;
    r.mean_experts = ev.mean_experts;
    r.ttft_ms = 1e3 * ev.ttft_s;
    return r;
  }
};

}  // namespace

struct LlmServer::Impl {
  std::shared_ptr<LlmEngine> engine;
  LlmServerConfig cfg;
  HttpFrontend http;
  std::atomic<bool> ready{true};
  std::atomic<uint64_t> next_id{0};
  int64_t created = unix_now();

  Impl(std::shared_ptr<LlmEngine> e, LlmServerConfig c)
      : engine(std::move(e)), cfg(std::move(c)), http(cfg.limits) {}

  void error(HttpExchange& ex, int status, const std::string& msg) {
    Headers h;
    if (status == 503) h.emplace_back("Retry-After", std::to_string(cfg.retry_after_s));
    const char* type = status == 400   ? "invalid_request_error"
                       : status == 503 ? "overloaded_error"
                                       : "server_error";
    ex.reply(status, "application/json", openai_error_json(msg, type, status), std::move(h));
  }

  std::vector<int32_t> prompt_of(const CompletionRequest& req) {
    const io::Tokenizer& tok = engine->tokenizer();
    if (req.chat) {
      DELTAMOE_CHECK(static_cast<bool>(cfg.render_chat), "request",
                     "this model has no chat template (tokenizer_config.json chat_template); "
                     "use /v1/completions");
      // The template writes the special tokens (BOS, role markers) as text.
      return tok.encode(cfg.render_chat(req.messages), /*add_special_tokens=*/false);
    }
    if (req.prompt_is_ids) return req.prompt_ids;
    return tok.encode(req.prompt, /*add_special_tokens=*/true);
  }

  void complete(const std::shared_ptr<HttpExchange>& ex, bool chat) {
    if (!ready.load()) return error(*ex, 503, "server is draining");
    CompletionRequest req;
    std::vector<int32_t> prompt;
    try {
      req = parse_completion_request(ex->request().body, chat);
      prompt = prompt_of(req);
    } catch (const Error& e) {
      return error(*ex, 400, e.what());
    }
    GenerationParams p;
    const int64_t room = engine->context() - static_cast<int64_t>(prompt.size());
    p.max_tokens = req.max_tokens ? *req.max_tokens : std::max<int64_t>(1, room);
    p.temperature = req.temperature;
    p.top_p = req.top_p;
    p.has_seed = req.seed.has_value();
    p.seed = req.seed.value_or(0);
    p.stop = req.stop;
    p.ignore_eos = req.ignore_eos;
    auto st = std::make_shared<Pending>();
    st->ex = ex;
    st->engine = engine.get();
    st->chat = chat;
    st->stream = req.stream;
    st->include_usage = req.include_usage;
    st->id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id.fetch_add(1));
    st->model = cfg.model_name;
    st->created = unix_now();
    std::lock_guard<std::mutex> lk(st->mu);  // the first event waits for the stream to begin
    try {
      st->engine_id = engine->submit(prompt, p, [st](const TokenEvent& ev) { st->on_event(ev); });
    } catch (const Error& e) {
      return error(*ex, 400, e.what());
    }
    if (st->engine_id < 0)
      return error(*ex, 503,
                   ready.load() ? "too many requests queued, retry later" : "server is draining");
    if (req.stream) ex->begin_stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
  }

  void routes() {
    http.route("POST", "/v1/completions", [this](auto ex) { complete(ex, false); });
    http.route("POST", "/v1/chat/completions", [this](auto ex) { complete(ex, true); });
    http.route("GET", "/v1/models", [this](auto ex) {
      ex->reply(200, "application/json",
                models_response_json(cfg.model_name, created, engine->context()));
    });
    http.route("GET", "/healthz", [this](auto ex) {
      const bool ok = ready.load();
      ex->reply(ok ? 200 : 503, "application/json",
                ok ? R"({"status":"ok"})" : R"({"status":"draining"})");
    });
    http.route("GET", "/metrics", [this](auto ex) {
      ex->reply(200, "text/plain; version=0.0.4",
                render_llm_prometheus(engine->stats(), http.stats(), ready.load()));
    });
    http.route("GET", "/",
               [](auto ex) { ex->reply(200, "text/html; charset=utf-8", chat_page_html()); });
  }
};

LlmServer::LlmServer(std::shared_ptr<LlmEngine> engine, LlmServerConfig config)
    : impl_(std::make_unique<Impl>(std::move(engine), std::move(config))) {
  impl_->routes();
}

LlmServer::~LlmServer() {
  stop();
}

void LlmServer::start() {
  impl_->http.start(impl_->cfg.host, impl_->cfg.port);
}

int LlmServer::port() const {
  return impl_->http.port();
}

void LlmServer::stop(double drain_s) {
  if (!impl_->ready.exchange(false)) return;
  impl_->engine->drain(drain_s);  // accepted requests (streams too) run to the end
  impl_->http.stop(drain_s);      // then their last bytes go out and the listener closes
}

HttpFrontendStats LlmServer::http_stats() const {
  return impl_->http.stats();
}

}  // namespace deltamoe::serve
