// Per-expert queue runtime (see expert_queue.h for the model of operation).
//
// One mutex guards every queue, the counters and the per-sample expert countdown. Batches run
// outside it. With a handful of workers on a few cores the lock is held for microseconds per
// batch, far below a batch's compute time, so a finer-grained scheme would buy nothing here.
#include "deltamoe/moe/expert_queue.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <deque>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"

namespace deltamoe::moe {

int64_t SteadyClock::now_us() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

BatchingMode parse_batching_mode(const std::string& s) {
  if (s == "per-expert") return BatchingMode::per_expert;
  if (s == "whole-model") return BatchingMode::whole_model;
  fail("queue", "unknown batching mode '", s, "' (known: per-expert, whole-model)");
}

const char* batching_mode_name(BatchingMode m) {
  return m == BatchingMode::per_expert ? "per-expert" : "whole-model";
}

void Histogram::observe(double v) {
  const size_t i = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[i];
  sum += v;
  ++count;
}

double Histogram::quantile(double q) const {
  if (count == 0) return 0.0;
  const double target = q * static_cast<double>(count);
  uint64_t seen = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (static_cast<double>(seen) >= target) return i < bounds.size() ? bounds[i] : bounds.back();
  }
  return bounds.empty() ? 0.0 : bounds.back();
}

struct ExpertQueueRuntime::Request {
  std::vector<float> x;  // n × input_dim
  RequestResult result;
  Callback done;
  int64_t remaining = 0;  // samples not finished (under mu_)
};

struct ExpertQueueRuntime::Sample {
  Request* req = nullptr;
  int64_t index = 0;
  int64_t t_admit = 0;
  std::vector<float> h;     // D
  std::vector<int32_t> experts;
  std::vector<float> weights;
  std::vector<float> outs;  // k × D, slot j = experts[j]
  int64_t remaining = 0;    // experts not done (under mu_)
  int64_t stem_us = 0;      // duration of its stem batch
  int64_t expert_us = 0;    // longest of its expert batches (under mu_)
};

struct ExpertQueueRuntime::Entry {
  Sample* sample;
  int32_t slot;    // index into sample->experts (expert queues); unused in the stem queue
  int64_t t_enq;
};

struct ExpertQueueRuntime::Queue {
  std::deque<Entry> items;
  QueueStats stats;
};

struct ExpertQueueRuntime::Batch {
  size_t queue = 0;
  std::vector<Entry> entries;
  FlushReason reason = FlushReason::size;
};

ExpertQueueRuntime::ExpertQueueRuntime(std::shared_ptr<const serve::ServeModel> model,
                                       std::shared_ptr<const RoutingPolicy> policy,
                                       QueueConfig config)
    : model_(std::move(model)), policy_(std::move(policy)), config_(std::move(config)) {
  DELTAMOE_CHECK(model_ && policy_, "queue", "runtime needs a model and a routing policy");
  DELTAMOE_CHECK(config_.max_batch >= 1, "queue", "queue size B must be >= 1, got ", config_.max_batch);
  DELTAMOE_CHECK(config_.max_inflight_samples >= config_.max_request_samples &&
                     config_.max_request_samples >= 1,
                 "queue", "need 1 <= max_request_samples (", config_.max_request_samples,
                 ") <= max_inflight_samples (", config_.max_inflight_samples, ")");
  DELTAMOE_CHECK(config_.workers >= 0, "queue", "workers must be >= 0");
  DELTAMOE_CHECK(!config_.adaptive || (config_.latency_target_us > 0 && config_.aimd_increase > 0 &&
                                       config_.aimd_decrease > 0 && config_.aimd_decrease < 1),
                 "queue", "adaptive B needs a latency target > 0, increase > 0, 0 < decrease < 1");
  DELTAMOE_CHECK(policy_->extra_logits() == model_->router_outputs() - model_->experts(), "queue",
                 "policy ", policy_->name(), " expects ", policy_->extra_logits(),
                 " null experts, model has ", model_->router_outputs() - model_->experts());
  clock_ = config_.clock ? config_.clock : std::make_shared<SteadyClock>();
  batch_limit_ = config_.adaptive ? 1.0 : static_cast<double>(config_.max_batch);
  const size_t nq = config_.mode == BatchingMode::per_expert ? 1 + static_cast<size_t>(model_->experts()) : 1;
  for (size_t q = 0; q < nq; ++q) {
    auto queue = std::make_unique<Queue>();
    queue->stats.name = q == 0 ? (nq == 1 ? "model" : "stem") : "expert" + std::to_string(q - 1);
    queues_.push_back(std::move(queue));
  }
  // Each batch is one single-threaded call chain; the workers are the parallelism, so BLAS
  // must not spawn threads of its own under them.
  if (config_.workers > 0) set_blas_threads(1);
  for (int w = 0; w < config_.workers; ++w) workers_.emplace_back([this] { worker_loop(); });
}

ExpertQueueRuntime::~ExpertQueueRuntime() { shutdown(); }

bool ExpertQueueRuntime::accepting() const {
  std::lock_guard<std::mutex> lk(mu_);
  return accepting_;
}

bool ExpertQueueRuntime::submit(const float* x, int64_t n, Callback done) {
  DELTAMOE_CHECK(n >= 1 && n <= config_.max_request_samples, "queue", "a request carries 1..",
                 config_.max_request_samples, " samples, got ", n);
  const int64_t in = model_->input_dim();
  auto req = std::make_unique<Request>();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!accepting_ || stats_.inflight_samples + n > config_.max_inflight_samples) {
      ++stats_.requests_rejected;
      return false;
    }
    // Reserve the slots now, so that the copy below happens outside the lock.
    stats_.inflight_samples += n;
  }
  req->x.assign(x, x + n * in);
  req->done = std::move(done);
  req->remaining = n;
  req->result.results.resize(static_cast<size_t>(n));
  std::vector<Sample*> samples;
  const int64_t now = clock_->now_us();
  for (int64_t i = 0; i < n; ++i) {
    auto* s = new Sample;
    s->req = req.get();
    s->index = i;
    s->t_admit = now;
    samples.push_back(s);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.requests_admitted;
    stats_.samples_admitted += static_cast<uint64_t>(n);
    for (Sample* s : samples) queues_[0]->items.push_back({s, 0, now});
  }
  req.release();  // owned by its samples now; deleted when the last one finishes
  cv_.notify_one();
  return true;
}

RequestResult ExpertQueueRuntime::run(const float* x, int64_t n) {
  auto promise = std::make_shared<std::promise<RequestResult>>();
  auto future = promise->get_future();
  if (!submit(x, n, [promise](RequestResult&& r) { promise->set_value(std::move(r)); }))
    fail("queue", "request rejected: runtime full or shutting down");
  if (config_.workers == 0) {
    while (future.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
      if (!step()) {
        std::lock_guard<std::mutex> lk(mu_);
        // Nothing ready and nothing will become ready without time passing (T = ∞ or a
        // manual clock): treat the wait as a drain of what is queued, so run() terminates.
        draining_ = true;
      }
    std::lock_guard<std::mutex> lk(mu_);
    draining_ = !accepting_;
  }
  return future.get();
}

bool ExpertQueueRuntime::take_batch_locked(int64_t now, Batch& out) {
  const int64_t limit = std::max<int64_t>(1, static_cast<int64_t>(batch_limit_));
  size_t best = SIZE_MAX;
  int64_t best_t = INT64_MAX;
  FlushReason best_reason = FlushReason::size;
  for (size_t q = 0; q < queues_.size(); ++q) {
    const auto& items = queues_[q]->items;
    if (items.empty()) continue;
    const int64_t oldest = items.front().t_enq;
    FlushReason reason;
    if (static_cast<int64_t>(items.size()) >= limit) reason = FlushReason::size;
    else if (config_.timeout_us >= 0 && now - oldest >= config_.timeout_us) reason = FlushReason::timeout;
    else if (draining_) reason = FlushReason::drain;
    else continue;
    // Among ready queues, the one whose oldest sample has waited longest goes first.
    if (oldest < best_t) {
      best = q;
      best_t = oldest;
      best_reason = reason;
    }
  }
  if (best == SIZE_MAX) return false;
  Queue& queue = *queues_[best];
  const int64_t take = std::min<int64_t>(limit, static_cast<int64_t>(queue.items.size()));
  out.queue = best;
  out.reason = best_reason;
  out.entries.assign(queue.items.begin(), queue.items.begin() + take);
  queue.items.erase(queue.items.begin(), queue.items.begin() + take);
  ++queue.stats.flushes[static_cast<int>(best_reason)];
  queue.stats.samples += static_cast<uint64_t>(take);
  queue.stats.batch_sizes.observe(static_cast<double>(take));
  return true;
}

int64_t ExpertQueueRuntime::next_deadline_locked() const {
  if (config_.timeout_us < 0) return INT64_MAX;
  int64_t deadline = INT64_MAX;
  for (const auto& q : queues_)
    if (!q->items.empty()) deadline = std::min(deadline, q->items.front().t_enq + config_.timeout_us);
  return deadline;
}

bool ExpertQueueRuntime::step() {
  Batch batch;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!take_batch_locked(clock_->now_us(), batch)) return false;
  }
  run_batch(batch);
  return true;
}

int64_t ExpertQueueRuntime::run_ready() {
  int64_t n = 0;
  while (step()) ++n;
  return n;
}

void ExpertQueueRuntime::worker_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    Batch batch;
    if (take_batch_locked(clock_->now_us(), batch)) {
      lk.unlock();
      run_batch(batch);
      lk.lock();
      continue;
    }
    if (stopping_) return;
    const int64_t deadline = next_deadline_locked();
    if (deadline == INT64_MAX) {
      cv_.wait(lk);
    } else {
      const int64_t wait = std::max<int64_t>(1, deadline - clock_->now_us());
      cv_.wait_for(lk, std::chrono::microseconds(wait));
    }
  }
}

void ExpertQueueRuntime::run_batch(Batch& batch) {
  if (batch.queue == 0) run_stem(batch, config_.mode == BatchingMode::whole_model);
  else run_expert(batch);
}

void ExpertQueueRuntime::run_stem(Batch& batch, bool whole_model) {
  const int64_t t0 = clock_->now_us();
  const int64_t m = static_cast<int64_t>(batch.entries.size());
  const int64_t in = model_->input_dim(), d = model_->hidden(), r = model_->router_outputs();
  std::vector<float> xs(static_cast<size_t>(m * in)), h(static_cast<size_t>(m * d)),
      logits(static_cast<size_t>(m * r)), probs(static_cast<size_t>(m * r));
  for (int64_t i = 0; i < m; ++i) {
    const Sample* s = batch.entries[i].sample;
    std::copy_n(s->req->x.data() + s->index * in, in, xs.data() + i * in);
  }
  model_->stem(xs.data(), m, h.data(), logits.data());
  for (int64_t i = 0; i < m; ++i) serve::softmax_row(logits.data() + i * r, probs.data() + i * r, r);
  RoutingResult routing;
  policy_->route(logits.data(), probs.data(), m, r, routing);
  DELTAMOE_ASSERT(routing.tokens() == m);
  for (int64_t i = 0; i < m; ++i) {
    Sample* s = batch.entries[i].sample;
    s->h.assign(h.begin() + i * d, h.begin() + (i + 1) * d);
    const int32_t b = routing.offsets[i], e = routing.offsets[i + 1];
    s->experts.assign(routing.expert_ids.begin() + b, routing.expert_ids.begin() + e);
    s->weights.assign(routing.weights.begin() + b, routing.weights.begin() + e);
    for (int32_t ex : s->experts)
      DELTAMOE_CHECK(ex >= 0 && ex < model_->experts(), "queue", "policy chose expert ", ex);
    s->outs.assign(static_cast<size_t>((e - b) * d), 0.0f);
    s->remaining = e - b;
  }
  std::vector<Sample*> done;
  if (whole_model) {
    // Each expert once over the batch's rows routed to it, in batch order.
    const int64_t experts = model_->experts();
    std::vector<std::vector<std::pair<Sample*, int32_t>>> rows(static_cast<size_t>(experts));
    for (const Entry& en : batch.entries)
      for (size_t j = 0; j < en.sample->experts.size(); ++j)
        rows[en.sample->experts[j]].push_back({en.sample, static_cast<int32_t>(j)});
    std::vector<float> xe, ye;
    for (int64_t ex = 0; ex < experts; ++ex) {
      const auto& list = rows[ex];
      if (list.empty()) continue;
      const int64_t me = static_cast<int64_t>(list.size());
      xe.resize(static_cast<size_t>(me * d));
      ye.resize(static_cast<size_t>(me * d));
      for (int64_t i = 0; i < me; ++i) std::copy_n(list[i].first->h.data(), d, xe.data() + i * d);
      model_->expert(ex, xe.data(), me, ye.data());
      for (int64_t i = 0; i < me; ++i)
        std::copy_n(ye.data() + i * d, d, list[i].first->outs.data() + list[i].second * d);
    }
    const int64_t t1 = clock_->now_us();
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (const auto& list : rows) {
        stats_.expert_calls += list.empty() ? 0 : 1;
        stats_.expert_rows += list.size();
      }
    }
    for (const Entry& en : batch.entries) {
      en.sample->stem_us = t1 - t0;
      en.sample->remaining = 0;
      done.push_back(en.sample);
    }
  } else {
    const int64_t t1 = clock_->now_us();
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (const Entry& en : batch.entries) {
        Sample* s = en.sample;
        s->stem_us = t1 - t0;
        if (s->experts.empty()) done.push_back(s);
        for (size_t j = 0; j < s->experts.size(); ++j)
          queues_[1 + static_cast<size_t>(s->experts[j])]->items.push_back({s, static_cast<int32_t>(j), t1});
      }
      queues_[0]->stats.busy_us += static_cast<double>(t1 - t0);
    }
    cv_.notify_all();
  }
  if (whole_model) {
    std::lock_guard<std::mutex> lk(mu_);
    queues_[0]->stats.busy_us += static_cast<double>(clock_->now_us() - t0);
  }
  if (!done.empty()) finish_samples(done);
}

void ExpertQueueRuntime::run_expert(Batch& batch) {
  const int64_t t0 = clock_->now_us();
  const int64_t ex = static_cast<int64_t>(batch.queue) - 1;
  const int64_t m = static_cast<int64_t>(batch.entries.size()), d = model_->hidden();
  std::vector<float> xs(static_cast<size_t>(m * d)), ys(static_cast<size_t>(m * d));
  for (int64_t i = 0; i < m; ++i) std::copy_n(batch.entries[i].sample->h.data(), d, xs.data() + i * d);
  model_->expert(ex, xs.data(), m, ys.data());
  for (int64_t i = 0; i < m; ++i) {
    const Entry& en = batch.entries[i];
    std::copy_n(ys.data() + i * d, d, en.sample->outs.data() + en.slot * d);
  }
  const int64_t t1 = clock_->now_us();
  std::vector<Sample*> done;
  {
    std::lock_guard<std::mutex> lk(mu_);
    queues_[batch.queue]->stats.busy_us += static_cast<double>(t1 - t0);
    ++stats_.expert_calls;
    stats_.expert_rows += static_cast<uint64_t>(m);
    for (const Entry& en : batch.entries) {
      Sample* s = en.sample;
      s->expert_us = std::max(s->expert_us, t1 - t0);
      if (--s->remaining == 0) done.push_back(s);
    }
  }
  if (!done.empty()) finish_samples(done);
}

void ExpertQueueRuntime::finish_samples(std::vector<Sample*>& done) {
  const int64_t t0 = clock_->now_us();
  const int64_t n = static_cast<int64_t>(done.size()), d = model_->hidden(), c = model_->classes();
  std::vector<float> comb(static_cast<size_t>(n * d)), probs(static_cast<size_t>(n * c));
  std::vector<const float*> ptrs;
  for (int64_t i = 0; i < n; ++i) {
    const Sample* s = done[i];
    const int64_t k = static_cast<int64_t>(s->experts.size());
    ptrs.resize(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) ptrs[j] = s->outs.data() + j * d;
    model_->combine(s->h.data(), ptrs.data(), s->weights.data(), k, comb.data() + i * d);
  }
  model_->head(comb.data(), n, probs.data());
  const int64_t t1 = clock_->now_us();
  bool missed = false;
  for (int64_t i = 0; i < n; ++i) {
    const Sample* s = done[i];
    SampleResult& out = s->req->result.results[s->index];
    out.probs.assign(probs.begin() + i * c, probs.begin() + (i + 1) * c);
    out.predicted = static_cast<int32_t>(std::max_element(out.probs.begin(), out.probs.end()) - out.probs.begin());
    out.experts = s->experts;
    out.latency_us = t1 - s->t_admit;
    out.compute_us = std::min(out.latency_us, s->stem_us + s->expert_us + (t1 - t0));
    out.queue_us = out.latency_us - out.compute_us;
    missed = missed || static_cast<double>(out.latency_us) > config_.latency_target_us;
  }
  std::vector<Request*> finished;
  bool idle = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (const Sample* s : done) {
      const SampleResult& out = s->req->result.results[s->index];
      stats_.latency_us.observe(static_cast<double>(out.latency_us));
      stats_.queue_us_sum += static_cast<double>(out.queue_us);
      stats_.compute_us_sum += static_cast<double>(out.compute_us);
      if (--s->req->remaining == 0) finished.push_back(s->req);
    }
    stats_.samples_done += static_cast<uint64_t>(n);
    stats_.requests_done += finished.size();
    stats_.inflight_samples -= n;
    idle = stats_.inflight_samples == 0;
    if (config_.adaptive) {
      const double cap = static_cast<double>(config_.max_batch);
      if (!missed) {
        batch_limit_ = std::min(cap, batch_limit_ + config_.aimd_increase);
      } else if (static_cast<double>(t1 - last_decrease_us_) >= config_.latency_target_us) {
        batch_limit_ = std::max(1.0, std::floor(batch_limit_ * config_.aimd_decrease));
        last_decrease_us_ = t1;
      }
    }
  }
  for (Sample* s : done) delete s;
  for (Request* r : finished) {
    if (r->done) r->done(std::move(r->result));
    delete r;
  }
  if (idle) idle_cv_.notify_all();
}

void ExpertQueueRuntime::shutdown() {
  std::unique_lock<std::mutex> lk(mu_);
  if (stopping_) return;
  accepting_ = false;
  draining_ = true;
  cv_.notify_all();
  if (workers_.empty()) {
    lk.unlock();
    while (step()) {
    }
    lk.lock();
    DELTAMOE_ASSERT(stats_.inflight_samples == 0, "drain left ", stats_.inflight_samples, " samples");
  } else {
    idle_cv_.wait(lk, [this] { return stats_.inflight_samples == 0; });
  }
  stopping_ = true;
  cv_.notify_all();
  lk.unlock();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

RuntimeStats ExpertQueueRuntime::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  RuntimeStats s = stats_;
  for (const auto& q : queues_) {
    QueueStats qs = q->stats;
    qs.depth = static_cast<int64_t>(q->items.size());
    qs.current_batch_limit = std::max<int64_t>(1, static_cast<int64_t>(batch_limit_));
    s.queues.push_back(std::move(qs));
  }
  return s;
}

}  // namespace deltamoe::moe
