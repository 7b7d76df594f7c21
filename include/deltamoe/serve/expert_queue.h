// Per-expert queues: the serving runtime that trades latency for throughput with a batch size B.
//
// A request carries n samples. Admitted samples enter the stem queue; a stem batch computes
// h, layer 0's router input and the routing, and each sample then waits in the queue of every
// layer-0 expert it was routed to. A queue runs its samples as one batch (one model call, i.e.
// one GEMM per weight matrix, over all its rows) when it holds B samples or when its oldest
// sample's deadline, admission + T, has passed (T bounds a sample's total queueing, not each
// stage's, so a two-layer model does not wait 3·T). The samples whose experts of layer l are
// all done in one batch are combined and, as one batch, go through layer l+1's router into its
// expert queues, or through the head; when every sample of a request is done, the request's
// callback runs.
//
// Modes (the baselines share this harness, so they are measured the same way):
//   per_expert   the above (stem queue and E expert queues, each flushed by B/T);
//   whole_model  Triton-style dynamic batching: requests batched before routing (by B/T),
//                and the whole model runs on the batch (each expert once, on the batch's rows);
//   B = 1        either mode with max_batch 1 (no batching).
// Adaptive B (Clipper-style AIMD): one B shared by every queue grows by `aimd_increase` after
// each group of finished samples whose batch processing time all met the latency target, and
// shrinks by the factor `aimd_decrease` when one missed it (at most once per target interval,
// so one slow burst does not collapse B to 1). As in Clipper, "processing time" is the wall
// time of the batches on the sample's path (SampleResult::compute_us), not its end-to-end
// latency: queueing grows with load whatever B is, and shrinking B for it would cut
// throughput when load is highest. B thus settles at the largest batch whose processing fits
// the target; T bounds the wait to form one.
//
// Workers: among ready queues a worker takes the one with the earliest deadline. A flush is
// split among idle workers when its parts keep split_min_rows samples; a worker with no idle
// peer that takes an expert queue also takes the layer's other ready queues (group_layers),
// so the layer's samples move on together. Samples and requests are pooled.
//
// Guarantees: admission is bounded (max_inflight_samples); an admitted sample is never
// dropped; shutdown(drain) flushes every queue regardless of B and T and waits for all
// admitted samples. Row-independent models give the same answers whatever the batching.
// Thread-safety: submit(), stats() and shutdown() may be called from any thread. Callbacks
// run on a worker thread (or inside step() in manual mode); they must not block for long and
// may call submit().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "deltamoe/moe/routing.h"
#include "deltamoe/serve/model.h"

namespace deltamoe::serve {

/// Source of time in microseconds. The runtime reads time only through it, so tests can
/// drive timeouts with a ManualClock.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t now_us() const = 0;
};

/// std::chrono::steady_clock in microseconds.
class SteadyClock final : public Clock {
 public:
  int64_t now_us() const override;
};

/// A clock that moves only when told to (thread-safe).
class ManualClock final : public Clock {
 public:
  int64_t now_us() const override { return now_.load(); }
  void advance_us(int64_t us) { now_.fetch_add(us); }
  void set_us(int64_t us) { now_.store(us); }

 private:
  std::atomic<int64_t> now_{0};
};

enum class BatchingMode { per_expert, whole_model };

/// Parses "per-expert" / "whole-model"; throws Error("queue").
BatchingMode parse_batching_mode(const std::string& s);
const char* batching_mode_name(BatchingMode m);

/// Why a queue ran a batch.
enum class FlushReason { size = 0, timeout = 1, drain = 2 };

struct QueueConfig {
  BatchingMode mode = BatchingMode::per_expert;
  /// B: samples per batch (the largest batch; a full queue flushes at once). ≥ 1.
  int64_t max_batch = 32;
  /// T: the oldest sample of a queue waits at most this long, in µs. 0 = flush whenever a
  /// worker is free (work-conserving); negative = infinity (flush only when full or draining).
  int64_t timeout_us = 200;
  /// Admission bound: samples admitted but not finished. submit() rejects beyond it.
  int64_t max_inflight_samples = 4096;
  /// Largest number of samples in one request.
  int64_t max_request_samples = 256;
  /// Worker threads running batches. 0 = manual mode: nothing runs until step() is called.
  int workers = 2;
  /// Split a flushed batch between idle workers when every part keeps at least this many
  /// samples (0 = never split). A batch of m rows on one worker leaves the others idle for
  /// its whole service time; split in two, its samples finish in about half the time, at the
  /// cost of one more pass over the weights (small once parts hold a few dozen rows).
  int64_t split_min_rows = 16;
  /// A worker with nothing to run polls for new work this long (µs) before it blocks. Waking a
  /// blocked thread can take milliseconds on a virtual machine whose idle vCPU the host has
  /// descheduled; polling keeps the vCPU running at the cost of CPU time when idle. 0 = block
  /// at once.
  int64_t spin_us = 0;
  /// Grouped layer flush: a worker that takes an expert queue while no other worker is idle
  /// also takes every other ready queue of that layer, so the layer's samples move on to the
  /// next layer together (in full batches) instead of a few at a time.
  bool group_layers = true;
  /// Adaptive B (AIMD: batch processing time against latency_target_us, see above);
  /// max_batch is then the upper bound.
  bool adaptive = false;
  double latency_target_us = 5000.0;
  double aimd_increase = 1.0;
  double aimd_decrease = 0.75;
  /// Clock; null means SteadyClock.
  std::shared_ptr<const Clock> clock;
};

/// One sample's answer.
struct SampleResult {
  int32_t predicted = -1;
  std::vector<float> probs;       // C entries
  std::vector<std::vector<int32_t>> experts;  // per layer: real experts used, routing order
  /// Mean number of real experts per layer (what `deltamoe eval` reports as experts_used).
  double mean_experts() const;
  int64_t latency_us = 0;         // admission → done
  int64_t queue_us = 0;           // time spent waiting in queues
  int64_t compute_us = 0;         // time in the batches that computed it (batch wall time)
};

/// A request's answer; results[i] is sample i.
struct RequestResult {
  std::vector<SampleResult> results;
};

using Callback = std::function<void(RequestResult&&)>;

/// Fixed-bucket histogram (cumulative on export, like Prometheus).
struct Histogram {
  std::vector<double> bounds;    // upper bounds, ascending (+Inf implied)
  std::vector<uint64_t> counts;  // bounds.size() + 1 (last: above every bound)
  double sum = 0.0;
  uint64_t count = 0;
  explicit Histogram(std::vector<double> b = {}) : bounds(std::move(b)), counts(bounds.size() + 1) {}
  void observe(double v);
  /// Quantile estimate (upper bound of the bucket holding it; 0 when empty).
  double quantile(double q) const;
};

/// Counters of one queue (queue 0 is the stem/model queue, 1 + l·E + e is expert e of layer l).
struct QueueStats {
  std::string name;
  int64_t depth = 0;               // samples waiting now
  int64_t current_batch_limit = 0; // B now (adaptive mode changes it)
  uint64_t flushes[3] = {0, 0, 0}; // by FlushReason
  uint64_t splits = 0;             // flushes shared with idle workers (split_min_rows)
  uint64_t runs = 0;               // batches run (a split flush runs as several)
  uint64_t samples = 0;            // samples run
  Histogram batch_sizes{{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}};
  double busy_us = 0.0;            // wall time spent running its batches (summed over runs)
};

struct RuntimeStats {
  uint64_t requests_admitted = 0, requests_rejected = 0, requests_done = 0;
  uint64_t samples_admitted = 0, samples_done = 0;
  int64_t inflight_samples = 0;
  double queue_us_sum = 0.0, compute_us_sum = 0.0;  // over finished samples
  uint64_t expert_calls = 0, expert_rows = 0;       // model.expert() calls and rows, both modes
  Histogram latency_us{{50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000,
                        500000, 1000000}};
  std::vector<QueueStats> queues;
};

/// The runtime. Holds shared references to the model and its routing policies.
class ExpertQueueRuntime {
 public:
  /// One policy per MoE layer (or one for every layer). Starts config.workers worker threads.
  /// Throws Error("queue") on a bad config or a policy that does not fit the model's router.
  ExpertQueueRuntime(std::shared_ptr<const ServeModel> model,
                     std::vector<std::shared_ptr<const moe::RoutingPolicy>> policies, QueueConfig config);
  /// The same policy in every layer.
  ExpertQueueRuntime(std::shared_ptr<const ServeModel> model,
                     std::shared_ptr<const moe::RoutingPolicy> policy, QueueConfig config)
      : ExpertQueueRuntime(std::move(model), std::vector<std::shared_ptr<const moe::RoutingPolicy>>{std::move(policy)},
                           std::move(config)) {}
  /// Drains (as shutdown()) and joins the workers.
  ~ExpertQueueRuntime();
  ExpertQueueRuntime(const ExpertQueueRuntime&) = delete;
  ExpertQueueRuntime& operator=(const ExpertQueueRuntime&) = delete;

  /// Admits n samples x[n, input_dim] (pixels 0..255; copied) and returns true, or returns
  /// false without side effects when admitting them would exceed max_inflight_samples or the
  /// runtime is shutting down. Throws Error("queue") when n is 0 or above max_request_samples.
  /// `done` runs exactly once per admitted request.
  bool submit(const float* x, int64_t n, Callback done);
  /// Convenience: submit and wait. Throws Error("queue") when rejected.
  RequestResult run(const float* x, int64_t n);

  /// Manual mode (workers == 0): runs one ready batch, if any, on the calling thread.
  /// Returns whether it ran one. Also usable with workers (it then competes with them).
  bool step();
  /// Manual mode: steps until no queue is ready. Returns the number of batches run.
  int64_t run_ready();

  /// Stops admitting, flushes every queue (ignoring B and T), waits until every admitted
  /// sample is done (in manual mode it runs them on the calling thread), then stops the
  /// workers. Idempotent.
  void shutdown();
  bool accepting() const;
  /// When no sample can be admitted now (admitted samples at max_inflight_samples), counts a
  /// rejected request and returns true; otherwise returns false and changes nothing. Lock-free
  /// and possibly a moment stale: a front end calls it to turn a request away before paying
  /// to parse it, and submit() still decides for the rest. Thread-safe.
  bool reject_if_full();

  RuntimeStats stats() const;
  const QueueConfig& config() const { return config_; }
  const ServeModel& model() const { return *model_; }
  /// Layer 0's policy (every layer's, unless the model was trained with per-layer ones).
  const moe::RoutingPolicy& policy() const { return *policies_[0]; }
  const moe::RoutingPolicy& policy(int64_t layer) const { return *policies_[static_cast<size_t>(layer)]; }

 private:
  struct Request;
  struct Sample;
  struct Entry;
  struct Queue;
  struct Batch;

  bool ready_locked(const Queue& queue, int64_t now, int64_t limit, FlushReason& reason) const;
  bool take_batch_locked(int64_t now, Batch& out);
  int64_t next_deadline_locked() const;
  void run_batch(Batch& batch);
  void run_stem(Batch& batch);
  /// Runs one expert queue's entries as one call; appends the samples whose experts of the
  /// layer are now all done to `done`.
  void run_expert(size_t queue, const std::vector<Entry>& entries, std::vector<Sample*>& done);
  /// Layer `layer`'s router for the samples (their states in rows of h, [n, D]) and, per
  /// expert mode, their entry into that layer's expert queues.
  void route_layer(std::vector<Sample*>& samples, const float* h, int64_t layer, int64_t t_start);
  /// Combines layer `layer` of the samples (all their experts done) and moves them on.
  void advance(std::vector<Sample*>& samples, int64_t layer, int64_t t_start);
  /// The whole model on a batch (whole_model mode).
  void run_whole(std::vector<Sample*>& samples, float* h, int64_t t_start);
  void finish_samples(std::vector<Sample*>& done, const float* probs, int64_t t_start);
  void worker_loop();

  std::shared_ptr<const ServeModel> model_;
  std::vector<std::shared_ptr<const moe::RoutingPolicy>> policies_;  // one per layer
  QueueConfig config_;
  std::shared_ptr<const Clock> clock_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // workers: work or deadline
  std::condition_variable idle_cv_;  // drain: inflight reached 0
  std::vector<std::unique_ptr<Queue>> queues_;
  bool accepting_ = true, draining_ = false, stopping_ = false;
  RuntimeStats stats_;
  double batch_limit_ = 1.0;      // B now (fixed unless adaptive)
  int idle_workers_ = 0;          // workers waiting on cv_ (under mu_)
  std::atomic<uint64_t> work_seq_{0};      // bumped whenever work may have become ready (spin_us)
  std::atomic<int64_t> inflight_hint_{0};  // stats_.inflight_samples, readable without mu_
  std::atomic<uint64_t> fast_rejected_{0};  // requests turned away by reject_if_full()
  int64_t last_decrease_us_ = 0;  // adaptive: time of the last multiplicative decrease
  std::vector<std::thread> workers_;
  // Finished samples and requests, reused by submit() (at most max_inflight_samples each).
  std::mutex pool_mu_;
  std::vector<Sample*> sample_pool_;
  std::vector<Request*> request_pool_;
};

}  // namespace deltamoe::serve
