// ilp_schedule on COIN-OR CBC (C interface). Built only when CBC is found (see CMakeLists).
//
// Formulation (cumulative time-indexed, in the spirit of OLLA/MODeL): n steps, one node per
// step. D[v,t] in {0,1} = "v has run at step t or before"; it exists only inside v's window
// [asap(v), alap(v)) (asap = #ancestors, alap = n-1-#descendants; D is 0 before the window
// and 1 from alap on).
//   D[v,t-1] <= D[v,t]               (once run, stays run)
//   sum_v D[v,t] = t+1               (exactly one node per step)
//   D[v,t] <= D[u,t-1]  for u -> v   (inputs strictly earlier)
// A freeable buffer b allocated by a with readers R is counted at step t iff a has run by t
// and some reader has not run by t-1 (frees happen after a step):
//   L[b,t] >= D[a,t] - D[r,t-1]  for every r in R,  0 <= L[b,t] <= 1
// (minimising the peak drives L down to exactly that indicator). Never-freed buffers count
// D[a,t]; initially-live buffers have D[a,t] = 1. Workspace counts at the node's own step,
// ws(v)·(D[v,t] - D[v,t-1]). Then  sum_b bytes(b)·L[b,t] + ... <= P  for all t; minimise P.
// Bytes are divided by their gcd so the optimum is an integer and the solver's best bound can
// be rounded up to a proven lower bound.
//
// Time limit (docs/sched.md, "ILP and the time limit"): the model's size is counted first and
// the ILP skipped when it could not be built in a fraction of the limit; the model is handed to
// CBC in one Cbc_loadProblem; the solve runs in a forked child killed at the deadline, because
// CBC's root LP and MIP-start completion never check the clock.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "sched/cbc_run.h"
#include "sched/exact_model.h"

namespace deltamoe::sched {
namespace {

using detail::Clock;
using detail::Model;
using detail::seconds_text;
constexpr double kInf = std::numeric_limits<double>::max();
// The model is built (and copied into CBC) at several million nonzeros per second on the
// reference machine (docs/sched.md, "ILP and the time limit"); allowing 1e6 per second of the
// limit keeps the build within ~20% of it. Above 2e7 nonzeros (~1 GB in CBC) it is never built.
constexpr double kIlpNonzerosPerSecond = 1e6;
constexpr int64_t kIlpMaxNonzeros = 20'000'000;

// A linear expression over columns plus a constant (duplicates merged when emitted).
struct Expr {
  std::vector<int> cols;
  std::vector<double> coefs;
  double constant = 0;
  void add(int c, double k) {
    cols.push_back(c);
    coefs.push_back(k);
  }
};

// The model's size, counted from the windows alone (no allocation), so a model too big to
// build and solve within the time limit is skipped before any work.
struct IlpSize {
  int64_t binaries = 0;    // D columns
  int64_t continuous = 0;  // L columns (+ P)
  int64_t rows = 0;
  int64_t nonzeros = 0;  // upper bound
};

class IlpBuilder {
 public:
  IlpBuilder(const Model& m, double unit) : m_(m), unit_(unit) {
    std::vector<int32_t> anc, desc;
    detail::count_relatives(m, {}, anc, desc);
    asap_.resize(m.n);
    alap_.resize(m.n);
    dcol_.resize(m.n);
    for (int32_t v = 0; v < m.n; ++v) {
      asap_[v] = anc[v];
      alap_[v] = m.n - 1 - desc[v];
      DELTAMOE_ASSERT(asap_[v] <= alap_[v], "empty window");
    }
  }

  IlpSize size() const {
    IlpSize s;
    const int32_t n = m_.n;
    s.continuous = 1;
    for (int32_t v = 0; v < n; ++v) {
      const int64_t w = alap_[v] - asap_[v];
      s.binaries += w;
      s.rows += std::max<int64_t>(0, w - 1);
      s.nonzeros += 2 * std::max<int64_t>(0, w - 1) + w;  // monotone rows + step rows
      for (int32_t u : m_.preds[v]) {
        (void)u;
        s.rows += w;
        s.nonzeros += 2 * w;
      }
      if (m_.ws[v]) s.nonzeros += 2 * w;
    }
    s.rows += 2 * static_cast<int64_t>(n) + 1;
    for (const auto& b : m_.buffers) {
      if (b.never_freed) {
        if (b.alloc >= 0) s.nonzeros += alap_[b.alloc] - asap_[b.alloc];
        continue;
      }
      const int32_t start = b.alloc < 0 ? 0 : asap_[b.alloc];
      int32_t end = 0;
      for (int32_t r : b.readers) end = std::max(end, alap_[r]);
      const int64_t span = std::max<int64_t>(0, std::min(end, n - 1) - start + 1);
      s.continuous += span;
      s.rows += span * static_cast<int64_t>(b.readers.size());
      s.nonzeros += span * (1 + 3 * static_cast<int64_t>(b.readers.size()));
    }
    s.nonzeros += n;  // P in the memory rows
    return s;
  }

  int peak_col() const { return pcol_; }

  // D(v,t) as an expression (a constant outside the window).
  void add_d(Expr& e, int32_t v, int32_t t, double k) const {
    if (t < asap_[v]) return;
    if (t >= alap_[v]) {
      e.constant += k;
      return;
    }
    e.add(dcol_[v][t - asap_[v]], k);
  }

  void build() {
    const int32_t n = m_.n;
    pcol_ = new_col(0, 1e30, 1.0, false);
    for (int32_t v = 0; v < n; ++v)
      for (int32_t t = asap_[v]; t < alap_[v]; ++t) dcol_[v].push_back(new_col(0, 1, 0, true));
    for (int32_t v = 0; v < n; ++v)
      for (int32_t t = asap_[v] + 1; t < alap_[v]; ++t) {
        Expr e;
        add_d(e, v, t, 1);
        add_d(e, v, t - 1, -1);
        row(e, 'G', 0);
      }
    for (int32_t t = 0; t < n; ++t) {
      Expr e;
      for (int32_t v = 0; v < n; ++v) add_d(e, v, t, 1);
      row(e, 'E', t + 1);
    }
    for (int32_t v = 0; v < n; ++v)
      for (int32_t u : m_.preds[v])
        for (int32_t t = asap_[v]; t < alap_[v]; ++t) {
          Expr e;
          add_d(e, u, t - 1, 1);
          add_d(e, v, t, -1);
          row(e, 'G', 0);
        }
    // Memory per step.
    std::vector<Expr> mem(n);
    for (size_t bi = 0; bi < m_.buffers.size(); ++bi) {
      const auto& b = m_.buffers[bi];
      const double bytes = static_cast<double>(b.bytes) / unit_;
      if (b.never_freed) {
        for (int32_t t = 0; t < n; ++t) {
          if (b.alloc < 0)
            mem[t].constant += bytes;
          else
            add_d(mem[t], b.alloc, t, bytes);
        }
        continue;
      }
      const int32_t start = b.alloc < 0 ? 0 : asap_[b.alloc];
      int32_t end = 0;  // last step it can be live
      for (int32_t r : b.readers) end = std::max(end, alap_[r]);
      for (int32_t t = start; t <= end && t < n; ++t) {
        Expr base;
        if (b.alloc < 0)
          base.constant = 1;
        else
          add_d(base, b.alloc, t, 1);
        const int col = new_col(0, 1, 0, false);
        lcols_.push_back({static_cast<int32_t>(bi), t, col});
        for (int32_t r : b.readers) {
          Expr e = base;
          add_d(e, r, t - 1, -1);
          // L - D[a,t] + D[r,t-1] >= 0
          for (double& c : e.coefs) c = -c;
          e.constant = -e.constant;
          e.add(col, 1);
          row(e, 'G', 0);
        }
        mem[t].add(col, bytes);
      }
    }
    for (int32_t t = 0; t < n; ++t) {
      for (int32_t v = 0; v < n; ++v) {
        if (m_.ws[v] == 0) continue;
        const double w = static_cast<double>(m_.ws[v]) / unit_;
        add_d(mem[t], v, t, w);
        add_d(mem[t], v, t - 1, -w);
      }
      mem[t].add(pcol_, -1);
      row(mem[t], 'L', 0);
    }
    Expr init;
    init.add(pcol_, 1);
    row(init, 'G', static_cast<double>(m_.initial) / unit_);
  }

  // Hands the whole model to CBC at once (column-major), which is linear in its size; adding
  // rows one by one (Cbc_addRow) re-packs the matrix each time and was quadratic.
  void load(Cbc_Model* cbc) const {
    const int ncols = static_cast<int>(col_lb_.size());
    const int nrows = static_cast<int>(row_lb_.size());
    std::vector<CoinBigIndex> start(ncols + 1, 0);
    for (int c : row_idx_) ++start[c + 1];
    for (int c = 0; c < ncols; ++c) start[c + 1] += start[c];
    std::vector<int> index(row_idx_.size());
    std::vector<double> value(row_idx_.size());
    std::vector<CoinBigIndex> fill(start.begin(), start.end() - 1);
    for (int r = 0; r < nrows; ++r)
      for (size_t k = row_start_[r]; k < row_start_[r + 1]; ++k) {
        const CoinBigIndex at = fill[row_idx_[k]]++;
        index[at] = r;
        value[at] = row_val_[k];
      }
    Cbc_loadProblem(cbc, ncols, nrows, start.data(), index.data(), value.data(), col_lb_.data(),
                    col_ub_.data(), col_obj_.data(), row_lb_.data(), row_ub_.data());
    for (int c = 0; c < ncols; ++c)
      if (col_int_[c]) Cbc_setInteger(cbc, c);
  }

  // Column values of the solution that runs `order`, for the MIP start.
  void mip_start(Cbc_Model* cbc, const std::vector<int32_t>& order, uint64_t peak) const {
    std::vector<int32_t> pos(m_.n);
    for (int32_t t = 0; t < m_.n; ++t) pos[order[t]] = t;
    std::vector<double> val(col_lb_.size(), 0.0);
    val[pcol_] = static_cast<double>(peak) / unit_;
    for (int32_t v = 0; v < m_.n; ++v)
      for (int32_t t = asap_[v]; t < alap_[v]; ++t)
        val[dcol_[v][t - asap_[v]]] = t >= pos[v] ? 1 : 0;
    for (const auto& lc : lcols_) {
      const auto& b = m_.buffers[lc.buf];
      const bool alloc = b.alloc < 0 || pos[b.alloc] <= lc.t;
      bool pending = false;
      for (int32_t r : b.readers) pending = pending || pos[r] > lc.t - 1;
      val[lc.col] = alloc && pending ? 1 : 0;
    }
    std::vector<int> idx(val.size());
    std::iota(idx.begin(), idx.end(), 0);
    Cbc_setMIPStartI(cbc, static_cast<int>(idx.size()), idx.data(), val.data());
  }

  std::vector<int32_t> extract(const double* sol) const {
    std::vector<std::pair<int32_t, int32_t>> at(m_.n);
    for (int32_t v = 0; v < m_.n; ++v) {
      int32_t t = alap_[v];
      for (int32_t s = asap_[v]; s < alap_[v]; ++s)
        if (sol[dcol_[v][s - asap_[v]]] > 0.5) {
          t = s;
          break;
        }
      at[v] = {t, v};
    }
    std::sort(at.begin(), at.end());
    std::vector<int32_t> order(m_.n);
    for (int32_t i = 0; i < m_.n; ++i) order[i] = at[i].second;
    return order;
  }

 private:
  int new_col(double lo, double hi, double obj, bool integer) {
    col_lb_.push_back(lo);
    col_ub_.push_back(hi);
    col_obj_.push_back(obj);
    col_int_.push_back(integer ? 1 : 0);
    return static_cast<int>(col_lb_.size()) - 1;
  }
  void row(const Expr& e, char sense, double rhs) {
    if (e.cols.empty()) return;
    // Merge duplicate columns (sort a permutation by column).
    std::vector<size_t> p(e.cols.size());
    std::iota(p.begin(), p.end(), size_t{0});
    std::sort(p.begin(), p.end(), [&](size_t a, size_t b) { return e.cols[a] < e.cols[b]; });
    const size_t first = row_idx_.size();
    for (size_t i : p) {
      if (row_idx_.size() > first && row_idx_.back() == e.cols[i])
        row_val_.back() += e.coefs[i];
      else {
        row_idx_.push_back(e.cols[i]);
        row_val_.push_back(e.coefs[i]);
      }
    }
    row_start_.push_back(row_idx_.size());
    const double r = rhs - e.constant;
    row_lb_.push_back(sense == 'L' ? -kInf : r);
    row_ub_.push_back(sense == 'G' ? kInf : r);
  }

  struct LCol {
    int32_t buf, t;
    int col;
  };
  const Model& m_;
  double unit_;
  std::vector<int32_t> asap_, alap_;
  std::vector<std::vector<int>> dcol_;
  std::vector<LCol> lcols_;
  int pcol_ = -1;
  std::vector<double> col_lb_, col_ub_, col_obj_;
  std::vector<char> col_int_;
  std::vector<size_t> row_start_{0};
  std::vector<int> row_idx_;
  std::vector<double> row_val_, row_lb_, row_ub_;
};

// The largest model (constraint nonzeros) the ILP builds within `seconds`: beyond it, the
// build alone would eat a large share of the limit (or the memory).
int64_t ilp_max_nonzeros(double seconds) {
  return std::min<int64_t>(
      kIlpMaxNonzeros, static_cast<int64_t>(kIlpNonzerosPerSecond * std::min(seconds, 1e6)) + 2000);
}

}  // namespace

bool ilp_available() {
  return true;
}

ExactResult ilp_schedule(const Graph& g, double time_limit_s, const Order* warm_start) {
  const auto t0 = Clock::now();
  const Model m = detail::build_model(g);
  ExactResult r;
  if (warm_start) check_order(g, *warm_start);
  if (m.n == 0) {
    r.order = Order{};
    r.lower_bound = m.initial;
    r.proven_optimal = true;
    r.status = "optimal (empty graph)";
    return r;
  }
  uint64_t warm_peak = 0;
  if (warm_start) warm_peak = detail::model_peak(m, *warm_start);
  // Whatever happens below, the warm start and the initial live set stand.
  auto fallback = [&](const std::string& why) {
    if (warm_start) r.order = *warm_start;
    r.lower_bound = std::min(m.initial, warm_start ? warm_peak : m.initial);
    r.proven_optimal = warm_start && r.lower_bound == warm_peak;
    r.status = why;
    return r;
  };
  uint64_t unit = 0;
  for (const auto& b : m.buffers) unit = std::gcd(unit, b.bytes);
  for (uint64_t w : m.ws) unit = std::gcd(unit, w);
  if (unit == 0) unit = 1;
  IlpBuilder ilp(m, static_cast<double>(unit));
  const IlpSize size = ilp.size();
  const double limit = std::max(0.0, time_limit_s);
  const int64_t max_nz = ilp_max_nonzeros(limit);
  if (size.nonzeros > max_nz)
    return fallback("ilp skipped: " + std::to_string(size.binaries) + " binaries, " +
                    std::to_string(size.nonzeros) + " nonzeros > limit " + std::to_string(max_nz) +
                    " for " + seconds_text(limit) + " s");
  ilp.build();
  detail::CbcPtr cbc(Cbc_newModel());
  ilp.load(cbc.get());
  if (warm_start) ilp.mip_start(cbc.get(), *warm_start, warm_peak);
  const double build_s = detail::seconds_since(t0);
  const std::string sizes =
      std::to_string(size.binaries) + " binaries, " + std::to_string(size.nonzeros) +
      " nonzeros (bound), " + std::to_string(Cbc_getNumCols(cbc.get())) + " columns, " +
      std::to_string(Cbc_getNumRows(cbc.get())) + " rows, built in " + seconds_text(build_s) + " s";
  const double left = limit - build_s;
  if (left < 0.05) return fallback("time limit (before the solve; " + sizes + ")");
  Cbc_setObjSense(cbc.get(), 1);
  detail::cbc_set_limits(cbc.get(), left);
  Cbc_setAllowableGap(cbc.get(), 0.5);  // the objective is an integer number of units
  Cbc_setAllowableFractionGap(cbc.get(), 0.0);
  const detail::CbcOutcome out =
      detail::cbc_solve_until(cbc.get(), t0 + detail::seconds_duration(limit));
  Order best;
  uint64_t best_peak = UINT64_MAX;
  if (!out.solution.empty()) {
    best = ilp.extract(out.solution.data());
    bool valid = static_cast<int32_t>(best.size()) == m.n;
    std::vector<int32_t> pos(m.n, -1);
    for (int32_t t = 0; t < m.n && valid; ++t) {
      valid = best[t] >= 0 && best[t] < m.n && pos[best[t]] < 0;
      if (valid) pos[best[t]] = t;
    }
    for (int32_t v = 0; v < m.n && valid; ++v)
      for (int32_t u : m.preds[v]) valid = valid && pos[u] < pos[v];
    DELTAMOE_ASSERT(valid, "ILP solution is not a topological order");
    best_peak = detail::model_peak(m, best);
  }
  if (warm_start && warm_peak <= best_peak) {
    best = *warm_start;
    best_peak = warm_peak;
  }
  if (out.killed) {
    if (warm_start || !best.empty()) {
      r.order = best;
      r.proven_optimal = m.initial == best_peak;
    }
    r.lower_bound = best.empty() ? m.initial : std::min(m.initial, best_peak);
    r.status = "time limit (CBC stopped at the deadline before its own time check, in " +
               out.phase + "; " + sizes + ", " + seconds_text(detail::seconds_since(t0)) + " s)";
    return r;
  }
  const bool optimal = out.optimal;
  const double bound = out.bound;
  uint64_t lb = m.initial;
  if (std::isfinite(bound) && bound > 0 && bound < 1e29)
    lb = std::max(lb, static_cast<uint64_t>(std::ceil(bound - 1e-6)) * unit);
  if (optimal && !best.empty())
    lb = std::max(lb,
                  std::min(best_peak, static_cast<uint64_t>(std::llround(out.objective)) * unit));
  if (!best.empty()) {
    r.order = best;
    lb = std::min(lb, best_peak);
    r.proven_optimal = lb == best_peak;
  }
  r.lower_bound = lb;
  const bool timed_out = out.seconds_limit || (!optimal && detail::seconds_since(t0) >= limit);
  r.status = std::string(optimal     ? "optimal"
                         : timed_out ? "time limit"
                                     : "stopped") +
             " (CBC, " + sizes + ", " + std::to_string(out.nodes) + " nodes, " +
             seconds_text(detail::seconds_since(t0)) + " s)";
  return r;
}

}  // namespace deltamoe::sched
