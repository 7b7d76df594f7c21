// dist/ and expert parallelism. Runs as one process (the one-rank communicator) under ctest's
// per-test discovery, and whole under `mpirun -np 2` and `-np 4 --oversubscribe`
// (tests/CMakeLists.txt): every rank runs every test, the collectives inside match up, and
// each rank checks its own results against a one-process reference computed in the same
// process (the MoE block's apply(), the model without --parallel). EXPECT, not ASSERT, inside
// collective sequences: a rank leaving a test early would leave the others waiting.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <optional>
#include <random>
#include <string>

#include "deltamoe/core/parallel.h"
#include "deltamoe/dist/communicator.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/kernels/cpu_features.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/moe/expert_parallel.h"
#include "deltamoe/moe/moe_block.h"
#include "deltamoe/moe/policies.h"

using namespace deltamoe;

namespace {

dist::Communicator& comm() {
  static dist::Communicator& c = [&]() -> dist::Communicator& {
    dist::Communicator& w = dist::world();
    // One thread per rank, as mpirun -np 2 on 2 cores gives; plain runs keep 2.
    set_num_threads(w.size() > 1 ? 1 : 2);
    return w;
  }();
  return c;
}

float max_abs_diff(const float* a, const float* b, size_t n) {
  float m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Prefills `prompt` in both models (logits of every position within 1e-5 of the reference's),
// then decodes `steps` greedy tokens, both fed the reference's token so that they cannot
// diverge, and expects the same token and logits within 1e-5 at each. The caches hold the
// sequence afterwards.
void expect_same_run(const models::MoeLm& ref, const models::MoeLm& par,
                     const std::vector<int32_t>& prompt, int steps, models::KvCache& rc,
                     models::KvCache& pc, models::LmStats* stats = nullptr, float tol = 1e-5f) {
  const int64_t v = ref.vocab_size(), n = static_cast<int64_t>(prompt.size());
  std::vector<float> want(static_cast<size_t>(n * v)), got(want.size());
  ref.forward(prompt.data(), n, rc, want.data(), true);
  par.forward(prompt.data(), n, pc, got.data(), true, stats);
  EXPECT_LE(max_abs_diff(want.data(), got.data(), want.size()), tol);
  std::vector<float> lw(want.end() - v, want.end()), lg(got.end() - v, got.end());
  std::mt19937_64 rng(0);
  for (int s = 0; s < steps; ++s) {
    const int32_t tw = models::sample_token(lw.data(), v, 0.0, 1.0, rng);
    EXPECT_EQ(tw, models::sample_token(lg.data(), v, 0.0, 1.0, rng)) << "step " << s;
    ref.forward(&tw, 1, rc, lw.data(), false);
    par.forward(&tw, 1, pc, lg.data(), false);
    EXPECT_LE(max_abs_diff(lw.data(), lg.data(), lw.size()), tol) << "step " << s;
  }
}

}  // namespace

TEST(Dist, LauncherEnvironmentMatchesTheWorld) {
  dist::Communicator& c = comm();
  EXPECT_EQ(c.size(), dist::launched_ranks());
  EXPECT_GE(c.rank(), 0);
  EXPECT_LT(c.rank(), c.size());
  EXPECT_EQ(c.backend(), c.size() > 1 ? "mpi" : (dist::mpi_built() ? c.backend() : "self"));
}

TEST(Dist, CollectivesMoveWhatTheySay) {
  dist::Communicator& c = comm();
  const int p = c.size(), me = c.rank();
  // all_to_all: rank r sends 100·r + d to rank d.
  std::vector<int64_t> send(static_cast<size_t>(p)), recv(static_cast<size_t>(p), -1);
  for (int d = 0; d < p; ++d) send[static_cast<size_t>(d)] = 100 * me + d;
  c.all_to_all(send.data(), recv.data());
  for (int r = 0; r < p; ++r) EXPECT_EQ(recv[static_cast<size_t>(r)], 100 * r + me);

  // all_to_all_v: rank r sends (r + d) % 3 int32 values to d (zero-sized blocks included),
  // each value encoding (source, destination, index).
  c.reset_stats();
  std::vector<int64_t> sb(static_cast<size_t>(p)), rb(static_cast<size_t>(p));
  std::vector<int32_t> sv;
  int64_t remote = 0;
  for (int d = 0; d < p; ++d) {
    const int n = (me + d) % 3;
    sb[static_cast<size_t>(d)] = 4 * n;
    rb[static_cast<size_t>(d)] = 4 * ((d + me) % 3);
    for (int i = 0; i < n; ++i) sv.push_back(10000 * me + 100 * d + i);
    if (d != me) remote += 4 * n;
  }
  std::vector<int32_t> rv(
      static_cast<size_t>(std::accumulate(rb.begin(), rb.end(), int64_t{0}) / 4));
  c.all_to_all_v(sv.data(), sb.data(), rv.data(), rb.data());
  size_t at = 0;
  for (int r = 0; r < p; ++r)
    for (int i = 0; i < (r + me) % 3; ++i) EXPECT_EQ(rv[at++], 10000 * r + 100 * me + i);
  EXPECT_EQ(c.stats().bytes_sent, remote);
  EXPECT_EQ(c.stats().calls, 1);

  // all_gather_v, out of place and in place: rank r contributes r + 1 floats valued r.
  std::vector<int64_t> gb(static_cast<size_t>(p));
  int64_t total = 0, mine = 0;
  for (int r = 0; r < p; ++r) {
    gb[static_cast<size_t>(r)] = 4 * (r + 1);
    if (r < me) mine += r + 1;
    total += r + 1;
  }
  std::vector<float> part(static_cast<size_t>(me + 1), static_cast<float>(me));
  std::vector<float> all(static_cast<size_t>(total), -1.0f),
      all2(static_cast<size_t>(total), -1.0f);
  c.all_gather_v(part.data(), all.data(), gb.data());
  std::copy(part.begin(), part.end(), all2.begin() + mine);
  c.all_gather_v(all2.data() + mine, all2.data(), gb.data());
  for (size_t i = 0, r = 0, left = 1; i < all.size(); ++i) {
    EXPECT_EQ(all[i], static_cast<float>(r));
    EXPECT_EQ(all2[i], static_cast<float>(r));
    if (--left == 0) left = ++r + 1;
  }

  // Reductions and broadcast.
  float f[2] = {1.0f, static_cast<float>(me)};
  c.all_reduce_sum(f, 2);
  EXPECT_EQ(f[0], static_cast<float>(p));
  EXPECT_EQ(f[1], static_cast<float>(p * (p - 1) / 2));
  double d[2] = {static_cast<double>(me), -static_cast<double>(me)};
  c.all_reduce_max(d, 2);
  EXPECT_EQ(d[0], p - 1);
  EXPECT_EQ(d[1], 0.0);
  double s = 0.5;
  c.all_reduce_sum(&s, 1);
  EXPECT_EQ(s, 0.5 * p);
  int64_t b = me == p - 1 ? 4242 : 0;
  c.broadcast(&b, sizeof b, p - 1);
  EXPECT_EQ(b, 4242);
  c.barrier();
}

// Balancing by load evens out a placement that contiguous blocks leave lopsided, and the
// same loads give the same placement (every rank computes it for itself).
TEST(Dist, BalancedPlacementEvensTheLoad) {
  const std::vector<double> load = {100, 90, 80, 70, 1, 1, 1, 1};
  const auto contiguous = moe::ExpertPlacement::contiguous(8, 2);
  const auto balanced = moe::ExpertPlacement::balanced(load, 2);
  EXPECT_NEAR(contiguous.imbalance(load), 340.0 / 172.0, 1e-12);
  EXPECT_NEAR(balanced.imbalance(load), 172.0 / 172.0, 1e-12);  // {100, 70, 1, 1} / {90, 80, 1, 1}
  for (int e = 0; e < 8; ++e)
    EXPECT_EQ(balanced.owner(e), moe::ExpertPlacement::balanced(load, 2).owner(e));
  EXPECT_THROW(moe::ExpertPlacement::balanced({1.0, -1.0}, 2), Error);
  EXPECT_THROW(moe::ExpertPlacement::balanced({1.0, NAN}, 2), Error);
}

TEST(Dist, SplitsAndPlacementsCoverEverythingOnce) {
  for (int ranks = 1; ranks <= 9; ++ranks) {
    for (int64_t n : {0, 1, 2, 7, 64, 513}) {
      EXPECT_EQ(dist::split_begin(n, 0, ranks), 0);
      EXPECT_EQ(dist::split_begin(n, ranks, ranks), n);
      for (int r = 0; r < ranks; ++r) {
        const int64_t len = dist::split_begin(n, r + 1, ranks) - dist::split_begin(n, r, ranks);
        EXPECT_GE(len, n / ranks);
        EXPECT_LE(len, n / ranks + 1);
      }
    }
    for (int64_t e = 1; e <= 16; ++e) {
      // A skewed load: expert x gets (x * 7919 % 13)^2 rows.
      std::vector<double> load(static_cast<size_t>(e));
      for (int64_t x = 0; x < e; ++x) load[static_cast<size_t>(x)] = std::pow((x * 7919) % 13, 2.0);
      const auto contiguous = moe::ExpertPlacement::contiguous(e, ranks);
      const auto balanced = moe::ExpertPlacement::balanced(load, ranks);
      for (const auto* place : {&contiguous, &balanced}) {
        std::vector<int> seen(static_cast<size_t>(e), -1);
        for (int r = 0; r < ranks; ++r) {
          const auto mine = place->experts_of(r);
          // Memory is shared evenly: ⌊E/P⌋ or ⌈E/P⌉ experts per rank.
          EXPECT_EQ(static_cast<int64_t>(mine.size()),
                    dist::split_begin(e, r + 1, ranks) - dist::split_begin(e, r, ranks));
          for (int32_t x : mine) {
            EXPECT_EQ(seen[static_cast<size_t>(x)], -1);
            seen[static_cast<size_t>(x)] = r;
          }
        }
        for (int64_t x = 0; x < e; ++x) EXPECT_EQ(place->owner(x), seen[static_cast<size_t>(x)]);
      }
      for (int r = 0; r < ranks; ++r)
        EXPECT_EQ(contiguous.experts_of(r).empty() ? -1 : contiguous.experts_of(r).front(),
                  dist::split_begin(e, r, ranks) == dist::split_begin(e, r + 1, ranks)
                      ? -1
                      : dist::split_begin(e, r, ranks));
      EXPECT_LE(balanced.imbalance(load), contiguous.imbalance(load) + 1e-12);
    }
  }
}

// The expert-parallel block against the one-process block on the same rows: top-k and
// per-token budgets (top-p: 1 to E experts; threshold: some tokens with none), a shared
// expert, and row counts that leave some ranks without rows.
TEST(ExpertParallel, EqualsTheOneProcessBlock) {
  dist::Communicator& c = comm();
  const int p = c.size(), me = c.rank();
  const int64_t h = 48, inter = 40;
  for (int64_t experts : {4, 6}) {
    const moe::MoeWeights w = moe::MoeWeights::random(moe::ExpertKind::swiglu, experts, h, inter,
                                                      /*seed=*/11 + static_cast<uint64_t>(experts),
                                                      0, false, /*shared_inter=*/24);
    std::vector<double> load(static_cast<size_t>(experts));
    for (int64_t x = 0; x < experts; ++x)
      load[static_cast<size_t>(x)] = static_cast<double>((x * 5) % 7);
    const auto balanced = moe::ExpertPlacement::balanced(load, p);
    const auto contiguous = moe::ExpertPlacement::contiguous(experts, p);
    for (const auto layout : {kernels::WeightLayout::row_major, kernels::WeightLayout::packed}) {
      const moe::MoeBlock block(w, DType::f32, layout);
      const auto& place = layout == kernels::WeightLayout::packed ? balanced : contiguous;
      for (const std::string spec : {"top-k:2", "top-p:0.7", "threshold:0.3"}) {
        const auto policy = moe::make_policy(spec, experts);
        for (int64_t rows : {1, 3, 37}) {
          SCOPED_TRACE(spec + ", E=" + std::to_string(experts) + ", rows=" + std::to_string(rows));
          std::mt19937_64 rng(static_cast<uint64_t>(rows * 7 + experts));
          std::normal_distribution<float> nd(0.0f, 1.0f);
          std::vector<float> x(static_cast<size_t>(rows * h));
          for (float& v : x) v = nd(rng);
          moe::RoutingResult routing;
          block.route(x.data(), rows, *policy, routing);
          std::vector<float> want(x.size()), got(x.size(), -7.0f);
          block.apply(x.data(), rows, routing, want.data());
          // This rank's slice of the rows, routed there; the slices gathered.
          const int64_t lo = dist::split_begin(rows, me, p),
                        hi = dist::split_begin(rows, me + 1, p);
          moe::RoutingResult mine;
          block.route(x.data() + lo * h, hi - lo, *policy, mine);
          moe::ExpertParallelStats st;
          moe::apply_expert_parallel(block, place, c, x.data() + lo * h, hi - lo, mine,
                                     got.data() + lo * h, &st);
          block.add_shared(x.data() + lo * h, hi - lo, got.data() + lo * h);
          const std::vector<int64_t> bytes = dist::split_bytes(rows, p, h * 4);
          c.all_gather_v(got.data() + lo * h, got.data(), bytes.data());
          EXPECT_LE(max_abs_diff(want.data(), got.data(), want.size()), 1e-5f);
          EXPECT_EQ(st.pairs_local + st.pairs_remote, static_cast<int64_t>(mine.expert_ids.size()));
          if (p == 1) {
            EXPECT_EQ(st.pairs_remote, 0);
          }
          // Every pair is served exactly once, somewhere.
          double served[2] = {static_cast<double>(st.rows_served),
                              static_cast<double>(mine.expert_ids.size())};
          c.all_reduce_sum(served, 2);
          EXPECT_EQ(served[0], served[1]);
        }
      }
    }
  }
}

// A rank drops the mapped pages of experts another rank holds (after a calibration read
// them): the pages of a file mapping go, and are read again from the file if used; memory
// that is not a file mapping (a copy, a tensor made in memory) is never dropped, since that
// would zero it.
TEST(Dist, ReleasedMappedPagesAreReadAgain) {
  const int64_t n = 256, k = 1024;  // 1 MiB of f32
  Tensor w({n, k});
  std::mt19937_64 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = nd(rng);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("deltamoe_release_" + std::to_string(::getpid()) + "_" +
                             std::to_string(comm().rank()) + ".safetensors"))
                               .string();
  io::write_safetensors(path, {{"w", w}});
  {
    const auto f = io::SafetensorsFile::open(path);
    const auto mapped = kernels::PackedLinear::row_major(f.get("w"), DType::f32);
    ASSERT_TRUE(mapped.in_place());
    std::vector<float> x(static_cast<size_t>(k), 0.5f), before(static_cast<size_t>(n)),
        after(static_cast<size_t>(n));
    kernels::linear(x.data(), 1, k, mapped, before.data(), n);
    const size_t released = mapped.release_pages();
    EXPECT_GE(released, static_cast<size_t>(n * k * 4) - 2 * 4096);
    EXPECT_LE(released, static_cast<size_t>(n * k * 4));
    kernels::linear(x.data(), 1, k, mapped, after.data(), n);
    EXPECT_EQ(before, after);
    // In-memory weights and converted copies are never dropped.
    const auto in_memory = kernels::PackedLinear::row_major(w, DType::f32);
    EXPECT_TRUE(in_memory.in_place());
    EXPECT_EQ(in_memory.release_pages(), 0u);
    EXPECT_EQ(kernels::PackedLinear::row_major(f.get("w"), DType::bf16).release_pages(), 0u);
    kernels::linear(x.data(), 1, k, in_memory, after.data(), n);
    EXPECT_EQ(before, after);
    // The storage-level call that expert and tensor slicing use on matrices whose columns they
    // copied: a part of the mapping, whole pages only; the values read again from the file.
    const Tensor view = f.get("w");
    const size_t part = view.storage()->release_pages(view.raw(), view.nbytes() / 2);
    EXPECT_GE(part, static_cast<size_t>(n * k * 2) - 2 * 4096);
    EXPECT_LE(part, static_cast<size_t>(n * k * 2));
    EXPECT_EQ(view.to_vector(), w.to_vector());
    EXPECT_EQ(w.storage()->release_pages(w.raw(), w.nbytes()), 0u);  // not a mapping
    EXPECT_EQ(view.storage()->release_pages(view.raw(), 100), 0u);   // no whole page
  }
  std::filesystem::remove(path);
}

class DistLm : public ::testing::TestWithParam<std::string> {};

// The whole decoder with expert parallelism against the same model in one process, for each
// architecture's golden checkpoint: logits of a prompt (all positions) within 1e-5, the same
// greedy continuation, the same logits for a batched step of two sequences (a prefill chunk
// beside a decode token), and with per-token budgets (top-p).
TEST_P(DistLm, ExpertParallelEqualsOneProcess) {
  dist::Communicator& c = comm();
  const std::string dir = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/" + GetParam();
  const auto ref = models::MoeLm::load(dir, {DType::f32});
  models::LmOptions po{DType::f32};
  po.parallel = models::ParallelMode::ep;
  po.comm = &c;
  const auto par = models::MoeLm::load(dir, po);
  int64_t first_moe = 0;
  while (!ref->config().is_moe_layer(first_moe)) ++first_moe;
  const auto mine = par->placement(first_moe).experts_of(c.rank());
  EXPECT_EQ(par->held_experts(first_moe), static_cast<int64_t>(mine.size()));
  EXPECT_EQ(mine.empty() ? -1 : mine.front(),
            mine.empty() ? -1 : dist::split_begin(ref->config().num_experts, c.rank(), c.size()));
  EXPECT_EQ(par->placement_report().kind, "contiguous");
  const int64_t v = ref->vocab_size();
  std::vector<int32_t> prompt;
  for (int i = 0; i < 13; ++i) prompt.push_back(static_cast<int32_t>((i * 37 + 5) % v));

  for (const std::string routing : {"", "top-p:0.6", "balanced placement", "dynamic placement"}) {
    SCOPED_TRACE("routing " + (routing.empty() ? std::string("default") : routing));
    if (routing == "dynamic placement") {
      par->set_dynamic_placement(true);
      EXPECT_EQ(par->placement_report().kind, "dynamic");
    } else if (routing == "balanced placement") {
      ref->set_policy(nullptr);
      par->set_policy(nullptr);
      const auto [before, after] = par->balance_placement(40, 3);
      EXPECT_LE(after, before + 1e-12);
      EXPECT_EQ(par->placement_report().kind, "balanced");
      EXPECT_EQ(par->held_experts(first_moe),
                static_cast<int64_t>(par->placement(first_moe).experts_of(c.rank()).size()));
    } else if (!routing.empty()) {
      ref->set_policy(moe::make_policy(routing, ref->config().num_experts));
      par->set_policy(moe::make_policy(routing, ref->config().num_experts));
    }
    models::KvCache rc, pc;
    models::LmStats stats;
    expect_same_run(*ref, *par, prompt, 6, rc, pc, &stats);
    EXPECT_EQ(stats.tokens, static_cast<int64_t>(prompt.size()));
    // A batched step: a 5-token prefill chunk of a new sequence beside a decode token.
    models::KvCache rc2, pc2;
    const std::vector<std::vector<int32_t>> step = {{prompt[0], prompt[1], prompt[2], 7, 9}, {3}};
    std::vector<float> bw(2 * static_cast<size_t>(v)), bg(bw.size());
    ref->forward_batch(step, {&rc2, &rc}, bw.data());
    par->forward_batch(step, {&pc2, &pc}, bg.data());
    EXPECT_LE(max_abs_diff(bw.data(), bg.data(), bw.size()), 1e-5f);
  }
  const auto& st = par->expert_parallel_stats();
  if (c.size() > 1) {
    EXPECT_GT(st.pairs_remote + st.pairs_local, 0);
  } else {
    EXPECT_EQ(st.pairs_remote, 0);
  }
}

// Expert parallelism with converted weights (int8 row-major, bf16 packed from the f32
// checkpoint): each rank converts only the experts it holds, at load its contiguous block,
// after a balanced placement the experts that placement gives it, under dynamic placement all;
// and the model still equals one process converting every expert.
TEST_P(DistLm, ExpertParallelConvertsOnlyItsOwnExperts) {
  dist::Communicator& c = comm();
  const std::string dir = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/" + GetParam();
  for (const auto& [dtype, layout] : {std::pair{DType::int8, kernels::WeightLayout::row_major},
                                      std::pair{DType::bf16, kernels::WeightLayout::packed}}) {
    SCOPED_TRACE(dtype_name(dtype));
    const auto ref = models::MoeLm::load(dir, {dtype, layout});
    models::LmOptions po{dtype, layout};
    po.parallel = models::ParallelMode::ep;
    po.comm = &c;
    const auto par = models::MoeLm::load(dir, po);
    const int64_t experts = ref->config().num_experts, v = ref->vocab_size();
    const auto held_everywhere = [&](const std::function<int64_t(int64_t)>& want) {
      for (int64_t l = 0; l < ref->layers(); ++l) {
        if (!ref->config().is_moe_layer(l)) continue;
        EXPECT_EQ(ref->held_experts(l), experts) << "layer " << l;
        EXPECT_EQ(par->held_experts(l), want(l)) << "layer " << l;
      }
    };
    held_everywhere([&](int64_t) {
      return dist::split_begin(experts, c.rank() + 1, c.size()) -
             dist::split_begin(experts, c.rank(), c.size());
    });
    std::vector<int32_t> prompt;
    for (int i = 0; i < 9; ++i) prompt.push_back(static_cast<int32_t>((i * 41 + 2) % v));
    for (const std::string stage : {"contiguous", "balanced", "dynamic"}) {
      SCOPED_TRACE(stage);
      if (stage == "balanced") {
        par->balance_placement(40, 5);
        held_everywhere([&](int64_t l) {
          return static_cast<int64_t>(par->placement(l).experts_of(c.rank()).size());
        });
        if (c.size() > 1) {
          EXPECT_GT(par->placement_report().released_bytes, 0u);
        }
      } else if (stage == "dynamic") {
        par->set_dynamic_placement(true);
        held_everywhere([&](int64_t) { return experts; });
      }
      // int8 products on AMX change arithmetic with their row count (x quantised to int8
      // below 8 rows, rounded to bf16 from there), and expert parallelism changes how many
      // rows each expert's product has: there the logits are compared by the run with
      // DELTAMOE_ISA=avx512 (a CTest of its own), here only the held experts.
      if (dtype == DType::int8 && cpu_features().amx_permitted) continue;
      models::KvCache rc, pc;
      expect_same_run(*ref, *par, prompt, 4, rc, pc, nullptr, 1e-4f);
    }
  }
}

// Expert slicing (es) and tensor slicing (tp: attention heads and their KV cache too) against
// one process, both weight layouts: logits of a prompt within 1e-5 (summation order changes,
// so not bit for bit), the same greedy tokens, a batched step of a prefill chunk beside a
// decode token, with the default routing and a per-token budget (top-p).
namespace {
void expect_sliced_equals_one_process(const std::string& arch, models::ParallelMode mode,
                                      std::optional<models::FfnLayout> force = std::nullopt) {
  dist::Communicator& c = comm();
  const std::string dir = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/" + arch;
  for (const auto layout : {kernels::WeightLayout::row_major, kernels::WeightLayout::packed}) {
    SCOPED_TRACE(layout == kernels::WeightLayout::packed ? "packed" : "row-major");
    const auto ref = models::MoeLm::load(dir, {DType::f32, layout});
    models::LmOptions po{DType::f32, layout};
    po.parallel = mode;
    po.comm = &c;
    po.force_ffn_layout = force;
    const int64_t heads = ref->config().num_attention_heads,
                  kv_heads = ref->config().num_key_value_heads, d = ref->config().head_dim;
    const bool tp = mode == models::ParallelMode::tp || mode == models::ParallelMode::automatic;
    if (tp && (heads % c.size() != 0 || (kv_heads % c.size() != 0 && c.size() % kv_heads != 0))) {
      EXPECT_THROW(models::MoeLm::load(dir, po), Error);
      continue;
    }
    const auto par = models::MoeLm::load(dir, po);
    // Under auto a rank holds whole only its contiguous block of experts (ep's placement).
    for (int64_t l = 0; l < ref->layers(); ++l) {
      if (!ref->config().is_moe_layer(l)) continue;
      EXPECT_EQ(par->held_experts(l),
                mode == models::ParallelMode::automatic
                    ? dist::split_begin(ref->config().num_experts, c.rank() + 1, c.size()) -
                          dist::split_begin(ref->config().num_experts, c.rank(), c.size())
                    : ref->config().num_experts);
    }
    // Under tp each rank caches its KV heads only (one shared head when ranks outnumber them).
    EXPECT_EQ(par->make_kv_pool(16, 0)->row(),
              (tp ? std::max<int64_t>(1, kv_heads / c.size()) : kv_heads) * d);
    const int64_t v = ref->vocab_size();
    std::vector<int32_t> prompt;
    for (int i = 0; i < 11; ++i) prompt.push_back(static_cast<int32_t>((i * 53 + 3) % v));
    for (const std::string routing : {"", "top-p:0.6"}) {
      SCOPED_TRACE("routing " + (routing.empty() ? std::string("default") : routing));
      if (!routing.empty()) {
        ref->set_policy(moe::make_policy(routing, ref->config().num_experts));
        par->set_policy(moe::make_policy(routing, ref->config().num_experts));
      }
      models::KvCache rc, pc;
      expect_same_run(*ref, *par, prompt, 5, rc, pc);
      models::KvCache rc2, pc2;
      const std::vector<std::vector<int32_t>> step = {{prompt[0], prompt[1], 7, 9}, {3}};
      std::vector<float> bw(2 * static_cast<size_t>(v)), bg(bw.size());
      ref->forward_batch(step, {&rc2, &rc}, bw.data());
      par->forward_batch(step, {&pc2, &pc}, bg.data());
      EXPECT_LE(max_abs_diff(bw.data(), bg.data(), bw.size()), 1e-5f);
    }
  }
}
}  // namespace

// Expert slicing: every expert's intermediate dimension split over the ranks, partial sums
// all-reduced.
TEST_P(DistLm, ExpertSlicingEqualsOneProcess) {
  expect_sliced_equals_one_process(GetParam(), models::ParallelMode::es);
}

// Tensor slicing: attention heads split too; at 4 ranks each of the golden models' 2 KV heads
// serves two ranks, and OLMoE's q/k norms over all heads all-reduce their sums of squares.
TEST_P(DistLm, TensorSlicingEqualsOneProcess) {
  expect_sliced_equals_one_process(GetParam(), models::ParallelMode::tp);
}

// --parallel auto: attention as tp, each MoE layer's FFN as es or ep. Every MoE layer forced
// to each layout, and the cost model's own choice, all equal one process.
TEST_P(DistLm, AutomaticEqualsOneProcessInEitherLayout) {
  for (const auto force : {std::optional<models::FfnLayout>(models::FfnLayout::es),
                           std::optional<models::FfnLayout>(models::FfnLayout::ep),
                           std::optional<models::FfnLayout>()}) {
    SCOPED_TRACE(!force ? "cost model" : *force == models::FfnLayout::ep ? "ep" : "es");
    expect_sliced_equals_one_process(GetParam(), models::ParallelMode::automatic, force);
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, DistLm,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// The per-layer choice is the cheaper of the two layouts' modelled communication, from the
// collective costs measured at load, at the layer's experts per token; forcing overrides it.
TEST(DistLm, FfnChoiceIsTheCheaperModelledLayout) {
  dist::Communicator& c = comm();
  const std::string dir = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/mixtral";
  models::LmOptions po{DType::f32};
  po.parallel = models::ParallelMode::automatic;
  po.comm = &c;
  const auto m = models::MoeLm::load(dir, po);
  const double h = static_cast<double>(m->config().hidden_size), p = c.size();
  for (int64_t rows : {int64_t{1}, int64_t{64}, int64_t{4096}}) {
    const auto ch = m->ffn_choice(0, rows);
    EXPECT_EQ(ch.experts_per_token, static_cast<double>(m->config().num_experts_per_tok));
    EXPECT_DOUBLE_EQ(ch.es_seconds, m->all_reduce_cost().seconds(4 * h * rows, c.size()));
    const double per_peer = rows / p * ch.experts_per_token / p;
    EXPECT_DOUBLE_EQ(ch.ep_seconds, m->all_to_all_cost().seconds(per_peer * (4 * h + 4), c.size()) +
                                        m->all_to_all_cost().seconds(per_peer * 4 * h, c.size()) +
                                        2 * m->all_to_all_cost().seconds(8, c.size()) +
                                        m->all_gather_cost().seconds(4 * h * rows / p, c.size()));
    EXPECT_EQ(ch.layout,
              ch.ep_seconds < ch.es_seconds ? models::FfnLayout::ep : models::FfnLayout::es);
    EXPECT_FALSE(ch.forced);
    if (c.size() == 1) {
      EXPECT_EQ(ch.es_seconds + ch.ep_seconds, 0.0);
    }
  }
  EXPECT_THROW(m->ffn_choice(-1, 1), Error);
  po.force_ffn_layout = models::FfnLayout::ep;
  const auto forced = models::MoeLm::load(dir, po);
  EXPECT_EQ(forced->ffn_choice(0, 1).layout, models::FfnLayout::ep);
  EXPECT_TRUE(forced->ffn_choice(0, 1).forced);
  // Only --parallel auto chooses.
  po.parallel = models::ParallelMode::tp;
  EXPECT_THROW(models::MoeLm::load(dir, po), Error);
  po.force_ffn_layout.reset();
  EXPECT_THROW(models::MoeLm::load(dir, po)->ffn_choice(0, 1), Error);
}

// Collective cost curves: positive times, a fit that predicts more time for more bytes, and
// nothing to pay on one rank.
TEST(Dist, CollectiveCostsAreMeasuredAndFitted) {
  dist::Communicator& c = comm();
  for (const auto kind :
       {dist::Collective::all_to_all, dist::Collective::all_reduce, dist::Collective::all_gather}) {
    const auto cost = dist::measure_collective(c, kind, {4096, 1 << 16, 1 << 20}, 3);
    ASSERT_EQ(cost.points.size(), 3u);
    for (const auto& pt : cost.points) EXPECT_GT(pt.seconds, 0.0);
    if (c.size() == 1) {
      EXPECT_EQ(cost.seconds(1 << 20, 1), 0.0);
    } else if (cost.bandwidth_gbps > 0) {
      EXPECT_GT(cost.seconds(1 << 22, c.size()), cost.seconds(1 << 12, c.size()));
    }
  }
  EXPECT_DOUBLE_EQ(dist::CollectiveCost::moved_bytes(dist::Collective::all_reduce, 400, 4), 600);
  EXPECT_DOUBLE_EQ(dist::CollectiveCost::moved_bytes(dist::Collective::all_gather, 400, 4), 1200);
}

// The fit on synthetic points: an exact line is recovered; a noisy probe whose largest size
// was no slower than the next still gives a positive cost that grows with the bytes (a free
// collective made `--parallel auto` choose by noise; cli_parallel caught it under load).
TEST(Dist, CollectiveCostFit) {
  using dist::AllToAllPoint;
  const auto kind = dist::Collective::all_reduce;
  const int P = 2;  // moved = b for a ring all_reduce on 2 ranks
  auto t = [](double b) { return 20e-6 + b / 5e9; };
  const auto exact = dist::fit_collective_cost(
      kind, {{1 << 20, t(1 << 20)}, {4096, t(4096)}, {1 << 16, t(1 << 16)}}, P);
  EXPECT_NEAR(exact.bandwidth_gbps, 5.0, 1e-6);
  EXPECT_NEAR(exact.latency_s, 20e-6, 1e-12);
  EXPECT_NEAR(exact.seconds(1 << 18, P), t(1 << 18), 1e-12);
  const auto noisy =
      dist::fit_collective_cost(kind, {{4096, 30e-6}, {1 << 16, 300e-6}, {1 << 20, 250e-6}}, P);
  EXPECT_GT(noisy.bandwidth_gbps, 0.0);
  EXPECT_GT(noisy.seconds(4096, P), 0.0);
  EXPECT_GT(noisy.seconds(1 << 22, P), noisy.seconds(1 << 12, P));
  EXPECT_EQ(noisy.points.size(), 3u);
  EXPECT_EQ(dist::fit_collective_cost(kind, {{4096, 1e-5}}, 1).seconds(4096, 1), 0.0);
}

TEST(DistLm, RefusesWhatDoesNotCombine) {
  dist::Communicator& c = comm();
  const std::string dir = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/mixtral";
  models::LmOptions po{DType::f32};
  po.parallel = models::ParallelMode::ep;
  EXPECT_THROW(models::MoeLm::load(dir, po), Error);  // no communicator
  po.comm = &c;
  const auto par = models::MoeLm::load(dir, po);
  models::KvCache kc;
  std::vector<float> logits(static_cast<size_t>(par->vocab_size()));
  models::ExpertQueueRule hold;
  hold.min_rows = 4;
  hold.max_wait_s = 0.01;
  EXPECT_THROW(par->forward_batch({{1}}, {&kc}, logits.data(), nullptr, hold), Error);
}
