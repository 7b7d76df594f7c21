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

/// Runs fn(i) for every i in [0, n) on up to num_threads() threads, for items whose cost is
/// set by the thread's speed (blocks of a memory-bound stream). Each thread first takes the
/// items of its own contiguous share in order (consecutive blocks stay one sequential stream
/// for the hardware prefetcher); a thread done with its share then takes single items from
/// the end of the share with the most items left, so the threads finish within about one item
/// of each other however their speeds differ. Blocks until every item is done. fn must be
/// thread-safe across items. The first exception thrown by fn is rethrown here (items not yet
/// started are then skipped).
template <typename F>
void parallel_for_stealing(int64_t n, F&& fn);

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
#include <atomic>
#include <exception>
#include <limits>
#include <memory>
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

namespace detail {
// One thread's share [front, back) as one word (front low, back high) so that the owner
// (taking the front) and a thief (taking the back) claim items by compare-and-swap.
struct alignas(64) StealShare {
  std::atomic<uint64_t> word{0};
  static uint64_t pack(uint32_t front, uint32_t back) {
    return static_cast<uint64_t>(back) << 32 | front;
  }
  int64_t left() const {
    const uint64_t w = word.load(std::memory_order_relaxed);
    const auto front = static_cast<uint32_t>(w), back = static_cast<uint32_t>(w >> 32);
    return front < back ? static_cast<int64_t>(back - front) : 0;
  }
  // Claims the front (owner) or back (thief) item; false when the share is empty.
  bool claim(bool from_back, int64_t& item) {
    uint64_t w = word.load(std::memory_order_relaxed);
    for (;;) {
      const auto front = static_cast<uint32_t>(w), back = static_cast<uint32_t>(w >> 32);
      if (front >= back) return false;
      const uint64_t next = from_back ? pack(front, back - 1) : pack(front + 1, back);
      if (word.compare_exchange_weak(w, next, std::memory_order_acq_rel,
                                     std::memory_order_relaxed)) {
        item = from_back ? back - 1 : front;
        return true;
      }
    }
  }
};
}  // namespace detail

template <typename F>
void parallel_for_stealing(int64_t n, F&& fn) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(num_threads(), n));
  if (threads <= 1 || n > std::numeric_limits<uint32_t>::max()) {
    parallel_for(n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) fn(i);
    });
    return;
  }
  std::unique_ptr<detail::StealShare[]> shares(new detail::StealShare[threads]);
  for (int t = 0; t < threads; ++t)
    shares[t].word.store(detail::StealShare::pack(static_cast<uint32_t>(n * t / threads),
                                                  static_cast<uint32_t>(n * (t + 1) / threads)),
                         std::memory_order_relaxed);
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto run = [&](int64_t i) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      fn(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
    }
  };
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    int64_t i = 0;
    while (shares[t].claim(false, i)) run(i);
    for (;;) {
      int victim = -1;
      int64_t most = 0;
      for (int u = 0; u < threads; ++u) {
        const int64_t left = shares[u].left();
        if (left > most) {
          most = left;
          victim = u;
        }
      }
      if (victim < 0) break;
      if (shares[victim].claim(true, i)) run(i);
    }
  }
  if (error) std::rethrow_exception(error);
}
}  // namespace deltamoe
