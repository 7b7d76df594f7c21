// TEMPORARY stand-ins for the functions of the sp/ilp/exact helpers so this branch links on its
// own. Deleted in the final commit of branch sched-base (the lead merges the real ones).
#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {
SpAnalysis analyze_sp(const Graph&) { return {}; }
std::optional<Order> sp_optimal_order(const Graph&) { return std::nullopt; }
Order sp_ized_order(const Graph& g) { return program_order(g); }
ExactResult ilp_schedule(const Graph&, double, const Order*) { fail("sched", "ILP not built (stub)"); }
bool ilp_available() { return false; }
ExactResult exact_search(const Graph&, double, const Order* inc) {
  ExactResult r;
  if (inc) r.order = *inc;
  r.status = "stub";
  return r;
}
Order local_search(const Graph&, const Order& start, double) { return start; }
}  // namespace deltamoe::sched
