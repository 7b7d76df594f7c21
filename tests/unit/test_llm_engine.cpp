// Continuous batching (serve::LlmEngine) against the plain decoder: whatever the step budget,
// pool size, preemptions and arrival order, every request gets the tokens it would get alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include "deltamoe/core/parallel.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/models/moe_lm.h"
#include "deltamoe/serve/llm_engine.h"

using namespace deltamoe;
namespace fs = std::filesystem;

namespace {

// A tiny random Mixtral-architecture model with a 320-token synthetic tokenizer, written once
// per test binary (the golden checkpoints' vocabularies are too small for a tokenizer).
const std::string& tiny_model_dir() {
  static const std::string dir = [] {
    const fs::path d =
        fs::temp_directory_path() / ("deltamoe_engine_" + std::to_string(::getpid()));
    fs::create_directories(d);
    io::HfConfig cfg =
        io::HfConfig::load(std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/mixtral");
    cfg.vocab_size = 320;
    cfg.max_position_embeddings = 256;
    std::ofstream(d / "config.json") << io::hf_config_to_json(cfg);
    std::ofstream(d / "tokenizer.json") << io::make_synthetic_tokenizer_json(320);
    const auto specs = io::hf_tensor_specs(cfg, DType::f32);
    io::SafetensorsWriter w((d / "model.safetensors").string(), specs);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 0.3f);
    for (size_t i : w.order()) {
      const auto& s = specs[i];
      int64_t n = 1;
      for (int64_t x : s.shape) n *= x;
      std::vector<float> v(static_cast<size_t>(n));
      const bool norm = s.name.find("norm") != std::string::npos;
      for (float& x : v) x = norm ? 1.0f + 0.1f * nd(rng) : nd(rng);
      w.append_bytes(v.data(), v.size() * sizeof(float));
    }
    w.commit();
    return d.string();
  }();
  return dir;
}

struct Fixture {
  std::shared_ptr<const models::MoeLm> model;
  std::shared_ptr<const io::Tokenizer> tok;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    set_num_threads(2);
    return Fixture{models::MoeLm::load(tiny_model_dir()), io::Tokenizer::load(tiny_model_dir())};
  }();
  return f;
}

// The same model with an f16 KV cache (--kv-dtype f16).
const Fixture& fixture_f16_kv() {
  static const Fixture f = [] {
    set_num_threads(2);
    models::LmOptions o;
    o.kv_dtype = DType::f16;
    return Fixture{models::MoeLm::load(tiny_model_dir(), o), io::Tokenizer::load(tiny_model_dir())};
  }();
  return f;
}

// Greedy tokens of one request alone: prefill, then one token at a time.
std::vector<int32_t> alone(const models::MoeLm& m, const std::vector<int32_t>& prompt, int n) {
  models::KvCache cache;
  std::vector<float> logits(static_cast<size_t>(m.vocab_size()));
  std::mt19937_64 rng(0);
  m.forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, logits.data(), false);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(models::sample_token(logits.data(), m.vocab_size(), 0.0, 1.0, rng));
    m.forward(&out.back(), 1, cache, logits.data(), false);
  }
  return out;
}

// Collects one request's events; wait() blocks until its final event.
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> tokens;
  std::string text, reason;
  serve::TokenEvent last;
  bool done = false;
  int events_after_done = 0;

  serve::TokenCallback callback() {
    return [this](const serve::TokenEvent& ev) {
      std::lock_guard<std::mutex> lk(mu);
      if (done) ++events_after_done;
      if (ev.token >= 0) tokens.push_back(ev.token);
      text += ev.text;
      if (ev.finished) {
        done = true;
        reason = ev.finish_reason;
        last = ev;
        cv.notify_all();
      }
    };
  }
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(120), [&] { return done; }))
        << "no final event";
  }
};

std::vector<int32_t> prompt_of(int i, int len) {
  std::vector<int32_t> p;
  for (int j = 0; j < len; ++j) p.push_back(static_cast<int32_t>(3 + (i * 37 + j * 11) % 300));
  return p;
}

serve::GenerationParams greedy(int64_t max_tokens) {
  serve::GenerationParams g;
  g.max_tokens = max_tokens;
  g.temperature = 0.0;
  g.ignore_eos = true;
  return g;
}

void expect_same_as_alone(const serve::LlmEngineConfig& cfg, int requests,
                          serve::LlmEngineStats* out = nullptr, const Fixture& f = fixture()) {
  serve::LlmEngine eng(f.model, f.tok, cfg);
  std::vector<std::unique_ptr<Collector>> cs;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> lengths;
  for (int i = 0; i < requests; ++i) {
    prompts.push_back(prompt_of(i, 1 + (i * 13) % 40));
    lengths.push_back(1 + (i * 7) % 24);
    cs.push_back(std::make_unique<Collector>());
    ASSERT_GE(eng.submit(prompts[i], greedy(lengths[i]), cs.back()->callback()), 0);
  }
  for (int i = 0; i < requests; ++i) {
    cs[i]->wait();
    EXPECT_EQ(cs[i]->reason, "length") << "request " << i;
    EXPECT_EQ(cs[i]->tokens, alone(*f.model, prompts[i], lengths[i])) << "request " << i;
    EXPECT_EQ(cs[i]->last.completion_tokens, lengths[i]);
    EXPECT_EQ(cs[i]->last.prompt_tokens, static_cast<int64_t>(prompts[i].size()));
    EXPECT_GT(cs[i]->last.mean_experts, 0.0);
    // The streamed text is the stream decoder's text of the tokens (random weights emit
    // invalid byte-fallback runs, where a stream cannot take back bytes it has sent, so
    // decode() of the whole can differ).
    io::StreamDecoder sd(*f.tok, true);
    std::string text;
    for (int32_t t : cs[i]->tokens) text += sd.next(t);
    text += sd.finish();
    EXPECT_EQ(cs[i]->text, text) << "request " << i;
  }
  const auto st = eng.stats();
  EXPECT_EQ(st.requests_finished, static_cast<uint64_t>(requests));
  EXPECT_EQ(st.kv_blocks_used, 0);  // every block came back
  uint64_t routed = 0;
  for (uint64_t t : st.expert_tokens) routed += t;
  EXPECT_GT(routed, 0u);
  ASSERT_EQ(st.expert_step_rows.size(), st.expert_tokens.size());
  uint64_t last = 0;
  for (size_t e = 0; e < st.expert_step_rows.size(); ++e) {
    EXPECT_LE(st.expert_step_rows[e], st.expert_tokens[e]);
    last += st.expert_step_rows[e];
  }
  EXPECT_GT(last, 0u);  // the last step routed its tokens somewhere
  if (out) *out = st;
}

}  // namespace

TEST(LlmEngine, BatchedRequestsGetTheirAloneTokens) {
  serve::LlmEngineConfig cfg;
  cfg.kv_block_tokens = 8;
  cfg.kv_blocks = 200;
  expect_same_as_alone(cfg, 12);
}

// An f16 KV cache: the pool's blocks hold f16 (half the bytes), and batching still gives each
// request the tokens it gets alone with that cache.
TEST(LlmEngine, F16KvCacheRequestsGetTheirAloneTokens) {
  serve::LlmEngineConfig cfg;
  cfg.kv_block_tokens = 4;
  cfg.kv_blocks = 200;
  cfg.max_batch_tokens = 5;
  EXPECT_EQ(fixture_f16_kv().model->make_kv_pool(4, 1)->block_bytes() * 2,
            fixture().model->make_kv_pool(4, 1)->block_bytes());
  expect_same_as_alone(cfg, 8, nullptr, fixture_f16_kv());
}

// A budget of 5 tokens per step: prompts go in chunks, mixed with other sequences' decode.
TEST(LlmEngine, ChunkedPrefillUnderASmallBudget) {
  serve::LlmEngineConfig cfg;
  cfg.kv_block_tokens = 4;
  cfg.kv_blocks = 200;
  cfg.max_batch_tokens = 5;
  expect_same_as_alone(cfg, 8);
}

// A pool of 16 blocks of 4 positions cannot hold every sequence: some are preempted and
// recomputed, and still get their own tokens.
TEST(LlmEngine, PreemptionWhenThePoolRunsDry) {
  serve::LlmEngineConfig cfg;
  cfg.kv_block_tokens = 4;
  cfg.kv_blocks = 16;
  cfg.max_running = 8;
  const auto& f = fixture();
  serve::LlmEngine eng(f.model, f.tok, cfg);
  std::vector<std::unique_ptr<Collector>> cs;
  for (int i = 0; i < 6; ++i) {
    cs.push_back(std::make_unique<Collector>());
    ASSERT_GE(eng.submit(prompt_of(i, 6), greedy(30), cs.back()->callback()), 0);
  }
  for (int i = 0; i < 6; ++i) {
    cs[i]->wait();
    EXPECT_EQ(cs[i]->tokens, alone(*f.model, prompt_of(i, 6), 30)) << "request " << i;
  }
  EXPECT_GT(eng.stats().preemptions, 0u);
  EXPECT_EQ(eng.stats().kv_blocks_used, 0);
}

// Per-expert queues across steps: B = 1000 rows is never reached, so every decode token waits
// T = 3 ms at each MoE layer before its experts run (held across steps, whatever the timing),
// while prompts go in chunks of a 5-token budget and a small pool preempts sequences (their
// held tokens are dropped and recomputed). Every request still gets its own tokens.
TEST(LlmEngine, PerExpertQueuesAcrossStepsKeepEveryRequestsTokens) {
  serve::LlmEngineConfig cfg;
  cfg.kv_block_tokens = 4;
  cfg.kv_blocks = 40;
  cfg.max_batch_tokens = 5;
  // A B that is never reached: tokens wait out the timeout. 100 ms rather than a few: on a
  // loaded machine a step can outlast a short timeout, and then no token is ever held at the
  // end of a step (the assertion below failed once under a parallel CI build with 3 ms, and
  // once under a loaded `ctest -j2` with 20 ms).
  cfg.expert_queues = {1000, 0.1};
  serve::LlmEngineStats st;
  expect_same_as_alone(cfg, 8, &st);
  EXPECT_GT(st.held_token_steps, 0u);
  EXPECT_EQ(st.held_tokens, 0);
  for (uint64_t q : st.expert_queue_rows) EXPECT_EQ(q, 0u);
  cfg.expert_queues = {2, 0.0005};  // a B that is sometimes reached
  expect_same_as_alone(cfg, 6);
  cfg.expert_queues = {2, -1.0};
  const auto& f = fixture();
  EXPECT_THROW(serve::LlmEngine(f.model, f.tok, cfg), Error);
}

TEST(LlmEngine, StopStringsEndTheTextBeforeThem) {
  const auto& f = fixture();
  serve::LlmEngine eng(f.model, f.tok, {});
  Collector full;
  eng.submit(prompt_of(1, 10), greedy(40), full.callback());
  full.wait();
  ASSERT_GE(full.text.size(), 8u) << full.text;
  // A stop string from the middle of the text, and one that never occurs.
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  auto g = greedy(40);
  g.stop = {"\x01never", stop};
  Collector c;
  eng.submit(prompt_of(1, 10), g, c.callback());
  c.wait();
  EXPECT_EQ(c.reason, "stop");
  EXPECT_EQ(c.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(c.events_after_done, 0);
}

TEST(LlmEngine, HoldbackIsTheLongestStopPrefixAtTheEnd) {
  EXPECT_EQ(serve::stop_holdback("hello wor", {"world"}), 3u);
  EXPECT_EQ(serve::stop_holdback("hello", {"world"}), 0u);
  EXPECT_EQ(serve::stop_holdback("abab", {"abc", "bz"}), 2u);
  EXPECT_EQ(serve::stop_holdback("x", {""}), 0u);
}

TEST(LlmEngine, SeededSamplingRepeatsAndEosEnds) {
  const auto& f = fixture();
  serve::LlmEngine eng(f.model, f.tok, {});
  serve::GenerationParams g;
  g.max_tokens = 20;
  g.temperature = 0.9;
  g.top_p = 0.9;
  g.seed = 42;
  g.has_seed = true;
  g.ignore_eos = true;
  Collector a, b;
  eng.submit(prompt_of(2, 7), g, a.callback());
  eng.submit(prompt_of(2, 7), g, b.callback());
  a.wait();
  b.wait();
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 20u);
}

TEST(LlmEngine, RefusesWhatCanNeverRunAndWhenFull) {
  const auto& f = fixture();
  serve::LlmEngineConfig cfg;
  cfg.kv_block_tokens = 4;
  cfg.kv_blocks = 4;
  cfg.max_waiting = 0;
  serve::LlmEngine eng(f.model, f.tok, cfg);
  Collector c;
  EXPECT_THROW(eng.submit({}, greedy(4), c.callback()), Error);
  EXPECT_THROW(eng.submit(prompt_of(0, 250), greedy(10), c.callback()), Error);  // context 256
  EXPECT_THROW(eng.submit(prompt_of(0, 10), greedy(10), c.callback()), Error);   // > 16 positions
  EXPECT_THROW(eng.submit({999}, greedy(1), c.callback()), Error);               // vocab 320
  EXPECT_EQ(eng.submit(prompt_of(0, 3), greedy(2), c.callback()), -1);           // queue bound 0
  EXPECT_EQ(eng.stats().requests_rejected, 1u);
}

TEST(LlmEngine, CancelAbortsAndDrainRefusesNewWork) {
  const auto& f = fixture();
  serve::LlmEngine eng(f.model, f.tok, {});
  Collector c;
  const int64_t id = eng.submit(prompt_of(3, 5), greedy(200), c.callback());
  ASSERT_GE(id, 0);
  eng.cancel(id);
  c.wait();
  EXPECT_EQ(c.reason, "abort");
  EXPECT_LT(c.tokens.size(), 200u);
  eng.drain();
  Collector d;
  EXPECT_EQ(eng.submit(prompt_of(3, 5), greedy(2), d.callback()), -1);
}
