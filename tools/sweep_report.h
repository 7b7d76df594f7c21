// Helpers of `deltamoe sweep`: CSV tables, load statistics, McNemar's test, confidence
// intervals, and the Markdown report with its verdict.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace deltamoe::cli::sweep {

/// `v` with `prec` significant digits (shortest form, as CSV cells and flags take it); "–"
/// for NaN.
std::string sig(double v, int prec = 4);
/// `v` with `decimals` digits after the point (report tables); "–" for NaN.
std::string fixed(double v, int decimals);

/// A table of strings with a header; written atomically as CSV.
class Csv {
 public:
  explicit Csv(std::vector<std::string> header) : header_(std::move(header)) {}
  void row(std::vector<std::string> cells);
  void write(const std::string& path) const;
  const std::vector<std::vector<std::string>>& rows() const { return rows_; }
  /// Column index of `name` (throws Error("sweep") if absent).
  size_t col(const std::string& name) const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

struct LoadStats {
  std::vector<double> share;  // per expert, sums to 1
  double max_over_mean = 0;   // max share / mean share
  double cv = 0;              // std/mean of the shares (population)
};
LoadStats load_stats(const std::vector<int64_t>& tokens_per_expert);

struct McNemar {
  int64_t b = 0;         // first right, second wrong
  int64_t c = 0;         // first wrong, second right
  double p_value = 1.0;  // chi² with continuity correction, 1 d.o.f.
};
/// Paired test on per-sample correctness (1/0) of two classifiers on the same samples.
McNemar mcnemar(const std::vector<int32_t>& first, const std::vector<int32_t>& second);
McNemar mcnemar_counts(int64_t b, int64_t c);

/// Mean and the half-width of its 95% t-interval (0 for one value).
struct MeanCi {
  double mean = 0, half = 0;
  int n = 0;
};
MeanCi mean_ci(const std::vector<double>& v);

/// Paired comparison of two measurements on the same units (e.g. per-window mean losses of
/// two models on the same validation windows): mean of first − second, the half-width of its
/// 95% interval and the two-sided p-value of the paired t-test (normal approximation, for the
/// hundreds of units the sweeps pair; p = 1 when every difference is 0).
struct PairedT {
  double mean = 0, half = 0, p_value = 1.0;
  int64_t n = 0;
};
PairedT paired_t(const std::vector<double>& first, const std::vector<double>& second);

/// y at `x` on the piecewise-linear curve of (x, y) points sorted by x; the end values
/// outside it; NaN for an empty curve.
double interpolate(const std::vector<std::pair<double, double>>& curve, double x);

struct ReportInputs {
  bool quick;
  int seeds, epochs;
  int64_t max_train;
  int threads;
  double seconds;
  bool plots;
  int jobs = 1;        // trainings run concurrently (child processes, 1 thread each)
  std::string recipe;  // optimiser, schedule and batch, as the report states them
};

/// Writes `dir`/delta-moe.md (tables, plots, verdict) and returns the verdict as JSON.
nlohmann::json write_report(const std::string& dir, const ReportInputs& in, const Csv& e1,
                            const Csv& e2, const Csv& e3, const Csv& e3_class, const Csv& train);

}  // namespace deltamoe::cli::sweep
