// local_search: re-optimise windows of the order around its peak step with the exact search.
//
// A window is an interval [lo, hi) of the current order. The nodes before it form a down-set,
// so the live bytes at both ends of the window do not depend on how the window is ordered
// (exact_model.h's sub_model), and any reordering of the window leaves every step outside it
// unchanged. Re-solving a window that contains the peak step optimally (best-first search with
// the current window order as incumbent, which it never returns worse) can only lower the
// window's largest need, so the peak never rises. Windows grow (16 ... 512 steps) while the
// peak step resists; the search stops when the largest window cannot lower it or time is up.
#include <algorithm>
#include <chrono>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "sched/exact_search.h"

namespace deltamoe::sched {

Order local_search(const Graph& g, const Order& start, double time_limit_s) {
  using namespace detail;
  check_order(g, start);
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, time_limit_s) * 1e6));
  const Model m = build_model(g);
  const int32_t n = m.n;
  Order order = start;
  std::vector<uint64_t> need;
  std::vector<char> done(n);
  while (std::chrono::steady_clock::now() < deadline) {
    model_profile(m, order, need);
    if (need.empty()) break;
    const int32_t peak_t = static_cast<int32_t>(std::max_element(need.begin(), need.end()) - need.begin());
    if (need[peak_t] <= m.initial) break;  // the initial live set is the peak: nothing to gain
    bool improved = false;
    for (int32_t w = 16; w <= 512 && !improved; w *= 2) {
      const int32_t width = std::min(w, n);
      // Windows ending at, centred on and starting at the peak step.
      for (int32_t where = 0; where < 3 && !improved; ++where) {
        int32_t lo = where == 0 ? peak_t - width + 1 : where == 1 ? peak_t - width / 2 : peak_t;
        lo = std::clamp(lo, 0, n - width);
        const int32_t hi = lo + width;
        std::fill(done.begin(), done.end(), 0);
        for (int32_t t = 0; t < lo; ++t) done[order[t]] = 1;
        std::vector<int32_t> nodes(order.begin() + lo, order.begin() + hi);
        const Model sub = sub_model(m, nodes, done);
        std::vector<int32_t> inc(width);
        for (int32_t i = 0; i < width; ++i) inc[i] = i;
        SearchLimits lim;
        lim.deadline = std::min(deadline, std::chrono::steady_clock::now() + std::chrono::seconds(2));
        lim.max_bytes = size_t{256} << 20;
        const uint64_t before = model_peak(sub, inc);
        const SearchOutcome o = search_model(sub, inc, lim);
        if (o.peak < before) {
          for (int32_t i = 0; i < width; ++i) order[lo + i] = nodes[o.order[i]];
          improved = true;
        }
        if (std::chrono::steady_clock::now() >= deadline) break;
        if (width == n) where = 3;  // the whole order: one window is enough
      }
      if (width == n) break;
    }
    if (!improved) break;
  }
  DELTAMOE_ASSERT(model_peak(m, order) <= model_peak(m, start), "local search made the peak worse");
  return order;
}

}  // namespace deltamoe::sched
