// Swap plans (seed 003, TensorFlowMem): when even the best order needs more memory than a
// budget, move buffers to host memory after a use and fetch them back before the next one,
// choosing which so that the fewest bytes cross the link.
//
// The model (docs/sched.md, "Swap plans"): for a fixed order, a buffer's uses are its
// producer's step (freeable graph inputs: the start) and the steps of its readers (views'
// readers included); between two consecutive uses u < w lies a gap. Swapping the gap takes the
// buffer off the device for the steps u+1+k .. w-1-k, where k = overlap_steps is the number of
// steps a transfer overlaps on each side (the write-out runs during the k steps after u, the
// fetch during the k steps before w, and the buffer holds its memory meanwhile). Buffers are
// immutable once produced (memgraph graphs are functional), so a buffer is written to the host
// once, however many of its gaps are swapped, and fetched once per swapped gap; freeable graph
// inputs come from the host and are never written. Persistent buffers and workspaces do not
// move. Optionally an output may end on the host after its last use (written, not fetched).
// Memory at a step = the memory model's need (memory_profile) − the bytes of the buffers off
// the device at that step; the plan keeps every step (and the initial live set) <= budget.
//
// Thread-safety: pure functions over their arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched {

struct SwapOptions {
  uint64_t budget_bytes = 0;     // device memory the plan keeps every step within, or
  double budget_fraction = 0.0;  // (when budget_bytes is 0) that share (0, 1] of the peak
  int32_t overlap_steps = 1;     // k above: steps a transfer overlaps on each side (>= 0)
  bool outputs_to_host = false;  // an output may end on the host after its last use
  std::string method = "auto";   // auto (greedy, then the ILP when built) | greedy | ilp
  double time_limit_s = 10.0;    // for the ILP (the greedy plan takes milliseconds)
  double bandwidth_gb_s = 25.0;  // host<->device, 1e9 bytes/s, for transfer_ms only
};

/// One swapped gap. Positions are steps of the order (0 .. n-1).
struct Swap {
  int32_t buffer = -1;        // dense index of the buffer's owner (a base node)
  int32_t evict_after = -1;   // position of the use after which it leaves; -1: a freeable
                              // input that starts on the host
  int32_t fetch_before = -1;  // position of the next use; n: an output that ends on the host
  int32_t off_first = 0;      // first position at which it is off the device (-1: initially)
  int32_t off_last = 0;       // last position at which it is off the device
  uint64_t bytes = 0;         // the buffer's size
};

struct SwapPlan {
  bool feasible = false;  // a plan within the budget exists (swaps then holds one)
  uint64_t budget_bytes = 0;
  uint64_t min_budget_bytes = 0;  // the least budget any plan of this order meets
  uint64_t peak_bytes = 0;        // the order's peak with the plan applied (<= budget)
  uint64_t order_peak_bytes = 0;  // the order's peak without swaps
  std::vector<Swap> swaps;        // sorted by off_first, then buffer
  uint64_t bytes_to_host = 0;     // written out (once per buffer)
  uint64_t bytes_from_host = 0;   // fetched back (once per swapped gap)
  uint64_t bytes_moved() const { return bytes_to_host + bytes_from_host; }
  std::string method;  // "none" (fits already), "greedy" or "ilp"
  uint64_t greedy_bytes_moved = 0;
  bool ilp_ran = false;
  std::string ilp_status;  // in words; empty when the ILP did not run
  bool ilp_has_plan = false;
  uint64_t ilp_bytes_moved = 0;        // the ILP's best plan (when ilp_has_plan)
  uint64_t ilp_lower_bound_bytes = 0;  // proven lower bound on bytes moved (0: none)
  bool proven_optimal = false;         // bytes_moved() == the proven lower bound
  int64_t candidates = 0;              // swappable gaps that cover a step over the budget
  int64_t steps_over_budget = 0;       // before swapping (the initial live set counts as one)
  double seconds = 0.0;
};

/// Plans swaps for `order` under `opt.budget_bytes`. When no plan fits, returns feasible ==
/// false with min_budget_bytes and no swaps; when the order already fits, method "none".
/// The budget is budget_bytes, or floor(budget_fraction × the order's peak) (at least 1 byte).
/// Throws Error("sched") for a bad option (negative overlap, no budget or a fraction outside
/// (0, 1], unknown method, or
/// "ilp" when CBC is not built) and Error("memgraph") when `order` is not valid.
SwapPlan plan_swaps(const Graph& g, const Order& order, const SwapOptions& opt);

/// Checks every swap against `g` and `order` independently of plan_swaps (the buffer is a
/// movable base, evict_after/fetch_before are consecutive uses, the off range is what the
/// overlap gives, a buffer's gaps do not repeat) and returns the need of every step with the
/// swaps applied; `initial` receives the initial live bytes left on the device. Throws
/// Error("sched") naming the first bad swap.
std::vector<uint64_t> swapped_profile(const Graph& g, const Order& order,
                                      const std::vector<Swap>& swaps, int32_t overlap_steps,
                                      bool outputs_to_host, uint64_t* initial = nullptr);

/// The plan as `deltamoe schedule --swap-budget --json` prints it under "swap": budget,
/// feasibility, bytes moved and transfer_ms at opt.bandwidth_gb_s, the greedy's and the
/// ILP's results, and each swap with node ids (as in the file) and order positions.
nlohmann::ordered_json swap_report_json(const Graph& g, const Order& order, const SwapPlan& p,
                                        const SwapOptions& opt);

}  // namespace deltamoe::sched
