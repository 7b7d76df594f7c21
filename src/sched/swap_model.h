// The covering problem behind a swap plan (swap.cpp builds it; the greedy there and the exact
// ILP in swap_ilp_cbc.cpp solve it). Internal to sched/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deltamoe::sched::detail {

/// A swappable gap of one buffer (see swap.h for the model).
struct SwapGap {
  int32_t buffer = -1;
  int32_t evict_after = -1, fetch_before = -1;  // positions (see Swap)
  int32_t off_first = 0, off_last = 0;          // positions off the device
  uint64_t bytes = 0;                           // freed while off
  uint64_t fetch_bytes = 0;                     // bytes fetched back (0: ends on the host)
  int32_t lo = 0, hi = 0;                       // the over-budget steps it covers: [lo, hi)
};

/// Choose gaps so that every over-budget step j gets sum(bytes of chosen gaps covering it) >=
/// excess[j], minimising sum(fetch_bytes of chosen gaps) + sum(write_bytes[b] of every buffer
/// b with a chosen gap).
struct SwapProblem {
  std::vector<SwapGap> gaps;          // candidates (each covers at least one step)
  std::vector<uint64_t> excess;       // per over-budget step, > 0
  std::vector<uint64_t> write_bytes;  // per buffer (dense node index); 0 for graph inputs
};

/// Bytes moved by a choice of gaps (one flag per gap of `p`).
uint64_t swap_cost(const SwapProblem& p, const std::vector<char>& chosen);

struct SwapIlpResult {
  std::vector<char> chosen;  // the best plan found (empty when none)
  uint64_t lower_bound = 0;  // proven lower bound on bytes moved (0: none)
  bool proven_optimal = false;
  std::string status;
};

/// The exact covering ILP on COIN-OR CBC, warm-started from `warm` (a feasible choice), within
/// `time_limit_s` wall seconds (swap_ilp_cbc.cpp; the stub in ilp_nocbc.cpp throws
/// Error("sched") saying CBC was not built).
SwapIlpResult swap_ilp(const SwapProblem& p, const std::vector<char>& warm, double time_limit_s);

}  // namespace deltamoe::sched::detail
