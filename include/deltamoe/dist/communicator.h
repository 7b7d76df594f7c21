// Processes working on one model: the collectives the parallel layouts need (expert
// parallelism's all-to-all of token rows, the all-gather that restores replicated
// activations, reductions of partial sums), behind one interface. The implementation is Open
// MPI from Debian (no home-made networking); a build without MPI has a one-rank stub that says
// so when a run asks for more ranks.
//
// Every rank must call the same collectives in the same order with matching sizes (MPI's
// rule). Errors are fatal for the whole job: a rank that throws calls abort_world(), which
// ends every rank (MPI_Abort) instead of leaving them waiting in a collective.
//
// Thread-safety: a Communicator is used by one thread at a time (MPI is initialised with
// MPI_THREAD_FUNNELED: OpenMP workers never call it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace deltamoe::dist {

/// Traffic of one communicator, accumulated since reset_stats().
struct CommStats {
  /// Bytes this rank sent to other ranks (its own block of an all-to-all is not counted; an
  /// all-gather counts its block once per other rank; an all-reduce counts the 2·(P−1)/P·n
  /// elements of a ring algorithm, the lower bound of any algorithm's traffic).
  int64_t bytes_sent = 0;
  int64_t calls = 0;    // collectives called
  double time_s = 0.0;  // wall time inside collectives, waiting for other ranks included
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  /// This process's index in [0, size()).
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// "mpi" or "self" (one process).
  virtual std::string backend() const = 0;

  /// recv[r] = what rank r passed as send[rank()]: one int64 per rank each way (counts before
  /// an all_to_all_v).
  virtual void all_to_all(const int64_t* send, int64_t* recv) = 0;
  /// Personalised exchange of bytes: `send` holds one block per destination rank, in rank
  /// order, of send_bytes[r] bytes each; `recv` receives one block per source rank, in rank
  /// order, of recv_bytes[r] bytes (as agreed by an all_to_all of the sizes). Buffers must not
  /// overlap. Throws Error("dist") when a block exceeds 2^31 − 1 bytes (MPI's int counts).
  virtual void all_to_all_v(const void* send, const int64_t* send_bytes, void* recv,
                            const int64_t* recv_bytes) = 0;
  /// recv = the ranks' blocks concatenated in rank order; rank r contributes recv_bytes[r]
  /// bytes (`send`, whose size must equal recv_bytes[rank()]). `send` may be this rank's own
  /// block inside recv (in place); otherwise the buffers must not overlap.
  virtual void all_gather_v(const void* send, void* recv, const int64_t* recv_bytes) = 0;
  /// data[i] = Σ over ranks of data[i], in place, on every rank.
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  /// data[i] = Σ over ranks of data[i] (counters), in place, on every rank.
  virtual void all_reduce_sum(double* data, int64_t n) = 0;
  /// data[i] = max over ranks of data[i], in place, on every rank (timings, flags).
  virtual void all_reduce_max(double* data, int64_t n) = 0;
  /// Rank `root`'s `bytes` bytes at data, copied to every rank's data.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  /// broadcast() for ranks that may wait long for the root (a server's other ranks between
  /// requests): a waiting rank sleeps between polls (20 µs growing to 500 µs) instead of
  /// spinning on a core, at the price of up to that much latency when the data comes.
  virtual void broadcast_waiting(void* data, int64_t bytes, int root) {
    broadcast(data, bytes, root);
  }
  virtual void barrier() = 0;

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }
  void set_stats(const CommStats& s) { stats_ = s; }

 protected:
  CommStats stats_;
};

/// Collectives made during its lifetime are left out of the communicator's stats():
/// bookkeeping (gathering statistics for a report) rather than the model's own traffic.
class UncountedScope {
 public:
  explicit UncountedScope(Communicator& c) : c_(c), saved_(c.stats()) {}
  ~UncountedScope() { c_.set_stats(saved_); }
  UncountedScope(const UncountedScope&) = delete;
  UncountedScope& operator=(const UncountedScope&) = delete;

 private:
  Communicator& c_;
  CommStats saved_;
};

/// Whether this build has MPI (DELTAMOE_HAVE_MPI).
bool mpi_built();
/// The MPI library's version line ("Open MPI v4.1.4, ..."), or "not built".
std::string mpi_library_version();

/// Ranks of the job this process was started in, read from the launcher's environment
/// (Open MPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE / PMIX_SIZE... of other launchers) without
/// initialising MPI; 1 when not started by a launcher.
int launched_ranks();
/// Ranks of this job on this machine (OMPI_COMM_WORLD_LOCAL_SIZE; 1 when unknown).
int launched_local_ranks();

/// The world communicator: MPI_COMM_WORLD when the process was started by mpirun (MPI is
/// initialised on the first call and finalised at exit), else a one-rank communicator.
/// Throws Error("dist") when mpirun started several ranks and MPI was not built.
Communicator& world();

/// A communicator of one rank (every collective is a copy).
std::unique_ptr<Communicator> make_self();

/// Ends every rank of the job with `code` (MPI_Abort) when world() runs on more than one
/// rank, so that a rank's error does not leave the others waiting in a collective; returns
/// (does nothing) otherwise. Call after printing the error.
void abort_world(int code) noexcept;

/// The collectives whose cost curves can be measured (measure_collective).
enum class Collective { all_to_all, all_reduce, all_gather };

/// One point of a collective's cost curve: `bytes_per_peer` is, per collective, the bytes each
/// rank sends to each other rank (all_to_all), the buffer each rank reduces (all_reduce, f32),
/// or each rank's share (all_gather); `seconds` is the slowest rank's mean time per call.
struct AllToAllPoint {
  int64_t bytes_per_peer = 0;
  double seconds = 0;
};
/// A fitted cost curve t = latency + moved / bandwidth, with `moved` the bytes one rank sends
/// in the collective: b·(P − 1) for all_to_all and all_gather, 2·b·(P − 1)/P for a ring
/// all_reduce of b bytes.
struct CollectiveCost {
  Collective kind = Collective::all_to_all;
  std::vector<AllToAllPoint> points;
  double latency_s = 0;       // fitted α
  double bandwidth_gbps = 0;  // fitted: GB/s each rank sends (0 when the sizes cannot tell)
  /// Bytes one rank sends for size b (as in AllToAllPoint) on `ranks` ranks.
  static double moved_bytes(Collective kind, double b, int ranks);
  /// Predicted seconds of one call of size b (as in AllToAllPoint) on `ranks` ranks; 0 on one
  /// rank.
  double seconds(double b, int ranks) const;
};
using AllToAllCost = CollectiveCost;
/// Fits t = latency + moved / bandwidth to measured `points` of `kind` on `ranks` ranks: the
/// bandwidth from the two largest sizes, the latency from the smallest (a least-squares fit
/// would let the large sizes' noise swamp it). When noise makes the larger size no slower than
/// the next (a slope ≤ 0), the bandwidth comes from the largest point alone (its time over its
/// bytes), so that the model never predicts a free collective from a noisy probe. Pure.
CollectiveCost fit_collective_cost(Collective kind, std::vector<AllToAllPoint> points, int ranks);
/// Times `kind` at each size of `bytes` (`reps` calls each, after one warm-up; left out of
/// stats()) and fits t = latency + moved / bandwidth: the bandwidth from the two largest
/// sizes, the latency from the smallest (a least-squares fit would let the large sizes'
/// noise swamp it). all_reduce sizes are rounded down to whole floats. Collective.
CollectiveCost measure_collective(Communicator& comm, Collective kind,
                                  const std::vector<int64_t>& bytes, int reps);
/// measure_collective of all_to_all_v with `bytes_per_peer` to every other rank.
AllToAllCost measure_all_to_all(Communicator& comm, const std::vector<int64_t>& bytes_per_peer,
                                int reps);

/// Block sizes of splitting `n` items over `ranks` ranks as evenly as possible, lower ranks
/// first: rank r gets [begin(r), begin(r + 1)) with begin(r) = ⌊n·r / ranks⌋.
int64_t split_begin(int64_t n, int rank, int ranks);
/// The blocks of that split in bytes, `item_bytes` per item: the sizes an all_gather_v of the
/// ranks' shares takes.
std::vector<int64_t> split_bytes(int64_t n, int ranks, int64_t item_bytes);

}  // namespace deltamoe::dist
