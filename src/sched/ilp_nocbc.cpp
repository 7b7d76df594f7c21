// The ILPs (ilp_schedule, swap_ilp) when COIN-OR CBC was not found at configure time: stubs that
// say so.
#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "sched/swap_model.h"

namespace deltamoe::sched {

bool ilp_available() {
  return false;
}

ExactResult ilp_schedule(const Graph&, double, const Order*) {
  fail("sched", "ILP solver not built (install coinor-libcbc-dev and reconfigure)");
}

}  // namespace deltamoe::sched

namespace deltamoe::sched::detail {

SwapIlpResult swap_ilp(const SwapProblem&, const std::vector<char>&, double) {
  fail("sched", "ILP solver not built (install coinor-libcbc-dev and reconfigure)");
}

}  // namespace deltamoe::sched::detail
