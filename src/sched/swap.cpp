// Swap plans under a memory budget (see swap.h for the model, docs/sched.md for the method).
//
// The problem is a covering problem over the steps whose need exceeds the budget: each
// swappable gap covers a contiguous run of steps with its buffer's bytes. The greedy is the
// classic one for weighted set multicover (take the gap with the most uncovered excess per byte
// moved, lazily re-scored; then drop gaps made redundant, costliest first); the ILP
// (swap_ilp_cbc.cpp) measures its gap.
#include "deltamoe/sched/swap.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <queue>
#include <string>
#include <utility>

#include "deltamoe/core/error.h"
#include "deltamoe/core/units.h"
#include "deltamoe/sched/schedule.h"
#include "sched/swap_model.h"

namespace deltamoe::sched {
namespace {

constexpr const char* kComp = "sched";
// The greedy's local search stops after this long (it usually ends sooner, at a local optimum).
constexpr double kLocalSearchSeconds = 1.0;

// Positions of the uses of every movable buffer (see swap.h): -1 for a freeable input's
// start, its producer's position otherwise, then its readers' positions; sorted, unique.
std::vector<int32_t> uses_of(const Graph& g, const std::vector<int32_t>& pos, int32_t b) {
  std::vector<int32_t> u;
  if (g.is_free_input(b)) {
    u.push_back(-1);
    // An unread input is freed after its own step (the memory model), its last "use".
    if (g.buffer_readers[b].empty()) u.push_back(pos[b]);
  } else {
    u.push_back(pos[b]);
  }
  for (int32_t r : g.buffer_readers[b]) u.push_back(pos[r]);
  std::sort(u.begin(), u.end());
  u.erase(std::unique(u.begin(), u.end()), u.end());
  return u;
}

// Every gap of every movable buffer whose off range is not empty.
std::vector<detail::SwapGap> all_gaps(const Graph& g, const Order& order, int32_t k,
                                      bool outputs_to_host) {
  const int32_t n = g.size();
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int32_t t = 0; t < n; ++t) pos[order[t]] = t;
  std::vector<detail::SwapGap> gaps;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1 || g.buffer_bytes(b) == 0) continue;
    const uint64_t bytes = g.buffer_bytes(b);
    const std::vector<int32_t> u = uses_of(g, pos, b);
    auto add = [&](int32_t after, int32_t before) {
      detail::SwapGap gap;
      gap.buffer = b;
      gap.evict_after = after;
      gap.fetch_before = before;
      gap.off_first = after < 0 ? -1 : after + 1 + k;
      gap.off_last = before >= n ? n - 1 : before - 1 - k;
      gap.bytes = bytes;
      gap.fetch_bytes = before >= n ? 0 : bytes;
      if (gap.off_first <= gap.off_last) gaps.push_back(gap);
    };
    for (size_t i = 0; i + 1 < u.size(); ++i) add(u[i], u[i + 1]);
    if (outputs_to_host && g.buffer_output[b]) add(u.back(), n);
  }
  return gaps;
}

uint64_t write_cost(const Graph& g, int32_t b) {
  return g.is_free_input(b) ? 0 : g.buffer_bytes(b);
}

// A choice of gaps and what it leaves uncovered, with the moves the greedy and the local
// search make on it.
class Cover {
  static std::shared_ptr<const std::vector<std::vector<int32_t>>> gaps_per_buffer(
      const detail::SwapProblem& p) {
    auto of = std::make_shared<std::vector<std::vector<int32_t>>>(p.write_bytes.size());
    for (size_t i = 0; i < p.gaps.size(); ++i)
      (*of)[p.gaps[i].buffer].push_back(static_cast<int32_t>(i));
    return of;
  }

 public:
  explicit Cover(const detail::SwapProblem& p)
      : p_(&p),
        left_(p.excess.begin(), p.excess.end()),
        uncovered_(static_cast<int64_t>(p.excess.size())),
        chosen_(p.gaps.size(), 0),
        count_(p.write_bytes.size(), 0),
        of_buffer_(gaps_per_buffer(p)) {}

  const std::vector<char>& chosen() const { return chosen_; }
  bool covered() const { return uncovered_ == 0; }

  // Bytes that taking gap i adds now (its buffer's write-out unless already written).
  uint64_t cost(int32_t i) const {
    const auto& gp = p_->gaps[i];
    return gp.fetch_bytes + (count_[gp.buffer] ? 0 : p_->write_bytes[gp.buffer]);
  }
  // Bytes that dropping chosen gap i saves.
  uint64_t saving(int32_t i) const {
    const auto& gp = p_->gaps[i];
    return gp.fetch_bytes + (count_[gp.buffer] == 1 ? p_->write_bytes[gp.buffer] : 0);
  }
  // Uncovered excess gap i would cover, per byte it adds.
  double ratio(int32_t i) const {
    const auto& gp = p_->gaps[i];
    double benefit = 0;
    for (int32_t j = gp.lo; j < gp.hi; ++j)
      if (left_[j] > 0)
        benefit += static_cast<double>(std::min<int64_t>(left_[j], static_cast<int64_t>(gp.bytes)));
    const uint64_t c = cost(i);
    return c == 0 ? benefit * 1e30 : benefit / static_cast<double>(c);
  }

  void add(int32_t i) {
    DELTAMOE_ASSERT(!chosen_[i], "gap chosen twice");
    chosen_[i] = 1;
    ++count_[p_->gaps[i].buffer];
    shift(i, -static_cast<int64_t>(p_->gaps[i].bytes));
  }
  void remove(int32_t i) {
    DELTAMOE_ASSERT(chosen_[i], "gap not chosen");
    chosen_[i] = 0;
    --count_[p_->gaps[i].buffer];
    shift(i, static_cast<int64_t>(p_->gaps[i].bytes));
  }

  // Lazy greedy over `allowed` (flags per gap) until every step is covered; false if the
  // allowed gaps cannot cover them.
  bool greedy(const std::vector<char>& allowed) {
    std::priority_queue<std::pair<double, int32_t>> heap;
    for (size_t i = 0; i < p_->gaps.size(); ++i)
      if (allowed[i] && !chosen_[i])
        heap.emplace(ratio(static_cast<int32_t>(i)), static_cast<int32_t>(i));
    while (uncovered_ > 0 && !heap.empty()) {
      const int32_t i = heap.top().second;
      heap.pop();
      if (chosen_[i]) continue;
      const double now = ratio(i);
      if (now <= 0) continue;
      if (!heap.empty() && now < heap.top().first) {  // stale: re-file it
        heap.emplace(now, i);
        continue;
      }
      const bool first_of_buffer = count_[p_->gaps[i].buffer] == 0;
      add(i);
      if (first_of_buffer)  // the buffer's other gaps got cheaper: re-file them
        for (int32_t o : (*of_buffer_)[p_->gaps[i].buffer])
          if (allowed[o] && !chosen_[o]) heap.emplace(ratio(o), o);
    }
    return uncovered_ == 0;
  }

  // Reverse deletion: every chosen gap whose steps keep their cover without it goes, the
  // largest saving first (`keep`, when >= 0, last).
  void prune(int32_t keep = -1) {
    for (int pass = 0; pass < 2; ++pass) {
      std::vector<std::pair<uint64_t, int32_t>> by_saving;
      for (size_t i = 0; i < p_->gaps.size(); ++i)
        if (chosen_[i])
          by_saving.emplace_back(saving(static_cast<int32_t>(i)), static_cast<int32_t>(i));
      std::sort(by_saving.begin(), by_saving.end(), std::greater<>());
      const auto k = std::find_if(by_saving.begin(), by_saving.end(),
                                  [&](const auto& e) { return e.second == keep; });
      if (k != by_saving.end()) std::rotate(k, k + 1, by_saving.end());
      bool dropped = false;
      for (const auto& [unused, i] : by_saving) {
        const auto& gp = p_->gaps[i];
        bool redundant = true;
        for (int32_t j = gp.lo; j < gp.hi && redundant; ++j)
          redundant = left_[j] + static_cast<int64_t>(gp.bytes) <= 0;
        if (!redundant) continue;
        remove(i);
        dropped = true;
      }
      if (!dropped) break;
    }
  }

 private:
  void shift(int32_t i, int64_t delta) {
    const auto& gp = p_->gaps[i];
    for (int32_t j = gp.lo; j < gp.hi; ++j) {
      const bool was = left_[j] > 0;
      left_[j] += delta;
      uncovered_ += (left_[j] > 0) - was;
    }
  }

  const detail::SwapProblem* p_;
  std::vector<int64_t> left_;  // uncovered excess per over-budget step (<= 0: covered)
  int64_t uncovered_;
  std::vector<char> chosen_;
  std::vector<int32_t> count_;                                          // chosen gaps per buffer
  std::shared_ptr<const std::vector<std::vector<int32_t>>> of_buffer_;  // gaps per buffer
};

// The weighted set-multicover greedy with reverse deletion, then a local search until
// `seconds` pass: drop one chosen gap (largest saving first), re-cover what it leaves with the
// greedy over the other gaps, prune, and keep the result when it moves fewer bytes.
std::vector<char> greedy_cover(const detail::SwapProblem& p, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(seconds));
  const size_t m = p.gaps.size();
  Cover c(p);
  std::vector<char> allowed(m, 1);
  const bool ok = c.greedy(allowed);
  DELTAMOE_ASSERT(ok, "greedy swap cover left steps over the budget");
  c.prune();
  uint64_t best = detail::swap_cost(p, c.chosen());
  for (bool improved = true; improved;) {
    improved = false;
    std::vector<std::pair<uint64_t, int32_t>> order;
    for (size_t i = 0; i < m; ++i)
      if (c.chosen()[i])
        order.emplace_back(c.saving(static_cast<int32_t>(i)), static_cast<int32_t>(i));
    std::sort(order.begin(), order.end(), std::greater<>());
    for (const auto& [unused, g] : order) {
      if (std::chrono::steady_clock::now() >= deadline) return c.chosen();
      if (!c.chosen()[g]) continue;
      const Cover before = c;
      c.remove(g);
      allowed[g] = 0;
      const bool covered = c.greedy(allowed);
      allowed[g] = 1;
      if (covered) c.prune();
      const uint64_t cost = covered ? detail::swap_cost(p, c.chosen()) : UINT64_MAX;
      if (cost < best) {
        best = cost;
        improved = true;
      } else {
        c = before;
      }
    }
    // Add one gap (largest first) and prune the others it makes redundant: one large gap
    // can replace several small ones, which dropping one gap at a time never finds.
    std::vector<std::pair<uint64_t, int32_t>> unused;
    for (size_t i = 0; i < m; ++i)
      if (!c.chosen()[i]) unused.emplace_back(p.gaps[i].bytes, static_cast<int32_t>(i));
    std::sort(unused.begin(), unused.end(), std::greater<>());
    for (const auto& [bytes, g] : unused) {
      if (std::chrono::steady_clock::now() >= deadline) return c.chosen();
      if (c.chosen()[g]) continue;
      const Cover before = c;
      c.add(g);
      c.prune(g);
      const uint64_t cost = detail::swap_cost(p, c.chosen());
      if (cost < best) {
        best = cost;
        improved = true;
      } else {
        c = before;
      }
    }
  }
  return c.chosen();
}

}  // namespace

namespace detail {

uint64_t swap_cost(const SwapProblem& p, const std::vector<char>& chosen) {
  uint64_t c = 0;
  std::vector<char> written(p.write_bytes.size(), 0);
  for (size_t i = 0; i < p.gaps.size(); ++i) {
    if (!chosen[i]) continue;
    c += p.gaps[i].fetch_bytes;
    if (!written[p.gaps[i].buffer]) {
      written[p.gaps[i].buffer] = 1;
      c += p.write_bytes[p.gaps[i].buffer];
    }
  }
  return c;
}

}  // namespace detail

std::vector<uint64_t> swapped_profile(const Graph& g, const Order& order,
                                      const std::vector<Swap>& swaps, int32_t overlap_steps,
                                      bool outputs_to_host, uint64_t* initial) {
  SimResult sim;
  std::vector<uint64_t> need = memory_profile(g, order, &sim);  // validates the order
  const int32_t n = g.size();
  uint64_t init = sim.initial_live;
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int32_t t = 0; t < n; ++t) pos[order[t]] = t;
  std::vector<std::vector<std::pair<int32_t, int32_t>>> seen(static_cast<size_t>(n));
  std::vector<int64_t> diff(static_cast<size_t>(n) + 1, 0);
  for (size_t i = 0; i < swaps.size(); ++i) {
    const Swap& s = swaps[i];
    auto bad = [&](const std::string& why) {
      fail(kComp, "swap ", i, " (buffer ", s.buffer, "): ", why);
    };
    if (s.buffer < 0 || s.buffer >= n) bad("no such buffer");
    const int32_t b = s.buffer;
    if (g.nodes[b].view_of != -1 || g.buffer_bytes(b) == 0)
      bad("is a view, persistent or empty: it cannot move");
    if (s.bytes != g.buffer_bytes(b)) bad("bytes differ from the buffer's size");
    const std::vector<int32_t> u = uses_of(g, pos, b);
    const auto it = std::find(u.begin(), u.end(), s.evict_after);
    if (it == u.end()) bad("evict_after is not a use of the buffer");
    const bool to_end = it + 1 == u.end();
    if (to_end) {
      if (!(outputs_to_host && g.buffer_output[b] && s.fetch_before == n))
        bad("evicted after its last use but is not an output allowed to end on the host");
    } else if (s.fetch_before != *(it + 1)) {
      bad("fetch_before is not the next use after evict_after");
    }
    const int32_t first = s.evict_after < 0 ? -1 : s.evict_after + 1 + overlap_steps;
    const int32_t last = s.fetch_before >= n ? n - 1 : s.fetch_before - 1 - overlap_steps;
    if (s.off_first != first || s.off_last != last || first > last)
      bad("off range does not follow from its uses and the overlap");
    for (const auto& [f, l] : seen[b])
      if (f == first && l == last) bad("the same gap is swapped twice");
    seen[b].emplace_back(first, last);
    if (first < 0) {
      init -= s.bytes;
      diff[0] -= static_cast<int64_t>(s.bytes);
    } else {
      diff[first] -= static_cast<int64_t>(s.bytes);
    }
    diff[last + 1] += static_cast<int64_t>(s.bytes);
  }
  int64_t d = 0;
  for (int32_t t = 0; t < n; ++t) {
    d += diff[t];
    need[t] = static_cast<uint64_t>(static_cast<int64_t>(need[t]) + d);
  }
  if (initial) *initial = init;
  return need;
}

SwapPlan plan_swaps(const Graph& g, const Order& order, const SwapOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  DELTAMOE_CHECK(opt.overlap_steps >= 0, kComp, "swap overlap steps must be >= 0, got ",
                 opt.overlap_steps);
  DELTAMOE_CHECK(opt.budget_bytes > 0 || (opt.budget_fraction > 0 && opt.budget_fraction <= 1),
                 kComp, "swap budget must be > 0 bytes or a share in (0, 1] of the peak, got ",
                 opt.budget_bytes, " bytes, share ", opt.budget_fraction);
  DELTAMOE_CHECK(opt.method == "auto" || opt.method == "greedy" || opt.method == "ilp", kComp,
                 "swap method '", opt.method, "' is not one of auto, greedy, ilp");
  DELTAMOE_CHECK(
      opt.method != "ilp" || ilp_available(), kComp,
      "swap method ilp: ILP solver not built (install coinor-libcbc-dev and reconfigure)");
  DELTAMOE_CHECK(opt.time_limit_s >= 0, kComp, "swap time limit must be >= 0 s");
  SimResult sim;
  const std::vector<uint64_t> profile = memory_profile(g, order, &sim);
  const int32_t n = g.size();
  SwapPlan plan;
  // Axis a = position + 1: a = 0 is the initial live set.
  std::vector<uint64_t> need(static_cast<size_t>(n) + 1);
  need[0] = sim.initial_live;
  for (int32_t t = 0; t < n; ++t) need[t + 1] = profile[t];
  plan.order_peak_bytes = sim.peak;
  const uint64_t budget =
      opt.budget_bytes > 0
          ? opt.budget_bytes
          : std::max<uint64_t>(1, static_cast<uint64_t>(std::floor(opt.budget_fraction *
                                                                   static_cast<double>(sim.peak))));
  plan.budget_bytes = budget;
  std::vector<detail::SwapGap> gaps = all_gaps(g, order, opt.overlap_steps, opt.outputs_to_host);
  // The least budget: every step minus everything that could be off the device then.
  std::vector<int64_t> diff(need.size() + 1, 0);
  for (const auto& gp : gaps) {
    diff[gp.off_first + 1] += static_cast<int64_t>(gp.bytes);
    diff[gp.off_last + 2] -= static_cast<int64_t>(gp.bytes);
  }
  int64_t movable = 0;
  for (size_t a = 0; a < need.size(); ++a) {
    movable += diff[a];
    plan.min_budget_bytes =
        std::max(plan.min_budget_bytes, need[a] - static_cast<uint64_t>(movable));
  }
  detail::SwapProblem prob;
  std::vector<int32_t> over;  // axis positions over the budget
  for (size_t a = 0; a < need.size(); ++a)
    if (need[a] > budget) {
      over.push_back(static_cast<int32_t>(a));
      prob.excess.push_back(need[a] - budget);
    }
  plan.steps_over_budget = static_cast<int64_t>(over.size());
  auto finish = [&]() -> SwapPlan& {
    plan.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return plan;
  };
  if (over.empty()) {
    plan.feasible = true;
    plan.method = "none";
    plan.peak_bytes = plan.order_peak_bytes;
    return finish();
  }
  if (plan.min_budget_bytes > budget) return finish();
  plan.feasible = true;
  for (auto& gp : gaps) {
    gp.lo = static_cast<int32_t>(std::lower_bound(over.begin(), over.end(), gp.off_first + 1) -
                                 over.begin());
    gp.hi = static_cast<int32_t>(std::upper_bound(over.begin(), over.end(), gp.off_last + 1) -
                                 over.begin());
    if (gp.lo < gp.hi) prob.gaps.push_back(gp);
  }
  plan.candidates = static_cast<int64_t>(prob.gaps.size());
  prob.write_bytes.resize(static_cast<size_t>(n));
  for (int32_t b = 0; b < n; ++b) prob.write_bytes[b] = write_cost(g, b);

  std::vector<char> chosen = greedy_cover(prob, kLocalSearchSeconds);
  plan.greedy_bytes_moved = detail::swap_cost(prob, chosen);
  plan.method = "greedy";
  if (opt.method != "greedy" && ilp_available()) {
    plan.ilp_ran = true;
    const detail::SwapIlpResult ilp = detail::swap_ilp(prob, chosen, opt.time_limit_s);
    plan.ilp_status = ilp.status;
    plan.ilp_lower_bound_bytes = ilp.lower_bound;
    if (!ilp.chosen.empty()) {
      plan.ilp_has_plan = true;
      plan.ilp_bytes_moved = detail::swap_cost(prob, ilp.chosen);
      if (plan.ilp_bytes_moved < plan.greedy_bytes_moved) {
        chosen = ilp.chosen;
        plan.method = "ilp";
      }
    }
  }
  std::vector<char> written(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < prob.gaps.size(); ++i) {
    if (!chosen[i]) continue;
    const auto& gp = prob.gaps[i];
    plan.swaps.push_back(
        {gp.buffer, gp.evict_after, gp.fetch_before, gp.off_first, gp.off_last, gp.bytes});
    plan.bytes_from_host += gp.fetch_bytes;
    if (!written[gp.buffer]) {
      written[gp.buffer] = 1;
      plan.bytes_to_host += prob.write_bytes[gp.buffer];
    }
  }
  std::sort(plan.swaps.begin(), plan.swaps.end(), [](const Swap& a, const Swap& b) {
    return std::pair(a.off_first, a.buffer) < std::pair(b.off_first, b.buffer);
  });
  plan.proven_optimal =
      plan.ilp_lower_bound_bytes > 0 && plan.bytes_moved() <= plan.ilp_lower_bound_bytes;
  // The plan, re-checked by the independent bookkeeping of swapped_profile.
  uint64_t init = 0;
  const std::vector<uint64_t> after =
      swapped_profile(g, order, plan.swaps, opt.overlap_steps, opt.outputs_to_host, &init);
  plan.peak_bytes =
      std::max(init, after.empty() ? 0 : *std::max_element(after.begin(), after.end()));
  DELTAMOE_ASSERT(plan.peak_bytes <= budget, "swap plan exceeds its budget");
  return finish();
}

nlohmann::ordered_json swap_report_json(const Graph& g, const Order& order, const SwapPlan& p,
                                        const SwapOptions& opt) {
  using nlohmann::ordered_json;
  const int32_t n = g.size();
  auto id_at = [&](int32_t position) {
    return position < 0 || position >= n ? ordered_json(nullptr)
                                         : ordered_json(g.nodes[order[position]].id);
  };
  ordered_json j;
  j["budget_bytes"] = p.budget_bytes;
  j["order_peak_bytes"] = p.order_peak_bytes;
  j["budget_fraction_of_peak"] = p.order_peak_bytes ? static_cast<double>(p.budget_bytes) /
                                                          static_cast<double>(p.order_peak_bytes)
                                                    : 0.0;
  j["feasible"] = p.feasible;
  j["min_budget_bytes"] = p.min_budget_bytes;
  j["peak_bytes"] = p.feasible ? ordered_json(p.peak_bytes) : ordered_json(nullptr);
  j["overlap_steps"] = opt.overlap_steps;
  j["outputs_to_host"] = opt.outputs_to_host;
  j["method"] = p.method;
  j["bytes_moved"] = p.bytes_moved();
  j["bytes_to_host"] = p.bytes_to_host;
  j["bytes_from_host"] = p.bytes_from_host;
  j["bandwidth_gb_s"] = opt.bandwidth_gb_s;
  j["transfer_ms"] = opt.bandwidth_gb_s > 0
                         ? static_cast<double>(p.bytes_moved()) / (opt.bandwidth_gb_s * 1e6)
                         : 0.0;
  j["greedy_bytes_moved"] = p.greedy_bytes_moved;
  if (p.ilp_ran) {
    j["ilp"] = {
        {"status", p.ilp_status},
        {"bytes_moved", p.ilp_has_plan ? ordered_json(p.ilp_bytes_moved) : ordered_json(nullptr)},
        {"lower_bound_bytes", p.ilp_lower_bound_bytes}};
  } else {
    j["ilp"] = nullptr;
  }
  j["proven_optimal"] = p.proven_optimal;
  j["steps_over_budget"] = p.steps_over_budget;
  j["candidates"] = p.candidates;
  j["seconds"] = p.seconds;
  ordered_json list = ordered_json::array();
  for (const Swap& s : p.swaps) {
    list.push_back({{"buffer", g.nodes[s.buffer].id},
                    {"name", g.nodes[s.buffer].name},
                    {"bytes", s.bytes},
                    {"evict_after", id_at(s.evict_after)},
                    {"fetch_before", id_at(s.fetch_before)},
                    {"off_first_step", s.off_first},
                    {"off_last_step", s.off_last}});
  }
  j["swaps"] = std::move(list);
  return j;
}

}  // namespace deltamoe::sched
