// Load generator (see loadgen.h). Arrival times are drawn up front, so the schedule does not
// depend on how fast the server answers.
#include "deltamoe/serve/loadgen.h"

#include <time.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/serve/http_api.h"

#ifdef DELTAMOE_HAVE_HTTPLIB
#include <httplib.h>
#endif

namespace deltamoe::serve {

namespace {

using WallClock = std::chrono::steady_clock;

// CPU time of the calling thread (0 where unsupported).
double thread_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0.0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double us_between(WallClock::time_point a, WallClock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

void check_config(const LoadConfig& c) {
  DELTAMOE_CHECK(c.duration_s > 0 && c.duration_s <= 600, "loadgen",
                 "--duration must be in (0, 600] s");
  DELTAMOE_CHECK(c.closed_loop || (c.rate_rps > 0 && c.rate_rps * c.duration_s <= 5e7), "loadgen",
                 "--rate must be > 0 (and rate × duration ≤ 5e7)");
  DELTAMOE_CHECK(c.concurrency >= 1 && c.concurrency <= 4096, "loadgen",
                 "--concurrency must be in 1..4096");
  DELTAMOE_CHECK(c.images_per_request >= 1, "loadgen", "--images must be >= 1");
}

}  // namespace

std::vector<double> poisson_schedule_us(double rate, double duration_s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  std::vector<double> t;
  for (double s = gap(rng); s < duration_s; s += gap(rng)) t.push_back(s * 1e6);
  return t;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

std::pair<std::string, int> parse_loopback_url(const std::string& url) {
  const std::string prefix = "http://";
  DELTAMOE_CHECK(url.rfind(prefix, 0) == 0, "loadgen", "--url must start with http:// (got '", url,
                 "')");
  std::string host_port = url.substr(prefix.size());
  while (!host_port.empty() && host_port.back() == '/') host_port.pop_back();
  const auto colon = host_port.rfind(':');
  const std::string host = colon == std::string::npos ? host_port : host_port.substr(0, colon);
  DELTAMOE_CHECK(host == "127.0.0.1" || host == "localhost", "loadgen",
                 "only loopback targets are allowed (127.0.0.1 or localhost), got '", host, "'");
  int port = 80;
  if (colon != std::string::npos) {
    try {
      port = std::stoi(host_port.substr(colon + 1));
    } catch (const std::exception&) {
      fail("loadgen", "bad port in --url '", url, "'");
    }
  }
  DELTAMOE_CHECK(port > 0 && port < 65536, "loadgen", "bad port ", port);
  return {host, port};
}

std::vector<float> synthetic_images(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n * 784), 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    float* img = x.data() + i * 784;
    const int blobs = 1 + static_cast<int>(u(rng) * 3);
    for (int b = 0; b < blobs; ++b) {
      const float cx = 4 + u(rng) * 20, cy = 4 + u(rng) * 20, r = 2 + u(rng) * 8,
                  v = 120 + u(rng) * 135;
      for (int y = 0; y < 28; ++y)
        for (int xx = 0; xx < 28; ++xx) {
          const float d2 = (xx - cx) * (xx - cx) + (y - cy) * (y - cy);
          if (d2 < r * r)
            img[y * 28 + xx] = std::min(255.0f, img[y * 28 + xx] + v * (1 - d2 / (r * r + 1)));
        }
    }
    for (int p = 0; p < 784; ++p) img[p] = std::round(std::min(255.0f, img[p] + u(rng) * 8));
  }
  return x;
}

namespace {

// `count` images of 784 pixels from the configured pool (cycled) or synthetic ones.
std::vector<float> request_images(const LoadConfig& c, int64_t count) {
  if (c.image_pool.empty()) return synthetic_images(count, c.seed);
  const int64_t pool = static_cast<int64_t>(c.image_pool.size()) / 784;
  DELTAMOE_CHECK(pool >= 1 && static_cast<int64_t>(c.image_pool.size()) == pool * 784, "loadgen",
                 "image pool must hold whole 784-pixel images");
  std::vector<float> out(static_cast<size_t>(count * 784));
  for (int64_t i = 0; i < count; ++i)
    std::copy_n(c.image_pool.data() + (i % pool) * 784, 784, out.data() + i * 784);
  return out;
}

}  // namespace

std::string load_result_json(const LoadResult& r, const LoadConfig& c,
                             const std::string& extra_json) {
  nlohmann::json j;
  j["mode"] = r.mode;
  j["transport"] = r.transport;
  if (r.mode == "open-loop")
    j["offered_rps"] = r.offered_rps;
  else
    j["concurrency"] = c.concurrency;
  j["images_per_request"] = c.images_per_request;
  j["duration_s"] = r.duration_s;
  j["wall_s"] = r.wall_s;
  j["warmup_s"] = r.warmup_s;
  j["warmup_requests"] = r.warmup_requests;
  j["requests_sent"] = r.sent;
  j["requests_ok"] = r.ok;
  j["requests_not_sent"] = r.not_sent;
  nlohmann::json errors = nlohmann::json::object();
  int64_t n_errors = 0;
  for (const auto& [k, v] : r.errors) {
    errors[k] = v;
    n_errors += v;
  }
  j["errors"] = errors;
  j["requests_error"] = n_errors;
  const double answered = static_cast<double>(r.window_ok >= 0 ? r.window_ok : r.ok);
  const double span = r.window_ok >= 0 ? r.duration_s : r.wall_s;
  j["throughput_rps"] = span > 0 ? answered / span : 0.0;
  j["samples_per_s"] = span > 0 ? answered * static_cast<double>(c.images_per_request) / span : 0.0;
  for (const auto& [name, q] :
       {std::pair{"p50", 0.5}, {"p95", 0.95}, {"p99", 0.99}, {"p999", 0.999}})
    j[std::string(name) + "_ms"] = percentile(r.latency_us, q) / 1000.0;
  double sum = 0.0, mx = 0.0;
  int64_t within = 0;
  for (double v : r.latency_us) {
    sum += v;
    mx = std::max(mx, v);
    if (v <= c.slo_ms * 1000.0) ++within;
  }
  j["mean_ms"] =
      r.latency_us.empty() ? 0.0 : sum / static_cast<double>(r.latency_us.size()) / 1000.0;
  j["max_ms"] = mx / 1000.0;
  j["slo_ms"] = c.slo_ms;
  j["slo_attainment"] =
      r.sent > 0 ? static_cast<double>(within) / static_cast<double>(r.sent) : 0.0;
  if (!r.queue_us.empty()) {
    double qs = 0, cs = 0;
    for (size_t i = 0; i < r.queue_us.size(); ++i) {
      qs += r.queue_us[i];
      cs += r.compute_us[i];
    }
    j["mean_experts"] = r.experts_sum / static_cast<double>(r.queue_us.size());
    j["mean_queue_ms"] = qs / static_cast<double>(r.queue_us.size()) / 1000.0;
    j["mean_compute_ms"] = cs / static_cast<double>(r.queue_us.size()) / 1000.0;
  }
  // Where the latency comes from: the runtime's own (admission → done) and the client's lag
  // in sending (a late send counts in the latency above, as it must: no coordinated omission).
  if (!r.server_latency_us.empty()) {
    j["server_p50_ms"] = percentile(r.server_latency_us, 0.5) / 1000.0;
    const double p99 = percentile(r.server_latency_us, 0.99);
    j["server_p99_ms"] = p99 / 1000.0;
    // The slowest 1 %: how much of their time was queueing and how much compute.
    double tq = 0, tc = 0, tn = 0;
    for (size_t i = 0; i < r.server_latency_us.size(); ++i)
      if (r.server_latency_us[i] >= p99) {
        tq += r.queue_us[i];
        tc += r.compute_us[i];
        ++tn;
      }
    j["tail_queue_ms"] = tn > 0 ? tq / tn / 1000.0 : 0.0;
    j["tail_compute_ms"] = tn > 0 ? tc / tn / 1000.0 : 0.0;
  }
  if (!r.send_lag_us.empty()) {
    j["sender_priority_raised"] = r.sender_priority_raised;
    j["sender_cpu_share"] = r.wall_s > 0 ? r.sender_cpu_s / r.wall_s : 0.0;
    j["send_lag_p50_ms"] = percentile(r.send_lag_us, 0.5) / 1000.0;
    j["send_lag_p99_ms"] = percentile(r.send_lag_us, 0.99) / 1000.0;
  }
  const auto extra = nlohmann::json::parse(extra_json);
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j.dump();
}

std::string runtime_stats_json(const serve::RuntimeStats& s) {
  nlohmann::json j;
  double expert_batches = 0, expert_samples = 0, expert_busy = 0, expert_runs = 0, timeouts = 0,
         flushes = 0, splits = 0;
  for (size_t q = 0; q < s.queues.size(); ++q) {
    const auto& qs = s.queues[q];
    const double f = static_cast<double>(qs.flushes[0] + qs.flushes[1] + qs.flushes[2]);
    flushes += f;
    timeouts += static_cast<double>(qs.flushes[1]);
    splits += static_cast<double>(qs.splits);
    if (q == 0) {
      j["mean_batch_stem"] = f > 0 ? static_cast<double>(qs.samples) / f : 0.0;
      j["mean_stem_service_ms"] =
          qs.runs > 0 ? qs.busy_us / static_cast<double>(qs.runs) / 1000.0 : 0.0;
    } else {
      expert_batches += f;
      expert_samples += static_cast<double>(qs.samples);
      expert_busy += qs.busy_us;
      expert_runs += static_cast<double>(qs.runs);
    }
  }
  j["mean_batch_expert"] = expert_batches > 0 ? expert_samples / expert_batches : 0.0;
  j["mean_expert_service_ms"] = expert_runs > 0 ? expert_busy / expert_runs / 1000.0 : 0.0;
  j["stem_runs"] = s.queues.empty() ? 0 : s.queues[0].runs;
  j["expert_runs"] = expert_runs;
  j["split_flush_share"] = flushes > 0 ? splits / flushes : 0.0;
  j["mean_expert_rows_per_call"] =
      s.expert_calls > 0 ? static_cast<double>(s.expert_rows) / static_cast<double>(s.expert_calls)
                         : 0.0;
  j["timeout_flush_share"] = flushes > 0 ? timeouts / flushes : 0.0;
  j["batches"] = flushes;
  j["samples_done"] = s.samples_done;
  j["final_batch_limit"] = s.queues.empty() ? 0 : s.queues[0].current_batch_limit;
  const double done = static_cast<double>(std::max<uint64_t>(1, s.samples_done));
  j["runtime_mean_queue_ms"] = s.queue_us_sum / done / 1000.0;
  j["runtime_mean_compute_ms"] = s.compute_us_sum / done / 1000.0;
  return j.dump();
}

namespace {

void subtract(serve::Histogram& h, const serve::Histogram& begin) {
  DELTAMOE_CHECK(h.counts.size() == begin.counts.size(), "loadgen",
                 "histograms with different buckets");
  for (size_t i = 0; i < h.counts.size(); ++i) h.counts[i] -= begin.counts[i];
  h.sum -= begin.sum;
  h.count -= begin.count;
}

}  // namespace

serve::RuntimeStats runtime_stats_between(const serve::RuntimeStats& begin,
                                          const serve::RuntimeStats& end) {
  DELTAMOE_CHECK(begin.queues.size() == end.queues.size(), "loadgen", "runtime snapshots with ",
                 begin.queues.size(), " and ", end.queues.size(), " queues");
  serve::RuntimeStats d = end;
  d.requests_admitted -= begin.requests_admitted;
  d.requests_rejected -= begin.requests_rejected;
  d.requests_done -= begin.requests_done;
  d.samples_admitted -= begin.samples_admitted;
  d.samples_done -= begin.samples_done;
  d.queue_us_sum -= begin.queue_us_sum;
  d.compute_us_sum -= begin.compute_us_sum;
  d.expert_calls -= begin.expert_calls;
  d.expert_rows -= begin.expert_rows;
  subtract(d.latency_us, begin.latency_us);
  for (size_t q = 0; q < d.queues.size(); ++q) {
    auto& dq = d.queues[q];
    const auto& bq = begin.queues[q];
    for (int k = 0; k < 3; ++k) dq.flushes[k] -= bq.flushes[k];
    dq.splits -= bq.splits;
    dq.runs -= bq.runs;
    dq.samples -= bq.samples;
    dq.busy_us -= bq.busy_us;
    subtract(dq.batch_sizes, bq.batch_sizes);
  }
  return d;
}

LoadResult run_inprocess_load(serve::ExpertQueueRuntime& runtime, const LoadConfig& c) {
  check_config(c);
  LoadResult r;
  r.mode = c.closed_loop ? "closed-loop" : "open-loop";
  r.transport = "in-process";
  r.offered_rps = c.rate_rps;
  r.duration_s = c.duration_s;
  const int64_t pool = c.image_pool.empty()
                           ? 64
                           : std::max<int64_t>(1, static_cast<int64_t>(c.image_pool.size()) / 784 /
                                                      c.images_per_request);
  const auto images = request_images(c, pool * c.images_per_request);
  const int64_t stride = 784 * c.images_per_request;
  std::mutex mu;
  std::condition_variable cv;
  int64_t outstanding = 0;
  const auto start = WallClock::now();
  // Requests scheduled before `measured_from` warm the runtime up (first-touch of its pools
  // and buffers, caches, the CPU's clock); they are served like any other but not counted.
  const auto measured_from = start + std::chrono::duration_cast<WallClock::duration>(
                                         std::chrono::duration<double>(c.warmup_s));
  const auto end = measured_from + std::chrono::duration_cast<WallClock::duration>(
                                       std::chrono::duration<double>(c.duration_s));
  r.warmup_s = c.warmup_s;
  // Reserve the result vectors: growing them inside `record`, which runs on the runtime's
  // worker threads, would stall a worker for each reallocation (fresh pages, a copy) and
  // show up as the server's tail latency.
  {
    const double expected =
        c.closed_loop ? 2.0e5 * c.duration_s : c.rate_rps * c.duration_s * 1.2 + 1024;
    const auto n = static_cast<size_t>(std::min(expected, 5e7));
    const auto ns = n * static_cast<size_t>(c.images_per_request);
    r.latency_us.reserve(n);
    r.send_lag_us.reserve(n);
    r.queue_us.reserve(ns);
    r.compute_us.reserve(ns);
    r.server_latency_us.reserve(ns);
  }

  r.window_ok = 0;
  auto record = [&](WallClock::time_point scheduled, serve::RequestResult&& res) {
    const auto now = WallClock::now();
    std::lock_guard<std::mutex> lk(mu);
    if (now >= measured_from && now < end) ++r.window_ok;
    if (scheduled < measured_from) {
      ++r.warmup_requests;
      if (--outstanding == 0) cv.notify_all();
      return;
    }
    ++r.ok;
    r.latency_us.push_back(us_between(scheduled, now));
    for (const auto& s : res.results) {
      r.queue_us.push_back(static_cast<double>(s.queue_us));
      r.compute_us.push_back(static_cast<double>(s.compute_us));
      r.server_latency_us.push_back(static_cast<double>(s.latency_us));
      r.experts_sum += s.mean_experts();
    }
    // Wake the waiting thread only when it can finish: a wake-up per answer would cost a
    // context switch per request and distort the measurement.
    if (--outstanding == 0) cv.notify_all();
  };

  if (c.closed_loop) {
    // Each completion resubmits (from the worker thread) until the duration is over.
    std::atomic<int64_t> next{0};
    std::function<void()> launch = [&] {
      const int64_t k = next.fetch_add(1);
      const auto scheduled = WallClock::now();
      {
        std::lock_guard<std::mutex> lk(mu);
        ++outstanding;
        if (scheduled >= measured_from) ++r.sent;
      }
      const bool ok = runtime.submit(images.data() + (k % pool) * stride, c.images_per_request,
                                     [&, scheduled](serve::RequestResult&& res) {
                                       // Relaunch before recording, so `outstanding` only
                                       // reaches 0 once no more launches can follow.
                                       if (WallClock::now() < end) launch();
                                       record(scheduled, std::move(res));
                                     });
      if (!ok) {
        std::lock_guard<std::mutex> lk(mu);
        --outstanding;
        if (scheduled >= measured_from) ++r.errors["503"];
        cv.notify_all();
      }
    };
    for (int i = 0; i < c.concurrency; ++i) launch();
    // Wait for the duration only: with T = ∞ the queues can hold every outstanding request
    // short of B (a closed loop then sends nothing more); the drain below runs them.
    std::this_thread::sleep_until(measured_from);
    r.stats_at_window_start = runtime.stats();
    {
      std::unique_lock<std::mutex> lk(mu);
      cv.wait_until(lk, end, [&] { return outstanding == 0; });
    }
    r.stats_at_window_end = runtime.stats();
  } else {
    const auto schedule = poisson_schedule_us(c.rate_rps, c.warmup_s + c.duration_s, c.seed);
    // The sender is its own thread, woken precisely (1 µs timer slack) and, where allowed,
    // ahead of the runtime's workers: with as many workers as cores, a sender at equal
    // priority waits for a CPU behind the batches it is measuring, and its lag, which is
    // counted in the latency, would be the client's doing, not the server's.
    std::thread sender([&] {
      set_thread_timer_slack_ns(1000);
      r.sender_priority_raised = try_raise_thread_priority();
      double sender_cpu_at_measure = -1.0;
      // Wake at most every sender_tick_us and send everything due: a timed wake-up costs
      // ~10 µs of CPU in a VM, so one per request (tens of thousands per second) would take a
      // good part of a core from the workers. A request sent late counts its lag in its
      // latency (≤ the tick plus scheduling).
      const auto kMinWakeGap = std::chrono::microseconds(std::max<int64_t>(0, c.sender_tick_us));
      auto last_wake = start - kMinWakeGap;
      for (size_t k = 0; k < schedule.size(); ++k) {
        const auto scheduled = start + std::chrono::microseconds(static_cast<int64_t>(schedule[k]));
        if (WallClock::now() < scheduled) {
          std::this_thread::sleep_until(std::max(scheduled, last_wake + kMinWakeGap));
          last_wake = WallClock::now();
        }
        const bool measured = scheduled >= measured_from;
        if (measured && sender_cpu_at_measure < 0) sender_cpu_at_measure = thread_cpu_seconds();
        {
          std::lock_guard<std::mutex> lk(mu);
          ++outstanding;
          if (measured) {
            ++r.sent;
            r.send_lag_us.push_back(us_between(scheduled, WallClock::now()));
          }
        }
        const bool ok = runtime.submit(
            images.data() + static_cast<int64_t>(k % pool) * stride, c.images_per_request,
            [&, scheduled](serve::RequestResult&& res) { record(scheduled, std::move(res)); });
        if (!ok) {
          std::lock_guard<std::mutex> lk(mu);
          --outstanding;
          if (measured) ++r.errors["503"];
        }
      }
      r.sender_cpu_s = thread_cpu_seconds() - sender_cpu_at_measure;
    });
    std::this_thread::sleep_until(measured_from);
    r.stats_at_window_start = runtime.stats();
    std::this_thread::sleep_until(end);
    r.stats_at_window_end = runtime.stats();
    sender.join();
  }
  runtime.shutdown();  // drains what B/T still hold (T = ∞), so every admitted request is counted
  {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return outstanding == 0; });
  }
  r.wall_s = std::chrono::duration<double>(WallClock::now() - measured_from).count();
  return r;
}

#ifdef DELTAMOE_HAVE_HTTPLIB

LoadResult run_http_load(const std::string& url, const LoadConfig& c) {
  check_config(c);
  // A pair, not a structured binding: clang 14 (the fuzz preset) cannot capture bindings.
  const std::pair<std::string, int> server = parse_loopback_url(url);

  // Pre-encoded bodies, so the client spends its time sending, not formatting.
  const int64_t pool = c.image_pool.empty()
                           ? 64
                           : std::max<int64_t>(1, static_cast<int64_t>(c.image_pool.size()) / 784 /
                                                      c.images_per_request);
  const auto images = request_images(c, pool * c.images_per_request);
  std::vector<std::string> bodies;
  for (int64_t b = 0; b < pool; ++b) {
    nlohmann::json list = nlohmann::json::array();
    for (int64_t i = 0; i < c.images_per_request; ++i) {
      const float* img = images.data() + (b * c.images_per_request + i) * 784;
      if (c.base64) {
        std::string raw(784, '\0');
        for (int p = 0; p < 784; ++p) raw[p] = static_cast<char>(static_cast<uint8_t>(img[p]));
        list.push_back(base64_encode(raw));
      } else {
        list.push_back(std::vector<int>(img, img + 784));
      }
    }
    bodies.push_back(nlohmann::json({{c.base64 ? "images_b64" : "images", list}}).dump());
  }

  LoadResult r;
  r.mode = c.closed_loop ? "closed-loop" : "open-loop";
  r.transport = "http";
  r.offered_rps = c.rate_rps;
  r.duration_s = c.duration_s;
  // Throughput counts the 200s that arrive inside [start, start + duration]: with the client
  // working off a backlog (more requests due than connections), answers keep arriving after
  // the window, and dividing all of them by the longer wall time mixes two rates.
  r.window_ok = 0;
  const auto schedule =
      c.closed_loop ? std::vector<double>{} : poisson_schedule_us(c.rate_rps, c.duration_s, c.seed);
  std::mutex mu;
  std::atomic<size_t> next{0};
  const auto start = WallClock::now();
  const auto end = start + std::chrono::duration_cast<WallClock::duration>(
                               std::chrono::duration<double>(c.duration_s));
  const auto give_up = end + std::chrono::duration_cast<WallClock::duration>(
                                 std::chrono::duration<double>(c.grace_s));

  auto sender = [&](int id) {
    httplib::Client client(server.first, server.second);
    client.set_keep_alive(c.keep_alive);
    client.set_tcp_nodelay(true);
    client.set_connection_timeout(5);
    client.set_read_timeout(static_cast<time_t>(std::ceil(c.grace_s)));
    for (;;) {
      const size_t k = next.fetch_add(1);
      WallClock::time_point scheduled;
      if (c.closed_loop) {
        scheduled = WallClock::now();
        if (scheduled >= end) return;
      } else {
        if (k >= schedule.size()) return;
        scheduled = start + std::chrono::microseconds(static_cast<int64_t>(schedule[k]));
        if (WallClock::now() >= give_up) {  // the client fell too far behind: say so, don't hang
          std::lock_guard<std::mutex> lk(mu);
          ++r.not_sent;
          continue;
        }
        std::this_thread::sleep_until(scheduled);
      }
      auto res = client.Post("/v1/classify", bodies[(k + static_cast<size_t>(id)) % bodies.size()],
                             "application/json");
      const auto now = WallClock::now();
      const double lat = us_between(scheduled, now);
      std::lock_guard<std::mutex> lk(mu);
      ++r.sent;
      if (!res) {
        ++r.errors["transport:" + httplib::to_string(res.error())];
      } else if (res->status == 200) {
        ++r.ok;
        if (now < end) ++r.window_ok;
        r.latency_us.push_back(lat);
      } else {
        ++r.errors[std::to_string(res->status)];
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < c.concurrency; ++i) threads.emplace_back(sender, i);
  for (auto& t : threads) t.join();
  r.wall_s = std::chrono::duration<double>(WallClock::now() - start).count();
  return r;
}

#else

LoadResult run_http_load(const std::string&, const LoadConfig&) {
  fail("loadgen",
       "deltamoe was built without cpp-httplib (install libcpp-httplib-dev and reconfigure)");
}

#endif

}  // namespace deltamoe::serve
