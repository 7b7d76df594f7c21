// Per-expert queue runtime: flushing by size and by timeout (driven by a manual clock, so no
// test depends on timing), answers identical to the one-sample reference whatever the
// batching, bounded admission with nothing lost, drain, adaptive B.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cmath>
#include <random>
#include <thread>

#include "deltamoe/core/error.h"
#include "deltamoe/moe/expert_queue.h"

using namespace deltamoe;
using namespace deltamoe::moe;

namespace {

std::vector<float> random_images(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> px(0, 255);
  std::vector<float> x(static_cast<size_t>(n * 784));
  for (float& v : x) v = static_cast<float>(px(rng));
  return x;
}

std::shared_ptr<const serve::ServeModel> small_model() {
  serve::RandomModelConfig c;
  c.hidden = 32;
  c.inter = 48;
  c.experts = 4;
  return serve::make_random_model(c);
}

struct Collector {
  std::mutex mu;
  std::vector<RequestResult> results;
  std::atomic<int> calls{0};
  Callback cb() {
    return [this](RequestResult&& r) {
      std::lock_guard<std::mutex> lk(mu);
      results.push_back(std::move(r));
      ++calls;
    };
  }
};

QueueConfig manual(int64_t b, int64_t t, std::shared_ptr<ManualClock> clock,
                   BatchingMode mode = BatchingMode::whole_model) {
  QueueConfig c;
  c.mode = mode;
  c.max_batch = b;
  c.timeout_us = t;
  c.workers = 0;
  c.clock = std::move(clock);
  return c;
}

}  // namespace

TEST(ExpertQueue, FlushesBySize) {
  auto clock = std::make_shared<ManualClock>();
  ExpertQueueRuntime rt(small_model(), serve::make_routing("top-k:2"), manual(4, -1, clock));
  Collector col;
  const auto x = random_images(4, 1);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(rt.submit(x.data() + i * 784, 1, col.cb()));
  clock->advance_us(1000000);  // T = ∞: time alone never flushes
  EXPECT_FALSE(rt.step());
  EXPECT_EQ(col.calls, 0);
  ASSERT_TRUE(rt.submit(x.data() + 3 * 784, 1, col.cb()));
  EXPECT_TRUE(rt.step());
  EXPECT_EQ(col.calls, 4);
  const auto st = rt.stats();
  ASSERT_EQ(st.queues.size(), 1u);
  EXPECT_EQ(st.queues[0].flushes[static_cast<int>(FlushReason::size)], 1u);
  EXPECT_EQ(st.queues[0].flushes[static_cast<int>(FlushReason::timeout)], 0u);
  EXPECT_EQ(st.queues[0].batch_sizes.count, 1u);
  EXPECT_EQ(st.queues[0].batch_sizes.sum, 4.0);
  EXPECT_EQ(st.expert_rows, 8u);  // whole-model: 4 samples × top-2, one call per used expert
  EXPECT_LE(st.expert_calls, 4u);
}

TEST(ExpertQueue, FlushesByTimeout) {
  auto clock = std::make_shared<ManualClock>();
  ExpertQueueRuntime rt(small_model(), serve::make_routing("top-k:2"), manual(8, 100, clock));
  Collector col;
  const auto x = random_images(2, 2);
  ASSERT_TRUE(rt.submit(x.data(), 2, col.cb()));
  EXPECT_FALSE(rt.step());
  clock->advance_us(99);
  EXPECT_FALSE(rt.step());
  clock->advance_us(1);
  EXPECT_TRUE(rt.step());
  EXPECT_EQ(col.calls, 1);
  ASSERT_EQ(col.results[0].results.size(), 2u);
  EXPECT_EQ(col.results[0].results[0].latency_us, 100);
  const auto st = rt.stats();
  EXPECT_EQ(st.queues[0].flushes[static_cast<int>(FlushReason::timeout)], 1u);
  EXPECT_EQ(st.queues[0].batch_sizes.sum, 2.0);
}

TEST(ExpertQueue, PerExpertQueuesFlushIndependently) {
  auto clock = std::make_shared<ManualClock>();
  auto model = small_model();
  ExpertQueueRuntime rt(model, serve::make_routing("top-k:1"),
                        manual(2, 50, clock, BatchingMode::per_expert));
  Collector col;
  const auto x = random_images(16, 3);
  ASSERT_TRUE(rt.submit(x.data(), 16, col.cb()));
  // The stem queue is full 8 times over: 8 size flushes, no time needed.
  EXPECT_EQ(rt.run_ready() >= 8, true);
  auto st = rt.stats();
  EXPECT_EQ(st.queues[0].flushes[static_cast<int>(FlushReason::size)], 8u);
  ASSERT_EQ(st.queues.size(), 5u);
  // Expert queues ran every full pair; at most one sample per expert is left, waiting for T.
  int64_t waiting = 0;
  for (size_t q = 1; q < st.queues.size(); ++q) {
    EXPECT_LE(st.queues[q].depth, 1);
    waiting += st.queues[q].depth;
  }
  EXPECT_EQ(col.calls, waiting == 0 ? 1 : 0);
  clock->advance_us(50);
  rt.run_ready();
  EXPECT_EQ(col.calls, 1);
  st = rt.stats();
  uint64_t timeouts = 0, routed = 0;
  for (size_t q = 1; q < st.queues.size(); ++q) {
    timeouts += st.queues[q].flushes[static_cast<int>(FlushReason::timeout)];
    routed += st.queues[q].samples;
    EXPECT_EQ(st.queues[q].depth, 0);
  }
  EXPECT_EQ(timeouts, static_cast<uint64_t>(waiting));
  EXPECT_EQ(routed, 16u);  // top-1: each sample visits one expert queue
  EXPECT_EQ(st.expert_rows, 16u);
  EXPECT_EQ(st.samples_done, 16u);
  EXPECT_EQ(st.inflight_samples, 0);
}

// Reference: one sample at a time (GEMV path). Batched answers use sgemm, whose summation
// order may differ from sgemv's, so equality is to 1e-6 (probabilities are in [0, 1]; f32
// rounding of a 784- or 256-long dot product is ~1e-7 relative), and experts and classes
// must be identical.
TEST(ExpertQueue, BatchedMatchesUnbatched) {
  auto model = serve::make_random_model();
  const int64_t n = 96;
  const auto x = random_images(n, 4);
  for (const char* spec : {"top-k:2", "top-p:0.6"}) {
    auto policy = std::shared_ptr<const RoutingPolicy>(serve::make_routing(spec));
    std::vector<float> ref(static_cast<size_t>(n * 10));
    RoutingResult ref_routing;
    serve::reference_forward(*model, *policy, x.data(), n, ref.data(), &ref_routing);
    struct Setup { BatchingMode mode; int64_t b; int64_t t; int workers; };
    for (const Setup& s : {Setup{BatchingMode::per_expert, 1, 0, 2}, Setup{BatchingMode::per_expert, 16, 0, 2},
                           Setup{BatchingMode::per_expert, 64, -1, 2}, Setup{BatchingMode::whole_model, 32, 200, 1},
                           Setup{BatchingMode::whole_model, 96, -1, 0}}) {
      QueueConfig c;
      c.mode = s.mode;
      c.max_batch = s.b;
      c.timeout_us = s.t;
      c.workers = s.workers;
      ExpertQueueRuntime rt(model, policy, c);
      Collector col;
      // Samples arrive as requests of 1..5 so that batches mix requests.
      std::vector<int64_t> starts;
      for (int64_t i = 0; i < n;) {
        const int64_t len = std::min<int64_t>(n - i, 1 + i % 5);
        starts.push_back(i);
        ASSERT_TRUE(rt.submit(x.data() + i * 784, len, [&col, i](RequestResult&& r) {
          std::lock_guard<std::mutex> lk(col.mu);
          for (size_t j = 0; j < r.results.size(); ++j) r.results[j].latency_us = i + static_cast<int64_t>(j);
          col.results.push_back(std::move(r));
        }));
        i += len;
      }
      rt.shutdown();  // drains whatever B and T left waiting
      ASSERT_EQ(col.results.size(), starts.size());
      int64_t checked = 0;
      double max_diff = 0.0;
      for (const auto& r : col.results)
        for (const auto& sr : r.results) {
          const int64_t i = sr.latency_us;  // the sample index, stored above
          ASSERT_EQ(sr.probs.size(), 10u);
          for (int64_t c2 = 0; c2 < 10; ++c2)
            max_diff = std::max(max_diff, static_cast<double>(std::abs(sr.probs[c2] - ref[i * 10 + c2])));
          const int32_t b = ref_routing.offsets[i], e = ref_routing.offsets[i + 1];
          EXPECT_EQ(sr.experts, std::vector<int32_t>(ref_routing.expert_ids.begin() + b,
                                                     ref_routing.expert_ids.begin() + e))
              << spec << " sample " << i;
          ++checked;
        }
      EXPECT_EQ(checked, n);
      std::printf("%s %s B=%lld: max |p - p_ref| = %.3g\n", spec, batching_mode_name(s.mode),
                  static_cast<long long>(s.b), max_diff);
      EXPECT_LE(max_diff, 1e-6) << spec << " mode " << batching_mode_name(s.mode) << " B=" << s.b;
    }
  }
}

TEST(ExpertQueue, TopPUsesAVaryingNumberOfExperts) {
  auto model = serve::make_random_model();
  auto policy = serve::make_routing("top-p:0.6");
  const int64_t n = 64;
  const auto x = random_images(n, 5);
  std::vector<float> probs(static_cast<size_t>(n * 10));
  RoutingResult r;
  serve::reference_forward(*model, *policy, x.data(), n, probs.data(), &r);
  int32_t lo = 99, hi = 0;
  for (int64_t t = 0; t < n; ++t) {
    lo = std::min(lo, r.experts_of(t));
    hi = std::max(hi, r.experts_of(t));
  }
  EXPECT_LT(lo, hi);
}

TEST(ExpertQueue, AdmissionIsBoundedAndNothingIsLost) {
  auto clock = std::make_shared<ManualClock>();
  QueueConfig c = manual(4, -1, clock, BatchingMode::per_expert);
  c.max_inflight_samples = 8;
  c.max_request_samples = 4;
  ExpertQueueRuntime rt(small_model(), serve::make_routing("top-k:2"), c);
  Collector col;
  const auto x = random_images(4, 6);
  EXPECT_TRUE(rt.submit(x.data(), 4, col.cb()));
  EXPECT_TRUE(rt.submit(x.data(), 3, col.cb()));
  EXPECT_FALSE(rt.submit(x.data(), 2, col.cb()));  // 7 + 2 > 8
  EXPECT_TRUE(rt.submit(x.data(), 1, col.cb()));
  EXPECT_FALSE(rt.submit(x.data(), 1, col.cb()));
  EXPECT_THROW(rt.submit(x.data(), 5, col.cb()), deltamoe::Error);  // above max_request_samples
  EXPECT_EQ(rt.stats().requests_rejected, 2u);
  rt.shutdown();
  EXPECT_EQ(col.calls, 3);
  EXPECT_FALSE(rt.submit(x.data(), 1, col.cb()));  // closed
  const auto st = rt.stats();
  EXPECT_EQ(st.samples_done, 8u);
  EXPECT_EQ(st.inflight_samples, 0);
}

TEST(ExpertQueue, DrainRunsWhatBAndTWouldHoldForever) {
  QueueConfig c;
  c.max_batch = 256;
  c.timeout_us = -1;
  c.workers = 2;
  ExpertQueueRuntime rt(serve::make_random_model(), serve::make_routing("top-k:2"), c);
  Collector col;
  const auto x = random_images(10, 7);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(rt.submit(x.data() + i * 784, 1, col.cb()));
  rt.shutdown();
  EXPECT_EQ(col.calls, 10);
  const auto st = rt.stats();
  uint64_t drains = 0;
  for (const auto& q : st.queues) drains += q.flushes[static_cast<int>(FlushReason::drain)];
  EXPECT_GE(drains, 1u);
  EXPECT_EQ(st.samples_done, 10u);
}

TEST(ExpertQueue, ConcurrentClientsEveryRequestAnsweredOnce) {
  QueueConfig c;
  c.max_batch = 8;
  c.timeout_us = 0;
  c.workers = 2;
  c.max_inflight_samples = 16;
  c.max_request_samples = 4;
  ExpertQueueRuntime rt(small_model(), serve::make_routing("top-p:0.5"), c);
  const auto x = random_images(4, 8);
  std::atomic<int> accepted{0}, rejected{0}, answered{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t)
    clients.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const int64_t n = 1 + (i + t) % 4;
        if (rt.submit(x.data(), n, [&answered, n](RequestResult&& r) {
              if (static_cast<int64_t>(r.results.size()) == n) ++answered;
            }))
          ++accepted;
        else
          ++rejected;
      }
    });
  for (auto& t : clients) t.join();
  rt.shutdown();
  EXPECT_EQ(accepted + rejected, 800);
  EXPECT_EQ(answered.load(), accepted.load());
  const auto st = rt.stats();
  EXPECT_EQ(st.requests_rejected, static_cast<uint64_t>(rejected.load()));
  EXPECT_EQ(st.samples_done, st.samples_admitted);
}

TEST(ExpertQueue, AdaptiveBatchGrowsUnderTargetAndShrinksAboveIt) {
  auto clock = std::make_shared<ManualClock>();
  QueueConfig c = manual(64, 0, clock);
  c.adaptive = true;
  c.latency_target_us = 1000;
  c.aimd_increase = 2;
  c.aimd_decrease = 0.5;
  ExpertQueueRuntime rt(small_model(), serve::make_routing("top-k:2"), c);
  const auto x = random_images(1, 9);
  Collector col;
  EXPECT_EQ(rt.stats().queues[0].current_batch_limit, 1);
  for (int i = 0; i < 5; ++i) {  // latency 0 < target: +2 each time
    ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
    ASSERT_TRUE(rt.step());
  }
  EXPECT_EQ(rt.stats().queues[0].current_batch_limit, 11);
  ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
  clock->advance_us(5000);  // this sample misses the target
  ASSERT_TRUE(rt.step());
  EXPECT_EQ(rt.stats().queues[0].current_batch_limit, 5);
  ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
  clock->advance_us(5000);
  ASSERT_TRUE(rt.step());
  EXPECT_EQ(rt.stats().queues[0].current_batch_limit, 2);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
    rt.run_ready();
  }
  EXPECT_EQ(rt.stats().queues[0].current_batch_limit, 64);  // capped at B
}

TEST(ExpertQueue, BadConfigAndSpecsThrow) {
  auto model = small_model();
  auto policy = std::shared_ptr<const RoutingPolicy>(serve::make_routing("top-k:1"));
  QueueConfig c;
  c.max_batch = 0;
  EXPECT_THROW(ExpertQueueRuntime(model, policy, c), deltamoe::Error);
  EXPECT_THROW(serve::make_routing("top-k"), deltamoe::Error);
  EXPECT_THROW(serve::make_routing("top-k:1.5"), deltamoe::Error);
  EXPECT_THROW(serve::make_routing("top-p:0"), deltamoe::Error);
  EXPECT_THROW(serve::make_routing("best:2"), deltamoe::Error);
  EXPECT_THROW(parse_batching_mode("global"), deltamoe::Error);
}
