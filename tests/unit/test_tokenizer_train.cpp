// Byte-level BPE training (io/tokenizer_train): the tokenizer.json it makes from the fortunes
// corpus encodes every validation document exactly as Hugging Face `tokenizers` does (ids
// hashed in tests/golden/tokenizer_train by python/make_golden_tokenizer_train.py), training
// is deterministic and reproduces the committed file, and the corpus split follows its rule.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "deltamoe/core/error.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/io/tokenizer_train.h"

using namespace deltamoe;
using namespace deltamoe::io;

namespace {

std::string golden(const std::string& f) {
  std::ifstream in(std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/tokenizer_train/" + f,
                   std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string fnv1a(const std::vector<int32_t>& ids) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (int32_t id : ids) {
    const uint32_t u = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) {
      h ^= (u >> (8 * b)) & 0xFF;
      h *= 0x100000001B3ull;
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

bool have_fortunes() {
  return std::filesystem::is_directory(kFortunesDir);
}

}  // namespace

TEST(TokenizerTrain, EncodesLikeHfTokenizers) {
  if (!have_fortunes()) GTEST_SKIP() << "no " << kFortunesDir << " (apt-get install fortunes-min)";
  const auto tok = Tokenizer::from_json(golden("tokenizer.json"), "golden tokenizer.json");
  const auto g = nlohmann::json::parse(golden("golden.json"));
  const TextSplit split = load_fortunes();
  ASSERT_EQ(split.validation.size(), g["validation"].size());
  int64_t tokens = 0;
  for (size_t i = 0; i < split.validation.size(); ++i) {
    const auto ids = tok->encode(split.validation[i]);
    ASSERT_EQ(static_cast<int64_t>(ids.size()), g["validation"][i][0].get<int64_t>()) << i;
    ASSERT_EQ(fnv1a(ids), g["validation"][i][1].get<std::string>()) << i;
    tokens += static_cast<int64_t>(ids.size());
  }
  EXPECT_GT(tokens, 50000);
  for (const auto& h : g["hard"]) {
    const std::string text = h["text"];
    const auto ids = tok->encode(text);
    EXPECT_EQ(ids, h["ids"].get<std::vector<int32_t>>()) << text;
    if (text.find("<|endoftext|>") == std::string::npos) {
      EXPECT_EQ(tok->decode(ids), text);
    }
  }
}

TEST(TokenizerTrain, ReproducesTheGoldenTokenizer) {
  if (!have_fortunes()) GTEST_SKIP() << "no " << kFortunesDir << " (apt-get install fortunes-min)";
  BpeTrainOptions opt;
  opt.vocab_size = 1024;
  const BpeTrainResult r = train_bpe(load_fortunes().train, opt);
  EXPECT_EQ(r.vocab_size, 1024);
  EXPECT_EQ(r.merges, 1024 - 256 - 1);
  EXPECT_TRUE(r.tokenizer_json + "\n" == golden("tokenizer.json"))
      << "the trainer no longer makes tests/golden/tokenizer_train/tokenizer.json; if intended, "
         "rerun python/make_golden_tokenizer_train.py";
}

TEST(TokenizerTrain, SmallCorpusPropertiesAndErrors) {
  std::vector<std::string> texts;
  for (int i = 0; i < 50; ++i)
    texts.push_back("the cat sat on the mat; the dog ate the cat's hat " + std::to_string(i));
  BpeTrainOptions opt;
  opt.vocab_size = 300;
  const BpeTrainResult a = train_bpe(texts, opt), b = train_bpe(texts, opt);
  EXPECT_EQ(a.tokenizer_json, b.tokenizer_json);  // deterministic
  EXPECT_LE(a.vocab_size, 300);
  EXPECT_GT(a.merges, 10);
  const auto tok = Tokenizer::from_json(a.tokenizer_json);
  EXPECT_EQ(tok->vocab_size(), a.vocab_size);
  EXPECT_EQ(tok->token_id("<|endoftext|>"), 0);
  // Frequent words became single tokens (GPT-2 alphabet: "Ġ" is the space).
  EXPECT_GE(tok->token_id("Ġthe"), 257);
  EXPECT_EQ(tok->encode(" the", false).size(), 1u);
  for (const std::string& t : {std::string("the cat"), std::string("never seen: zebra 🦓\n\tok")})
    EXPECT_EQ(tok->decode(tok->encode(t, false)), t);
  // min_frequency stops merges that are too rare.
  opt.min_frequency = 1000;
  EXPECT_EQ(train_bpe(texts, opt).merges, 0);
  opt.vocab_size = 200;
  EXPECT_THROW(train_bpe(texts, opt), Error);
  opt.vocab_size = 400;
  opt.special_tokens = {"<a>", "<a>"};
  EXPECT_THROW(train_bpe(texts, opt), Error);
}

TEST(TokenizerTrain, TextFileSplitRule) {
  const std::string path = testing::TempDir() + "/corpus.txt";
  {
    std::ofstream f(path);
    for (int i = 0; i < 20; ++i) f << "document " << i << "\nsecond line\n\n  \n";
  }
  const TextSplit s = load_text_file(path);
  ASSERT_EQ(s.train.size(), 16u);
  ASSERT_EQ(s.validation.size(), 2u);
  ASSERT_EQ(s.test.size(), 2u);
  EXPECT_EQ(s.validation[0], "document 8\nsecond line");
  EXPECT_EQ(s.test[1], "document 19\nsecond line");
  EXPECT_EQ(s.train[8], "document 10\nsecond line");
  EXPECT_THROW(load_text_file(testing::TempDir() + "/missing.txt"), Error);
  EXPECT_THROW(load_fortunes(testing::TempDir() + "/no-such-dir"), Error);
}
