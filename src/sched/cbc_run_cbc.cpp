// cbc_solve_until: a CBC solve in a forked child killed at the deadline (see cbc_run.h).
#include "sched/cbc_run.h"

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "deltamoe/core/error.h"

namespace deltamoe::sched::detail {
namespace {

// CbcMain keeps global state: one in-process solve at a time.
std::mutex g_cbc_mutex;

CbcOutcome read_cbc(Cbc_Model* cbc) {
  CbcOutcome o;
  o.optimal = Cbc_isProvenOptimal(cbc) != 0;
  o.seconds_limit = Cbc_isSecondsLimitReached(cbc) != 0;
  o.bound = Cbc_getBestPossibleObjValue(cbc);
  o.objective = Cbc_getObjValue(cbc);
  o.nodes = Cbc_getNodeCount(cbc);
  // Cbc_bestSolution is null when preprocessing alone solved the model; the column solution
  // is then the optimum.
  const double* sol = Cbc_bestSolution(cbc);
  if (!sol && o.optimal) sol = Cbc_getColSolution(cbc);
  if (sol) o.solution.assign(sol, sol + Cbc_getNumCols(cbc));
  return o;
}

CbcOutcome solve_here(Cbc_Model* cbc) {
  std::lock_guard<std::mutex> lock(g_cbc_mutex);
  Cbc_solve(cbc);
  return read_cbc(cbc);
}

bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t k = ::write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

}  // namespace

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

Clock::duration seconds_duration(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", s);
  return buf;
}

void cbc_set_limits(Cbc_Model* cbc, double seconds_left) {
  Cbc_setLogLevel(cbc, 0);
  Cbc_setParameter(cbc, "log", "0");
  Cbc_setParameter(cbc, "slog", "0");
  // Wall-clock seconds (CBC counts CPU seconds by default).
  Cbc_setParameter(cbc, "timeMode", "elapsed");
  const double cbc_s = std::max(0.02, 0.85 * seconds_left - 0.02);
  Cbc_setMaximumSeconds(cbc, cbc_s);
  Cbc_setParameter(cbc, "sec", seconds_text(cbc_s).c_str());
}

// (glibc's fork makes malloc usable in the child; the child only solves and writes, then
// _exit()s.)
CbcOutcome cbc_solve_until(Cbc_Model* cbc, Clock::time_point deadline) {
  int fds[2];
  if (::pipe(fds) != 0) return solve_here(cbc);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return solve_here(cbc);
  }
  if (pid == 0) {  // child
    ::close(fds[0]);
    Cbc_solve(cbc);
    const CbcOutcome o = read_cbc(cbc);
    const uint8_t flags = static_cast<uint8_t>((o.optimal ? 1 : 0) | (o.seconds_limit ? 2 : 0));
    const uint64_t count = o.solution.size();
    const bool ok = write_all(fds[1], &flags, 1) && write_all(fds[1], &o.bound, sizeof o.bound) &&
                    write_all(fds[1], &o.objective, sizeof o.objective) &&
                    write_all(fds[1], &o.nodes, sizeof o.nodes) &&
                    write_all(fds[1], &count, sizeof count) &&
                    write_all(fds[1], o.solution.data(), count * sizeof(double));
    ::_exit(ok ? 0 : 1);
  }
  ::close(fds[1]);
  std::vector<char> data;
  bool eof = false;
  char buf[65536];
  while (!eof) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fds[0], POLLIN, 0};
    const int pr = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) break;
    if (pr == 0) continue;
    const ssize_t k = ::read(fds[0], buf, sizeof buf);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      eof = true;
      break;
    }
    data.insert(data.end(), buf, buf + k);
  }
  ::close(fds[0]);
  if (!eof) ::kill(pid, SIGKILL);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  CbcOutcome o;
  const size_t head = 1 + 2 * sizeof(double) + sizeof(int) + sizeof(uint64_t);
  if (!eof || data.size() < head) {
    o.killed = true;
    o.phase = eof ? "a solver crash" : "its root LP, preprocessing or MIP-start completion";
    return o;
  }
  const char* c = data.data();
  const uint8_t flags = static_cast<uint8_t>(*c++);
  o.optimal = flags & 1;
  o.seconds_limit = flags & 2;
  std::memcpy(&o.bound, c, sizeof o.bound);
  c += sizeof o.bound;
  std::memcpy(&o.objective, c, sizeof o.objective);
  c += sizeof o.objective;
  std::memcpy(&o.nodes, c, sizeof o.nodes);
  c += sizeof o.nodes;
  uint64_t count = 0;
  std::memcpy(&count, c, sizeof count);
  c += sizeof count;
  DELTAMOE_ASSERT(data.size() == head + count * sizeof(double),
                  "short answer from the CBC process");
  o.solution.resize(count);
  std::memcpy(o.solution.data(), c, count * sizeof(double));
  return o;
}

}  // namespace deltamoe::sched::detail
