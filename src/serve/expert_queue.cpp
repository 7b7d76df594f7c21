// Per-expert queue runtime (see expert_queue.h for the model of operation).
//
// One mutex guards every queue, the counters and the per-sample expert countdown. Batches run
// outside it, and each batch takes it about twice (take, then hand results on), so the lock
// costs O(1) per batch, not per sample. Model calls use per-thread scratch buffers; a sample's
// own buffers are allocated once at admission and reused across layers.
#include "deltamoe/serve/expert_queue.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <deque>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/kernels/cpu.h"

namespace deltamoe::serve {

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

double SampleResult::mean_experts() const {
  if (experts.empty()) return 0.0;
  double s = 0.0;
  for (const auto& l : experts) s += static_cast<double>(l.size());
  return s / static_cast<double>(experts.size());
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
  int64_t layer = 0;        // MoE layer it is in
  std::vector<float> h;     // D: residual state entering `layer`
  std::vector<float> u;     // D: the experts' input of `layer`
  std::vector<int32_t> experts;  // of `layer`, routing order
  std::vector<float> weights;
  std::vector<float> outs;  // k × D, slot j = experts[j]
  std::vector<std::vector<int32_t>> used;  // per finished layer
  int64_t remaining = 0;    // experts of `layer` not done (under mu_)
  int64_t compute_us = 0;   // batch wall time on its critical path
  int64_t layer_us = 0;     // longest expert batch of `layer` (under mu_)
};

struct ExpertQueueRuntime::Entry {
  Sample* sample;
  int32_t slot;      // index into sample->experts (expert queues); unused in the stem queue
  int64_t deadline;  // admission + T (INT64_MAX when T = ∞)
};

struct ExpertQueueRuntime::Queue {
  std::deque<Entry> items;
  QueueStats stats;
  // Samples at the front that must run now whatever B and T say: the rest of a flush that
  // was split between workers, waiting for the next free one.
  int64_t forced = 0;
  FlushReason forced_reason = FlushReason::size;
};

struct ExpertQueueRuntime::Batch {
  size_t queue = 0;
  std::vector<Entry> entries;
  FlushReason reason = FlushReason::size;
  // Grouped layer flush: more ready queues of the same layer, run by the same worker before
  // the finished samples move on together (the first `n_more` are in use; the vector keeps
  // its capacity across batches).
  struct More {
    size_t queue = 0;
    std::vector<Entry> entries;
  };
  std::vector<More> more;
  size_t n_more = 0;
};

namespace {
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Per-thread scratch, grown on demand and kept (no allocation per batch in steady state).
float* scratch(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}
thread_local std::vector<float> t_x, t_h, t_u, t_logits, t_probs, t_out, t_rows;
thread_local std::vector<float> t_h2;
}  // namespace

ExpertQueueRuntime::ExpertQueueRuntime(std::shared_ptr<const ServeModel> model,
                                       std::vector<std::shared_ptr<const moe::RoutingPolicy>> policies,
                                       QueueConfig config)
    : model_(std::move(model)), policies_(std::move(policies)), config_(std::move(config)) {
  DELTAMOE_CHECK(model_ && !policies_.empty(), "queue", "runtime needs a model and a routing policy");
  const int64_t layers = model_->layers();
  DELTAMOE_CHECK(policies_.size() == 1 || static_cast<int64_t>(policies_.size()) == layers, "queue",
                 policies_.size(), " routing policies for a model with ", layers, " MoE layers");
  if (policies_.size() == 1) policies_.assign(static_cast<size_t>(layers), policies_[0]);
  for (const auto& p : policies_) {
    DELTAMOE_CHECK(p != nullptr, "queue", "null routing policy");
    DELTAMOE_CHECK(p->extra_logits() == model_->router_outputs() - model_->experts(), "queue", "policy ",
                   p->name(), " expects ", p->extra_logits(), " null experts, model has ",
                   model_->router_outputs() - model_->experts());
  }
  DELTAMOE_CHECK(config_.max_batch >= 1, "queue", "queue size B must be >= 1, got ", config_.max_batch);
  DELTAMOE_CHECK(config_.max_inflight_samples >= config_.max_request_samples &&
                     config_.max_request_samples >= 1,
                 "queue", "need 1 <= max_request_samples (", config_.max_request_samples,
                 ") <= max_inflight_samples (", config_.max_inflight_samples, ")");
  DELTAMOE_CHECK(config_.workers >= 0, "queue", "workers must be >= 0");
  DELTAMOE_CHECK(!config_.adaptive || (config_.latency_target_us > 0 && config_.aimd_increase > 0 &&
                                       config_.aimd_decrease > 0 && config_.aimd_decrease < 1),
                 "queue", "adaptive B needs a latency target > 0, increase > 0, 0 < decrease < 1");
  clock_ = config_.clock ? config_.clock : std::make_shared<SteadyClock>();
  batch_limit_ = config_.adaptive ? 1.0 : static_cast<double>(config_.max_batch);
  const int64_t e_count = model_->experts();
  const size_t nq = config_.mode == BatchingMode::per_expert ? 1 + static_cast<size_t>(layers * e_count) : 1;
  for (size_t q = 0; q < nq; ++q) {
    auto queue = std::make_unique<Queue>();
    if (q == 0) {
      queue->stats.name = nq == 1 ? "model" : "stem";
    } else {
      const int64_t l = static_cast<int64_t>(q - 1) / e_count, e = static_cast<int64_t>(q - 1) % e_count;
      queue->stats.name = (layers > 1 ? "layer" + std::to_string(l) + "_" : std::string()) + "expert" + std::to_string(e);
    }
    queues_.push_back(std::move(queue));
  }
  // Each batch is one single-threaded call chain; the workers are the parallelism, so BLAS
  // must not spawn threads of its own under them.
  if (config_.workers > 0) set_blas_threads(1);
  for (int w = 0; w < config_.workers; ++w) workers_.emplace_back([this] { worker_loop(); });
}

ExpertQueueRuntime::~ExpertQueueRuntime() {
  shutdown();
  for (Sample* s : sample_pool_) delete s;
  for (Request* r : request_pool_) delete r;
}

bool ExpertQueueRuntime::reject_if_full() {
  if (inflight_hint_.load(std::memory_order_relaxed) < config_.max_inflight_samples) return false;
  fast_rejected_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool ExpertQueueRuntime::accepting() const {
  std::lock_guard<std::mutex> lk(mu_);
  return accepting_;
}

bool ExpertQueueRuntime::submit(const float* x, int64_t n, Callback done) {
  DELTAMOE_CHECK(n >= 1 && n <= config_.max_request_samples, "queue", "a request carries 1..",
                 config_.max_request_samples, " samples, got ", n);
  const int64_t in = model_->input_dim(), d = model_->hidden();
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!accepting_ || stats_.inflight_samples + n > config_.max_inflight_samples) {
      ++stats_.requests_rejected;
      return false;
    }
    // Reserve the slots now, so that the allocations below happen outside the lock.
    stats_.inflight_samples += n;
    inflight_hint_.store(stats_.inflight_samples, std::memory_order_relaxed);
  }
  // Samples and requests come from pools: allocated by the submitting thread and freed by a
  // worker, fresh ones would cost a handful of cross-thread mallocs each (glibc handles that
  // pattern badly), and a sample's buffers keep their capacity across uses.
  thread_local std::vector<Sample*> samples;
  samples.assign(static_cast<size_t>(n), nullptr);
  Request* req = nullptr;
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    for (int64_t i = 0; i < n && !sample_pool_.empty(); ++i) {
      samples[static_cast<size_t>(i)] = sample_pool_.back();
      sample_pool_.pop_back();
    }
    if (!request_pool_.empty()) {
      req = request_pool_.back();
      request_pool_.pop_back();
    }
  }
  if (req == nullptr) req = new Request;
  req->x.assign(x, x + n * in);
  req->done = std::move(done);
  req->remaining = n;
  req->result.results.resize(static_cast<size_t>(n));
  const int64_t now = clock_->now_us();
  const int64_t deadline = config_.timeout_us >= 0 ? now + config_.timeout_us : INT64_MAX;
  for (int64_t i = 0; i < n; ++i) {
    Sample*& s = samples[static_cast<size_t>(i)];
    if (s == nullptr) s = new Sample;
    s->req = req;
    s->index = i;
    s->t_admit = now;
    s->layer = 0;
    s->h.resize(static_cast<size_t>(d));
    s->u.resize(static_cast<size_t>(d));
    s->used.clear();
    s->used.reserve(static_cast<size_t>(model_->layers()));
    s->remaining = 0;
    s->compute_us = 0;
    s->layer_us = 0;
  }
  bool wake = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    ++stats_.requests_admitted;
    stats_.samples_admitted += static_cast<uint64_t>(n);
    auto& items = queues_[0]->items;
    const bool was_empty = items.empty();
    for (Sample* s : samples) items.push_back({s, 0, deadline});
    work_seq_.fetch_add(1, std::memory_order_relaxed);
    // Wake a worker when the queue became ready (full, or T = 0) or got a new deadline.
    wake = was_empty || static_cast<int64_t>(items.size()) >= std::max<int64_t>(1, static_cast<int64_t>(batch_limit_)) ||
           config_.timeout_us == 0 || draining_;
  }
  if (wake) cv_.notify_one();
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

// Whether a queue may flush now and why: the rest of a split flush, full (B), its oldest
// sample's deadline passed (T), or draining.
bool ExpertQueueRuntime::ready_locked(const Queue& queue, int64_t now, int64_t limit, FlushReason& reason) const {
  const auto& items = queue.items;
  if (items.empty()) return false;
  if (queue.forced > 0) reason = queue.forced_reason;
  else if (static_cast<int64_t>(items.size()) >= limit) reason = FlushReason::size;
  else if (now >= items.front().deadline) reason = FlushReason::timeout;
  else if (draining_) reason = FlushReason::drain;
  else return false;
  return true;
}

bool ExpertQueueRuntime::take_batch_locked(int64_t now, Batch& out) {
  out.n_more = 0;
  const int64_t limit = std::max<int64_t>(1, static_cast<int64_t>(batch_limit_));
  size_t best = SIZE_MAX;
  int64_t best_t = INT64_MAX;
  FlushReason best_reason = FlushReason::size;
  for (size_t q = 0; q < queues_.size(); ++q) {
    FlushReason reason;
    if (!ready_locked(*queues_[q], now, limit, reason)) continue;
    const int64_t oldest = queues_[q]->items.front().deadline;
    // Among ready queues, the one with the earliest deadline goes first; ties (T = ∞) go to
    // the later stage, which finishes samples and frees admission slots.
    if (best == SIZE_MAX || oldest < best_t || (oldest == best_t && q > best)) {
      best = q;
      best_t = oldest;
      best_reason = reason;
    }
  }
  if (best == SIZE_MAX) return false;
  Queue& queue = *queues_[best];
  int64_t take = std::min<int64_t>(queue.forced > 0 ? queue.forced : limit, static_cast<int64_t>(queue.items.size()));
  const bool continuing = queue.forced > 0;
  queue.forced = std::max<int64_t>(0, queue.forced - take);
  // Share a fresh flush with the idle workers: this one takes the first part, the rest stays
  // at the front marked as forced, and one idle worker is woken per remaining part.
  int parts = 1;
  if (!continuing && config_.split_min_rows > 0 && idle_workers_ > 0) {
    parts = static_cast<int>(std::min<int64_t>(1 + idle_workers_, take / config_.split_min_rows));
    parts = std::max(parts, 1);
  }
  if (parts > 1) {
    const int64_t first = (take + parts - 1) / parts;
    queue.forced = take - first;
    queue.forced_reason = best_reason;
    take = first;
    ++queue.stats.splits;
    work_seq_.fetch_add(1, std::memory_order_relaxed);
    for (int p = 1; p < parts; ++p) cv_.notify_one();
  }
  // Moves a queue's first n entries into `entries` and counts the run; a flush (counted once
  // with all its samples, `flushed`, even when split) unless this is the rest of a split one.
  const auto move_front = [](Queue& from, int64_t n, FlushReason reason, bool count_flush, int64_t flushed,
                             std::vector<Entry>& entries) {
    entries.assign(from.items.begin(), from.items.begin() + n);
    from.items.erase(from.items.begin(), from.items.begin() + n);
    if (count_flush) {
      ++from.stats.flushes[static_cast<int>(reason)];
      from.stats.batch_sizes.observe(static_cast<double>(flushed));
    }
    from.stats.samples += static_cast<uint64_t>(n);
    ++from.stats.runs;
  };
  out.queue = best;
  out.reason = best_reason;
  move_front(queue, take, best_reason, !continuing, take + queue.forced, out.entries);
  // Grouped layer flush: with no idle worker to share them with, take every other ready queue
  // of the same layer too. The layer's finished samples then reach the next layer's queues
  // together, as one routing call, instead of trickling in and being flushed (their deadline
  // has passed) a few rows at a time.
  if (best > 0 && parts == 1 && !continuing && config_.group_layers && idle_workers_ == 0) {
    const int64_t e_count = model_->experts();
    const size_t first_q = 1 + static_cast<size_t>((static_cast<int64_t>(best) - 1) / e_count * e_count);
    for (size_t q = first_q; q < first_q + static_cast<size_t>(e_count); ++q) {
      Queue& other = *queues_[q];
      FlushReason reason;
      if (q == best || other.forced > 0 || !ready_locked(other, now, limit, reason)) continue;
      const int64_t n = std::min<int64_t>(limit, static_cast<int64_t>(other.items.size()));
      if (out.more.size() <= out.n_more) out.more.emplace_back();
      Batch::More& m = out.more[out.n_more++];
      m.queue = q;
      move_front(other, n, reason, true, n, m.entries);
    }
  }
  return true;
}

int64_t ExpertQueueRuntime::next_deadline_locked() const {
  int64_t deadline = INT64_MAX;
  for (const auto& q : queues_)
    if (!q->items.empty()) deadline = std::min(deadline, q->items.front().deadline);
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
  // Queue timeouts are tens to hundreds of µs; the default 50 µs timer slack would add to each.
  set_thread_timer_slack_ns(1000);
  std::unique_lock<std::mutex> lk(mu_);
  Batch batch;
  bool spun = false;  // this idle period already polled: block next
  for (;;) {
    if (take_batch_locked(clock_->now_us(), batch)) {
      lk.unlock();
      run_batch(batch);
      lk.lock();
      spun = false;
      continue;
    }
    if (stopping_) return;
    const int64_t deadline = next_deadline_locked();
    if (config_.spin_us > 0 && !draining_ && !spun) {
      // Poll (without the lock) until new work is announced, a deadline passes or the spin
      // time is up; then look again under the lock.
      spun = true;
      const uint64_t seen = work_seq_.load(std::memory_order_relaxed);
      ++idle_workers_;  // a spinning worker can take part of a split flush
      lk.unlock();
      const int64_t stop = std::min(deadline, clock_->now_us() + config_.spin_us);
      while (work_seq_.load(std::memory_order_relaxed) == seen && clock_->now_us() < stop) cpu_relax();
      lk.lock();
      --idle_workers_;
      continue;
    }
    ++idle_workers_;
    if (deadline == INT64_MAX) {
      cv_.wait(lk);
    } else {
      const int64_t wait = std::max<int64_t>(1, deadline - clock_->now_us());
      cv_.wait_for(lk, std::chrono::microseconds(wait));
    }
    --idle_workers_;
    spun = false;
  }
}

void ExpertQueueRuntime::run_batch(Batch& batch) {
  if (batch.queue == 0) {
    run_stem(batch);
    return;
  }
  // Expert batches: the first queue, then the grouped ones; samples whose experts of the
  // layer are all done move on together.
  thread_local std::vector<Sample*> done;
  done.clear();
  run_expert(batch.queue, batch.entries, done);
  for (size_t i = 0; i < batch.n_more; ++i) run_expert(batch.more[i].queue, batch.more[i].entries, done);
  if (!done.empty()) advance(done, static_cast<int64_t>(batch.queue - 1) / model_->experts(), clock_->now_us());
}

void ExpertQueueRuntime::run_stem(Batch& batch) {
  const int64_t t0 = clock_->now_us();
  const int64_t m = static_cast<int64_t>(batch.entries.size());
  const int64_t in = model_->input_dim(), d = model_->hidden();
  float* xs = scratch(t_x, m * in);
  float* h = scratch(t_h, m * d);
  std::vector<Sample*> samples(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    Sample* s = batch.entries[i].sample;
    samples[static_cast<size_t>(i)] = s;
    std::copy_n(s->req->x.data() + s->index * in, in, xs + i * in);
  }
  model_->stem(xs, m, h);
  if (config_.mode == BatchingMode::whole_model) run_whole(samples, h, t0);
  else route_layer(samples, h, 0, t0);
}

void ExpertQueueRuntime::route_layer(std::vector<Sample*>& samples, const float* h, int64_t layer,
                                     int64_t t_start) {
  const int64_t m = static_cast<int64_t>(samples.size());
  const int64_t d = model_->hidden(), r = model_->router_outputs(), e_count = model_->experts();
  float* u = scratch(t_u, m * d);
  float* logits = scratch(t_logits, m * r);
  float* probs = scratch(t_probs, m * r);
  model_->gate(layer, h, m, u, logits);
  kernels::softmax_rows_st(logits, probs, m, r);
  thread_local moe::RoutingResult routing;
  policies_[static_cast<size_t>(layer)]->route(logits, probs, m, e_count, routing);
  DELTAMOE_ASSERT(routing.tokens() == m);
  for (int64_t i = 0; i < m; ++i) {
    Sample* s = samples[static_cast<size_t>(i)];
    s->layer = layer;
    std::copy_n(h + i * d, d, s->h.data());
    std::copy_n(u + i * d, d, s->u.data());
    const int32_t b = routing.offsets[i], e = routing.offsets[i + 1];
    s->experts.assign(routing.expert_ids.begin() + b, routing.expert_ids.begin() + e);
    s->weights.assign(routing.weights.begin() + b, routing.weights.begin() + e);
    for (int32_t ex : s->experts)
      DELTAMOE_CHECK(ex >= 0 && ex < e_count, "queue", "policy chose expert ", ex);
    s->outs.resize(static_cast<size_t>((e - b) * d));
    s->remaining = e - b;
    s->layer_us = 0;
  }
  const int64_t t1 = clock_->now_us();
  std::vector<Sample*> none_routed;
  bool wake = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    const int64_t limit = std::max<int64_t>(1, static_cast<int64_t>(batch_limit_));
    if (layer == 0) queues_[0]->stats.busy_us += static_cast<double>(t1 - t_start);
    for (Sample* s : samples) {
      s->compute_us += t1 - t_start;
      if (s->experts.empty()) none_routed.push_back(s);
      const int64_t deadline = config_.timeout_us >= 0 ? s->t_admit + config_.timeout_us : INT64_MAX;
      for (size_t j = 0; j < s->experts.size(); ++j) {
        auto& items = queues_[1 + static_cast<size_t>(layer * e_count + s->experts[j])]->items;
        wake = wake || items.empty() || static_cast<int64_t>(items.size()) + 1 == limit;
        items.push_back({s, static_cast<int32_t>(j), deadline});
      }
    }
    wake = wake || config_.timeout_us == 0 || draining_;
    work_seq_.fetch_add(1, std::memory_order_relaxed);
  }
  if (wake) cv_.notify_one();
  if (!none_routed.empty()) advance(none_routed, layer, t1);
}

void ExpertQueueRuntime::run_expert(size_t queue, const std::vector<Entry>& entries, std::vector<Sample*>& done) {
  const int64_t t0 = clock_->now_us();
  const int64_t e_count = model_->experts();
  const int64_t layer = static_cast<int64_t>(queue - 1) / e_count;
  const int64_t ex = static_cast<int64_t>(queue - 1) % e_count;
  const int64_t m = static_cast<int64_t>(entries.size()), d = model_->hidden();
  float* xs = scratch(t_rows, m * d);
  float* ys = scratch(t_out, m * d);
  for (int64_t i = 0; i < m; ++i) std::copy_n(entries[i].sample->u.data(), d, xs + i * d);
  model_->expert(layer, ex, xs, m, ys);
  for (int64_t i = 0; i < m; ++i) {
    const Entry& en = entries[i];
    std::copy_n(ys + i * d, d, en.sample->outs.data() + en.slot * d);
  }
  const int64_t t1 = clock_->now_us();
  std::lock_guard<std::mutex> lk(mu_);
  queues_[queue]->stats.busy_us += static_cast<double>(t1 - t0);
  ++stats_.expert_calls;
  stats_.expert_rows += static_cast<uint64_t>(m);
  for (const Entry& en : entries) {
    Sample* s = en.sample;
    s->layer_us = std::max(s->layer_us, t1 - t0);
    if (--s->remaining == 0) done.push_back(s);
  }
}

void ExpertQueueRuntime::advance(std::vector<Sample*>& samples, int64_t layer, int64_t t_start) {
  const int64_t n = static_cast<int64_t>(samples.size()), d = model_->hidden();
  float* h = scratch(t_h2, n * d);
  std::vector<const float*> ptrs;
  for (int64_t i = 0; i < n; ++i) {
    Sample* s = samples[static_cast<size_t>(i)];
    const int64_t k = static_cast<int64_t>(s->experts.size());
    ptrs.resize(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) ptrs[j] = s->outs.data() + j * d;
    model_->combine(layer, s->h.data(), ptrs.data(), s->experts.data(), s->weights.data(), k, h + i * d);
    s->used.push_back(s->experts);
    s->compute_us += s->layer_us;
  }
  if (layer + 1 < model_->layers()) {
    // route_layer uses t_h2's neighbours only (t_u, t_logits, t_probs), so h stays valid.
    route_layer(samples, h, layer + 1, t_start);
    return;
  }
  float* probs = scratch(t_probs, n * model_->classes());
  model_->head(h, n, probs);
  finish_samples(samples, probs, t_start);
}

void ExpertQueueRuntime::run_whole(std::vector<Sample*>& samples, float* h, int64_t t_start) {
  const int64_t m = static_cast<int64_t>(samples.size());
  const int64_t d = model_->hidden(), r = model_->router_outputs(), e_count = model_->experts();
  float* u = scratch(t_u, m * d);
  float* logits = scratch(t_logits, m * r);
  float* probs = scratch(t_probs, m * r);
  float* next = scratch(t_h2, m * d);
  moe::RoutingResult routing;
  std::vector<std::vector<int32_t>> rows(static_cast<size_t>(e_count)), slots(static_cast<size_t>(e_count));
  std::vector<float> outs;
  std::vector<const float*> ptrs;
  uint64_t calls = 0, row_count = 0;
  for (int64_t layer = 0; layer < model_->layers(); ++layer) {
    model_->gate(layer, h, m, u, logits);
    kernels::softmax_rows_st(logits, probs, m, r);
    policies_[static_cast<size_t>(layer)]->route(logits, probs, m, e_count, routing);
    for (auto& v : rows) v.clear();
    for (auto& v : slots) v.clear();
    for (int64_t i = 0; i < m; ++i)
      for (int32_t j = routing.offsets[i]; j < routing.offsets[i + 1]; ++j) {
        const int32_t ex = routing.expert_ids[j];
        DELTAMOE_CHECK(ex >= 0 && ex < e_count, "queue", "policy chose expert ", ex);
        rows[ex].push_back(static_cast<int32_t>(i));
        slots[ex].push_back(j);
      }
    // outs[j] = output of routing entry j (CSR order), each expert once over its rows.
    outs.resize(routing.expert_ids.size() * static_cast<size_t>(d));
    for (int64_t ex = 0; ex < e_count; ++ex) {
      const auto& list = rows[ex];
      if (list.empty()) continue;
      const int64_t me = static_cast<int64_t>(list.size());
      float* xe = scratch(t_rows, me * d);
      float* ye = scratch(t_out, me * d);
      for (int64_t i = 0; i < me; ++i) std::copy_n(u + list[i] * d, d, xe + i * d);
      model_->expert(layer, ex, xe, me, ye);
      for (int64_t i = 0; i < me; ++i) std::copy_n(ye + i * d, d, outs.data() + slots[ex][i] * d);
      ++calls;
      row_count += static_cast<uint64_t>(me);
    }
    for (int64_t i = 0; i < m; ++i) {
      const int32_t b = routing.offsets[i], k = routing.offsets[i + 1] - b;
      ptrs.resize(static_cast<size_t>(k));
      for (int32_t j = 0; j < k; ++j) ptrs[j] = outs.data() + (b + j) * d;
      model_->combine(layer, h + i * d, ptrs.data(), routing.expert_ids.data() + b, routing.weights.data() + b, k,
                      next + i * d);
      samples[static_cast<size_t>(i)]->used.emplace_back(routing.expert_ids.begin() + b,
                                                         routing.expert_ids.begin() + b + k);
    }
    std::copy_n(next, m * d, h);
  }
  float* cls = scratch(t_out, m * model_->classes());
  model_->head(h, m, cls);
  const int64_t t1 = clock_->now_us();
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.expert_calls += calls;
    stats_.expert_rows += row_count;
    queues_[0]->stats.busy_us += static_cast<double>(t1 - t_start);
  }
  for (Sample* s : samples) s->compute_us = t1 - t_start;
  finish_samples(samples, cls, t1);
}

void ExpertQueueRuntime::finish_samples(std::vector<Sample*>& done, const float* probs, int64_t t_start) {
  const int64_t n = static_cast<int64_t>(done.size()), c = model_->classes();
  const int64_t t1 = clock_->now_us();
  bool missed = false;
  for (int64_t i = 0; i < n; ++i) {
    Sample* s = done[i];
    SampleResult& out = s->req->result.results[s->index];
    out.probs.assign(probs + i * c, probs + (i + 1) * c);
    out.predicted = static_cast<int32_t>(std::max_element(out.probs.begin(), out.probs.end()) - out.probs.begin());
    out.experts = std::move(s->used);
    out.latency_us = t1 - s->t_admit;
    out.compute_us = std::min(out.latency_us, s->compute_us + (t1 - t_start));
    out.queue_us = out.latency_us - out.compute_us;
    // Clipper's rule: the time spent *processing* the sample's batches against the target,
    // not its end-to-end latency. Queueing grows with load whatever B is; shrinking B for it
    // cuts throughput exactly when the load is highest (B fell to 1 in a closed loop, at half
    // the fixed-B throughput). T bounds the wait to form a batch.
    missed = missed || static_cast<double>(out.compute_us) > config_.latency_target_us;
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
    inflight_hint_.store(stats_.inflight_samples, std::memory_order_relaxed);
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
  for (Request* r : finished) {
    if (r->done) r->done(std::move(r->result));
    r->done = nullptr;  // releases what the callback captured
    r->result.results.clear();
  }
  {
    std::lock_guard<std::mutex> lk(pool_mu_);
    const size_t cap = static_cast<size_t>(config_.max_inflight_samples);
    for (Sample* s : done) {
      if (sample_pool_.size() < cap) sample_pool_.push_back(s);
      else delete s;
    }
    for (Request* r : finished) {
      if (request_pool_.size() < cap) request_pool_.push_back(r);
      else delete r;
    }
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
  s.requests_rejected += fast_rejected_.load(std::memory_order_relaxed);
  for (const auto& q : queues_) {
    QueueStats qs = q->stats;
    qs.depth = static_cast<int64_t>(q->items.size());
    qs.current_batch_limit = std::max<int64_t>(1, static_cast<int64_t>(batch_limit_));
    s.queues.push_back(std::move(qs));
  }
  return s;
}

}  // namespace deltamoe::serve
