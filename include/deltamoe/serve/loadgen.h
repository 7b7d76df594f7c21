// Load generator: open-loop Poisson arrivals (latency measured from each request's SCHEDULED
// send time, so a slow server cannot hide its queueing by slowing the client: no coordinated
// omission) and closed-loop max-throughput mode; over HTTP (loopback only) or in-process
// against an ExpertQueueRuntime (no HTTP, the runtime alone).
// Thread-safety: each run_* call is self-contained; do not run two against one runtime.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "deltamoe/serve/expert_queue.h"

namespace deltamoe::serve {

struct LoadConfig {
  double rate_rps = 100.0;   // open loop: mean arrival rate (requests/s)
  double duration_s = 5.0;   // arrivals are scheduled over this long (≤ 600)
  bool closed_loop = false;  // closed loop: `concurrency` requests always outstanding
  int concurrency = 64;      // closed loop: outstanding; open loop over HTTP: sender threads
  int64_t images_per_request = 1;
  bool base64 = true;      // HTTP bodies as images_b64 (else arrays of numbers)
  bool keep_alive = true;  // HTTP: reuse connections (else one connection per request)
  uint64_t seed = 1;
  double slo_ms = 5.0;          // for SLO attainment
  double grace_s = 30.0;        // after duration: wait this long for answers, then give up
  double warmup_s = 0.0;        // in-process: load before the measured window, not counted
  int64_t sender_tick_us = 50;  // in-process open loop: the sender wakes at most this often
  /// Images to send, n × 784 pixels 0..255 (e.g. Fashion-MNIST); empty = synthetic_images.
  std::vector<float> image_pool;
};

struct LoadResult {
  std::string mode;       // "open-loop" / "closed-loop"
  std::string transport;  // "http" / "in-process"
  double offered_rps = 0.0;
  double duration_s = 0.0, wall_s = 0.0;
  int64_t sent = 0, ok = 0, not_sent = 0;
  std::map<std::string, int64_t> errors;     // by HTTP status ("503") or "transport"
  std::vector<double> latency_us;            // answered requests, from scheduled send time
  std::vector<double> queue_us, compute_us;  // in-process only, per sample
  double experts_sum = 0.0;  // in-process only: Σ over samples of mean experts per layer
  std::vector<double> server_latency_us;  // in-process only, per sample: admission → done
  std::vector<double> send_lag_us;        // in-process open loop: actual submit − scheduled time
  bool sender_priority_raised = false;    // in-process open loop: sender ran at nice −10
  double warmup_s = 0.0;
  int64_t warmup_requests = 0;  // answered during the warm-up, not counted
  /// Requests answered (200) inside the measured window [warm-up end, warm-up end +
  /// duration] (HTTP: [start, start + duration]), whenever they were sent; −1 where not
  /// tracked. Throughput is this over the duration: counting answered requests over a wall
  /// time that includes the warm-up's tail and the final drain (or the client's backlog)
  /// would understate it when latencies approach the duration.
  int64_t window_ok = -1;
  double sender_cpu_s = 0.0;  // in-process open loop: the sender thread's CPU time
  /// In-process: the runtime's counters when the measured window opened and when it closed
  /// (see runtime_stats_between); empty `queues` where not taken (HTTP).
  serve::RuntimeStats stats_at_window_start, stats_at_window_end;
};

/// Summary JSON (one object): counts, throughput_rps, p50/p95/p99/mean/max latency in ms,
/// slo_attainment (share of sent requests answered within slo_ms), errors by status.
std::string load_result_json(const LoadResult& r, const LoadConfig& c,
                             const std::string& extra_json = "{}");

/// Runtime counters as a JSON object: mean realised batch per queue kind, share of timeout
/// flushes, mean queue and compute time per sample.
std::string runtime_stats_json(const serve::RuntimeStats& s);

/// The runtime's activity between two snapshots of one runtime (`begin` taken first): every
/// counter, sum and histogram is end − begin; gauges (queue depth, current B, samples in
/// flight) are end's. The loadgen reports the measured window this way, so batches of the
/// warm-up and of the final drain (partial ones, with T = ∞) do not count. Throws
/// Error("loadgen") if the two come from runtimes with different queues.
serve::RuntimeStats runtime_stats_between(const serve::RuntimeStats& begin,
                                          const serve::RuntimeStats& end);

/// Open-loop arrival times in µs from the start: a Poisson process of `rate` per second over
/// [0, duration_s), drawn up front from `seed`.
std::vector<double> poisson_schedule_us(double rate, double duration_s, uint64_t seed);

/// The q-quantile of v (nearest rank; 0 when empty).
double percentile(std::vector<double> v, double q);

/// Host and port of an http://127.0.0.1:PORT or http://localhost:PORT url. Throws
/// Error("loadgen") for anything else (the load generator only targets loopback).
std::pair<std::string, int> parse_loopback_url(const std::string& url);

/// Deterministic synthetic 28×28 images (blobs and strokes on a dark background), n × 784.
std::vector<float> synthetic_images(int64_t n, uint64_t seed);

/// Runs load against the runtime in this process. Open loop submits from one thread on the
/// Poisson schedule; closed loop resubmits from each completion. Rejections count as "503".
/// Calls runtime.shutdown() at the end (drains what is still queued). Snapshots the runtime's
/// counters when the measured window opens and closes (LoadResult::stats_at_window_*).
LoadResult run_inprocess_load(serve::ExpertQueueRuntime& runtime, const LoadConfig& config);

/// Runs load against `url` (http://127.0.0.1:PORT or http://localhost:PORT; anything else is
/// refused with Error("loadgen")), POSTing to /v1/classify.
LoadResult run_http_load(const std::string& url, const LoadConfig& config);

}  // namespace deltamoe::serve
