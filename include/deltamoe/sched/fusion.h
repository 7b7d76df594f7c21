// Fusion scoring: what fusing a producer into its consumer would do to peak memory and to
// memory traffic, for a given order (normally the best one schedule() found).
//
// A pair (p, c) is a candidate when c is the only node that reads p's buffer (so no view of
// p exists and nothing else needs the intermediate), p is a plain computing node (not a view,
// not an "input"/"param" op, not persistent, not an output, size > 0) and c is not a view.
// The fused node F replaces p and c at c's place in the order: it reads p's inputs and c's
// other inputs, produces c's buffer, needs max(workspace(p), workspace(c)) scratch, and never
// materialises p's buffer. All of F's inputs must be live at once while it runs, so p's
// inputs stay live until c's step: that is how fusion can raise the peak.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <vector>

#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched {

struct FusionCandidate {
  int32_t producer = -1;             // dense index of p
  int32_t consumer = -1;             // dense index of c
  uint64_t traffic_saved_bytes = 0;  // 2 · size(p): the intermediate is neither written nor read
  uint64_t fused_peak = 0;           // peak of the fused graph over `order` without p (bytes)
  int64_t peak_delta = 0;            // fused_peak − peak of `order` (> 0: fusion raises the peak)
};

struct FusionReport {
  uint64_t peak = 0;                        // peak of the unfused order
  std::vector<FusionCandidate> candidates;  // in order of the producer's dense index
};

/// Scores every candidate pair over `order` in O((n + E) log n) total: the fused peak is
/// derived from the unfused memory profile (equal to simulate() on fuse_pair()'s graph over
/// fused_order(), which the tests check). Throws Error("memgraph") if `order` is invalid.
FusionReport fusion_report(const Graph& g, const Order& order);

/// True when (producer, consumer) is a candidate by the rule above.
bool can_fuse(const Graph& g, int32_t producer, int32_t consumer);

/// The graph with `producer` fused into `consumer` (the reference the report is checked
/// against). Node indices above `producer` shift down by one. Throws Error("sched") when the
/// pair is not a candidate.
Graph fuse_pair(const Graph& g, int32_t producer, int32_t consumer);

/// `order` with `producer` removed and indices renumbered for fuse_pair()'s graph.
Order fused_order(const Order& order, int32_t producer);

}  // namespace deltamoe::sched
