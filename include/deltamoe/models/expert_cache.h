// Experts beyond RAM: a byte-budgeted cache of routed experts' weights, read from the
// checkpoint's files on demand (pread with O_DIRECT where the filesystem allows it, so the
// disk is really read and the page cache does not grow beside the budget), by background
// I/O threads, with prefetch of predicted experts and one of three eviction policies.
//
// The cache has a fixed number of slots, each holding one expert's three matrices (gate, up,
// down) exactly as the file stores them (row-major, the file's dtype, which must be the
// compute dtype). A forward pass at an MoE layer calls
//   begin(l, needed)   pins the experts the routing needs, starts reads of the absent ones
//   prefetch(l+1, ...) starts background reads of the next layer's predicted experts
//   wait(l, e, ...)    blocks until expert e is in its slot, gives its matrices
//   end(l, needed)     unpins them.
// A pinned expert is never evicted; prefetched experts not yet used are evicted last.
//
// Policies (choice of the slot to reuse among unpinned, loaded ones):
//   lru     least recently used;
//   lfu     uses, decayed by kDecay each time the expert's layer runs (LFU with decay);
//   router  the router's probability mass of the expert, decayed the same way (soft
//           frequencies, which see experts the router nearly picked), divided by the
//           number of layers until the expert's layer runs again: layers run in a cycle, so
//           among equally likely experts the one whose next chance is farthest goes first
//           (Belady's rule), where LRU would evict the one needed soonest.
//
// Thread-safety: every method is thread-safe (one mutex; reads run on the cache's threads).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/moe/moe_block.h"

namespace deltamoe::models {

enum class ExpertCachePolicy { lru, lfu, router };

/// "lru", "lfu", "router".
const char* expert_cache_policy_name(ExpertCachePolicy p);
/// Inverse of expert_cache_policy_name; Error("offload") naming the choices otherwise.
ExpertCachePolicy parse_expert_cache_policy(const std::string& name);

struct ExpertCacheOptions {
  /// Bytes of expert slots (0: use `fraction`).
  uint64_t budget_bytes = 0;
  /// Else this fraction (0, 1] of all routed experts' bytes.
  double fraction = 0.0;
  ExpertCachePolicy policy = ExpertCachePolicy::router;
  /// Pre-gating: predict layer l+1's experts from layer l's hidden state (each token's most
  /// likely one), read them early.
  bool prefetch = true;
  /// On a miss, run the token with its resident experts (weights renormalised) instead of
  /// waiting; a token with none resident waits for its top expert.
  bool substitute = false;
  /// Background reader threads (reads are split in chunks so one expert's read uses all).
  int io_threads = 4;
  /// O_DIRECT reads (bypassing the page cache) where the filesystem supports them; else
  /// buffered reads whose pages are dropped after each read (POSIX_FADV_DONTNEED).
  bool direct_io = true;
  bool enabled() const { return budget_bytes > 0 || fraction > 0.0; }
};

/// Parses an --expert-cache value: a size ("4GiB", "500MB") or a percentage of the experts'
/// bytes ("25%"). Returns options with budget_bytes or fraction set; Error("offload").
ExpertCacheOptions parse_expert_cache_budget(const std::string& text);

/// Counters since construction or reset_stats().
struct ExpertCacheStats {
  int64_t requests = 0;            // (layer, expert) pins by begin()
  int64_t hits = 0;                // ... loaded when pinned
  int64_t late_prefetch = 0;       // ... being read by a prefetch when pinned (a partial hit)
  int64_t misses = 0;              // ... absent: read on demand
  int64_t reads = 0;               // expert reads completed
  uint64_t bytes_read = 0;         // bytes read from the files (aligned ranges included)
  uint64_t demand_bytes = 0;       // ... of which started by begin()
  int64_t prefetch_reads = 0;      // reads started by prefetch()
  int64_t prefetch_used = 0;       // ... whose expert was pinned before being evicted
  int64_t prefetch_cancelled = 0;  // ... dropped before any byte was read (wrong guesses)
  int64_t evictions = 0;
  int64_t predicted = 0, predicted_used = 0, actual = 0;  // record_prediction() sums
  int64_t substitutions = 0;  // (token, expert) pairs dropped by substitution
  double stall_s = 0.0;       // time wait() blocked
  double read_s = 0.0;        // summed time of the reader threads' preads
  double hit_rate() const { return requests ? double(hits) / double(requests) : 0.0; }
  /// Of the predicted experts, the share the routing then used.
  double precision() const { return predicted ? double(predicted_used) / double(predicted) : 0.0; }
  /// Of the experts the routing used, the share that had been predicted.
  double recall() const { return actual ? double(predicted_used) / double(actual) : 0.0; }
};

class ExpertCache {
 public:
  /// `extents[l * experts + e]` holds layer l expert e's gate, up and down matrices in the
  /// files (shapes `shapes`, dtype `dtype`, equal for every expert). Opens the files,
  /// allocates the slots (budget / slot bytes of them, at least one layer's experts and at
  /// most all) and starts the reader threads. Throws Error("offload") when the budget holds
  /// fewer experts than one layer needs at once, or a file cannot be opened.
  ExpertCache(int64_t layers, int64_t experts, DType dtype, const std::array<Shape, 3>& shapes,
              std::vector<std::array<io::FileExtent, 3>> extents, const ExpertCacheOptions& opts);
  ~ExpertCache();
  ExpertCache(const ExpertCache&) = delete;
  ExpertCache& operator=(const ExpertCache&) = delete;

  /// Pins layer l's `experts` (distinct ids) and starts demand reads of the absent ones.
  /// `probs` (optional, [rows, experts] router softmax) feeds the router policy.
  void begin(int64_t l, const std::vector<int32_t>& experts, const float* probs, int64_t rows);
  /// Whether expert (l, e) is loaded now (it may still be read if not).
  bool ready(int64_t l, int32_t e) const;
  /// Blocks until (l, e), pinned by begin(), is loaded; returns its matrices. The time
  /// blocked counts as stall. Throws Error("offload") if its read failed.
  moe::ExpertMatrices wait(int64_t l, int32_t e);
  /// Unpins what begin(l, experts) pinned.
  void end(int64_t l, const std::vector<int32_t>& experts);
  /// Starts background reads of layer l's `experts` that are absent, as far as slots can be
  /// freed without evicting pinned or other prefetched-unused experts.
  void prefetch(int64_t l, const std::vector<int32_t>& experts);
  /// Adds one layer's prediction outcome: experts predicted, used among them, used in all.
  void record_prediction(int64_t predicted, int64_t predicted_used, int64_t actual);
  void record_substitutions(int64_t n);

  /// The files' read bandwidth in GB/s (1e9 bytes/s) as the cache reads them: the `n`
  /// experts it read most recently (random ones, by `seed`, where it has read fewer) read
  /// again whole, in the same chunks, by the same number of threads, with the same flags
  /// (O_DIRECT or buffered + dropped pages), into scratch memory (the slots are untouched).
  /// The same bytes as the run's reads, so whatever caches the device has (a VM host's page
  /// cache) serve them as they served the run: the disk roofline of a run. Thread-safe, but
  /// it competes with the cache's own reads: call it while the model is idle.
  double probe_read_gbps(int64_t n, uint64_t seed) const;

  ExpertCacheStats stats() const;
  void reset_stats();
  int64_t slots() const { return slots_; }
  /// Bytes of one slot (the three matrices plus alignment padding for direct reads).
  uint64_t slot_bytes() const { return slot_bytes_; }
  /// Bytes of all slots: the memory the cache holds once full.
  uint64_t capacity_bytes() const { return slot_bytes_ * static_cast<uint64_t>(slots_); }
  /// Bytes of one expert's matrices in the file.
  uint64_t expert_bytes() const { return expert_bytes_; }
  int64_t total_experts() const { return layers_ * experts_; }
  bool direct_io() const;
  const ExpertCacheOptions& options() const { return opts_; }
  /// Whether MoE layers substitute resident experts on a miss (options().substitute at
  /// first); switchable between forward passes, e.g. to compute exact reference logits.
  bool substitute() const { return substitute_.load(std::memory_order_relaxed); }
  void set_substitute(bool on) { substitute_.store(on, std::memory_order_relaxed); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ExpertCacheOptions opts_;
  std::atomic<bool> substitute_{false};
  int64_t layers_, experts_, slots_ = 0;
  uint64_t slot_bytes_ = 0, expert_bytes_ = 0;
};

}  // namespace deltamoe::models
