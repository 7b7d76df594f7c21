// Threading. deltamoe uses OpenMP (see docs/design.md for why): parallel regions are
// short, fork-join and data-parallel, which is what OpenMP does best, and GCC ships it.
// OpenBLAS is told to run single-threaded inside our own parallel regions so the two
// never oversubscribe the cores.
#pragma once

#include <cstdint>

namespace deltamoe {

/// Sets the number of threads deltamoe's kernels use (OpenMP and OpenBLAS). n <= 0 means
/// all hardware threads. Not thread-safe: call at start-up or between runs.
void set_num_threads(int n);
/// Threads deltamoe's kernels use.
int num_threads();
/// Index of the calling thread inside a parallel region (0 outside).
int thread_index();

/// Runs fn(begin, end) over [0, n) split into contiguous chunks of at least `grain`
/// items, on up to num_threads() threads. Blocks until every chunk is done. fn must be
/// thread-safe across disjoint ranges. Exceptions thrown by fn are rethrown here (first one).
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn);

/// OpenBLAS threads: call with 1 inside our own parallel regions; restored by the guard.
class BlasThreadsGuard {
 public:
  explicit BlasThreadsGuard(int threads);
  ~BlasThreadsGuard();
  BlasThreadsGuard(const BlasThreadsGuard&) = delete;
  BlasThreadsGuard& operator=(const BlasThreadsGuard&) = delete;

 private:
  int previous_;
};

/// Sets OpenBLAS's thread count (1..num_threads()).
void set_blas_threads(int n);
int blas_threads();

/// Sets the calling thread's timer slack to `ns` nanoseconds (Linux; elsewhere a no-op), so
/// timed waits of latency-sensitive threads (queue timeouts, a load generator's schedule)
/// wake within microseconds instead of the default 50 µs. Returns whether it was applied.
bool set_thread_timer_slack_ns(int64_t ns);

/// Raises the calling thread's scheduling priority (nice −10) where the process may do so
/// (CAP_SYS_NICE, e.g. root); returns false and changes nothing otherwise. Used by the
/// in-process load generator, whose sender must not wait for a CPU behind the workers it is
/// measuring on a machine with as many cores as workers.
bool try_raise_thread_priority();

}  // namespace deltamoe

#include <algorithm>
#include <exception>
#include <mutex>

#include <omp.h>

namespace deltamoe {
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), max_chunks));
  if (threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t begin = n * t / nt;
    const int64_t end = n * (t + 1) / nt;
    try {
      if (begin < end) fn(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}
}  // namespace deltamoe
