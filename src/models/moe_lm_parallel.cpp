// The MoE decoder over several ranks (ParallelMode in models/moe_lm.h).
#include <malloc.h>
#include <algorithm>
#include <cstring>
#include <random>

#include "deltamoe/core/error.h"
#include "deltamoe/models/moe_lm.h"
#include "models/moe_lm_internal.h"

namespace deltamoe::models {

const char* parallel_mode_name(ParallelMode m) {
  switch (m) {
    case ParallelMode::none:
      return "none";
    case ParallelMode::ep:
      return "ep";
    case ParallelMode::es:
      return "es";
    case ParallelMode::tp:
      return "tp";
    case ParallelMode::automatic:
      return "auto";
  }
  return "?";
}

void MoeLm::reset_parallel_stats() const {
  ep_stats_ = {};
  if (comm_) comm_->reset_stats();
}

const moe::ExpertPlacement& MoeLm::placement(int64_t layer) const {
  DELTAMOE_CHECK((parallel_ == ParallelMode::ep || parallel_ == ParallelMode::automatic) &&
                     layer >= 0 && layer < layers() && layers_[static_cast<size_t>(layer)].moe,
                 "model", "layer ", layer,
                 " has no expert placement (not an MoE layer of an "
                 "expert-parallel model)");
  return placement_[static_cast<size_t>(layer)];
}

int64_t MoeLm::held_experts(int64_t layer) const {
  DELTAMOE_CHECK(layer >= 0 && layer < layers() && layers_[static_cast<size_t>(layer)].moe, "model",
                 "layer ", layer, " is not an MoE layer");
  const Layer& ly = layers_[static_cast<size_t>(layer)];
  return (ly.ffn_whole ? ly.ffn_whole : ly.ffn)->held_experts();
}

std::vector<bool> MoeLm::held_mask(const moe::ExpertPlacement& place) const {
  std::vector<bool> held(static_cast<size_t>(place.experts()));
  for (int64_t e = 0; e < place.experts(); ++e)
    held[static_cast<size_t>(e)] = place.owner(e) == comm_->rank();
  return held;
}

std::pair<double, double> MoeLm::balance_placement(int64_t tokens, uint64_t seed) {
  DELTAMOE_CHECK(parallel_ == ParallelMode::ep, "model",
                 "balancing the expert placement needs --parallel ep");
  DELTAMOE_CHECK(tokens >= 1 && tokens < max_positions_, "model", "a calibration of ", tokens,
                 " tokens does not fit the context of ", max_positions_);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(cfg_.vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (auto& t : ids) t = pick(rng);
  KvCache cache;
  LmStats stats;
  stats.record_routing = true;
  std::vector<float> logits(static_cast<size_t>(cfg_.vocab_size));
  forward(ids.data(), tokens, cache, logits.data(), false, &stats);
  double before = 0, after = 0, n = 0;
  size_t j = 0, released = 0;
  for (int64_t l = 0; l < layers(); ++l) {
    if (!layers_[static_cast<size_t>(l)].moe) continue;
    DELTAMOE_ASSERT(j < stats.routing.size(), "calibration routing of ", stats.routing.size(),
                    " MoE layers");
    std::vector<double> load(static_cast<size_t>(cfg_.num_experts), 0.0);
    for (int32_t e : stats.routing[j++].expert_ids) load[static_cast<size_t>(e)] += 1;
    auto& place = placement_[static_cast<size_t>(l)];
    before += place.imbalance(load);
    place = moe::ExpertPlacement::balanced(load, comm_->size());
    after += place.imbalance(load);
    n += 1;
    // The rank prepared its contiguous block: let go of those experts now held elsewhere and
    // prepare those gained, so that its memory is its own experts.
    released += layers_[static_cast<size_t>(l)].ffn->set_held(
        expert_sources_[static_cast<size_t>(l)], held_mask(place));
  }
  malloc_trim(0);  // the conversions' heap temporaries (as after load)
  reset_parallel_stats();
  placement_report_ = {"balanced", tokens, n > 0 ? before / n : 1.0, n > 0 ? after / n : 1.0,
                       released};
  return {placement_report_.imbalance_contiguous, placement_report_.imbalance_balanced};
}

void MoeLm::set_dynamic_placement(bool on) {
  DELTAMOE_CHECK(!on || parallel_ == ParallelMode::ep, "model",
                 "a dynamic expert placement needs --parallel ep");
  // Any rank may run any expert from now on.
  if (on)
    for (int64_t l = 0; l < layers(); ++l)
      if (layers_[static_cast<size_t>(l)].moe)
        layers_[static_cast<size_t>(l)].ffn->set_held(
            expert_sources_[static_cast<size_t>(l)],
            std::vector<bool>(static_cast<size_t>(cfg_.num_experts), true));
  if (on) malloc_trim(0);
  dynamic_placement_ = on;
  placement_report_ = {on ? "dynamic" : "contiguous", 0, 0, 0};
}

namespace {

// The whole pass's routing from each rank's routing of its rows (for statistics).
moe::RoutingResult gather_routing(dist::Communicator& comm, const moe::RoutingResult& mine,
                                  int64_t rows) {
  const int ranks = comm.size();
  const int64_t m = mine.tokens();
  std::vector<int32_t> k_mine(static_cast<size_t>(m)), k_all(static_cast<size_t>(rows));
  for (int64_t t = 0; t < m; ++t) k_mine[static_cast<size_t>(t)] = mine.experts_of(t);
  std::vector<int64_t> bytes = dist::split_bytes(rows, ranks, 4);
  comm.all_gather_v(k_mine.data(), k_all.data(), bytes.data());
  moe::RoutingResult all;
  all.offsets.assign(1, 0);
  for (int32_t k : k_all) all.offsets.push_back(all.offsets.back() + k);
  for (int r = 0; r < ranks; ++r) {
    const int64_t a = dist::split_begin(rows, r, ranks), b = dist::split_begin(rows, r + 1, ranks);
    bytes[static_cast<size_t>(r)] =
        4 * (all.offsets[static_cast<size_t>(b)] - all.offsets[static_cast<size_t>(a)]);
  }
  all.expert_ids.resize(static_cast<size_t>(all.offsets.back()));
  all.weights.resize(all.expert_ids.size());
  comm.all_gather_v(mine.expert_ids.data(), all.expert_ids.data(), bytes.data());
  comm.all_gather_v(mine.weights.data(), all.weights.data(), bytes.data());
  return all;
}

}  // namespace

// Expert parallelism with the residual stream split by rows: rank r holds the pass's rows
// [lo, hi) from the embedding to the last layer. Attention: each rank projects its rows, the
// ranks all-gather the new keys and values (every rank keeps the whole KV cache), and each
// attends for its own queries. MoE layers: each rank routes its rows and sends them to the
// experts' ranks (moe/expert_parallel.h). After the last layer the rows are all-gathered
// once, for the LM head.
void MoeLm::run_layers_parallel(Pass& p, std::vector<float>& h, LmStats* stats) const {
  const int64_t hd = cfg_.hidden_size, qkv_n = q_rows_ + 2 * kv_rows_, kvw = 2 * kv_rows_;
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  begin_pass(p, stats);
  const size_t seqs = p.toks.size();
  for (size_t s = 0; s < seqs; ++s)
    DELTAMOE_CHECK(p.resume[s] < 0, "model", "sequence ", s,
                   " holds a token of per-expert queues, which --parallel does not run");
  dist::Communicator& comm = *comm_;
  const int ranks = comm.size(), me = comm.rank();
  // Even row counts. Splitting by each row's projection + causal-attention cost instead (later
  // positions attend to more keys) measured no faster at np = 2 (0.81x and 0.77x one process
  // against 0.83x, within this machine's noise; docs/experiments/parallel.md): the waits that
  // remain are the experts' per-layer load.
  const int64_t rows = p.rows, lo = dist::split_begin(rows, me, ranks);
  const int64_t hi = dist::split_begin(rows, me + 1, ranks), m = hi - lo;
  // Each pass row's sequence and position; this rank's rows as sequences' pieces.
  std::vector<int32_t> seq_of_row(static_cast<size_t>(rows));
  std::vector<int64_t> row0, counts, start;
  std::vector<KvCache*> caches;
  for (size_t s = 0; s < seqs; ++s) {
    for (int64_t i = 0; i < p.counts[s]; ++i)
      seq_of_row[static_cast<size_t>(p.row0[s] + i)] = static_cast<int32_t>(s);
    const int64_t a = std::max(lo, p.row0[s]), b = std::min(hi, p.row0[s] + p.counts[s]);
    if (a >= b) continue;
    row0.push_back(a - lo);
    counts.push_back(b - a);
    start.push_back(p.start[s] + a - p.row0[s]);
    caches.push_back(p.caches[s]);
  }
  const auto pos_of = [&](int64_t r) {
    const size_t s = static_cast<size_t>(seq_of_row[static_cast<size_t>(r)]);
    return p.start[s] + r - p.row0[s];
  };
  std::vector<float> hm(static_cast<size_t>(m * hd));
  for (int64_t r = lo; r < hi; ++r) {
    const size_t s = static_cast<size_t>(seq_of_row[static_cast<size_t>(r)]);
    const int32_t tok = p.toks[s][r - p.row0[s]];
    const Tensor row = embed_.slice(tok, tok + 1).to(DType::f32);
    std::memcpy(hm.data() + (r - lo) * hd, row.data<float>(), static_cast<size_t>(hd) * 4);
  }
  p.x.resize(static_cast<size_t>(m * hd));
  p.y.resize(static_cast<size_t>(m * hd));
  p.qkv.resize(static_cast<size_t>(m * qkv_n));
  p.att.resize(static_cast<size_t>(m * q_rows_));
  p.kblocks.resize(caches.size());
  p.vblocks.resize(caches.size());
  p.kblocks16.resize(caches.size());
  p.vblocks16.resize(caches.size());
  std::vector<float> kv_mine(static_cast<size_t>(m * kvw)), kv_all(static_cast<size_t>(rows * kvw));
  const std::vector<int64_t> kv_bytes = dist::split_bytes(rows, ranks, kvw * 4);
  const RowSet all_rows(p, [](size_t) { return true; });
  float* x = p.x.data();
  float* y = p.y.data();
  for (int64_t l = 0; l < layers(); ++l) {
    const Layer& ly = layers_[static_cast<size_t>(l)];
    if (m > 0) project_qkv(ly, hm.data(), m, x, p.qkv.data());
    for (int64_t i = 0; i < m; ++i) {
      float* row = p.qkv.data() + i * qkv_n;
      rope_row(row, pos_of(lo + i));
      std::memcpy(kv_mine.data() + i * kvw, row + q_rows_, static_cast<size_t>(kvw) * 4);
    }
    comm.all_gather_v(kv_mine.data(), kv_all.data(), kv_bytes.data());
    for (int64_t r = 0; r < rows; ++r)
      store_kv(*p.caches[static_cast<size_t>(seq_of_row[static_cast<size_t>(r)])], l, pos_of(r),
               kv_all.data() + r * kvw);
    if (m > 0) attend(ly, l, p, {row0, counts, start, caches}, p.qkv.data(), hm.data());
    // FFN of this rank's rows: x = RMSNorm(h); h += MoE(x) (or the dense MLP).
    norm_rows(hm.data(), ly.post_norm.data<float>(), x, m, hd, eps);
    moe::RoutingResult mine;
    mine.clear();
    if (m > 0) ly.ffn->route(x, m, policy_of(l), mine);
    if (ly.moe) {
      const moe::ExpertPlacement* place = &placement_[static_cast<size_t>(l)];
      moe::ExpertPlacement by_load;
      if (dynamic_placement_) {
        std::vector<double> load(static_cast<size_t>(cfg_.num_experts), 0.0);
        for (int32_t e : mine.expert_ids) load[static_cast<size_t>(e)] += 1;
        comm.all_reduce_sum(load.data(), cfg_.num_experts);
        by_load = moe::ExpertPlacement::balanced(load, ranks, /*equal_counts=*/false);
        place = &by_load;
      }
      moe::apply_expert_parallel(*ly.ffn, *place, comm, x, m, mine, y, &ep_stats_);
      ly.ffn->add_shared(x, m, y);
      if (stats) {
        const dist::UncountedScope bookkeeping(comm);
        moe::RoutingResult whole = gather_routing(comm, mine, rows);
        count_routing(whole, all_rows, stats);
      }
    } else if (m > 0) {
      ly.ffn->apply(x, m, mine, y);
    }
    add_rows(hm.data(), y, m * hd);
  }
  h.resize(static_cast<size_t>(rows * hd));
  const std::vector<int64_t> h_bytes = dist::split_bytes(rows, ranks, hd * 4);
  comm.all_gather_v(hm.data(), h.data(), h_bytes.data());
  for (size_t s = 0; s < seqs; ++s) {
    p.caches[s]->length_ += p.counts[s];
    if (stats) stats->tokens += p.counts[s];
  }
  parallel_for(rows, 8, [&](int64_t b, int64_t e) {
    kernels::rms_norm_rows_st(h.data() + b * hd, final_norm_.data<float>(), h.data() + b * hd,
                              e - b, hd, hd, eps);
  });
}

MoeLm::FfnChoice MoeLm::ffn_choice(int64_t layer, int64_t rows) const {
  DELTAMOE_CHECK(parallel_ == ParallelMode::automatic && layer >= 0 && layer < layers() &&
                     layers_[static_cast<size_t>(layer)].moe,
                 "model", "layer ", layer,
                 " has no FFN choice (not an MoE layer of a model run with --parallel auto)");
  const int ranks = comm_->size();
  const double p = ranks, h = static_cast<double>(cfg_.hidden_size);
  const double n = static_cast<double>(rows);
  FfnChoice c;
  c.experts_per_token = k_seen_[static_cast<size_t>(layer)];
  // es: one all-reduce of the layer's [rows, H] output.
  c.es_seconds = ar_cost_.seconds(4 * h * n, ranks);
  // ep: a rank's rows/P rows, each with k experts of which (P − 1)/P live elsewhere, out and
  // back (per peer: 1/P of those), then [rows/P, H] all-gathered. Two all-to-alls of counts
  // and ids ride along (latency only).
  const double pairs_per_peer = n / p * c.experts_per_token / p;
  c.ep_seconds = a2a_cost_.seconds(pairs_per_peer * (4 * h + 4), ranks) +
                 a2a_cost_.seconds(pairs_per_peer * 4 * h, ranks) +
                 2 * a2a_cost_.seconds(8, ranks) + ag_cost_.seconds(4 * h * n / p, ranks);
  if (force_ffn_layout_) {
    c.layout = *force_ffn_layout_;
    c.forced = true;
  } else {
    c.layout = c.ep_seconds < c.es_seconds ? FfnLayout::ep : FfnLayout::es;
  }
  return c;
}

}  // namespace deltamoe::models
