// The MoE decoder against transformers: golden logits and greedy continuations made by
// python/make_golden_llm.py for Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE (tests/golden/llm/).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "deltamoe/core/parallel.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/moe/policies.h"
#include "llm_golden.h"

using namespace deltamoe;
using namespace deltamoe::models;
using deltamoe::test::golden_dir;
using deltamoe::test::ids_of;

namespace {

float max_abs_diff(const float* a, const float* b, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

float max_abs(const float* a, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i]));
  return m;
}

int prompts_in(const io::SafetensorsFile& g) {
  int n = 0;
  while (g.has("prompt." + std::to_string(n))) ++n;
  return n;
}

// Greedy decoding: prefill the prompt, then one token at a time.
std::vector<int32_t> greedy(const MoeLm& m, const std::vector<int32_t>& prompt, int steps) {
  KvCache cache;
  std::vector<float> logits(static_cast<size_t>(m.vocab_size()));
  std::mt19937_64 rng(0);
  m.forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, logits.data(), false);
  std::vector<int32_t> out;
  for (int s = 0; s < steps; ++s) {
    const int32_t t = sample_token(logits.data(), m.vocab_size(), 0.0, 1.0, rng);
    out.push_back(t);
    if (s + 1 < steps) m.forward(&t, 1, cache, logits.data(), false);
  }
  return out;
}

}  // namespace

class LmGolden : public ::testing::TestWithParam<std::string> {};

// f32: logits within 1e-3 of transformers' (logits are of order 1-10), greedy tokens equal.
TEST_P(LmGolden, LogitsAndGreedyMatchTransformers) {
  set_num_threads(2);
  const std::string c = GetParam();
  const auto m = MoeLm::load(golden_dir(c), {DType::f32});
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  const int n_prompts = prompts_in(g);
  ASSERT_GE(n_prompts, 2);
  const int64_t v = m->vocab_size();
  for (int i = 0; i < n_prompts; ++i) {
    SCOPED_TRACE("prompt " + std::to_string(i));
    const auto prompt = ids_of(g.get("prompt." + std::to_string(i)));
    const Tensor want = g.get("logits." + std::to_string(i)).to(DType::f32);
    ASSERT_EQ(want.size(0), static_cast<int64_t>(prompt.size()));
    ASSERT_EQ(want.size(1), v);
    KvCache cache;
    std::vector<float> got(prompt.size() * static_cast<size_t>(v));
    m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, got.data(), true);
    EXPECT_GT(max_abs(want.data<float>(), want.numel()), 1.0f);  // logits of order 1-10
    EXPECT_LE(max_abs_diff(got.data(), want.data<float>(), want.numel()), 1e-3f);
    // Every MoE layer routed each token to transformers' experts, in its order, with its
    // weights (the golden prompts keep a clear margin between the k-th and (k+1)-th expert).
    {
      KvCache c2;
      LmStats st;
      st.record_routing = true;
      m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), c2, got.data(), true, &st);
      size_t moe_layer = 0;
      int checked = 0;
      for (int64_t l = 0; l < m->layers(); ++l) {
        if (!m->config().is_moe_layer(l)) continue;
        const auto& r = st.routing.at(moe_layer++);
        const std::string key = "router." + std::to_string(i) + "." + std::to_string(l);
        const auto idx = ids_of(g.get(key + ".idx"));
        const Tensor w = g.get(key + ".w").to(DType::f32);
        ASSERT_EQ(r.expert_ids.size(), idx.size()) << key;
        for (size_t j = 0; j < idx.size(); ++j) {
          EXPECT_EQ(r.expert_ids[j], idx[j]) << key << " pair " << j;
          EXPECT_NEAR(r.weights[j], w.data<float>()[j], 1e-5f) << key << " pair " << j;
        }
        ++checked;
      }
      EXPECT_EQ(static_cast<size_t>(checked), st.routing.size());
      EXPECT_GE(checked, 1);
    }
    const auto want_greedy = ids_of(g.get("greedy." + std::to_string(i)));
    EXPECT_EQ(greedy(*m, prompt, static_cast<int>(want_greedy.size())), want_greedy);
  }
}

// Prefill then decode equals recomputing from scratch; a batch of sequences of different
// lengths equals each alone.
TEST_P(LmGolden, IncrementalAndBatchedEqualFullRecompute) {
  set_num_threads(2);
  const std::string c = GetParam();
  const auto m = MoeLm::load(golden_dir(c), {DType::f32});
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  const auto p0 = ids_of(g.get("prompt.0")), p1 = ids_of(g.get("prompt.1"));
  const int64_t v = m->vocab_size(), n = static_cast<int64_t>(p0.size());
  std::vector<float> full(static_cast<size_t>(n * v)), step(static_cast<size_t>(v));
  KvCache a;
  m->forward(p0.data(), n, a, full.data(), true);
  KvCache b;
  const int64_t split = n / 2;
  m->forward(p0.data(), split, b, step.data(), false);  // a prefill chunk...
  for (int64_t t = split; t < n; ++t) {                 // ...then one token at a time
    m->forward(p0.data() + t, 1, b, step.data(), false);
    EXPECT_LE(max_abs_diff(step.data(), full.data() + t * v, v), 1e-4f) << "position " << t;
  }
  EXPECT_EQ(b.length(), n);
  // Batch: p0 and p1 together, in one pass.
  KvCache c0, c1;
  std::vector<float> both(static_cast<size_t>(2 * v)), alone(static_cast<size_t>(v));
  m->forward_batch({p0, p1}, {&c0, &c1}, both.data());
  EXPECT_LE(max_abs_diff(both.data(), full.data() + (n - 1) * v, v), 1e-4f);
  KvCache c2;
  m->forward(p1.data(), static_cast<int64_t>(p1.size()), c2, alone.data(), false);
  EXPECT_LE(max_abs_diff(both.data() + v, alone.data(), v), 1e-4f);
  // A decode step of both sequences at once equals each sequence's own step.
  const int32_t t0 = 3, t1 = 5;
  m->forward_batch({{t0}, {t1}}, {&c0, &c1}, both.data());
  m->forward(&t1, 1, c2, alone.data(), false);
  EXPECT_LE(max_abs_diff(both.data() + v, alone.data(), v), 1e-4f);
}

// Per-expert queues across steps: decode tokens held at MoE layers (an expert waits for B = 2
// rows) and resumed by later calls produce, in the end, the greedy tokens each sequence gets
// alone. Holding is made deterministic: T is 10^6 s (never reached) except on every fourth
// call, which flushes every queue (T = 0).
TEST_P(LmGolden, ExpertQueuesAcrossStepsHoldAndResumeExactly) {
  set_num_threads(2);
  const std::string c = GetParam();
  const auto m = MoeLm::load(golden_dir(c), {DType::f32});
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  std::vector<std::vector<int32_t>> prompts = {ids_of(g.get("prompt.0")),
                                               ids_of(g.get("prompt.1"))};
  prompts.push_back(std::vector<int32_t>(prompts[0].rbegin(), prompts[0].rend()));
  prompts.push_back({7, 11, 13});
  const int steps = 6;
  const size_t seqs = prompts.size();
  const int64_t v = m->vocab_size();
  std::vector<KvCache> caches(seqs);
  std::vector<std::vector<int32_t>> gen(seqs);
  std::vector<float> logits(seqs * static_cast<size_t>(v));
  std::mt19937_64 rng(0);
  for (size_t s = 0; s < seqs; ++s) {
    m->forward(prompts[s].data(), static_cast<int64_t>(prompts[s].size()), caches[s], logits.data(),
               false);
    gen[s].push_back(sample_token(logits.data(), v, 0.0, 1.0, rng));
  }
  int held_events = 0, calls = 0, resumed_held = 0;
  for (; calls < 400; ++calls) {
    std::vector<std::vector<int32_t>> toks;
    std::vector<KvCache*> cs;
    std::vector<size_t> who;
    for (size_t s = 0; s < seqs; ++s)
      if (static_cast<int>(gen[s].size()) < steps) {
        toks.push_back({gen[s].back()});
        cs.push_back(&caches[s]);
        who.push_back(s);
        resumed_held += caches[s].held() != nullptr;
      }
    if (who.empty()) break;
    const ExpertQueueRule rule = calls % 4 == 3 ? ExpertQueueRule{2, 0.0} : ExpertQueueRule{2, 1e6};
    std::vector<int64_t> before;
    for (KvCache* k : cs) before.push_back(k->length());
    const int64_t done = m->forward_batch(toks, cs, logits.data(), nullptr, rule);
    int64_t finished = 0;
    for (size_t j = 0; j < who.size(); ++j) {
      if (cs[j]->held()) {
        ++held_events;
        EXPECT_EQ(cs[j]->length(), before[j]) << "a held token must not advance its cache";
        EXPECT_EQ(cs[j]->held()->token, toks[j][0]);
        continue;
      }
      ++finished;
      EXPECT_EQ(cs[j]->length(), before[j] + 1);
      gen[who[j]].push_back(
          sample_token(logits.data() + j * static_cast<size_t>(v), v, 0.0, 1.0, rng));
    }
    EXPECT_EQ(done, finished);
  }
  EXPECT_LT(calls, 400) << "held tokens never finished";
  EXPECT_GT(held_events, 0) << "B = 2 never held a token: the test lost its point";
  EXPECT_GT(resumed_held, 0);
  for (size_t s = 0; s < seqs; ++s)
    EXPECT_EQ(gen[s], greedy(*m, prompts[s], steps)) << "sequence " << s;
  // A held token must come back as it was; clear() forgets it.
  const int32_t t = 5;
  KvCache k;
  m->forward(prompts[1].data(), 3, k, logits.data(), false);
  KvCache other;
  m->forward(prompts[0].data(), 3, other, logits.data(), false);
  m->forward_batch({{t}, {t}}, {&k, &other}, logits.data(), nullptr, {64, 1e6});
  ASSERT_NE(k.held(), nullptr) << "B = 64 must hold every decode token";
  try {
    m->forward_batch({{t + 1}}, {&k}, logits.data(), nullptr, {64, 1e6});
    ADD_FAILURE() << "a different token for a held cache did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("waiting at layer"), std::string::npos) << e.what();
  }
  EXPECT_THROW(m->forward_batch({{t}}, {&k}, logits.data(), nullptr, {2, -1.0}), Error);
  k.clear();
  EXPECT_EQ(k.held(), nullptr);
  // A prefill chunk never waits, whatever B.
  KvCache pre;
  EXPECT_EQ(m->forward_batch({prompts[0]}, {&pre}, logits.data(), nullptr, {64, 1e6}), 1);
  EXPECT_EQ(pre.held(), nullptr);
}

// A paged cache with small blocks (3 positions) gives the logits of the default cache, takes
// blocks as the sequence grows, gives them back when dropped, and a full pool is an error.
TEST_P(LmGolden, PagedCacheMatchesAndReturnsBlocks) {
  set_num_threads(2);
  const std::string c = GetParam();
  const auto m = MoeLm::load(golden_dir(c), {DType::f32});
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  const auto p0 = ids_of(g.get("prompt.0")), p1 = ids_of(g.get("prompt.1"));
  const int64_t v = m->vocab_size(), n = static_cast<int64_t>(p0.size());
  std::vector<float> ref(static_cast<size_t>(v)), got(static_cast<size_t>(v));
  KvCache plain;
  m->forward(p0.data(), n, plain, ref.data(), false);
  const auto pool = m->make_kv_pool(3, (n + 2) / 3 + 1);
  {
    KvCache paged(pool);
    EXPECT_EQ(paged.blocks_needed(n), (n + 2) / 3);
    m->forward(p0.data(), 4, paged, got.data(), false);  // a chunk across a block boundary
    EXPECT_EQ(pool->used_blocks(), 2);
    m->forward(p0.data() + 4, n - 4, paged, got.data(), false);
    EXPECT_LE(max_abs_diff(got.data(), ref.data(), v), 1e-4f);
    EXPECT_EQ(pool->used_blocks(), (n + 2) / 3);
    EXPECT_EQ(paged.bytes(), static_cast<size_t>(paged.blocks()) * pool->block_bytes());
    // Batched with a second sequence that runs the pool dry: an error naming the cause.
    KvCache other(pool);
    std::vector<float> both(static_cast<size_t>(2 * v));
    try {
      m->forward_batch({{1}, p1}, {&paged, &other}, both.data());
      ADD_FAILURE() << "a full pool did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("KV cache full"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(pool->used_blocks(), 0);  // dropped caches gave their blocks back
  EXPECT_EQ(pool->free_blocks(), pool->max_blocks());
}

// The packed layout (copies in our panel layout) matches transformers too; the default
// row-major layout uses an f32 checkpoint's matrices in place (all but the small router
// copies) and the packed one copies every matrix.
TEST_P(LmGolden, PackedLayoutMatchesAndRowMajorMapsInPlace) {
  set_num_threads(2);
  const std::string c = GetParam();
  const auto packed = MoeLm::load(golden_dir(c), {DType::f32, kernels::WeightLayout::packed});
  const auto rows = MoeLm::load(golden_dir(c), {DType::f32});
  EXPECT_EQ(rows->layout(), kernels::WeightLayout::row_major);
  EXPECT_EQ(packed->mapped_weight_bytes(), 0u);
  if (c != "mixtral_bf16") {
    EXPECT_GT(rows->mapped_weight_bytes(), rows->weight_bytes() * 9 / 10);
  } else {
    EXPECT_EQ(rows->mapped_weight_bytes(), 0u);  // bf16 file, f32 compute: converted
  }
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  const auto prompt = ids_of(g.get("prompt.0"));
  const Tensor want = g.get("logits.0").to(DType::f32);
  const int64_t n = static_cast<int64_t>(prompt.size());
  std::vector<float> got(static_cast<size_t>(want.numel()));
  KvCache cache;
  packed->forward(prompt.data(), n, cache, got.data(), true);
  EXPECT_LE(max_abs_diff(got.data(), want.data<float>(), want.numel()), 1e-3f);
  const auto want_greedy = ids_of(g.get("greedy.0"));
  EXPECT_EQ(greedy(*packed, prompt, static_cast<int>(want_greedy.size())), want_greedy);
}

INSTANTIATE_TEST_SUITE_P(Architectures, LmGolden,
                         ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe",
                                           "mixtral_bf16"));

// bf16 checkpoint: packed as f32 it computes exactly the upcast weights (logits.{i}); packed
// as bf16 the activations are rounded to bf16 inside the GEMMs too, within 2% of the logit range.
TEST(LmGoldenBf16, Bf16PackedWithinRounding) {
  set_num_threads(2);
  for (auto layout : {kernels::WeightLayout::row_major, kernels::WeightLayout::packed}) {
    SCOPED_TRACE(layout == kernels::WeightLayout::packed ? "packed" : "row-major");
    const auto m = MoeLm::load(golden_dir("mixtral_bf16"), {DType::bf16, layout});
    // bf16 file, bf16 compute: row-major uses the matrices in place.
    if (layout == kernels::WeightLayout::row_major) {
      EXPECT_GT(m->mapped_weight_bytes(), m->weight_bytes() * 9 / 10);
    }
    const auto g = io::SafetensorsFile::open(golden_dir("mixtral_bf16") + "/golden.safetensors");
    const auto prompt = ids_of(g.get("prompt.0"));
    const Tensor want = g.get("logits.0").to(DType::f32);
    KvCache cache;
    std::vector<float> got(static_cast<size_t>(want.numel()));
    m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, got.data(), true);
    EXPECT_LE(max_abs_diff(got.data(), want.data<float>(), want.numel()),
              2e-2f * max_abs(want.data<float>(), want.numel()));
  }
}

// int8 weights (every matrix quantised at load, one f16 scale per 32 inputs; activations
// quantised per 32 inside each product): logits within the quantisation error of transformers'
// f32 logits on every architecture, the argmax mostly kept, about a quarter of f32's bytes.
TEST_P(LmGolden, Int8WithinQuantisationError) {
  set_num_threads(2);
  const std::string c = GetParam();
  const auto f32 = MoeLm::load(golden_dir(c), {DType::f32});
  const auto m = MoeLm::load(golden_dir(c), {DType::int8});
  EXPECT_EQ(m->layout(), kernels::WeightLayout::row_major);
  EXPECT_EQ(m->mapped_weight_bytes(), 0u);  // quantised copies, nothing used in place
  EXPECT_LT(m->weight_bytes(), f32->weight_bytes() * 35 / 100);  // K padded to 32 here
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  const int64_t v = m->vocab_size();
  int64_t positions = 0, same_top1 = 0;
  for (int i = 0; i < prompts_in(g); ++i) {
    const auto prompt = ids_of(g.get("prompt." + std::to_string(i)));
    const Tensor want = g.get("logits." + std::to_string(i)).to(DType::f32);
    KvCache cache;
    std::vector<float> got(prompt.size() * static_cast<size_t>(v));
    m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, got.data(), true);
    const float* w = want.data<float>();
    double d2 = 0, w2 = 0;
    for (int64_t j = 0; j < want.numel(); ++j) {
      d2 += (got[static_cast<size_t>(j)] - w[j]) * (got[static_cast<size_t>(j)] - w[j]);
      w2 += static_cast<double>(w[j]) * w[j];
    }
    const double rel_rms = std::sqrt(d2 / w2);
    const float rel_max = max_abs_diff(got.data(), w, want.numel()) / max_abs(w, want.numel());
    std::printf("[int8 %s prompt %d] logits vs transformers f32: rms %.2e, max %.2e (relative)\n",
                c.c_str(), i, rel_rms, static_cast<double>(rel_max));
    // Measured: rms 1.3e-2 to 8.4e-2, max 1.1e-2 to 1.9e-1 of the largest logit (these tiny
    // models have large random weights); a wrong block or scale gives errors of order 1.
    EXPECT_LE(rel_rms, 0.12) << "prompt " << i;
    EXPECT_LE(rel_max, 0.3f) << "prompt " << i;
    for (size_t t = 0; t < prompt.size(); ++t) {
      const float* a = got.data() + t * static_cast<size_t>(v);
      const float* b = w + static_cast<int64_t>(t) * v;
      same_top1 += std::max_element(a, a + v) - a == std::max_element(b, b + v) - b;
      ++positions;
    }
  }
  std::printf("[int8 %s] top-1 equal at %lld of %lld positions\n", c.c_str(),
              static_cast<long long>(same_top1), static_cast<long long>(positions));
  EXPECT_GE(same_top1 * 10, positions * 9);
}

// --kv-dtype f16: keys and values rounded to f16 as they are written. Logits stay within the
// rounding of transformers' f32 ones; prefill then decode equals a full prefill (both read the
// same rounded values); blocks hold half the bytes, and a cache of the other dtype is refused.
TEST_P(LmGolden, F16KvCacheWithinRounding) {
  set_num_threads(2);
  const std::string c = GetParam();
  LmOptions o{DType::f32};
  o.kv_dtype = DType::f16;
  const auto m = MoeLm::load(golden_dir(c), o);
  const auto f32 = MoeLm::load(golden_dir(c), {DType::f32});
  EXPECT_EQ(m->kv_dtype(), DType::f16);
  EXPECT_EQ(m->make_kv_pool(16, 0)->block_bytes() * 2, f32->make_kv_pool(16, 0)->block_bytes());
  const auto g = io::SafetensorsFile::open(golden_dir(c) + "/golden.safetensors");
  const int64_t v = m->vocab_size();
  for (int i = 0; i < prompts_in(g); ++i) {
    const auto prompt = ids_of(g.get("prompt." + std::to_string(i)));
    const Tensor want = g.get("logits." + std::to_string(i)).to(DType::f32);
    KvCache cache;
    std::vector<float> got(prompt.size() * static_cast<size_t>(v));
    m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, got.data(), true);
    const float err = max_abs_diff(got.data(), want.data<float>(), want.numel()) /
                      max_abs(want.data<float>(), want.numel());
    std::printf("[f16 KV %s prompt %d] logits vs transformers f32: max %.2e (relative)\n",
                c.c_str(), i, static_cast<double>(err));
    EXPECT_GT(err, 0.0f);   // the cache really rounds
    EXPECT_LE(err, 5e-3f);  // f16 keeps 11 significant bits
    if (i > 0) continue;
    const int64_t n = static_cast<int64_t>(prompt.size()), split = n / 2;
    KvCache b;
    std::vector<float> step(static_cast<size_t>(v));
    m->forward(prompt.data(), split, b, step.data(), false);
    for (int64_t t = split; t < n; ++t) {
      m->forward(prompt.data() + t, 1, b, step.data(), false);
      EXPECT_LE(max_abs_diff(step.data(), got.data() + t * v, v), 1e-4f) << "position " << t;
    }
    KvCache other(f32->make_kv_pool(16, 0));
    EXPECT_THROW(m->forward(prompt.data(), 1, other, step.data(), false), Error);
  }
}

// Per-token expert budgets: top-p and threshold routing run on a language model and report
// their mean experts per token; top-k:k reports exactly k.
TEST(LmRouting, PerTokenBudgetsReportMeanExperts) {
  set_num_threads(2);
  auto m = MoeLm::load(golden_dir("mixtral"), {DType::f32});
  const auto g = io::SafetensorsFile::open(golden_dir("mixtral") + "/golden.safetensors");
  const auto prompt = ids_of(g.get("prompt.0"));
  std::vector<float> logits(static_cast<size_t>(m->vocab_size()));
  auto run = [&](const std::string& spec) {
    m->set_policy(moe::make_policy(spec, m->config().num_experts));
    KvCache cache;
    LmStats st;
    m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, logits.data(), false,
               &st);
    EXPECT_EQ(st.tokens, static_cast<int64_t>(prompt.size()));
    return st.mean_experts();
  };
  EXPECT_DOUBLE_EQ(run("top-k:1"), 1.0);
  EXPECT_DOUBLE_EQ(run("top-k:2"), 2.0);
  const double p = run("top-p:0.5");
  EXPECT_GE(p, 1.0);
  EXPECT_LE(p, static_cast<double>(m->config().num_experts));
  const double all = run("top-p:0.9999");
  EXPECT_GT(all, p);
  m->set_policy(nullptr);
  EXPECT_EQ(m->policy().name(), m->default_policy()->name());
}

TEST(LmErrors, BadTokensAndContextGiveClearErrors) {
  const auto m = MoeLm::load(golden_dir("mixtral"), {DType::f32});
  KvCache cache;
  std::vector<float> logits(static_cast<size_t>(m->vocab_size()));
  const int32_t bad = static_cast<int32_t>(m->vocab_size());
  try {
    m->forward(&bad, 1, cache, logits.data(), false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(), 0);  // nothing appended by the failed call
  std::vector<int32_t> long_prompt(static_cast<size_t>(m->config().max_position_embeddings) + 1, 1);
  try {
    m->forward(long_prompt.data(), static_cast<int64_t>(long_prompt.size()), cache, logits.data(),
               false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the context"), std::string::npos) << e.what();
  }
  EXPECT_THROW(MoeLm::load(golden_dir("does_not_exist")), Error);
  KvCache shared;
  EXPECT_THROW(m->forward_batch({{1}, {2}}, {&shared, &shared}, logits.data()), Error);
}

TEST(Sampling, GreedyTemperatureAndTopP) {
  const float logits[] = {0.1f, 2.0f, 2.0f, -1.0f};
  std::mt19937_64 rng(1);
  EXPECT_EQ(sample_token(logits, 4, 0.0, 1.0, rng), 1);  // ties to the lower id
  // top_p small: only the best tokens survive (1 and 2 carry ~0.87 of the mass together).
  for (int i = 0; i < 50; ++i) {
    const int32_t t = sample_token(logits, 4, 1.0, 0.5, rng);
    EXPECT_TRUE(t == 1 || t == 2) << t;
  }
  int seen[4] = {0, 0, 0, 0};
  for (int i = 0; i < 2000; ++i) ++seen[sample_token(logits, 4, 1.0, 1.0, rng)];
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[3], 0);
  EXPECT_GT(seen[1], seen[0]);
}

// The nucleus found by sorting a growing prefix is the one a full sort gives: with the same
// random stream, the same tokens, over a vocabulary large enough to need several prefixes.
TEST(Sampling, TopPMatchesAFullSort) {
  const int64_t v = 5000;
  std::vector<float> logits(static_cast<size_t>(v));
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (float& x : logits) x = nd(g);
  logits[7] = logits[9] = 6.0f;  // a tie at the top
  const auto reference = [&](double temperature, double top_p, std::mt19937_64& rng) {
    std::vector<double> p(static_cast<size_t>(v));
    double mx = *std::max_element(logits.begin(), logits.end()), sum = 0.0;
    for (int64_t i = 0; i < v; ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
    std::vector<int32_t> ids(static_cast<size_t>(v));
    std::iota(ids.begin(), ids.end(), 0);
    std::sort(ids.begin(), ids.end(),
              [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
    size_t keep = ids.size();
    double acc = 0.0;
    for (size_t i = 0; i < ids.size(); ++i)
      if ((acc += p[ids[i]] / sum) >= top_p) {
        keep = i + 1;
        break;
      }
    double kept = 0.0;
    for (size_t i = 0; i < keep; ++i) kept += p[ids[i]];
    double u = std::uniform_real_distribution<double>(0.0, kept)(rng);
    for (size_t i = 0; i < keep; ++i)
      if ((u -= p[ids[i]]) <= 0.0) return ids[i];
    return ids[keep - 1];
  };
  for (double top_p : {0.05, 0.5, 0.9, 0.999}) {
    std::mt19937_64 a(11), b(11);
    for (int i = 0; i < 200; ++i)
      ASSERT_EQ(sample_token(logits.data(), v, 1.3, top_p, a), reference(1.3, top_p, b))
          << "top_p " << top_p << ", draw " << i;
  }
}
