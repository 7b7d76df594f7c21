// ilp_schedule when COIN-OR CBC was not found at configure time: a stub that says so.
#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

bool ilp_available() { return false; }

ExactResult ilp_schedule(const Graph&, double, const Order*) {
  fail("sched", "ILP solver not built (install coinor-libcbc-dev and reconfigure)");
}

}  // namespace deltamoe::sched
