// Per-expert queue runtime: flushing by size and by timeout (driven by a manual clock, so no
// test depends on timing), answers identical to the one-sample reference whatever the
// batching, bounded admission with nothing lost, drain, adaptive B (Clipper's AIMD).
#include <gtest/gtest.h>

#include <unistd.h>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <random>
#include <thread>

#include <filesystem>

#include "deltamoe/core/error.h"
#include "deltamoe/models/moe_classifier.h"
#include "deltamoe/serve/expert_queue.h"

using namespace deltamoe;
using namespace deltamoe::moe;
using namespace deltamoe::serve;

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

// A checkpoint in `deltamoe train`'s format (random init, nothing trained): 2 MoE layers of
// 4 GELU experts, LayerNorm, with `routing`. Router weights are scaled up so that routing
// decisions are far from ties (a trained router is confident; an untrained one is near
// uniform, where f32 rounding differences between two code paths could flip a choice).
std::string write_checkpoint(const std::string& name, const moe::PolicySpec& routing,
                             bool residual = false) {
  models::MoeClassifierConfig c;
  c.hidden = 32;
  c.inter = 48;
  c.experts = 4;
  c.layers = 2;
  c.residual = residual;
  c.routing = routing;
  models::MoeClassifier m(c, 7);
  for (int64_t l = 0; l < 2; ++l) {
    Tensor& w = m.params().get("moe." + std::to_string(l) + ".router.weight");
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= 8.0f;
  }
  const auto path = (std::filesystem::temp_directory_path() /
                     (name + "_" + std::to_string(::getpid()) + ".safetensors"))
                        .string();
  m.save(path);
  return path;
}

void remove_checkpoint(const std::string& path) {
  std::filesystem::remove(path);
  std::filesystem::remove(std::filesystem::path(path).replace_extension(".json"));
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

// The small model, but every stem call advances the manual clock by stem_us: a batch that
// "takes" that long, so batch processing time can be set apart from time spent queueing.
class ClockedModel final : public serve::ServeModel {
 public:
  ClockedModel(std::shared_ptr<const serve::ServeModel> m, std::shared_ptr<ManualClock> clock)
      : m_(std::move(m)), clock_(std::move(clock)) {}
  std::atomic<int64_t> stem_us{0};
  std::string name() const override { return "clocked " + m_->name(); }
  int64_t input_dim() const override { return m_->input_dim(); }
  int64_t hidden() const override { return m_->hidden(); }
  int64_t layers() const override { return m_->layers(); }
  int64_t experts() const override { return m_->experts(); }
  int64_t router_outputs() const override { return m_->router_outputs(); }
  int64_t classes() const override { return m_->classes(); }
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> default_policies() const override {
    return m_->default_policies();
  }
  void stem(const float* x, int64_t n, float* h) const override {
    clock_->advance_us(stem_us.load());
    m_->stem(x, n, h);
  }
  void gate(int64_t l, const float* h, int64_t n, float* u, float* logits) const override {
    m_->gate(l, h, n, u, logits);
  }
  void expert(int64_t l, int64_t e, const float* rows, int64_t m, float* out) const override {
    m_->expert(l, e, rows, m, out);
  }
  void combine(int64_t l, const float* h, const float* const* outs, const int32_t* ids,
               const float* w, int64_t k, float* h_out) const override {
    m_->combine(l, h, outs, ids, w, k, h_out);
  }
  void head(const float* h, int64_t n, float* probs) const override { m_->head(h, n, probs); }

 private:
  std::shared_ptr<const serve::ServeModel> m_;
  std::shared_ptr<ManualClock> clock_;
};

}  // namespace

TEST(ExpertQueue, FlushesBySize) {
  auto clock = std::make_shared<ManualClock>();
  ExpertQueueRuntime rt(small_model(), moe::make_policy("top-k:2", 8), manual(4, -1, clock));
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
  ExpertQueueRuntime rt(small_model(), moe::make_policy("top-k:2", 8), manual(8, 100, clock));
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
  ExpertQueueRuntime rt(model, moe::make_policy("top-k:1", 8),
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

// Grouped layer flush: once the stem batch has routed its samples (T = 0, so every non-empty
// expert queue is ready), one step runs every expert queue of the layer and finishes the
// request; without grouping it takes one step per expert queue used. Manual mode, so no
// timing is involved.
TEST(ExpertQueue, GroupedLayerFlushRunsTheWholeLayerInOneStep) {
  for (bool group : {true, false}) {
    auto clock = std::make_shared<ManualClock>();
    QueueConfig c = manual(8, 0, clock, BatchingMode::per_expert);
    c.group_layers = group;
    ExpertQueueRuntime rt(small_model(), moe::make_policy("top-k:2", 8), c);
    Collector col;
    const auto x = random_images(8, 11);
    ASSERT_TRUE(rt.submit(x.data(), 8, col.cb()));
    ASSERT_TRUE(rt.step());  // the stem batch: 8 samples into the expert queues
    int64_t used = 0;
    for (size_t q = 1; q < rt.stats().queues.size(); ++q) used += rt.stats().queues[q].depth > 0;
    ASSERT_GE(used, 2);  // top-2: at least two experts have work
    const int64_t steps = rt.run_ready();
    EXPECT_EQ(steps, group ? 1 : used) << (group ? "grouped" : "ungrouped");
    EXPECT_EQ(col.calls, 1);
    const auto st = rt.stats();
    EXPECT_EQ(st.expert_calls, static_cast<uint64_t>(used));  // one call per expert either way
    EXPECT_EQ(st.expert_rows, 16u);
    EXPECT_EQ(st.samples_done, 8u);
  }
}

// Reference: one sample at a time (GEMV path). Batched answers use sgemm, whose summation
// order may differ from sgemv's, so equality is to 1e-6 (probabilities are in [0, 1]; f32
// rounding of a 784- or 256-long dot product is ~1e-7 relative), and experts and classes
// must be identical.
TEST(ExpertQueue, BatchedMatchesUnbatched) {
  moe::PolicySpec topk;
  const std::string ckpt = write_checkpoint("eq_batched", topk, /*residual=*/true);
  struct Case {
    std::shared_ptr<const serve::ServeModel> model;
    const char* spec;
  };
  const auto random = serve::make_random_model();
  const auto trained = serve::load_serve_model(ckpt);
  remove_checkpoint(ckpt);
  ASSERT_EQ(trained->layers(), 2);
  for (const Case& cs :
       {Case{random, "top-k:2"}, Case{random, "top-p:0.6"}, Case{trained, "top-k:2"},
        Case{trained, "top-p:0.6"}, Case{trained, "threshold"}}) {
    const auto& model = cs.model;
    const char* spec = cs.spec;
    const int64_t n = 96, layers = model->layers();
    const auto x = random_images(n, 4);
    auto policy = std::shared_ptr<const RoutingPolicy>(moe::make_policy(spec, model->experts()));
    std::vector<float> ref(static_cast<size_t>(n * 10));
    std::vector<RoutingResult> ref_routing;
    serve::reference_forward(*model, {policy}, x.data(), n, ref.data(), &ref_routing);
    ASSERT_EQ(static_cast<int64_t>(ref_routing.size()), layers);
    // split = 1: every flush is shared with whichever workers are idle at that moment.
    struct Setup {
      BatchingMode mode;
      int64_t b;
      int64_t t;
      int workers;
      int64_t split = 16;
    };
    for (const Setup& s :
         {Setup{BatchingMode::per_expert, 1, 0, 2}, Setup{BatchingMode::per_expert, 16, 0, 2},
          Setup{BatchingMode::per_expert, 64, -1, 2}, Setup{BatchingMode::whole_model, 32, 200, 1},
          Setup{BatchingMode::whole_model, 96, -1, 0},
          Setup{BatchingMode::per_expert, 64, -1, 2, 1},
          Setup{BatchingMode::whole_model, 96, -1, 3, 1}}) {
      QueueConfig c;
      c.mode = s.mode;
      c.max_batch = s.b;
      c.timeout_us = s.t;
      c.workers = s.workers;
      c.split_min_rows = s.split;
      ExpertQueueRuntime rt(model, policy, c);
      Collector col;
      // Samples arrive as requests of 1..5 so that batches mix requests.
      std::vector<int64_t> starts;
      for (int64_t i = 0; i < n;) {
        const int64_t len = std::min<int64_t>(n - i, 1 + i % 5);
        starts.push_back(i);
        ASSERT_TRUE(rt.submit(x.data() + i * 784, len, [&col, i](RequestResult&& r) {
          std::lock_guard<std::mutex> lk(col.mu);
          for (size_t j = 0; j < r.results.size(); ++j)
            r.results[j].latency_us = i + static_cast<int64_t>(j);
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
            max_diff =
                std::max(max_diff, static_cast<double>(std::abs(sr.probs[c2] - ref[i * 10 + c2])));
          ASSERT_EQ(static_cast<int64_t>(sr.experts.size()), layers);
          for (int64_t l = 0; l < layers; ++l) {
            const auto& rr = ref_routing[static_cast<size_t>(l)];
            const int32_t b = rr.offsets[i], e = rr.offsets[i + 1];
            EXPECT_EQ(sr.experts[l],
                      std::vector<int32_t>(rr.expert_ids.begin() + b, rr.expert_ids.begin() + e))
                << spec << " sample " << i << " layer " << l;
          }
          ++checked;
        }
      EXPECT_EQ(checked, n);
      // A split flush counts once, with all its samples; its parts count as runs.
      uint64_t samples = 0, flushes = 0, sizes = 0, runs = 0, splits = 0;
      for (const auto& q : rt.stats().queues) {
        samples += q.samples;
        flushes += q.flushes[0] + q.flushes[1] + q.flushes[2];
        sizes += q.batch_sizes.count;
        runs += q.runs;
        splits += q.splits;
      }
      EXPECT_EQ(sizes, flushes);
      EXPECT_GE(runs, flushes + splits);
      EXPECT_GE(samples, static_cast<uint64_t>(n));
      std::printf("%s %s %s B=%lld split=%lld: max |p - p_ref| = %.3g (%llu split flushes)\n",
                  model->name().c_str(), spec, batching_mode_name(s.mode),
                  static_cast<long long>(s.b), static_cast<long long>(s.split), max_diff,
                  static_cast<unsigned long long>(splits));
      EXPECT_LE(max_diff, 1e-6) << spec << " mode " << batching_mode_name(s.mode) << " B=" << s.b;
    }
  }
}

// The server's model and `deltamoe eval`'s (models::evaluate on the training graph) agree on
// a checkpoint: same predictions and the same experts per sample, for the trained routing
// and for overrides, including null experts and per-layer adapted thresholds.
TEST(ExpertQueue, TrainedCheckpointMatchesEvaluate) {
  struct Case {
    moe::PolicySpec trained;
    std::vector<std::string> overrides;
  };
  moe::PolicySpec topk, nulls, thr;
  nulls.kind = "null-experts";
  nulls.k = 2;
  nulls.nulls = 4;
  thr.kind = "threshold";
  thr.thresholds = {0.2f, 0.3f, 0.25f, 0.35f};
  for (const Case& cs : {Case{topk, {"", "top-k:1", "top-p:0.5", "threshold"}},
                         Case{nulls, {"", "null-experts:3:4"}}, Case{thr, {""}}}) {
    const std::string ckpt = write_checkpoint("eq_eval", cs.trained);
    auto model = serve::load_serve_model(ckpt);
    auto ref = models::MoeClassifier::load(ckpt);
    remove_checkpoint(ckpt);
    const int64_t n = 48;
    const auto x = random_images(n, 11);
    Tensor xt({n, 784});
    for (int64_t i = 0; i < n * 784; ++i)
      xt.data<float>()[i] = x[static_cast<size_t>(i)] * (1.0f / 255.0f);
    const std::vector<int32_t> labels(static_cast<size_t>(n), 0);
    for (const std::string& spec : cs.overrides) {
      std::vector<std::shared_ptr<const RoutingPolicy>> policies = model->default_policies();
      ref.reset_policies();
      if (!spec.empty()) {
        policies = {std::shared_ptr<const RoutingPolicy>(moe::make_policy(spec, model->experts()))};
        const auto colon = spec.find(':');
        moe::PolicySpec ps;
        ps.kind = spec.substr(0, colon);
        if (ps.kind == "top-k") ps.k = std::stoi(spec.substr(colon + 1));
        if (ps.kind == "top-p") ps.p = std::stod(spec.substr(colon + 1));
        if (ps.kind == "null-experts") {
          ps.k = 3;
          ps.nulls = 4;
        }
        ref.set_policy(ps);
      }
      const auto ev = models::evaluate(ref, xt, labels, 16);
      QueueConfig c;
      c.mode = BatchingMode::per_expert;
      c.max_batch = 8;
      c.timeout_us = 0;
      c.workers = 1;
      ExpertQueueRuntime rt(model, policies, c);
      const auto res = rt.run(x.data(), n);
      int64_t diff_class = 0, diff_experts = 0;
      double k_sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const auto& sr = res.results[static_cast<size_t>(i)];
        diff_class += sr.predicted != ev.predicted[static_cast<size_t>(i)];
        diff_experts +=
            std::abs(sr.mean_experts() - ev.experts_used[static_cast<size_t>(i)]) > 1e-6;
        k_sum += sr.mean_experts();
      }
      EXPECT_EQ(diff_class, 0) << cs.trained.kind << " / " << spec;
      EXPECT_EQ(diff_experts, 0) << cs.trained.kind << " / " << spec;
      EXPECT_NEAR(k_sum / n, ev.avg_experts, 1e-9) << cs.trained.kind << " / " << spec;
      std::printf("checkpoint %s, routing '%s': mean experts %.3f (eval %.3f)\n",
                  cs.trained.kind.c_str(), spec.c_str(), k_sum / n, ev.avg_experts);
    }
  }
}

TEST(ExpertQueue, TopPUsesAVaryingNumberOfExperts) {
  auto model = serve::make_random_model();
  auto policy = moe::make_policy("top-p:0.6", 8);
  const int64_t n = 64;
  const auto x = random_images(n, 5);
  std::vector<float> probs(static_cast<size_t>(n * 10));
  std::vector<RoutingResult> rs;
  serve::reference_forward(*model, {std::shared_ptr<const RoutingPolicy>(std::move(policy))},
                           x.data(), n, probs.data(), &rs);
  const RoutingResult& r = rs[0];
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
  ExpertQueueRuntime rt(small_model(), moe::make_policy("top-k:2", 8), c);
  Collector col;
  const auto x = random_images(4, 6);
  EXPECT_TRUE(rt.submit(x.data(), 4, col.cb()));
  EXPECT_FALSE(rt.reject_if_full());  // 4 of 8: a front end goes on to parse and submit
  EXPECT_TRUE(rt.submit(x.data(), 3, col.cb()));
  EXPECT_FALSE(rt.reject_if_full());               // 7 of 8: one more sample fits
  EXPECT_FALSE(rt.submit(x.data(), 2, col.cb()));  // 7 + 2 > 8
  EXPECT_TRUE(rt.submit(x.data(), 1, col.cb()));
  EXPECT_FALSE(rt.submit(x.data(), 1, col.cb()));
  EXPECT_THROW(rt.submit(x.data(), 5, col.cb()), deltamoe::Error);  // above max_request_samples
  EXPECT_EQ(rt.stats().requests_rejected, 2u);
  EXPECT_TRUE(rt.reject_if_full());  // 8 of 8: turned away before parsing, and counted
  EXPECT_EQ(rt.stats().requests_rejected, 3u);
  rt.run_ready();
  rt.shutdown();
  EXPECT_FALSE(rt.reject_if_full());  // drained: nothing in flight
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
  ExpertQueueRuntime rt(serve::make_random_model(), moe::make_policy("top-k:2", 8), c);
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
  ExpertQueueRuntime rt(small_model(), moe::make_policy("top-p:0.5", 8), c);
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

// Clipper's AIMD: B follows the time the batches take to process, not the time samples wait.
TEST(ExpertQueue, AdaptiveBatchFollowsBatchProcessingTimeNotQueueing) {
  auto clock = std::make_shared<ManualClock>();
  QueueConfig c = manual(64, 0, clock);
  c.adaptive = true;
  c.latency_target_us = 1000;
  c.aimd_increase = 2;
  c.aimd_decrease = 0.5;
  auto model = std::make_shared<ClockedModel>(small_model(), clock);
  ExpertQueueRuntime rt(model, moe::make_policy("top-k:2", 8), c);
  const auto x = random_images(1, 9);
  Collector col;
  const auto limit = [&] { return rt.stats().queues[0].current_batch_limit; };
  EXPECT_EQ(limit(), 1);
  for (int i = 0; i < 5; ++i) {  // processing 0 < target: +2 each time
    ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
    ASSERT_TRUE(rt.step());
  }
  EXPECT_EQ(limit(), 11);
  // 5 ms in the queue, 0 processing: a met target (the old end-to-end rule shrank B here).
  ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
  clock->advance_us(5000);
  ASSERT_TRUE(rt.step());
  EXPECT_EQ(limit(), 13);
  {
    std::lock_guard<std::mutex> lk(col.mu);
    EXPECT_GE(col.results.back().results[0].latency_us, 5000);
    EXPECT_EQ(col.results.back().results[0].compute_us, 0);
  }
  // A batch that takes 5 ms to process misses the 1 ms target: B halves.
  model->stem_us = 5000;
  ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
  ASSERT_TRUE(rt.step());
  EXPECT_EQ(limit(), 6);
  ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
  ASSERT_TRUE(rt.step());
  EXPECT_EQ(limit(), 3);
  model->stem_us = 0;
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(rt.submit(x.data(), 1, col.cb()));
    rt.run_ready();
  }
  EXPECT_EQ(limit(), 64);  // capped at B
}

TEST(ExpertQueue, BadConfigAndSpecsThrow) {
  auto model = small_model();
  auto policy = std::shared_ptr<const RoutingPolicy>(moe::make_policy("top-k:1", 8));
  QueueConfig c;
  c.max_batch = 0;
  EXPECT_THROW(ExpertQueueRuntime(model, policy, c), deltamoe::Error);
  EXPECT_THROW(moe::make_policy("top-k", 8), deltamoe::Error);
  EXPECT_THROW(moe::make_policy("top-k:1.5", 8), deltamoe::Error);
  EXPECT_THROW(moe::make_policy("top-p:0", 8), deltamoe::Error);
  EXPECT_THROW(moe::make_policy("best:2", 8), deltamoe::Error);
  EXPECT_THROW(parse_batching_mode("global"), deltamoe::Error);
}
