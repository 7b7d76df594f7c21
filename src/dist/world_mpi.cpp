// dist/ on Open MPI: MPI_COMM_WORLD behind the Communicator interface. MPI is initialised on
// the first world() call (MPI_THREAD_SERIALIZED: one thread at a time calls MPI, the one that
// drives the model: the main thread, or `serve`'s engine thread once the main thread waits for
// signals; OpenMP workers never do) and finalised at exit. Errors come back as return codes
// (MPI_ERRORS_RETURN) and are thrown as Error("dist"); the CLI then calls abort_world().
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/dist/communicator.h"

namespace deltamoe::dist {
namespace {

using Clock = std::chrono::steady_clock;

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("dist", what, " failed: ", std::string(msg, static_cast<size_t>(len)));
}

int to_int(int64_t bytes, const char* what) {
  DELTAMOE_CHECK(bytes >= 0 && bytes <= INT_MAX, "dist", what, ": ", bytes,
                 " bytes exceed MPI's int count (2^31 - 1)");
  return static_cast<int>(bytes);
}

// Counts and displacements of a rank-ordered set of blocks, as MPI's ints.
void counts_displs(const int64_t* bytes, int p, std::vector<int>& counts, std::vector<int>& displs,
                   const char* what) {
  counts.resize(static_cast<size_t>(p));
  displs.resize(static_cast<size_t>(p));
  int64_t off = 0;
  for (int r = 0; r < p; ++r) {
    counts[static_cast<size_t>(r)] = to_int(bytes[r], what);
    displs[static_cast<size_t>(r)] = to_int(off, what);
    off += bytes[r];
  }
  to_int(off, what);
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_to_all(const int64_t* send, int64_t* recv) override {
    const Timer t(stats_, 8 * (size_ - 1));
    check_mpi(MPI_Alltoall(send, 1, MPI_INT64_T, recv, 1, MPI_INT64_T, MPI_COMM_WORLD),
              "MPI_Alltoall");
  }
  void all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                    const int64_t* recv_bytes) override {
    int64_t remote = 0;
    for (int r = 0; r < size_; ++r)
      if (r != rank_) remote += send_bytes[r];
    const Timer t(stats_, remote);
    counts_displs(send_bytes, size_, sc_, sd_, "all_to_all_v");
    counts_displs(recv_bytes, size_, rc_, rd_, "all_to_all_v");
    check_mpi(MPI_Alltoallv(send, sc_.data(), sd_.data(), MPI_BYTE, recv, rc_.data(), rd_.data(),
                            MPI_BYTE, MPI_COMM_WORLD),
              "MPI_Alltoallv");
  }
  void all_gather_v(const void* send, void* recv, const int64_t* recv_bytes) override {
    const Timer t(stats_, recv_bytes[rank_] * (size_ - 1));
    counts_displs(recv_bytes, size_, rc_, rd_, "all_gather_v");
    const bool in_place = send == static_cast<const char*>(recv) + rd_[static_cast<size_t>(rank_)];
    check_mpi(MPI_Allgatherv(in_place ? MPI_IN_PLACE : send, rc_[static_cast<size_t>(rank_)],
                             MPI_BYTE, recv, rc_.data(), rd_.data(), MPI_BYTE, MPI_COMM_WORLD),
              "MPI_Allgatherv");
  }
  void all_reduce_sum(float* data, int64_t n) override {
    all_reduce(data, n, 4, MPI_FLOAT, MPI_SUM, "all_reduce_sum");
  }
  void all_reduce_sum(double* data, int64_t n) override {
    all_reduce(data, n, 8, MPI_DOUBLE, MPI_SUM, "all_reduce_sum");
  }
  void all_reduce_max(double* data, int64_t n) override {
    all_reduce(data, n, 8, MPI_DOUBLE, MPI_MAX, "all_reduce_max");
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    DELTAMOE_CHECK(root >= 0 && root < size_, "dist", "broadcast from rank ", root, " of ", size_);
    const Timer t(stats_, rank_ == root ? bytes * (size_ - 1) : 0);
    check_mpi(MPI_Bcast(data, to_int(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD),
              "MPI_Bcast");
  }
  void broadcast_waiting(void* data, int64_t bytes, int root) override {
    DELTAMOE_CHECK(root >= 0 && root < size_, "dist", "broadcast from rank ", root, " of ", size_);
    const Timer t(stats_, rank_ == root ? bytes * (size_ - 1) : 0);
    MPI_Request req = MPI_REQUEST_NULL;
    check_mpi(MPI_Ibcast(data, to_int(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD, &req),
              "MPI_Ibcast");
    // Blocking MPI calls poll without pause (a core at 100% for as long as they wait).
    auto pause = std::chrono::microseconds(20);
    for (int done = 0;;) {
      check_mpi(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(500));
    }
  }
  void barrier() override {
    const Timer t(stats_, 0);
    check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  }

 private:
  // Counts one collective: its bytes up front, its wall time when it returns (or throws).
  struct Timer {
    Timer(CommStats& s, int64_t bytes) : s_(s), t0_(Clock::now()) {
      ++s_.calls;
      s_.bytes_sent += bytes;
    }
    ~Timer() { s_.time_s += std::chrono::duration<double>(Clock::now() - t0_).count(); }
    CommStats& s_;
    Clock::time_point t0_;
  };
  int64_t ring_bytes(int64_t bytes) const { return 2 * bytes * (size_ - 1) / size_; }
  void all_reduce(void* data, int64_t n, int64_t elem_bytes, MPI_Datatype type, MPI_Op op,
                  const char* what) {
    const Timer t(stats_, ring_bytes(elem_bytes * n));
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, to_int(n, what), type, op, MPI_COMM_WORLD),
              "MPI_Allreduce");
  }

  int rank_ = 0, size_ = 1;
  std::vector<int> sc_, sd_, rc_, rd_;
};

bool g_world_up = false;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

bool mpi_built() {
  return true;
}

std::string mpi_library_version() {
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(v, &len);  // one of the calls allowed before MPI_Init
  std::string s(v, static_cast<size_t>(len));
  return s.substr(0, s.find_first_of(",\n"));
}

Communicator& world() {
  static const std::unique_ptr<Communicator> comm = []() -> std::unique_ptr<Communicator> {
    if (launched_ranks() == 1) return make_self();
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided),
              "MPI_Init_thread");
    std::atexit(finalize_at_exit);
    DELTAMOE_CHECK(provided >= MPI_THREAD_SERIALIZED, "dist",
                   "this MPI does not support MPI_THREAD_SERIALIZED (got level ", provided, ")");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    g_world_up = true;
    return std::make_unique<MpiCommunicator>();
  }();
  return *comm;
}

void abort_world(int code) noexcept {
  if (!g_world_up) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace deltamoe::dist
