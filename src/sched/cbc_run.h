// One COIN-OR CBC solve under a hard wall-clock deadline, shared by the exact schedule ILP
// (ilp_cbc.cpp) and the swap-plan ILP (swap_ilp_cbc.cpp). Internal to sched/; included only by
// files built when CBC is found (the `_cbc.cpp` suffix).
#pragma once

#include <coin/Cbc_C_Interface.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace deltamoe::sched::detail {

using Clock = std::chrono::steady_clock;

struct CbcDeleter {
  void operator()(Cbc_Model* m) const { Cbc_deleteModel(m); }
};
using CbcPtr = std::unique_ptr<Cbc_Model, CbcDeleter>;

/// What one CBC solve returned.
struct CbcOutcome {
  bool killed = false;  // the deadline passed before CBC answered
  std::string phase;    // when killed: where CBC was, as far as is known
  bool optimal = false;
  bool seconds_limit = false;  // CBC stopped at its own time limit
  double bound = 0, objective = 0;
  int nodes = 0;
  std::vector<double> solution;  // the best solution's column values (empty if none)
};

/// Quiet logs, wall-clock timing, and CBC's own limit at most of `seconds_left` (CBC checks it
/// only between branch-and-bound steps; cbc_solve_until's deadline covers the rest).
void cbc_set_limits(Cbc_Model* cbc, double seconds_left);

/// Solves `cbc` (loaded, limits set) and returns by `deadline` at the latest. CBC's root LP,
/// preprocessing and MIP-start completion never look at the clock, so the solve runs in a
/// forked child that sends its outcome back through a pipe and is killed at the deadline; if
/// fork fails it runs here, one solve at a time (CbcMain keeps global state). Thread-safe.
CbcOutcome cbc_solve_until(Cbc_Model* cbc, Clock::time_point deadline);

/// Seconds since `t0`.
double seconds_since(Clock::time_point t0);
/// Seconds as a duration of `Clock`.
Clock::duration seconds_duration(double s);
/// "%.3g" of `s`, for status texts.
std::string seconds_text(double s);

}  // namespace deltamoe::sched::detail
