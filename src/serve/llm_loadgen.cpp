// LLM load generator (see serve/llm_loadgen.h).
#include "deltamoe/serve/llm_loadgen.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "deltamoe/core/error.h"
#include "deltamoe/serve/loadgen.h"

#ifdef DELTAMOE_HAVE_HTTPLIB
#include <httplib.h>
#endif

namespace deltamoe::serve {

namespace {

using json = nlohmann::json;
using Mono = std::chrono::steady_clock;

double ms_between(Mono::time_point a, Mono::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

void check_config(const LlmLoadConfig& c) {
  DELTAMOE_CHECK(c.duration_s > 0 && c.duration_s <= 600, "loadgen",
                 "--duration must be in (0, 600] s");
  DELTAMOE_CHECK(c.closed_loop || (c.rate_rps > 0 && c.rate_rps * c.duration_s <= 1e6), "loadgen",
                 "--rate must be > 0 (and rate × duration ≤ 1e6)");
  DELTAMOE_CHECK(c.concurrency >= 1 && c.concurrency <= 4096, "loadgen",
                 "--concurrency must be in 1..4096");
  DELTAMOE_CHECK(c.prompt_min >= 1 && c.prompt_min <= c.prompt_max, "loadgen",
                 "prompt lengths need 1 ≤ min ≤ max, got ", c.prompt_min, "..", c.prompt_max);
  DELTAMOE_CHECK(c.output_min >= 1 && c.output_min <= c.output_max, "loadgen",
                 "output lengths need 1 ≤ min ≤ max, got ", c.output_min, "..", c.output_max);
  DELTAMOE_CHECK(c.vocab_lo >= 0 && c.vocab_lo < c.vocab_hi, "loadgen", "bad prompt id range");
  DELTAMOE_CHECK(c.then_duration_s == 0 || (!c.closed_loop && c.then_rate_rps > 0 &&
                                            c.then_duration_s > 0 && c.then_duration_s <= 600),
                 "loadgen",
                 "a second phase needs open loop, --then-rate > 0 and "
                 "--then-duration in (0, 600] s");
}

// The bodies are drawn up front (same seed, same requests), so the schedule and the work do
// not depend on how the server answers.
std::vector<std::pair<std::string, int64_t>> make_bodies(const LlmLoadConfig& c, size_t n) {
  std::mt19937_64 rng(c.seed ^ 0x9e3779b97f4a7c15ULL);
  std::uniform_int_distribution<int64_t> plen(c.prompt_min, c.prompt_max),
      olen(c.output_min, c.output_max);
  std::uniform_int_distribution<int32_t> id(c.vocab_lo, c.vocab_hi - 1);
  std::vector<std::pair<std::string, int64_t>> out;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int32_t> p(static_cast<size_t>(plen(rng)));
    for (int32_t& t : p) t = id(rng);
    const int64_t o = olen(rng);
    json b = {{"prompt", p},
              {"max_tokens", o},
              {"temperature", c.temperature},
              {"stream", c.stream},
              {"ignore_eos", true}};
    if (c.stream) b["stream_options"] = {{"include_usage", true}};
    if (!c.model.empty()) b["model"] = c.model;
    out.emplace_back(b.dump(), static_cast<int64_t>(p.size()));
  }
  return out;
}

}  // namespace

std::string llm_load_timeline_csv(const LlmLoadResult& r) {
  std::string out = "scheduled_s,done_s,status,ttft_ms,tpot_ms,met_slo\n";
  char line[160];
  for (const auto& q : r.requests) {
    std::snprintf(line, sizeof line, "%.6f,%.6f,%d,%.3f,%.3f,%d\n", q.scheduled_s, q.done_s,
                  q.status, q.ttft_ms, q.tpot_ms, q.met_slo ? 1 : 0);
    out += line;
  }
  return out;
}

std::string llm_load_result_json(const LlmLoadResult& r, const LlmLoadConfig& c) {
  json j = {
      {"mode", r.mode},
      {"offered_rps", r.offered_rps},
      {"duration_s", r.duration_s},
      {"wall_s", r.wall_s},
      {"concurrency", c.concurrency},
      {"sent", r.sent},
      {"ok", r.ok},
      {"not_sent", r.not_sent},
      {"prompt_tokens", r.prompt_tokens},
      {"output_tokens", r.output_tokens},
      {"achieved_rps", r.wall_s > 0 ? static_cast<double>(r.ok) / r.wall_s : 0.0},
      {"output_tokens_per_s", r.wall_s > 0 ? static_cast<double>(r.output_tokens) / r.wall_s : 0.0},
      {"window_output_tokens_per_s",
       r.duration_s > 0 ? static_cast<double>(r.window_output_tokens) / r.duration_s : 0.0},
      {"slo_ttft_ms", c.slo_ttft_ms},
      {"slo_tpot_ms", c.slo_tpot_ms},
      {"goodput_rps", r.wall_s > 0 ? static_cast<double>(r.met_slo) / r.wall_s : 0.0},
      {"slo_attainment", r.sent + r.not_sent > 0 ? static_cast<double>(r.met_slo) /
                                                       static_cast<double>(r.sent + r.not_sent)
                                                 : 0.0},
      {"mean_experts_per_token", r.ok > 0 ? r.mean_experts_sum / static_cast<double>(r.ok) : 0.0}};
  for (const auto& [name, v] :
       {std::pair<const char*, const std::vector<double>*>{"ttft", &r.ttft_ms},
        {"tpot", &r.tpot_ms},
        {"e2e", &r.e2e_ms}}) {
    double mean = 0.0;
    for (double x : *v) mean += x;
    j[std::string(name) + "_mean_ms"] = v->empty() ? 0.0 : mean / static_cast<double>(v->size());
    for (const auto& [q, tag] :
         {std::pair<double, const char*>{0.5, "p50"}, {0.9, "p90"}, {0.99, "p99"}})
      j[std::string(name) + "_" + tag + "_ms"] = percentile(*v, q);
  }
  if (c.then_duration_s > 0) {
    j["then_rate_rps"] = c.then_rate_rps;
    j["then_duration_s"] = c.then_duration_s;
    j["recovery_s"] = r.recovery_s;
  }
  json errs = json::object();
  for (const auto& [k, n] : r.errors) errs[k] = n;
  j["errors"] = errs;
  return j.dump();
}

#ifdef DELTAMOE_HAVE_HTTPLIB

LlmLoadResult run_llm_http_load(const std::string& url, const LlmLoadConfig& c) {
  check_config(c);
  // A pair, not a structured binding: clang 14 (the fuzz preset) cannot capture bindings.
  const std::pair<std::string, int> server = parse_loopback_url(url);
  auto schedule =
      c.closed_loop ? std::vector<double>{} : poisson_schedule_us(c.rate_rps, c.duration_s, c.seed);
  if (c.then_duration_s > 0)
    for (double t : poisson_schedule_us(c.then_rate_rps, c.then_duration_s, c.seed + 1))
      schedule.push_back(c.duration_s * 1e6 + t);
  const double arrivals_s = c.duration_s + c.then_duration_s;
  const auto bodies = make_bodies(c, c.closed_loop ? 4096 : std::max<size_t>(1, schedule.size()));
  LlmLoadResult r;
  r.mode = c.closed_loop ? "closed-loop" : "open-loop";
  r.offered_rps = c.closed_loop ? 0.0 : c.rate_rps;
  r.duration_s = c.duration_s;
  std::mutex mu;
  std::atomic<size_t> next{0};
  const auto start = Mono::now();
  const auto end = start + std::chrono::duration_cast<Mono::duration>(
                               std::chrono::duration<double>(c.duration_s));
  const auto give_up = start + std::chrono::duration_cast<Mono::duration>(
                                   std::chrono::duration<double>(arrivals_s + c.grace_s));
  if (!c.closed_loop) r.requests.resize(schedule.size());

  auto sender = [&]() {
    httplib::Client client(server.first, server.second);
    client.set_keep_alive(true);
    client.set_tcp_nodelay(true);
    client.set_connection_timeout(5);
    // A request may wait in the server's queue for most of the run before its first byte.
    client.set_read_timeout(static_cast<time_t>(std::max(1.0, arrivals_s + c.grace_s)));
    for (;;) {
      const size_t k = next.fetch_add(1);
      Mono::time_point scheduled;
      if (c.closed_loop) {
        scheduled = Mono::now();
        if (scheduled >= end) return;
      } else {
        if (k >= schedule.size()) return;
        scheduled = start + std::chrono::microseconds(static_cast<int64_t>(schedule[k]));
        if (Mono::now() >= give_up) {
          std::lock_guard<std::mutex> lk(mu);
          ++r.not_sent;
          continue;
        }
        std::this_thread::sleep_until(scheduled);
      }
      const auto& [body, prompt_tokens] = bodies[k % bodies.size()];
      // Server-sent events are split on blank lines as they arrive; the first chunk with text
      // marks the first token, the usage chunk gives the token count.
      std::string buf, text;
      Mono::time_point first{};
      int64_t tokens = -1;
      double experts = 0.0;
      const auto on_event = [&](const std::string& data) {
        if (data == "[DONE]") return;
        const json j = json::parse(data, nullptr, false);
        if (j.is_discarded()) return;
        if (j.contains("usage") && j["usage"].is_object()) {
          tokens = j["usage"].value("completion_tokens", int64_t{-1});
          if (j.contains("deltamoe")) experts = j["deltamoe"].value("mean_experts_per_token", 0.0);
        }
        // The first token: the first chunk with a choice, text or not (a server that holds a
        // token's text back until it is final, as byte-fallback runs need, still sends the
        // token's chunk; vLLM's benchmark times the first chunk the same way).
        if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty() &&
            first == Mono::time_point{})
          first = Mono::now();
      };
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.body = body;
      req.set_header("Content-Type", "application/json");
      int status = 0;
      req.response_handler = [&](const httplib::Response& res) {
        status = res.status;
        return true;
      };
      req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
        buf.append(data, n);
        if (!c.stream || status != 200) return true;
        for (size_t at; (at = buf.find("\n\n")) != std::string::npos;) {
          const std::string ev = buf.substr(0, at);
          buf.erase(0, at + 2);
          if (ev.rfind("data: ", 0) == 0) on_event(ev.substr(6));
        }
        return true;
      };
      httplib::Response res;
      httplib::Error err = httplib::Error::Success;
      const bool sent_ok = client.send(req, res, err);
      const auto done = Mono::now();
      if (sent_ok && status == 200 && !c.stream) {
        const json j = json::parse(buf, nullptr, false);
        if (!j.is_discarded() && j.contains("usage")) {
          tokens = j["usage"].value("completion_tokens", int64_t{-1});
          if (j.contains("deltamoe")) experts = j["deltamoe"].value("mean_experts_per_token", 0.0);
        }
        first = done;  // unstreamed: the whole answer is the first token's arrival
      }
      std::lock_guard<std::mutex> lk(mu);
      ++r.sent;
      LlmRequestRecord rec;
      rec.scheduled_s = std::chrono::duration<double>(scheduled - start).count();
      rec.done_s = std::chrono::duration<double>(done - start).count();
      rec.status = sent_ok ? status : 0;
      if (!sent_ok) {
        ++r.errors["transport:" + httplib::to_string(err)];
      } else if (status != 200) {
        ++r.errors[std::to_string(status)];
      } else {
        ++r.ok;
        if (first == Mono::time_point{}) first = done;
        const double ttft = ms_between(scheduled, first), e2e = ms_between(scheduled, done);
        const double tpot =
            tokens > 1 ? ms_between(first, done) / static_cast<double>(tokens - 1) : 0.0;
        r.ttft_ms.push_back(ttft);
        r.e2e_ms.push_back(e2e);
        if (tokens > 1) r.tpot_ms.push_back(tpot);
        r.prompt_tokens += prompt_tokens;
        r.output_tokens += std::max<int64_t>(0, tokens);
        if (done < end) r.window_output_tokens += std::max<int64_t>(0, tokens);
        r.mean_experts_sum += experts;
        rec.ttft_ms = ttft;
        rec.tpot_ms = tpot;
        rec.met_slo = ttft <= c.slo_ttft_ms && tpot <= c.slo_tpot_ms;
        if (rec.met_slo) ++r.met_slo;
      }
      if (c.closed_loop)
        r.requests.push_back(rec);
      else
        r.requests[k] = rec;
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < c.concurrency; ++i) threads.emplace_back(sender);
  for (auto& t : threads) t.join();
  // Closed loop records requests as they end; the timeline lists them by send time.
  if (c.closed_loop)
    std::stable_sort(r.requests.begin(), r.requests.end(),
                     [](const auto& a, const auto& b) { return a.scheduled_s < b.scheduled_s; });
  r.wall_s = std::chrono::duration<double>(Mono::now() - start).count();
  if (c.then_duration_s > 0) {
    // The last request of the second phase that missed an SLO: recovery ends with it.
    double last_miss = -1.0;
    bool any_after = false;
    for (const auto& q : r.requests)
      if (q.scheduled_s >= c.duration_s) {
        any_after = true;
        if (!q.met_slo) last_miss = std::max(last_miss, q.scheduled_s);
      }
    if (any_after) {
      const bool never =
          last_miss >= 0 && std::none_of(r.requests.begin(), r.requests.end(), [&](const auto& q) {
            return q.scheduled_s > last_miss && q.met_slo;
          });
      r.recovery_s = never ? -1.0 : (last_miss < 0 ? 0.0 : last_miss - c.duration_s);
    }
  }
  return r;
}

#else

LlmLoadResult run_llm_http_load(const std::string&, const LlmLoadConfig&) {
  fail("loadgen",
       "deltamoe was built without cpp-httplib (install libcpp-httplib-dev and reconfigure)");
}

#endif

}  // namespace deltamoe::serve
