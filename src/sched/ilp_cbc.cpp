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
#include <coin/Cbc_C_Interface.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <numeric>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "sched/exact_model.h"

namespace deltamoe::sched {
namespace {

using detail::Model;

// A linear expression over columns plus a constant.
struct Expr {
  std::vector<int> cols;
  std::vector<double> coefs;
  double constant = 0;
  void add(int c, double k) {
    for (size_t i = 0; i < cols.size(); ++i)
      if (cols[i] == c) {
        coefs[i] += k;
        return;
      }
    cols.push_back(c);
    coefs.push_back(k);
  }
};

class IlpBuilder {
 public:
  IlpBuilder(const Model& m, double unit) : m_(m), unit_(unit), cbc_(Cbc_newModel()) {
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
  ~IlpBuilder() { Cbc_deleteModel(cbc_); }
  IlpBuilder(const IlpBuilder&) = delete;
  IlpBuilder& operator=(const IlpBuilder&) = delete;

  Cbc_Model* cbc() { return cbc_; }
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
    pcol_ = new_col("P", 0, 1e30, 1.0, false);
    for (int32_t v = 0; v < n; ++v)
      for (int32_t t = asap_[v]; t < alap_[v]; ++t)
        dcol_[v].push_back(new_col("d" + std::to_string(v) + "_" + std::to_string(t), 0, 1, 0, true));
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
    for (int32_t t = 0; t < n; ++t) mem[t].constant = 0;
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
        // Constant cases first: counted surely or never.
        Expr base;
        if (b.alloc < 0)
          base.constant = 1;
        else
          add_d(base, b.alloc, t, 1);
        const int col = new_col("l" + std::to_string(bi) + "_" + std::to_string(t), 0, 1, 0, false);
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

  // Column values of the solution that runs `order`, for the MIP start.
  void mip_start(const std::vector<int32_t>& order, uint64_t peak) {
    std::vector<int32_t> pos(m_.n);
    for (int32_t t = 0; t < m_.n; ++t) pos[order[t]] = t;
    std::vector<double> val(names_.size(), 0.0);
    val[pcol_] = static_cast<double>(peak) / unit_;
    for (int32_t v = 0; v < m_.n; ++v)
      for (int32_t t = asap_[v]; t < alap_[v]; ++t) val[dcol_[v][t - asap_[v]]] = t >= pos[v] ? 1 : 0;
    for (const auto& lc : lcols_) {
      const auto& b = m_.buffers[lc.buf];
      const bool alloc = b.alloc < 0 || pos[b.alloc] <= lc.t;
      bool pending = false;
      for (int32_t r : b.readers) pending = pending || pos[r] > lc.t - 1;
      val[lc.col] = alloc && pending ? 1 : 0;
    }
    std::vector<const char*> nm(names_.size());
    for (size_t i = 0; i < names_.size(); ++i) nm[i] = names_[i].c_str();
    Cbc_setMIPStart(cbc_, static_cast<int>(nm.size()), nm.data(), val.data());
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
  int new_col(const std::string& name, double lo, double hi, double obj, bool integer) {
    Cbc_addCol(cbc_, name.c_str(), lo, hi, obj, integer ? 1 : 0, 0, nullptr, nullptr);
    names_.push_back(name);
    return static_cast<int>(names_.size()) - 1;
  }
  void row(const Expr& e, char sense, double rhs) {
    if (e.cols.empty()) return;
    Cbc_addRow(cbc_, "", static_cast<int>(e.cols.size()), e.cols.data(), e.coefs.data(), sense,
               rhs - e.constant);
  }

  struct LCol {
    int32_t buf, t;
    int col;
  };
  const Model& m_;
  double unit_;
  Cbc_Model* cbc_;
  std::vector<int32_t> asap_, alap_;
  std::vector<std::vector<int>> dcol_;
  std::vector<LCol> lcols_;
  std::vector<std::string> names_;
  int pcol_ = -1;
};

// CbcMain keeps global state: one solve at a time.
std::mutex g_cbc_mutex;

}  // namespace

bool ilp_available() { return true; }

ExactResult ilp_schedule(const Graph& g, double time_limit_s, const Order* warm_start) {
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
  uint64_t unit = 0;
  for (const auto& b : m.buffers) unit = std::gcd(unit, b.bytes);
  for (uint64_t w : m.ws) unit = std::gcd(unit, w);
  if (unit == 0) unit = 1;
  IlpBuilder ilp(m, static_cast<double>(unit));
  ilp.build();
  Cbc_Model* cbc = ilp.cbc();
  uint64_t warm_peak = 0;
  if (warm_start) {
    warm_peak = detail::model_peak(m, *warm_start);
    ilp.mip_start(*warm_start, warm_peak);
  }
  Cbc_setObjSense(cbc, 1);
  Cbc_setLogLevel(cbc, 0);
  Cbc_setParameter(cbc, "log", "0");
  Cbc_setParameter(cbc, "slog", "0");
  Cbc_setMaximumSeconds(cbc, std::max(0.01, time_limit_s));
  Cbc_setAllowableGap(cbc, 0.5);  // the objective is an integer number of units
  Cbc_setAllowableFractionGap(cbc, 0.0);
  {
    std::lock_guard<std::mutex> lock(g_cbc_mutex);
    Cbc_solve(cbc);
  }
  const bool optimal = Cbc_isProvenOptimal(cbc) != 0;
  // Cbc_bestSolution is null when preprocessing alone solved the model; the column solution
  // is then the optimum.
  const double* sol = Cbc_bestSolution(cbc);
  if (!sol && optimal) sol = Cbc_getColSolution(cbc);
  Order best;
  uint64_t best_peak = UINT64_MAX;
  if (sol) {
    best = ilp.extract(sol);
    bool valid = true;
    std::vector<int32_t> pos(m.n);
    for (int32_t t = 0; t < m.n; ++t) pos[best[t]] = t;
    for (int32_t v = 0; v < m.n && valid; ++v)
      for (int32_t u : m.preds[v]) valid = valid && pos[u] < pos[v];
    DELTAMOE_ASSERT(valid, "ILP solution is not a topological order");
    best_peak = detail::model_peak(m, best);
  }
  if (warm_start && warm_peak <= best_peak) {
    best = *warm_start;
    best_peak = warm_peak;
  }
  const double bound = Cbc_getBestPossibleObjValue(cbc);
  uint64_t lb = m.initial;
  if (std::isfinite(bound) && bound > 0)
    lb = std::max(lb, static_cast<uint64_t>(std::ceil(bound - 1e-6)) * unit);
  if (optimal && !best.empty()) lb = std::max(lb, std::min(best_peak, static_cast<uint64_t>(std::llround(Cbc_getObjValue(cbc))) * unit));
  if (!best.empty()) {
    r.order = best;
    lb = std::min(lb, best_peak);
    r.proven_optimal = lb == best_peak;
  }
  r.lower_bound = lb;
  r.status = std::string(optimal ? "optimal" : Cbc_isSecondsLimitReached(cbc) ? "time limit" : "stopped") +
             " (CBC, " + std::to_string(Cbc_getNumCols(cbc)) + " columns, " +
             std::to_string(Cbc_getNumRows(cbc)) + " rows, " + std::to_string(Cbc_getNodeCount(cbc)) +
             " nodes)";
  return r;
}

}  // namespace deltamoe::sched
