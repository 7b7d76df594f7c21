// Training TrainableMoeLm (models/lm_train): a model written by `train-lm` loads in
// transformers with the same logits (golden, python/make_golden_train_lm.py) and in the
// inference path; training lowers the loss; a resumed run equals an uninterrupted one.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/io/tokenizer_train.h"
#include "deltamoe/models/kv_cache.h"
#include "deltamoe/models/lm_train.h"
#include "deltamoe/models/moe_lm.h"
#include "llm_golden.h"

using namespace deltamoe;
using namespace deltamoe::models;

namespace {

const std::string kDir = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/train_lm";

io::HfConfig tiny(int64_t vocab) {
  return test::tiny_mixtral(vocab, 16, 2, 1, 16);
}

// A stream with structure to learn: a repeated phrase of 12 tokens with noise every 7th.
std::vector<int32_t> patterned_stream(int64_t n, int32_t vocab) {
  std::vector<int32_t> s;
  for (int64_t i = 0; i < n; ++i)
    s.push_back(i % 7 == 6 ? static_cast<int32_t>((i * 31) % vocab)
                           : static_cast<int32_t>((i % 12) * 3 % vocab));
  return s;
}

}  // namespace

TEST(LmTrain, CheckpointLoadsInTransformersWithTheSameLogits) {
  set_num_threads(2);
  const io::HfConfig cfg = io::HfConfig::load(kDir);
  TrainableMoeLm lm(cfg, io::load_hf_weights(cfg, io::HfCheckpoint::open(kDir)));
  const auto inf = MoeLm::load(kDir, {DType::f32});
  const auto tok = io::Tokenizer::load(kDir);
  const auto golden = io::SafetensorsFile::open(kDir + "/golden.safetensors");
  const char* prompts[] = {"The meaning of life is", "A fortune cookie says:\nYou will",
                           "Q: Why?\nA:"};
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(prompts[i]);
    const auto ids = test::ids_of(golden.get("prompt." + std::to_string(i)));
    EXPECT_EQ(tok->encode(prompts[i]), ids);  // transformers' tokenizer gave these ids
    const int64_t T = static_cast<int64_t>(ids.size()), V = cfg.vocab_size;
    const Tensor want = golden.get("logits." + std::to_string(i));
    graph::Graph g(false);
    const float* got = g.value(lm.forward(g, ids, T).logits).data<float>();
    std::vector<float> ref(static_cast<size_t>(T * V));
    KvCache cache;
    inf->forward(ids.data(), T, cache, ref.data(), true);
    float d_hf = 0, d_inf = 0;
    for (int64_t j = 0; j < T * V; ++j) {
      d_hf = std::max(d_hf, std::fabs(got[j] - want.data<float>()[j]));
      d_inf = std::max(d_inf, std::fabs(ref[static_cast<size_t>(j)] - want.data<float>()[j]));
    }
    EXPECT_LT(d_hf, 1e-4f);
    EXPECT_LT(d_inf, 1e-4f);
  }
}

TEST(LmTrain, TrainingLowersTheLoss) {
  set_num_threads(1);
  TrainableMoeLm lm(tiny(40), 3);
  const auto stream = patterned_stream(4000, 40);
  const LmEval before = evaluate_lm(lm, stream, 16, 8);
  nn::AdamOptions ao;
  ao.lr = 1e-2f;
  nn::Adam adam(lm.params(), ao);
  LmTrainOptions o;
  o.steps = 60;
  o.batch = 8;
  o.seq_len = 16;
  o.warmup = 5;
  o.progress = false;
  const LmTrainSummary s = train_lm(lm, adam, stream, o);
  const LmEval after = evaluate_lm(lm, stream, 16, 8);
  EXPECT_EQ(s.steps, 60);
  EXPECT_EQ(s.tokens, 60 * 8 * 16);
  EXPECT_NEAR(before.loss, std::log(40.0), 0.3);  // near uniform at init
  EXPECT_LT(after.loss, before.loss - 1.0);
  EXPECT_LT(s.loss_curve.back().second, s.loss_curve.front().second - 1.0);
  EXPECT_NEAR(after.perplexity, std::exp(after.loss), 1e-6 * after.perplexity);
  EXPECT_DOUBLE_EQ(after.mean_experts, 2.0);
  EXPECT_EQ(after.tokens, (4000 / 16) * 15);
}

// 6 steps, or 3 steps + state saved + a fresh model and optimizer restored + 3 more: the same
// weights bit for bit (same thread count).
TEST(LmTrain, ResumedRunEqualsUninterrupted) {
  set_num_threads(1);
  const auto stream = patterned_stream(2000, 40);
  LmTrainOptions o;
  o.steps = 6;
  o.batch = 4;
  o.seq_len = 8;
  o.warmup = 2;
  o.progress = false;
  TrainableMoeLm a(tiny(40), 9);
  nn::Adam adam_a(a.params(), {});
  train_lm(a, adam_a, stream, o);

  TrainableMoeLm b(tiny(40), 9);
  nn::Adam adam_b(b.params(), {});
  const std::string dir = testing::TempDir() + "/lm_resume";
  std::filesystem::create_directories(dir);
  LmTrainOptions first = o;  // the 6-step schedule, stopped after its step-3 checkpoint
  bool saved = false;
  first.checkpoint_every = 3;
  first.on_checkpoint = [&](int64_t done) {
    save_lm(b, "top-k:2", moe::parse_policy_spec("top-k:2", 4),
            io::make_synthetic_tokenizer_json(300), "<s>", dir);
    save_train_state(b, adam_b, done, dir + "/state.safetensors");
    saved = true;
    throw Error("test", "stop here");  // the run is interrupted right after its checkpoint
  };
  EXPECT_THROW(train_lm(b, adam_b, stream, first), Error);
  ASSERT_TRUE(saved);
  const io::HfConfig cfg = io::HfConfig::load(dir);
  TrainableMoeLm c(cfg, io::load_hf_weights(cfg, io::HfCheckpoint::open(dir)));
  nn::Adam adam_c(c.params(), {});
  LmTrainOptions rest = o;
  rest.start_step = load_train_state(c, adam_c, dir + "/state.safetensors");
  EXPECT_EQ(rest.start_step, 3);
  EXPECT_EQ(adam_c.steps(), 3);
  train_lm(c, adam_c, stream, rest);
  for (size_t i = 0; i < a.params().params().size(); ++i) {
    const Tensor& x = a.params().params()[i].value;
    const Tensor& y = c.params().params()[i].value;
    for (int64_t j = 0; j < x.numel(); ++j)
      ASSERT_EQ(x.data<float>()[j], y.data<float>()[j]) << a.params().params()[i].name << " " << j;
  }
  EXPECT_THROW(load_train_state(c, adam_c, dir + "/config.json"), Error);
}

TEST(LmTrain, TokenStreamAndErrors) {
  const auto tok = io::Tokenizer::from_json(io::train_bpe({"a b c", "a b"}, {}).tokenizer_json);
  const auto s = token_stream(*tok, {"a b", "c"}, 0);
  ASSERT_FALSE(s.empty());
  EXPECT_EQ(std::count(s.begin(), s.end(), 0), 2);
  EXPECT_EQ(s.back(), 0);
  TrainableMoeLm lm(tiny(40), 1);
  nn::Adam adam(lm.params(), {});
  LmTrainOptions o;
  o.seq_len = 16;
  o.progress = false;
  EXPECT_THROW(train_lm(lm, adam, std::vector<int32_t>(10, 1), o), Error);  // shorter than a window
  EXPECT_THROW(evaluate_lm(lm, std::vector<int32_t>(10, 1), 16, 4), Error);
}
