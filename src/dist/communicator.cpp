// The parts of dist/ that do not need MPI: the launcher's environment, the one-rank
// communicator, block splits. world_mpi.cpp / world_nompi.cpp provide world().
#include "deltamoe/dist/communicator.h"

#include <chrono>
#include <cstdlib>
#include <cstring>

#include "deltamoe/core/error.h"

namespace deltamoe::dist {
namespace {

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return (end && *end == '\0' && x > 0 && x < (1 << 24)) ? static_cast<int>(x) : 0;
}

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }
  void all_to_all(const int64_t* send, int64_t* recv) override {
    ++stats_.calls;
    recv[0] = send[0];
  }
  void all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                    const int64_t* recv_bytes) override {
    ++stats_.calls;
    DELTAMOE_CHECK(send_bytes[0] == recv_bytes[0], "dist", "all_to_all_v: sends ", send_bytes[0],
                   " bytes to itself but receives ", recv_bytes[0]);
    if (send_bytes[0] > 0) std::memcpy(recv, send, static_cast<size_t>(send_bytes[0]));
  }
  void all_gather_v(const void* send, void* recv, const int64_t* recv_bytes) override {
    ++stats_.calls;
    if (recv_bytes[0] > 0 && recv != send)
      std::memcpy(recv, send, static_cast<size_t>(recv_bytes[0]));
  }
  void all_reduce_sum(float*, int64_t) override { ++stats_.calls; }
  void all_reduce_sum(double*, int64_t) override { ++stats_.calls; }
  void all_reduce_max(double*, int64_t) override { ++stats_.calls; }
  void broadcast(void*, int64_t, int root) override {
    ++stats_.calls;
    DELTAMOE_CHECK(root == 0, "dist", "broadcast from rank ", root, " of a one-rank communicator");
  }
  void barrier() override { ++stats_.calls; }
};

}  // namespace

int launched_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (const int n = env_int(name)) return n;
  return 1;
}

int launched_local_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
    if (const int n = env_int(name)) return n;
  return 1;
}

std::unique_ptr<Communicator> make_self() {
  return std::make_unique<SelfCommunicator>();
}

int64_t split_begin(int64_t n, int rank, int ranks) {
  DELTAMOE_ASSERT(ranks >= 1 && rank >= 0 && rank <= ranks, "split of ", n, " over rank ", rank,
                  " of ", ranks);
  return n * rank / ranks;
}

}  // namespace deltamoe::dist
