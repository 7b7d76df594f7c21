// HTTP API: body parser (valid forms, every kind of bad body, random mutations never crash
// and are either valid or a clean Error), base64, Prometheus text, and the server itself on
// a loopback port (200, 400, 413, 503 + Retry-After, nothing lost, drain answers held work).
// No timing assertions: waits poll a condition with a generous deadline.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "deltamoe/core/error.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/serve/http_api.h"
#include "deltamoe/serve/http_server.h"
#include "deltamoe/serve/loadgen.h"

#if defined(DELTAMOE_HAVE_HTTPLIB) && defined(DELTAMOE_HAVE_MICROHTTPD)
#include <httplib.h>
#endif

using namespace deltamoe;
using namespace deltamoe::serve;

namespace {

std::string arrays_body(int64_t n, int value = 7) {
  std::string s = "{\"images\": [";
  for (int64_t i = 0; i < n; ++i) {
    s += i ? ",[" : "[";
    for (int p = 0; p < 784; ++p) s += (p ? "," : "") + std::to_string((value + p + i) % 256);
    s += "]";
  }
  return s + "]}";
}

std::string b64_body(int64_t n) {
  std::string s = "{\"images_b64\": [";
  for (int64_t i = 0; i < n; ++i) {
    std::string raw(784, '\0');
    for (int p = 0; p < 784; ++p) raw[p] = static_cast<char>((p * 3 + i) % 256);
    s += (i ? ",\"" : "\"") + base64_encode(raw) + "\"";
  }
  return s + "]}";
}

std::string reason_of(std::string_view body) {
  try {
    parse_classify_body(body, 784, 8);
  } catch (const deltamoe::Error& e) {
    return e.what();
  }
  return "";
}

// Queue settings of the loadgen tests: batch limit B, timeout in µs (−1: ∞), worker threads.
serve::QueueConfig queue_config(int64_t max_batch, int64_t timeout_us, int workers = 2) {
  serve::QueueConfig c;
  c.max_batch = max_batch;
  c.timeout_us = timeout_us;
  c.workers = workers;
  return c;
}

// In-process load: closed loop with `concurrency` requests, or open loop at `rate_rps`.
LoadConfig load_config(bool closed_loop, int concurrency, double rate_rps, double duration_s,
                       double warmup_s) {
  LoadConfig lc;
  lc.closed_loop = closed_loop;
  lc.concurrency = concurrency;
  lc.rate_rps = rate_rps;
  lc.duration_s = duration_s;
  lc.warmup_s = warmup_s;
  return lc;
}

}  // namespace

TEST(Base64, RoundTripsAndRejectsGarbage) {
  std::mt19937_64 rng(1);
  for (size_t len = 0; len < 40; ++len) {
    std::string s(len, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 255);
    EXPECT_EQ(base64_decode(base64_encode(s)), s);
  }
  EXPECT_EQ(base64_encode("Man"), "TWFu");
  EXPECT_EQ(base64_encode("Ma"), "TWE=");
  EXPECT_EQ(base64_encode("M"), "TQ==");
  EXPECT_THROW(base64_decode("TWF"), deltamoe::Error);
  EXPECT_THROW(base64_decode("TW=u"), deltamoe::Error);
  EXPECT_THROW(base64_decode("T!Fu"), deltamoe::Error);
  EXPECT_THROW(base64_decode("===="), deltamoe::Error);
}

TEST(ClassifyBody, ParsesBothForms) {
  const auto a = parse_classify_body(arrays_body(3), 784, 8);
  EXPECT_EQ(a.count, 3);
  ASSERT_EQ(a.pixels.size(), 3u * 784);
  EXPECT_EQ(a.pixels[0], 7.0f);
  EXPECT_EQ(a.pixels[784 + 1], 9.0f);
  const auto b = parse_classify_body(b64_body(2), 784, 8);
  EXPECT_EQ(b.count, 2);
  EXPECT_EQ(b.pixels[784 + 5], static_cast<float>((5 * 3 + 1) % 256));
  // Fractional values in range are pixels too.
  std::string frac = arrays_body(1);
  frac.replace(frac.find("[7,"), 3, "[7.5,");
  EXPECT_EQ(parse_classify_body(frac, 784, 8).pixels[0], 7.5f);
}

TEST(ClassifyBody, RejectsBadBodiesWithAReason) {
  EXPECT_NE(reason_of("").find("not valid JSON"), std::string::npos);
  EXPECT_NE(reason_of("[1,2]").find("JSON object"), std::string::npos);
  EXPECT_NE(reason_of("{}").find("exactly one"), std::string::npos);
  EXPECT_NE(reason_of("{\"images\": [], \"images_b64\": []}").find("exactly one"),
            std::string::npos);
  EXPECT_NE(reason_of("{\"images\": 3}").find("must be an array"), std::string::npos);
  EXPECT_NE(reason_of("{\"images\": []}").find("empty"), std::string::npos);
  EXPECT_NE(reason_of(arrays_body(9)).find("too many images"), std::string::npos);
  EXPECT_NE(reason_of("{\"images\": [[1,2,3]]}").find("has 3 values"), std::string::npos);
  std::string neg = arrays_body(1);
  neg.replace(neg.find("[7,"), 3, "[-1,");
  EXPECT_NE(reason_of(neg).find("outside 0..255"), std::string::npos);
  std::string big = arrays_body(1);
  big.replace(big.find("[7,"), 3, "[256,");
  EXPECT_NE(reason_of(big).find("outside 0..255"), std::string::npos);
  std::string str = arrays_body(1);
  str.replace(str.find("[7,"), 3, "[\"7\",");
  EXPECT_NE(reason_of(str).find("not a number"), std::string::npos);
  EXPECT_NE(reason_of("{\"images_b64\": [\"TWFu\"]}").find("decodes to 3 bytes"),
            std::string::npos);
  EXPECT_NE(reason_of("{\"images_b64\": [\"@@@@\"]}").find("bad base64"), std::string::npos);
  EXPECT_NE(reason_of("{\"images_b64\": [5]}").find("must be a string"), std::string::npos);
  for (const char* body : {"", "{}", "[1,2]"}) EXPECT_EQ(reason_of(body).rfind("[request]", 0), 0u);
}

// Random byte mutations of valid bodies: the parser either accepts (then the images are
// well-formed) or throws deltamoe::Error; nothing else may escape, and it never crashes.
TEST(ClassifyBody, FuzzedMutationsNeverCrash) {
  std::mt19937_64 rng(42);
  const std::vector<std::string> seeds = {arrays_body(1),        arrays_body(2),
                                          b64_body(1),           b64_body(3),
                                          "{\"images\": [[1]]}", "{\"images_b64\": [\"\"]}"};
  int accepted = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const size_t pos = rng() % s.size();
      switch (rng() % 5) {
        case 0:
          s[pos] = static_cast<char>(rng() & 255);
          break;
        case 1:
          s.erase(pos, 1 + rng() % 16);
          break;
        case 2:
          s.insert(pos, 1, "[]{},:\"0-e.9\\"[rng() % 13]);
          break;
        case 3:
          s.resize(pos);
          break;
        default:
          s.insert(pos, s.substr(rng() % s.size(), rng() % 64));
          break;
      }
    }
    try {
      const auto p = parse_classify_body(s, 784, 8);
      ASSERT_GE(p.count, 1);
      ASSERT_LE(p.count, 8);
      ASSERT_EQ(p.pixels.size(), static_cast<size_t>(p.count * 784));
      for (float v : p.pixels) ASSERT_TRUE(v >= 0.0f && v <= 255.0f);
      ++accepted;
    } catch (const deltamoe::Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 2000);
  EXPECT_EQ(accepted + rejected, 3000);
}

TEST(ClassifyResponse, HasClassesProbabilitiesExperts) {
  serve::RequestResult r;
  r.results.resize(2);
  r.results[0].predicted = 3;
  r.results[0].probs = {0.1f, 0.9f};
  r.results[0].experts = {{4, 1}, {2}};
  r.results[1].predicted = 0;
  r.results[1].probs = {1.0f, 0.0f};
  const auto j = nlohmann::json::parse(classify_response_json(r));
  EXPECT_EQ(j["classes"], nlohmann::json({3, 0}));
  EXPECT_EQ(j["experts_used"][0], nlohmann::json::parse("[[4, 1], [2]]"));
  EXPECT_TRUE(j["experts_used"][1].empty());
  EXPECT_DOUBLE_EQ(j["mean_experts"][0].get<double>(), 1.5);
  EXPECT_EQ(j["probabilities"].size(), 2u);
}

TEST(Prometheus, ExposesTheCounters) {
  serve::QueueConfig c;
  c.workers = 0;
  c.timeout_us = 0;
  auto rt = std::make_shared<serve::ExpertQueueRuntime>(make_random_model(),
                                                        moe::make_policy("top-k:2", 8), c);
  const auto x = synthetic_images(3, 1);
  rt->submit(x.data(), 3, nullptr);
  rt->run_ready();
  HttpCounters h;
  h.responses_by_status[200] = 5;
  h.responses_by_status[503] = 2;
  h.request_seconds.observe(0.002);
  const std::string text = render_prometheus(rt->stats(), h);
  for (const char* needle :
       {"deltamoe_http_requests_total{code=\"200\"} 5",
        "deltamoe_http_requests_total{code=\"503\"} 2",
        "deltamoe_http_request_duration_seconds_bucket{le=\"+Inf\"} 1",
        "deltamoe_queue_depth{queue=\"expert7\"} 0",
        "deltamoe_queue_flushes_total{queue=\"stem\",reason=\"timeout\"} 1",
        "deltamoe_queue_batch_size_count{queue=\"stem\"} 1",
        "deltamoe_sample_latency_seconds_count 3", "deltamoe_samples_done_total 3",
        "# TYPE deltamoe_queue_batch_size histogram"})
    EXPECT_NE(text.find(needle), std::string::npos) << needle << "\n" << text;
  // Every non-comment line is "name{labels} value" or "name value".
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    EXPECT_EQ(line.rfind("deltamoe_", 0), 0u) << line;
    EXPECT_NE(line.find(' '), std::string::npos) << line;
  }
}

#if defined(DELTAMOE_HAVE_HTTPLIB) && defined(DELTAMOE_HAVE_MICROHTTPD)

namespace {

template <typename F>
bool eventually(F cond) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

}  // namespace

TEST(HttpServer, AnswersClassifyHealthzMetricsAndErrors) {
  serve::QueueConfig c;
  c.max_batch = 4;
  c.timeout_us = 100;
  auto model = make_random_model();
  auto policy = std::shared_ptr<const moe::RoutingPolicy>(moe::make_policy("top-k:2", 8));
  auto rt = std::make_shared<serve::ExpertQueueRuntime>(model, policy, c);
  ServerConfig sc;
  sc.port = 0;
  sc.threads = 8;
  sc.max_body_bytes = 64 << 10;
  sc.max_images = 4;
  HttpServer server(rt, sc);
  server.start();
  httplib::Client cli("127.0.0.1", server.port());
  cli.set_read_timeout(30);

  auto ok = cli.Post("/v1/classify", b64_body(2), "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  const auto j = nlohmann::json::parse(ok->body);
  ASSERT_EQ(j["classes"].size(), 2u);
  // The answer is the model's: compare with the one-sample reference.
  const auto parsed = parse_classify_body(b64_body(2), 784, 4);
  std::vector<float> ref(20);
  reference_forward(*model, {policy}, parsed.pixels.data(), 2, ref.data());
  for (int s = 0; s < 2; ++s) {
    for (int k = 0; k < 10; ++k)
      EXPECT_NEAR(j["probabilities"][s][k].get<float>(), ref[s * 10 + k], 1e-6);
    ASSERT_EQ(j["experts_used"][s].size(), 1u);  // one MoE layer
    EXPECT_EQ(j["experts_used"][s][0].size(), 2u);
  }

  auto bad = cli.Post("/v1/classify", "{\"images\": [[1, 2]]}", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_NE(bad->body.find("has 2 values"), std::string::npos);
  auto too_many = cli.Post("/v1/classify", b64_body(5), "application/json");
  ASSERT_TRUE(too_many);
  EXPECT_EQ(too_many->status, 400);
  auto huge = cli.Post("/v1/classify", std::string(100 << 10, ' '), "application/json");
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->status, 413);

  auto health = cli.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_NE(health->body.find("\"ok\""), std::string::npos);
  auto metrics = cli.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("deltamoe_http_requests_total{code=\"413\"} 1"), std::string::npos);
  EXPECT_NE(metrics->body.find("deltamoe_http_request_duration_seconds_count 3"),
            std::string::npos);
  EXPECT_NE(metrics->body.find("deltamoe_http_requests_total{code=\"200\"} 2"), std::string::npos);
  EXPECT_NE(metrics->body.find("deltamoe_http_requests_total{code=\"400\"} 2"), std::string::npos);
  EXPECT_NE(metrics->body.find("deltamoe_samples_done_total 2"), std::string::npos);

  // The HTTP loadgen: every request answered 200, and its throughput counts the answers that
  // arrived inside the measured window (a subset of all), as in-process.
  LoadConfig lc;
  lc.rate_rps = 200;
  lc.duration_s = 0.3;
  lc.concurrency = 4;
  const auto r = run_http_load("http://127.0.0.1:" + std::to_string(server.port()), lc);
  EXPECT_TRUE(r.errors.empty());
  EXPECT_EQ(r.ok, r.sent);
  EXPECT_GT(r.window_ok, 0);
  EXPECT_LE(r.window_ok, r.ok);
  const auto lj = nlohmann::json::parse(load_result_json(r, lc));
  EXPECT_DOUBLE_EQ(lj["throughput_rps"].get<double>(),
                   static_cast<double>(r.window_ok) / lc.duration_s);
  server.stop();
}

// A server whose runtime never flushes by itself (B = 256, T = ∞) with one request of
// `held_images` images already admitted and held; a second request then meets the bounds.
struct HeldRequestServer {
  std::shared_ptr<serve::ExpertQueueRuntime> rt;
  std::unique_ptr<HttpServer> server;
  std::future<int> held;  // the held request's HTTP status, available after stop()

  HeldRequestServer(int64_t max_inflight_samples, int max_inflight_requests, int64_t held_images) {
    serve::QueueConfig c;
    c.max_batch = 256;
    c.timeout_us = -1;
    c.max_inflight_samples = max_inflight_samples;
    c.max_request_samples = 2;
    rt = std::make_shared<serve::ExpertQueueRuntime>(make_random_model(),
                                                     moe::make_policy("top-k:2", 8), c);
    ServerConfig sc;
    sc.port = 0;
    sc.threads = 4;
    sc.max_inflight_requests = max_inflight_requests;
    server = std::make_unique<HttpServer>(rt, sc);
    server->start();
    const int port = server->port();
    held = std::async(std::launch::async, [port, held_images] {
      httplib::Client cli("127.0.0.1", port);
      cli.set_read_timeout(60);
      auto r = cli.Post("/v1/classify", b64_body(held_images), "application/json");
      return r ? r->status : -1;
    });
  }
  // Posts one image, which a bound must turn away: 503 with Retry-After. Returns the body.
  std::string post_one_expecting_503() {
    httplib::Client cli("127.0.0.1", server->port());
    auto r = cli.Post("/v1/classify", b64_body(1), "application/json");
    EXPECT_TRUE(r);
    if (!r) return "";
    EXPECT_EQ(r->status, 503);
    EXPECT_EQ(r->get_header_value("Retry-After"), "1");
    return r->body;
  }
  // Stops the server (which drains): the held request must then be answered 200.
  serve::RuntimeStats stop_expecting_held_200() {
    server->stop();
    EXPECT_EQ(held.get(), 200);
    return rt->stats();
  }
};

// Full queues: the held request fills the admission bound, further requests get 503 with
// Retry-After; stopping drains, so the held request is answered 200. Every request gets 200
// or 503.
TEST(HttpServer, FullQueuesGive503AndDrainAnswersTheAdmitted) {
  HeldRequestServer h(/*max_inflight_samples=*/2, /*max_inflight_requests=*/0, /*held_images=*/2);
  ASSERT_TRUE(eventually([&] { return h.rt->stats().inflight_samples == 2; }));
  h.post_one_expecting_503();
  EXPECT_FALSE(h.held.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  const auto st = h.stop_expecting_held_200();
  EXPECT_EQ(st.requests_admitted, 1u);
  EXPECT_EQ(st.requests_done, 1u);
  EXPECT_EQ(st.requests_rejected, 1u);
}

// The HTTP bound on requests in flight: with one request held and the bound at 1, the next
// request gets 503 although the runtime itself has room; the held one is answered 200 at
// drain, and the runtime never saw the rejected one.
TEST(HttpServer, RequestBoundGives503BeforeTheRuntimeIsFull) {
  HeldRequestServer h(/*max_inflight_samples=*/64, /*max_inflight_requests=*/1, /*held_images=*/1);
  ASSERT_TRUE(eventually([&] { return h.rt->stats().inflight_samples == 1; }));
  const std::string body = h.post_one_expecting_503();
  EXPECT_NE(body.find("too many requests"), std::string::npos) << body;
  const auto st = h.stop_expecting_held_200();
  EXPECT_EQ(st.requests_admitted, 1u);
  EXPECT_EQ(st.requests_rejected, 0u);
  EXPECT_EQ(h.server->counters().responses_by_status.at(503), 1u);
}

// T = ∞ and B = 256: nothing flushes until the final drain, so the first request's latency
// spans (at least) the time from its scheduled send to the last scheduled arrival. With the
// seeded schedule (rate 200/s over 0.5 s) that is well over 0.2 s whatever the machine does.
TEST(Loadgen, OpenLoopLatencyIncludesTimeHeldInQueues) {
  serve::ExpertQueueRuntime rt(make_random_model(), moe::make_policy("top-k:2", 8),
                               queue_config(256, -1));
  const LoadConfig lc =
      load_config(false, LoadConfig{}.concurrency, 200, 0.5, LoadConfig{}.warmup_s);
  const auto r = run_inprocess_load(rt, lc);
  ASSERT_GT(r.ok, 20);
  EXPECT_EQ(r.ok, r.sent);
  EXPECT_GT(*std::max_element(r.latency_us.begin(), r.latency_us.end()), 0.2e6);
}

// With a warm-up, requests sent before the measured window are served but not counted: every
// request the runtime answered is either a warm-up one or a counted one, and the window's
// answers (which give the throughput) are a subset of all answers.
TEST(Loadgen, WarmupRequestsAreServedButNotCounted) {
  for (bool closed : {false, true}) {
    serve::ExpertQueueRuntime rt(make_random_model(), moe::make_policy("top-k:2", 8),
                                 queue_config(8, 200));
    const LoadConfig lc = load_config(closed, 8, 400, 0.2, 0.1);
    const auto r = run_inprocess_load(rt, lc);
    const auto st = rt.stats();
    EXPECT_TRUE(r.errors.empty());
    EXPECT_GT(r.warmup_requests, 0);
    EXPECT_EQ(r.ok, r.sent);
    EXPECT_EQ(static_cast<uint64_t>(r.ok + r.warmup_requests), st.requests_done);
    EXPECT_GE(r.window_ok, 0);
    EXPECT_LE(r.window_ok, r.ok + r.warmup_requests);
    const auto j = nlohmann::json::parse(load_result_json(r, lc));
    EXPECT_DOUBLE_EQ(j["throughput_rps"].get<double>(),
                     static_cast<double>(r.window_ok) / lc.duration_s);
    EXPECT_EQ(j["warmup_requests"].get<int64_t>(), r.warmup_requests);
  }
}

// With one worker, B = 8 and T = ∞, every batch run inside the measured window is a full one
// of 8 rows; only the final drain runs partial batches. The window's counters must therefore
// show exactly 8 rows per expert call, and they must add up to the whole run's minus the
// warm-up's and the drain's.
TEST(Loadgen, RuntimeCountersCoverTheMeasuredWindowOnly) {
  serve::ExpertQueueRuntime rt(make_random_model(), moe::make_policy("top-k:2", 8),
                               queue_config(8, -1, 1));
  const LoadConfig lc = load_config(true, 256, 0, 0.2, 0.05);
  const auto r = run_inprocess_load(rt, lc);
  const auto whole = rt.stats();
  const auto w = runtime_stats_between(r.stats_at_window_start, r.stats_at_window_end);
  ASSERT_GT(w.expert_calls, 0u);
  EXPECT_EQ(w.expert_rows, 8 * w.expert_calls);
  EXPECT_LT(w.samples_done, whole.samples_done);
  EXPECT_EQ(w.samples_done + r.stats_at_window_start.samples_done +
                (whole.samples_done - r.stats_at_window_end.samples_done),
            whole.samples_done);
  uint64_t window_flushes = 0;
  for (const auto& q : w.queues) {
    window_flushes += q.flushes[0] + q.flushes[1] + q.flushes[2];
    EXPECT_EQ(q.flushes[1], 0u) << q.name;  // T = ∞: no timeouts
    EXPECT_EQ(q.batch_sizes.count, q.runs) << q.name;
  }
  EXPECT_GT(window_flushes, 0u);
  const auto j = nlohmann::json::parse(runtime_stats_json(w));
  EXPECT_DOUBLE_EQ(j["mean_expert_rows_per_call"].get<double>(), 8.0);
  // The whole run includes the drain's partial batches.
  EXPECT_LT(static_cast<double>(whole.expert_rows) / static_cast<double>(whole.expert_calls), 8.0);
  serve::RuntimeStats other;
  EXPECT_THROW(runtime_stats_between(other, whole), deltamoe::Error);
}

TEST(Loadgen, RefusesNonLoopbackTargets) {
  LoadConfig c;
  c.duration_s = 0.1;
  EXPECT_THROW(run_http_load("http://example.com:80", c), deltamoe::Error);
  EXPECT_THROW(run_http_load("http://10.0.0.1:8080", c), deltamoe::Error);
  EXPECT_THROW(run_http_load("ftp://127.0.0.1:8080", c), deltamoe::Error);
}

TEST(Loadgen, InProcessOpenAndClosedLoopAccountForEveryRequest) {
  for (bool closed : {false, true}) {
    serve::ExpertQueueRuntime rt(make_random_model(), moe::make_policy("top-p:0.5", 8),
                                 queue_config(8, 200));
    const LoadConfig lc = load_config(closed, 16, 400, 0.25, LoadConfig{}.warmup_s);
    const auto r = run_inprocess_load(rt, lc);
    int64_t errors = 0;
    for (const auto& [k, v] : r.errors) errors += v;
    EXPECT_GT(r.sent, 0);
    EXPECT_EQ(r.ok + errors, r.sent);
    EXPECT_EQ(static_cast<int64_t>(r.latency_us.size()), r.ok);
    const auto j = nlohmann::json::parse(load_result_json(r, lc, runtime_stats_json(rt.stats())));
    for (const char* key :
         {"p50_ms", "p99_ms", "throughput_rps", "mean_batch_expert", "timeout_flush_share"})
      EXPECT_TRUE(j.contains(key)) << key;
  }
}

#endif
