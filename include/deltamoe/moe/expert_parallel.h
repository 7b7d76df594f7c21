// Expert parallelism of the MoE block (GShard, DeepSpeed-MoE, Tutel): each rank holds a
// share of the routed experts (contiguous blocks, or balanced by measured load); a rank's token
// rows travel to the ranks of their experts by an all-to-all, run there as grouped GEMMs
// (MoeBlock::run_rows) and come back by the reverse all-to-all, where they are combined with the
// gate weights in expert-index order (the combine of MoeBlock::apply, so the result equals the
// one-process block's).
//
// Per call and rank, the traffic is: one int64 count per peer, then for each routed pair whose
// expert lives elsewhere its row (H f32) and expert id (4 bytes) out and its output row (H f32)
// back. Routing may give each token any number of experts (delta-MoE budgets work unchanged).
#pragma once

#include <cstdint>
#include <vector>

#include "deltamoe/dist/communicator.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/routing.h"

namespace deltamoe::moe {

/// Which rank runs which routed experts. Every rank holds about E/P experts (⌊E/P⌋ or
/// ⌈E/P⌉, so that memory is shared evenly), except in a placement balanced without equal
/// counts; which ones is the placement's choice.
class ExpertPlacement {
 public:
  ExpertPlacement() = default;
  /// Contiguous blocks: rank r holds [split_begin(E, r, P), split_begin(E, r + 1, P)).
  static ExpertPlacement contiguous(int64_t experts, int ranks);
  /// Balanced by load (EPLB-style): experts sorted by `load` (e.g. rows routed to each in a
  /// calibration pass), heaviest first, each to the least-loaded rank that still has room for
  /// one of its ⌊E/P⌋ or ⌈E/P⌉ experts (ties to the lower rank, so every rank computes the
  /// same placement from the same loads). `equal_counts` false drops the room limit (ranks
  /// that all hold every expert, e.g. one machine's ranks mapping one checkpoint: only the
  /// work is placed). Throws Error("moe") on a negative or non-finite load.
  static ExpertPlacement balanced(const std::vector<double>& load, int ranks,
                                  bool equal_counts = true);

  int64_t experts() const { return static_cast<int64_t>(owner_.size()); }
  int ranks() const { return ranks_; }
  int owner(int64_t e) const { return owner_[static_cast<size_t>(e)]; }
  /// The experts rank r holds, ascending.
  std::vector<int32_t> experts_of(int rank) const;
  /// Σ load over each rank's experts, over the mean rank's: 1 = balanced.
  double imbalance(const std::vector<double>& load) const;

 private:
  std::vector<int32_t> owner_;
  int ranks_ = 1;
};

/// Counters of expert-parallel calls, accumulated.
struct ExpertParallelStats {
  int64_t pairs_local = 0;   // routed (token, expert) pairs whose expert is on this rank
  int64_t pairs_remote = 0;  // pairs sent to another rank (and their outputs returned)
  int64_t rows_served = 0;   // rows this rank's experts ran, for any rank
};

/// y[rows, H] = Σ_j w_j · E_{e_j}(x) over this rank's `rows` token rows x[rows, H] and their
/// `routing`, with each expert run on its owner (block's own weights for the experts this rank
/// owns; the others are never read). No shared expert (add it with MoeBlock::add_shared on the
/// rank's rows). Collective: every rank of `comm` calls it once per layer, any row count
/// (zero included). y is overwritten. Throws Error("moe") when the block is not swiglu / MLP
/// with one expert per routed id, or when the communicator has more ranks than can be split.
/// `placement` must be the same on every rank, over block.experts() experts and comm.size()
/// ranks. `weights`, when not null, replaces routing.weights (same CSR positions), as in
/// MoeBlock::apply.
void apply_expert_parallel(const MoeBlock& block, const ExpertPlacement& placement,
                           dist::Communicator& comm, const float* x, int64_t rows,
                           const RoutingResult& routing, float* y,
                           ExpertParallelStats* stats = nullptr, const float* weights = nullptr);

/// The same for rows every rank holds alike (x[tokens, H] and `routing` equal on all ranks,
/// as between the all-reduces of sliced attention or a replicated classifier layer): rank r
/// sends its share [split_begin(tokens, r), split_begin(tokens, r + 1)) of the rows through
/// apply_expert_parallel, adds the shared expert to it, and the shares are all-gathered, so
/// every rank ends with the whole y[tokens, H] (overwritten). Collective.
void apply_expert_parallel_replicated(const MoeBlock& block, const ExpertPlacement& placement,
                                      dist::Communicator& comm, const float* x, int64_t tokens,
                                      const RoutingResult& routing, float* y,
                                      ExpertParallelStats* stats = nullptr,
                                      const float* weights = nullptr);

}  // namespace deltamoe::moe
