// Experts beyond RAM: the expert cache's reads, eviction policies and errors, and language
// models run with their experts in a small cache against the same models all resident.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/models/expert_cache.h"
#include "deltamoe/models/moe_lm.h"
#include "llm_golden.h"

using namespace deltamoe;
using namespace deltamoe::models;
using deltamoe::test::golden_dir;
using deltamoe::test::ids_of;

namespace {

// Greedy decode of `steps` tokens after `prompt`, logits of every step appended to `all`.
std::vector<int32_t> decode(const MoeLm& m, const std::vector<int32_t>& prompt, int steps,
                            std::vector<float>& all) {
  KvCache cache;
  std::vector<float> logits(static_cast<size_t>(m.vocab_size()));
  std::mt19937_64 rng(0);
  m.forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, logits.data(), false);
  std::vector<int32_t> out;
  for (int s = 0; s < steps; ++s) {
    all.insert(all.end(), logits.begin(), logits.end());
    const int32_t t = sample_token(logits.data(), m.vocab_size(), 0.0, 1.0, rng);
    out.push_back(t);
    m.forward(&t, 1, cache, logits.data(), false);
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A file of `layers * experts` experts, each three matrices of `n` floats: value = index.
struct ExpertFile {
  std::string path;
  int64_t layers, experts, n;
  std::vector<std::array<io::FileExtent, 3>> extents;
  ExpertFile(int64_t l, int64_t e, int64_t n_, uint64_t header)
      : path(std::filesystem::temp_directory_path() /
             ("deltamoe_expert_cache_" + std::to_string(::getpid()) + ".bin")),
        layers(l),
        experts(e),
        n(n_) {
    std::ofstream f(path, std::ios::binary);
    const std::vector<char> pad(static_cast<size_t>(header), 0);
    f.write(pad.data(), static_cast<std::streamsize>(pad.size()));
    uint64_t off = header;
    for (int64_t k = 0; k < l * e; ++k) {
      std::array<io::FileExtent, 3> x;
      for (int m = 0; m < 3; ++m) {
        std::vector<float> v(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          v[static_cast<size_t>(i)] = float(k * 1000 + m * 100) + float(i % 97);
        f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(n * 4));
        x[static_cast<size_t>(m)] = {path, off, static_cast<uint64_t>(n * 4)};
        off += static_cast<uint64_t>(n * 4);
      }
      extents.push_back(x);
    }
  }
  ~ExpertFile() { std::filesystem::remove(path); }
  // Shapes of [n/8, 8] matrices (gate, up, down alike).
  std::array<Shape, 3> shapes() const {
    return {Shape{n / 8, 8}, Shape{n / 8, 8}, Shape{n / 8, 8}};
  }
};

ExpertCacheOptions slots_of(int64_t slots, int64_t total, ExpertCachePolicy p) {
  ExpertCacheOptions o;
  o.fraction = double(slots) / double(total);
  o.policy = p;
  o.io_threads = 2;
  return o;
}

}  // namespace

TEST(ExpertCache, ParsesBudgets) {
  EXPECT_DOUBLE_EQ(parse_expert_cache_budget("25%").fraction, 0.25);
  EXPECT_EQ(parse_expert_cache_budget("4GiB").budget_bytes, uint64_t{4} << 30);
  EXPECT_EQ(parse_expert_cache_budget("500MB").budget_bytes, 500000000u);
  for (const char* bad : {"abc", "0%", "150%", "%", "-1GB", "4XB", ""})
    EXPECT_NE(error_of([&] { parse_expert_cache_budget(bad); }).find("[offload]"),
              std::string::npos)
        << bad;
  EXPECT_EQ(parse_expert_cache_policy("router"), ExpertCachePolicy::router);
  EXPECT_NE(error_of([] { parse_expert_cache_policy("mru"); }).find("lru, lfu, router"),
            std::string::npos);
}

// Bytes arrive intact through both read paths, from offsets that are not block-aligned, in
// reads split into chunks (the matrices are larger than one 4 MiB chunk).
TEST(ExpertCache, ReadsMatricesExactlyDirectAndBuffered) {
  const ExpertFile f(2, 2, 1 << 20, 1000);  // 4 MiB per matrix, header of 1000 bytes
  for (bool direct : {true, false}) {
    ExpertCacheOptions o = slots_of(2, 4, ExpertCachePolicy::lru);
    o.direct_io = direct;
    ExpertCache c(2, 2, DType::f32, f.shapes(), f.extents, o);
    for (int64_t l = 0; l < 2; ++l)
      for (int32_t e = 0; e < 2; ++e) {
        c.begin(l, {e}, nullptr, 1);
        const moe::ExpertMatrices m = c.wait(l, e);
        const int64_t k = l * 2 + e;
        int m_index = 0;
        for (const kernels::PackedLinear* p : {m.w1, m.w3, m.w2}) {
          const float* v = static_cast<const float*>(p->data());
          for (int64_t i : {int64_t{0}, int64_t{1}, f.n / 2, f.n - 1})
            ASSERT_EQ(v[i], float(k * 1000 + m_index * 100) + float(i % 97))
                << "direct " << direct << " key " << k << " matrix " << m_index;
          ++m_index;
        }
        c.end(l, {e});
      }
    const ExpertCacheStats s = c.stats();
    EXPECT_EQ(s.misses, 4);
    EXPECT_EQ(s.reads, 4);
    EXPECT_EQ(s.evictions, 2);
    EXPECT_GE(s.bytes_read, 4 * 3 * uint64_t(f.n) * 4);
    EXPECT_GT(c.probe_read_gbps(2, 1), 0.0);
  }
}

// Three layers of two experts in two slots: at layer 2, LRU evicts layer 0's expert (used
// longest ago, but needed next); the router policy evicts layer 1's (its layer runs last).
TEST(ExpertCache, RouterPolicyEvictsTheExpertWhoseLayerRunsLast) {
  const ExpertFile f(3, 2, 1024, 0);
  const float probs[2] = {0.5f, 0.5f};
  for (auto p : {ExpertCachePolicy::lru, ExpertCachePolicy::lfu, ExpertCachePolicy::router}) {
    ExpertCache c(3, 2, DType::f32, f.shapes(), f.extents, slots_of(2, 6, p));
    for (int64_t l = 0; l < 3; ++l) {
      c.begin(l, {0}, probs, 1);
      c.wait(l, 0);
      c.end(l, {0});
    }
    if (p == ExpertCachePolicy::router) {
      EXPECT_TRUE(c.ready(0, 0));
      EXPECT_FALSE(c.ready(1, 0));
    } else {
      EXPECT_FALSE(c.ready(0, 0)) << expert_cache_policy_name(p);
      EXPECT_TRUE(c.ready(1, 0)) << expert_cache_policy_name(p);
    }
    EXPECT_TRUE(c.ready(2, 0));
    // A hit is counted as one.
    c.begin(2, {0}, probs, 1);
    c.wait(2, 0);
    c.end(2, {0});
    EXPECT_EQ(c.stats().hits, 1);
  }
}

// Two layers of two experts in two slots. Layer 0's expert 0 ran three times, layer 1's
// expert 0 once and later; when layer 1's expert 1 needs a slot, LRU evicts layer 0's
// (used longest ago), LFU layer 1's (used less often).
TEST(ExpertCache, LfuKeepsTheFrequentExpertLruTheRecentOne) {
  const ExpertFile f(2, 2, 1024, 0);
  for (auto p : {ExpertCachePolicy::lru, ExpertCachePolicy::lfu}) {
    ExpertCache c(2, 2, DType::f32, f.shapes(), f.extents, slots_of(2, 4, p));
    const auto use = [&](int64_t l, int32_t e) {
      c.begin(l, {e}, nullptr, 1);
      c.wait(l, e);
      c.end(l, {e});
    };
    use(0, 0);
    use(0, 0);
    use(0, 0);
    use(1, 0);
    use(1, 1);
    const bool lfu = p == ExpertCachePolicy::lfu;
    EXPECT_EQ(c.ready(0, 0), lfu) << expert_cache_policy_name(p);
    EXPECT_EQ(c.ready(1, 0), !lfu) << expert_cache_policy_name(p);
    EXPECT_TRUE(c.ready(1, 1));
    EXPECT_EQ(c.stats().evictions, 1);
    EXPECT_EQ(c.stats().hits, 2);
  }
}

TEST(ExpertCache, RefusesABudgetBelowOneLayer) {
  const ExpertFile f(2, 4, 1024, 0);
  ExpertCacheOptions o;
  o.budget_bytes = 3 * 3 * 8192;  // three slots (4 KiB matrices + 4 KiB alignment each)
  const std::string e = error_of([&] { ExpertCache(2, 4, DType::f32, f.shapes(), f.extents, o); });
  EXPECT_NE(e.find("[offload] --expert-cache"), std::string::npos) << e;
  EXPECT_NE(e.find("one MoE layer may need all its 4"), std::string::npos) << e;
}

TEST(ExpertCache, ATruncatedFileIsAnErrorNotACrash) {
  const ExpertFile f(2, 2, 4096, 0);
  ExpertCache c(2, 2, DType::f32, f.shapes(), f.extents, slots_of(2, 4, ExpertCachePolicy::lru));
  std::filesystem::resize_file(f.path, 4096 * 4 * 3);  // only layer 0 expert 0 survives
  c.begin(0, {0}, nullptr, 1);
  c.wait(0, 0);
  c.end(0, {0});
  c.begin(1, {1}, nullptr, 1);
  const std::string e = error_of([&] { c.wait(1, 1); });
  c.end(1, {1});
  EXPECT_NE(e.find("[offload]"), std::string::npos) << e;
  EXPECT_NE(e.find("short read"), std::string::npos) << e;
}

class OffloadedLm : public ::testing::TestWithParam<std::string> {};

// Every family (Qwen2-MoE: shared expert and a dense layer; Mixtral: four shards), every
// policy, with and without prefetch, in the smallest cache (one layer's experts) and in a
// full one: the same logits, bit for bit, as all experts resident.
TEST_P(OffloadedLm, SameLogitsAsAllResident) {
  set_num_threads(2);
  const std::string dir = golden_dir(GetParam());
  const auto ref = MoeLm::load(dir, {DType::f32});
  const std::vector<int32_t> prompt = {1, 5, 9, 13, 17, 21, 25};
  std::vector<float> want;
  const auto want_ids = decode(*ref, prompt, 12, want);
  for (auto p : {ExpertCachePolicy::lru, ExpertCachePolicy::lfu, ExpertCachePolicy::router})
    for (bool prefetch : {true, false})
      for (double fraction : {0.0, 1.0}) {
        LmOptions o(DType::f32);
        o.expert_cache.fraction = fraction;
        o.expert_cache.policy = p;
        o.expert_cache.prefetch = prefetch;
        o.expert_cache.io_threads = 2;
        if (fraction == 0.0) {  // exactly one layer's experts
          const io::HfConfig cfg = io::HfConfig::load(dir);
          int64_t moe_layers = 0;
          for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) moe_layers += cfg.is_moe_layer(l);
          o.expert_cache.fraction = double(cfg.num_experts) / double(cfg.num_experts * moe_layers);
        }
        const auto m = MoeLm::load(dir, o);
        ASSERT_NE(m->expert_cache(), nullptr);
        std::vector<float> got;
        const auto ids = decode(*m, prompt, 12, got);
        const std::string what = std::string(expert_cache_policy_name(p)) +
                                 (prefetch ? " prefetch" : "") + " fraction " +
                                 std::to_string(fraction);
        EXPECT_EQ(ids, want_ids) << what;
        ASSERT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << what;
        const ExpertCacheStats s = m->expert_cache()->stats();
        EXPECT_GT(s.reads, 0) << what;
        EXPECT_EQ(s.substitutions, 0) << what;
        if (prefetch) {
          EXPECT_GT(s.predicted, 0) << what;
        }
        if (fraction == 1.0) {
          EXPECT_EQ(s.evictions, 0) << what;
        }
        // Nothing of the experts was read through the mapping.
        EXPECT_LT(m->mapped_weight_bytes(), ref->mapped_weight_bytes()) << what;
      }
}

INSTANTIATE_TEST_SUITE_P(Families, OffloadedLm,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"));

// Continuous batching's steps (several sequences, prefill and decode rows mixed) give the
// same logits with the experts in a cache.
TEST(OffloadedLmBatch, ForwardBatchSameAsAllResident) {
  set_num_threads(2);
  const std::string dir = golden_dir("mixtral");
  const auto ref = MoeLm::load(dir, {DType::f32});
  LmOptions o(DType::f32);
  const io::HfConfig cfg = io::HfConfig::load(dir);
  o.expert_cache.fraction = 1.0 / double(cfg.num_hidden_layers);
  const auto m = MoeLm::load(dir, o);
  std::vector<std::vector<float>> out(2);
  for (int which = 0; which < 2; ++which) {
    const MoeLm& lm = which ? *m : *ref;
    KvCache a, b;
    std::vector<float> logits(static_cast<size_t>(2 * lm.vocab_size()));
    lm.forward_batch({{1, 2, 3, 4}, {7}}, {&a, &b}, logits.data());
    out[which].insert(out[which].end(), logits.begin(), logits.end());
    lm.forward_batch({{9}, {11, 12, 13}}, {&a, &b}, logits.data());
    out[which].insert(out[which].end(), logits.begin(), logits.end());
  }
  EXPECT_EQ(out[0], out[1]);
  // Per-expert queues across steps would pin experts between calls: refused.
  KvCache c;
  std::vector<float> logits(static_cast<size_t>(m->vocab_size()));
  const std::string e = error_of([&] {
    m->forward_batch({{1}}, {&c}, logits.data(), nullptr, ExpertQueueRule{4, 0.001});
  });
  EXPECT_NE(e.find("[offload]"), std::string::npos) << e;
}

// Substitution runs tokens with their resident experts: in a full cache (everything read
// by the first pass) it changes nothing; in the smallest one it substitutes and stays
// finite, and the substitutions are counted.
TEST(OffloadedLmSubstitute, CountsSubstitutionsAndKeepsFullCacheExact) {
  set_num_threads(2);
  const std::string dir = golden_dir("mixtral");
  const io::HfConfig cfg = io::HfConfig::load(dir);
  const std::vector<int32_t> prompt = {1, 5, 9, 13};
  LmOptions o(DType::f32);
  o.expert_cache.substitute = true;
  o.expert_cache.prefetch = false;
  o.expert_cache.fraction = 1.0 / double(cfg.num_hidden_layers);
  const auto small = MoeLm::load(dir, o);
  std::vector<float> got;
  decode(*small, prompt, 16, got);
  EXPECT_GT(small->expert_cache()->stats().substitutions, 0);
  for (float v : got) ASSERT_TRUE(std::isfinite(v));

  o.expert_cache.fraction = 1.0;
  const auto full = MoeLm::load(dir, o);
  const auto ref = MoeLm::load(dir, {DType::f32});
  // Warm the cache with every expert: prompts that route to all of them.
  ExpertCache& cache = *full->expert_cache();
  for (int round = 0; round < 4; ++round) {
    std::vector<int32_t> warm(64);
    for (size_t i = 0; i < warm.size(); ++i)
      warm[i] = static_cast<int32_t>((i * 37 + static_cast<size_t>(round) * 11) % 200 + 1);
    KvCache c;
    std::vector<float> l(static_cast<size_t>(full->vocab_size()));
    full->forward(warm.data(), 64, c, l.data(), false);
  }
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    for (int32_t e = 0; e < cfg.num_experts; ++e) ASSERT_TRUE(cache.ready(l, e)) << l << " " << e;
  cache.reset_stats();
  std::vector<float> a, b;
  decode(*full, prompt, 8, a);
  decode(*ref, prompt, 8, b);
  EXPECT_EQ(cache.stats().misses, 0);
  EXPECT_EQ(cache.stats().substitutions, 0);
  EXPECT_EQ(a, b);
}

TEST(OffloadedLmErrors, RefusesWhatCannotBeOffloaded) {
  const std::string dir = golden_dir("mixtral");
  LmOptions o(DType::bf16);  // the file is f32
  o.expert_cache.fraction = 1.0;
  std::string e = error_of([&] { MoeLm::load(dir, o); });
  EXPECT_NE(e.find("[offload] --expert-cache reads experts as the file stores them (f32)"),
            std::string::npos)
      << e;
  o = LmOptions(DType::f32, kernels::WeightLayout::packed);
  o.expert_cache.fraction = 1.0;
  e = error_of([&] { MoeLm::load(dir, o); });
  EXPECT_NE(e.find("--weight-layout mapped"), std::string::npos) << e;
  o = LmOptions(DType::f32);
  o.expert_cache.fraction = 0.01;
  e = error_of([&] { MoeLm::load(dir, o); });
  EXPECT_NE(e.find("one MoE layer may need all its"), std::string::npos) << e;
}
