// The parts of dist/ that do not need MPI: the launcher's environment, the one-rank
// communicator, block splits. world_mpi.cpp / world_nompi.cpp provide world().
#include "deltamoe/dist/communicator.h"

#include <algorithm>
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

double CollectiveCost::moved_bytes(Collective kind, double b, int ranks) {
  const double p = ranks;
  return kind == Collective::all_reduce ? 2 * b * (p - 1) / p : b * (p - 1);
}

double CollectiveCost::seconds(double b, int ranks) const {
  if (ranks <= 1) return 0.0;
  const double moved = moved_bytes(kind, b, ranks);
  return latency_s + (bandwidth_gbps > 0 ? moved / (bandwidth_gbps * 1e9) : 0.0);
}

CollectiveCost measure_collective(Communicator& comm, Collective kind,
                                  const std::vector<int64_t>& bytes, int reps) {
  DELTAMOE_CHECK(reps >= 1, "dist", "a collective probe needs at least one repetition");
  const UncountedScope probe(comm);
  const int p = comm.size();
  CollectiveCost cost;
  cost.kind = kind;
  for (int64_t b : bytes) {
    DELTAMOE_CHECK(b >= 0, "dist", "collective probe of ", b, " bytes");
    std::vector<char> send(static_cast<size_t>(b * p), 1), recv(send.size());
    const std::vector<int64_t> sizes(static_cast<size_t>(p), b);
    std::vector<float> buf(static_cast<size_t>(b / 4), 1.0f);
    const auto call = [&] {
      switch (kind) {
        case Collective::all_to_all:
          comm.all_to_all_v(send.data(), sizes.data(), recv.data(), sizes.data());
          break;
        case Collective::all_reduce:
          comm.all_reduce_sum(buf.data(), static_cast<int64_t>(buf.size()));
          break;
        case Collective::all_gather:
          comm.all_gather_v(send.data(), recv.data(), sizes.data());
          break;
      }
    };
    call();  // warm-up
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) call();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
    comm.all_reduce_max(&s, 1);
    cost.points.push_back({b, s});
  }
  return fit_collective_cost(kind, cost.points, p);
}

CollectiveCost fit_collective_cost(Collective kind, std::vector<AllToAllPoint> points, int ranks) {
  CollectiveCost cost;
  cost.kind = kind;
  cost.points = points;
  auto& pts = points;
  std::sort(pts.begin(), pts.end(), [](const AllToAllPoint& a, const AllToAllPoint& b) {
    return a.bytes_per_peer < b.bytes_per_peer;
  });
  const auto moved = [&](const AllToAllPoint& pt) {
    return CollectiveCost::moved_bytes(kind, static_cast<double>(pt.bytes_per_peer), ranks);
  };
  if (pts.empty() || ranks <= 1) return cost;
  const auto& hi = pts.back();
  double beta = 0.0;
  if (pts.size() >= 2) {
    const auto& mid = pts[pts.size() - 2];
    const double dx = moved(hi) - moved(mid);
    beta = dx > 0 ? (hi.seconds - mid.seconds) / dx : 0.0;
  }
  // A noisy probe (the larger size no slower): the largest point alone, through the origin.
  if (beta <= 0 && moved(hi) > 0 && hi.seconds > 0) beta = hi.seconds / moved(hi);
  if (beta > 0) {
    cost.bandwidth_gbps = 1e-9 / beta;
    cost.latency_s = std::max(0.0, pts.front().seconds - beta * moved(pts.front()));
  } else {
    cost.latency_s = pts.front().seconds;
  }
  return cost;
}

AllToAllCost measure_all_to_all(Communicator& comm, const std::vector<int64_t>& bytes_per_peer,
                                int reps) {
  return measure_collective(comm, Collective::all_to_all, bytes_per_peer, reps);
}

int64_t split_begin(int64_t n, int rank, int ranks) {
  DELTAMOE_ASSERT(ranks >= 1 && rank >= 0 && rank <= ranks, "split of ", n, " over rank ", rank,
                  " of ", ranks);
  return n * rank / ranks;
}

std::vector<int64_t> split_bytes(int64_t n, int ranks, int64_t item_bytes) {
  std::vector<int64_t> b(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r)
    b[static_cast<size_t>(r)] =
        (split_begin(n, r + 1, ranks) - split_begin(n, r, ranks)) * item_bytes;
  return b;
}

}  // namespace deltamoe::dist
