// Private to sched/: the best-first search over down-sets on one Model (exact.cpp), also used
// by local_search.cpp to re-optimise windows of an order.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "sched/exact_model.h"

namespace deltamoe::sched::detail {

struct SearchLimits {
  std::chrono::steady_clock::time_point deadline;
  size_t max_bytes = size_t{1} << 30;  // state storage cap
  /// Stop as soon as an order with peak <= stop_at is known (0: prove the optimum).
  uint64_t stop_at = 0;
};

struct SearchOutcome {
  std::vector<int32_t> order;  // best order found (the incumbent if nothing better)
  uint64_t peak = 0;           // its peak
  uint64_t lower_bound = 0;    // proven lower bound on the model's optimum
  bool exhausted = false;      // the search finished: peak is optimal
  bool limit_hit = false;      // stopped by time or memory
  uint64_t expanded = 0;       // states expanded
};

/// Minimum-peak order of `m` by best-first search, seeded with `incumbent` (a valid order of
/// m). Never returns an order worse than the incumbent.
SearchOutcome search_model(const Model& m, const std::vector<int32_t>& incumbent,
                           const SearchLimits& lim);

}  // namespace deltamoe::sched::detail
