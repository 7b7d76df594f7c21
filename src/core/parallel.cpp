#include "deltamoe/core/parallel.h"

#include <algorithm>
#include <thread>

#ifdef __linux__
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

extern "C" {
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
}

namespace deltamoe {

namespace {
int g_threads = 0;  // 0 = not set yet
}

void set_num_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() {
  if (g_threads == 0) set_num_threads(omp_get_max_threads());
  return g_threads;
}

int thread_index() { return omp_get_thread_num(); }

void set_blas_threads(int n) { openblas_set_num_threads(std::max(1, n)); }
int blas_threads() { return openblas_get_num_threads(); }

BlasThreadsGuard::BlasThreadsGuard(int threads) : previous_(openblas_get_num_threads()) {
  if (threads != previous_) openblas_set_num_threads(std::max(1, threads));
}
BlasThreadsGuard::~BlasThreadsGuard() {
  if (openblas_get_num_threads() != previous_) openblas_set_num_threads(previous_);
}

bool set_thread_timer_slack_ns(int64_t ns) {
#ifdef __linux__
  return prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(std::max<int64_t>(1, ns)), 0, 0, 0) == 0;
#else
  (void)ns;
  return false;
#endif
}

bool try_raise_thread_priority() {
#ifdef __linux__
  // On Linux nice is per thread (PRIO_PROCESS with a thread id).
  const auto tid = static_cast<id_t>(syscall(SYS_gettid));
  return setpriority(PRIO_PROCESS, tid, -10) == 0;
#else
  return false;
#endif
}

}  // namespace deltamoe
