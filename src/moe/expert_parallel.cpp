// Expert parallelism (see moe/expert_parallel.h): dispatch by all-to-all, grouped experts on
// the owners, return by the reverse all-to-all, combine in expert-index order.
#include "deltamoe/moe/expert_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"

namespace deltamoe::moe {

ExpertPlacement ExpertPlacement::contiguous(int64_t experts, int ranks) {
  DELTAMOE_CHECK(experts >= 1 && ranks >= 1, "moe", "a placement of ", experts, " experts on ",
                 ranks, " ranks");
  ExpertPlacement p;
  p.ranks_ = ranks;
  p.owner_.resize(static_cast<size_t>(experts));
  for (int r = 0; r < ranks; ++r)
    for (int64_t e = dist::split_begin(experts, r, ranks);
         e < dist::split_begin(experts, r + 1, ranks); ++e)
      p.owner_[static_cast<size_t>(e)] = r;
  return p;
}

ExpertPlacement ExpertPlacement::balanced(const std::vector<double>& load, int ranks,
                                          bool equal_counts) {
  const int64_t experts = static_cast<int64_t>(load.size());
  ExpertPlacement p = contiguous(experts, ranks);
  for (double v : load)
    DELTAMOE_CHECK(std::isfinite(v) && v >= 0, "moe", "expert load ", v, " is not a count");
  std::vector<int32_t> order(static_cast<size_t>(experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return load[a] > load[b]; });
  // Room per rank: the contiguous placement's counts (⌊E/P⌋ or ⌈E/P⌉, the larger first).
  std::vector<int64_t> room(static_cast<size_t>(ranks));
  for (int r = 0; r < ranks; ++r)
    room[static_cast<size_t>(r)] = equal_counts ? dist::split_begin(experts, r + 1, ranks) -
                                                      dist::split_begin(experts, r, ranks)
                                                : experts;
  std::vector<double> sum(static_cast<size_t>(ranks), 0.0);
  for (int32_t e : order) {
    int best = -1;
    for (int r = 0; r < ranks; ++r)
      if (room[static_cast<size_t>(r)] > 0 &&
          (best < 0 || sum[static_cast<size_t>(r)] < sum[static_cast<size_t>(best)]))
        best = r;
    DELTAMOE_ASSERT(best >= 0, "no rank has room for expert ", e);
    p.owner_[static_cast<size_t>(e)] = best;
    sum[static_cast<size_t>(best)] += load[static_cast<size_t>(e)];
    --room[static_cast<size_t>(best)];
  }
  return p;
}

std::vector<int32_t> ExpertPlacement::experts_of(int rank) const {
  std::vector<int32_t> out;
  for (size_t e = 0; e < owner_.size(); ++e)
    if (owner_[e] == rank) out.push_back(static_cast<int32_t>(e));
  return out;
}

double ExpertPlacement::imbalance(const std::vector<double>& load) const {
  DELTAMOE_ASSERT(load.size() == owner_.size(), "load of ", load.size(), " experts, placement of ",
                  owner_.size());
  std::vector<double> sum(static_cast<size_t>(ranks_), 0.0);
  double total = 0;
  for (size_t e = 0; e < load.size(); ++e) {
    sum[static_cast<size_t>(owner_[e])] += load[e];
    total += load[e];
  }
  return total > 0 ? *std::max_element(sum.begin(), sum.end()) / (total / ranks_) : 1.0;
}

void apply_expert_parallel(const MoeBlock& block, const ExpertPlacement& place,
                           dist::Communicator& comm, const float* x, int64_t rows,
                           const RoutingResult& routing, float* y, ExpertParallelStats* stats,
                           const float* weights) {
  const int p = comm.size(), me = comm.rank();
  const int64_t h = block.hidden();
  const size_t hz = static_cast<size_t>(h);
  DELTAMOE_ASSERT(routing.tokens() == rows || (rows == 0 && routing.offsets.size() <= 1),
                  "routing has ", routing.tokens(), " tokens, input ", rows);
  DELTAMOE_ASSERT(place.experts() == block.experts() && place.ranks() == p, "placement of ",
                  place.experts(), " experts on ", place.ranks(), " ranks for a block of ",
                  block.experts(), " on ", p);
  const size_t pairs = routing.expert_ids.size();

  // Dispatch order: by destination rank, then (token, slot) order; slot_of[pair] = position.
  std::vector<int64_t> send_rows(static_cast<size_t>(p), 0), recv_rows(static_cast<size_t>(p));
  std::vector<int32_t> dest(pairs);
  for (size_t j = 0; j < pairs; ++j) {
    dest[j] = place.owner(routing.expert_ids[j]);
    ++send_rows[static_cast<size_t>(dest[j])];
  }
  comm.all_to_all(send_rows.data(), recv_rows.data());
  std::vector<int64_t> start(static_cast<size_t>(p) + 1, 0);
  for (int r = 0; r < p; ++r) start[static_cast<size_t>(r) + 1] = start[r] + send_rows[r];
  std::vector<int64_t> slot_of(pairs), fill(start.begin(), start.end() - 1);
  for (size_t j = 0; j < pairs; ++j) slot_of[j] = fill[static_cast<size_t>(dest[j])]++;
  std::vector<float> send_x(pairs * hz);
  std::vector<int32_t> send_e(pairs);
  parallel_for(rows, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int32_t j = routing.offsets[t]; j < routing.offsets[t + 1]; ++j) {
        const size_t s = static_cast<size_t>(slot_of[static_cast<size_t>(j)]);
        std::memcpy(send_x.data() + s * hz, x + t * h, hz * sizeof(float));
        send_e[s] = routing.expert_ids[static_cast<size_t>(j)];
      }
  });

  int64_t received = 0;
  for (int64_t r : recv_rows) received += r;
  std::vector<int64_t> sb(static_cast<size_t>(p)), rb(static_cast<size_t>(p));
  for (int r = 0; r < p; ++r) {
    sb[r] = send_rows[r] * 4;
    rb[r] = recv_rows[r] * 4;
  }
  std::vector<int32_t> recv_e(static_cast<size_t>(received));
  comm.all_to_all_v(send_e.data(), sb.data(), recv_e.data(), rb.data());
  for (int r = 0; r < p; ++r) {
    sb[r] *= h;
    rb[r] *= h;
  }
  std::vector<float> recv_x(static_cast<size_t>(received) * hz);
  comm.all_to_all_v(send_x.data(), sb.data(), recv_x.data(), rb.data());

  // Every received row belongs to an expert of this rank: a sender routed it by placement.
  for (int32_t e : recv_e)
    DELTAMOE_CHECK(place.owner(e) == me, "moe", "expert-parallel rank ", me,
                   " received a row "
                   "for expert ",
                   e, ", held by rank ", place.owner(e), " (ranks disagree on the placement)");
  std::vector<float> out(static_cast<size_t>(received) * hz);
  if (received > 0) block.run_rows(recv_x.data(), received, recv_e.data(), out.data());
  // The outputs go back the way the rows came: the byte counts swap roles.
  comm.all_to_all_v(out.data(), rb.data(), send_x.data(), sb.data());

  if (rows > 0) std::memset(y, 0, static_cast<size_t>(rows) * hz * sizeof(float));
  parallel_for(rows, 16, [&](int64_t b, int64_t e) {
    std::vector<int32_t> order;
    for (int64_t t = b; t < e; ++t) {
      const int32_t o = routing.offsets[t], k = routing.offsets[t + 1] - o;
      combine_in_expert_order(
          routing.expert_ids.data() + o, (weights ? weights : routing.weights.data()) + o, k,
          [&](int32_t a) {
            return send_x.data() + static_cast<size_t>(slot_of[static_cast<size_t>(o + a)]) * hz;
          },
          y + t * h, h, order);
    }
  });
  if (stats) {
    const int64_t local = send_rows[static_cast<size_t>(me)];
    stats->pairs_local += local;
    stats->pairs_remote += static_cast<int64_t>(pairs) - local;
    stats->rows_served += received;
  }
}

void apply_expert_parallel_replicated(const MoeBlock& block, const ExpertPlacement& placement,
                                      dist::Communicator& comm, const float* x, int64_t tokens,
                                      const RoutingResult& routing, float* y,
                                      ExpertParallelStats* stats, const float* weights) {
  const int ranks = comm.size(), me = comm.rank();
  const int64_t h = block.hidden();
  const int64_t lo = dist::split_begin(tokens, me, ranks);
  const int64_t hi = dist::split_begin(tokens, me + 1, ranks);
  // This rank's rows' routing: a slice of the CSR every rank holds for all rows.
  RoutingResult mine;
  const int32_t a = routing.offsets[static_cast<size_t>(lo)];
  const int32_t b = routing.offsets[static_cast<size_t>(hi)];
  for (int64_t t = lo; t <= hi; ++t)
    mine.offsets.push_back(routing.offsets[static_cast<size_t>(t)] - a);
  mine.expert_ids.assign(routing.expert_ids.begin() + a, routing.expert_ids.begin() + b);
  const float* w = weights ? weights : routing.weights.data();
  mine.weights.assign(w + a, w + b);
  apply_expert_parallel(block, placement, comm, x + lo * h, hi - lo, mine, y + lo * h, stats);
  block.add_shared(x + lo * h, hi - lo, y + lo * h);
  const std::vector<int64_t> bytes = dist::split_bytes(tokens, ranks, h * 4);
  comm.all_gather_v(y + lo * h, y, bytes.data());
}

}  // namespace deltamoe::moe
