// The exact swap-plan ILP on COIN-OR CBC (see swap_model.h). Built only when CBC is found.
//
//   x_g in {0,1}  gap g is swapped;   y_b in {0,1}  buffer b is written to the host
//   min  sum_g fetch_g x_g + sum_b write_b y_b
//   s.t. sum_{g covers s} bytes_g x_g >= excess_s   for every segment s of over-budget steps
//        x_g <= y_b                                for every gap g of a buffer b with write_b > 0
// Consecutive over-budget steps covered by the same gaps form one segment whose row takes their
// largest excess, so there is one covering row per distinct cover set along the order. Bytes
// are divided by their gcd, so the optimum is an integer number of units and CBC's bound rounds
// up to a proven lower bound.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "deltamoe/core/error.h"
#include "sched/cbc_run.h"
#include "sched/swap_model.h"

namespace deltamoe::sched::detail {
namespace {

constexpr double kInf = std::numeric_limits<double>::max();
// As the schedule ILP (ilp_cbc.cpp): about 1e6 nonzeros per second of the limit are built and
// solved usefully; never more than 2e7.
constexpr double kNonzerosPerSecond = 1e6;
constexpr int64_t kMaxNonzeros = 20'000'000;

}  // namespace

SwapIlpResult swap_ilp(const SwapProblem& p, const std::vector<char>& warm, double time_limit_s) {
  const auto t0 = Clock::now();
  SwapIlpResult r;
  const size_t m = p.gaps.size();
  DELTAMOE_ASSERT(warm.size() == m, "warm start of the wrong size");
  // Segment boundaries: where a gap's cover starts or ends.
  std::vector<int32_t> cut;
  for (const auto& gp : p.gaps) {
    cut.push_back(gp.lo);
    cut.push_back(gp.hi);
  }
  std::sort(cut.begin(), cut.end());
  cut.erase(std::unique(cut.begin(), cut.end()), cut.end());
  const size_t segments = cut.empty() ? 0 : cut.size() - 1;
  int64_t nonzeros = 0;
  for (const auto& gp : p.gaps) {
    const auto a = std::lower_bound(cut.begin(), cut.end(), gp.lo);
    const auto b = std::lower_bound(cut.begin(), cut.end(), gp.hi);
    nonzeros += (b - a) + 2;
  }
  const double limit = std::max(0.0, time_limit_s);
  const int64_t max_nz = std::min<int64_t>(
      kMaxNonzeros, static_cast<int64_t>(kNonzerosPerSecond * std::min(limit, 1e6)) + 2000);
  if (nonzeros > max_nz) {
    r.status = "ilp skipped: " + std::to_string(nonzeros) + " nonzeros > limit " +
               std::to_string(max_nz) + " for " + seconds_text(limit) + " s";
    return r;
  }
  uint64_t unit = 0;
  for (const auto& gp : p.gaps) unit = std::gcd(unit, std::gcd(gp.bytes, gp.fetch_bytes));
  for (const auto& gp : p.gaps) unit = std::gcd(unit, p.write_bytes[gp.buffer]);
  if (unit == 0) unit = 1;
  const double u = static_cast<double>(unit);

  // Columns: x per gap, then y per written buffer.
  std::vector<double> col_lb, col_ub, col_obj;
  for (const auto& gp : p.gaps) {
    col_lb.push_back(0);
    col_ub.push_back(1);
    col_obj.push_back(static_cast<double>(gp.fetch_bytes) / u);
  }
  std::vector<int> ycol(p.write_bytes.size(), -1);
  for (const auto& gp : p.gaps) {
    if (p.write_bytes[gp.buffer] == 0 || ycol[gp.buffer] >= 0) continue;
    ycol[gp.buffer] = static_cast<int>(col_lb.size());
    col_lb.push_back(0);
    col_ub.push_back(1);
    col_obj.push_back(static_cast<double>(p.write_bytes[gp.buffer]) / u);
  }
  const int ncols = static_cast<int>(col_lb.size());
  // Rows, column-wise (CBC's load format): covering rows first, then x <= y.
  std::vector<double> row_lb, row_ub;
  std::vector<int32_t> row_of_seg(segments, -1);
  for (size_t s = 0; s < segments; ++s) {
    uint64_t most = 0;
    for (int32_t j = cut[s]; j < cut[s + 1]; ++j) most = std::max(most, p.excess[j]);
    if (most == 0) continue;
    row_of_seg[s] = static_cast<int32_t>(row_lb.size());
    row_lb.push_back(std::ceil(static_cast<double>(most) / u - 1e-9));
    row_ub.push_back(kInf);
  }
  std::vector<std::vector<std::pair<int, double>>> cols(static_cast<size_t>(ncols));
  for (size_t i = 0; i < m; ++i) {
    const auto& gp = p.gaps[i];
    const size_t a =
        static_cast<size_t>(std::lower_bound(cut.begin(), cut.end(), gp.lo) - cut.begin());
    const size_t b =
        static_cast<size_t>(std::lower_bound(cut.begin(), cut.end(), gp.hi) - cut.begin());
    for (size_t s = a; s < b; ++s)
      if (row_of_seg[s] >= 0)
        cols[i].emplace_back(row_of_seg[s], static_cast<double>(gp.bytes) / u);
    if (ycol[gp.buffer] >= 0) {
      const int row = static_cast<int>(row_lb.size());
      row_lb.push_back(-kInf);
      row_ub.push_back(0);
      cols[i].emplace_back(row, 1.0);
      cols[static_cast<size_t>(ycol[gp.buffer])].emplace_back(row, -1.0);
    }
  }
  std::vector<CoinBigIndex> start(static_cast<size_t>(ncols) + 1, 0);
  std::vector<int> index;
  std::vector<double> value;
  for (int c = 0; c < ncols; ++c) {
    for (const auto& [row, v] : cols[c]) {
      index.push_back(row);
      value.push_back(v);
    }
    start[c + 1] = static_cast<CoinBigIndex>(index.size());
  }
  const int nrows = static_cast<int>(row_lb.size());
  CbcPtr cbc(Cbc_newModel());
  Cbc_loadProblem(cbc.get(), ncols, nrows, start.data(), index.data(), value.data(), col_lb.data(),
                  col_ub.data(), col_obj.data(), row_lb.data(), row_ub.data());
  for (int c = 0; c < ncols; ++c) Cbc_setInteger(cbc.get(), c);
  std::vector<double> start_val(static_cast<size_t>(ncols), 0.0);
  std::vector<int> start_idx(static_cast<size_t>(ncols));
  std::iota(start_idx.begin(), start_idx.end(), 0);
  for (size_t i = 0; i < m; ++i)
    if (warm[i]) {
      start_val[i] = 1.0;
      if (ycol[p.gaps[i].buffer] >= 0) start_val[static_cast<size_t>(ycol[p.gaps[i].buffer])] = 1.0;
    }
  Cbc_setMIPStartI(cbc.get(), ncols, start_idx.data(), start_val.data());
  const std::string sizes = std::to_string(m) + " gaps, " + std::to_string(ncols) + " columns, " +
                            std::to_string(nrows) + " rows, " + std::to_string(nonzeros) +
                            " nonzeros";
  const double left = limit - seconds_since(t0);
  if (left < 0.05) {
    r.status = "time limit (before the solve; " + sizes + ")";
    return r;
  }
  Cbc_setObjSense(cbc.get(), 1);
  cbc_set_limits(cbc.get(), left);
  Cbc_setAllowableGap(cbc.get(), 0.5);  // integer objective in units
  Cbc_setAllowableFractionGap(cbc.get(), 0.0);
  const CbcOutcome out = cbc_solve_until(cbc.get(), t0 + seconds_duration(limit));
  if (out.killed) {
    r.status = "time limit (CBC stopped at the deadline in " + out.phase + "; " + sizes + ")";
    return r;
  }
  if (static_cast<int>(out.solution.size()) == ncols) {
    r.chosen.assign(m, 0);
    for (size_t i = 0; i < m; ++i) r.chosen[i] = out.solution[i] > 0.5 ? 1 : 0;
  }
  if (std::isfinite(out.bound) && out.bound > 0 && out.bound < 1e29)
    r.lower_bound = static_cast<uint64_t>(std::ceil(out.bound - 1e-6)) * unit;
  if (out.optimal && !r.chosen.empty())
    r.lower_bound =
        std::max(r.lower_bound, static_cast<uint64_t>(std::llround(out.objective)) * unit);
  r.proven_optimal = out.optimal;
  const bool timed_out = out.seconds_limit || (!out.optimal && seconds_since(t0) >= limit);
  r.status = std::string(out.optimal ? "optimal"
                         : timed_out ? "time limit"
                                     : "stopped") +
             " (CBC, " + sizes + ", " + std::to_string(out.nodes) + " nodes, " +
             seconds_text(seconds_since(t0)) + " s)";
  return r;
}

}  // namespace deltamoe::sched::detail
