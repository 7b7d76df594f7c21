// Random-mutation fuzzing of the tokenizer.json parser and of encode / decode input
// (deterministic; runs as a GoogleTest). Every mutant must either load or throw
// deltamoe::Error with a one-line "[tokenizer] " message; a loaded one must encode random
// bytes and decode its own ids without any other exception. Run under the `debug` preset
// (ASan + UBSan) to catch memory errors that do not crash.
// The coverage-guided counterpart is tests/libfuzzer/tokenizer.cpp (scripts/fuzz.sh).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "deltamoe/core/error.h"
#include "deltamoe/io/tokenizer.h"

using namespace deltamoe;
using namespace deltamoe::io;

namespace {

const char* const kByteLevel = R"({"version": "1.0", "normalizer": {"type": "NFC"},
 "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
   {"type": "Split", "pattern": {"Regex": "(?i:'s|'t)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s+(?!\\S)|\\s+"},
    "behavior": "Isolated", "invert": false},
   {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
   {"type": "Digits", "individual_digits": true}]},
 "post_processor": {"type": "Sequence", "processors": [{"type": "ByteLevel"},
   {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|s|>", "type_id": 0}},
    {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<|s|>": {"id": "<|s|>", "ids": [9], "tokens": ["<|s|>"]}}}]},
 "decoder": {"type": "ByteLevel"},
 "added_tokens": [{"id": 9, "content": "<|s|>", "special": true, "normalized": false},
   {"id": 10, "content": "ab", "special": false, "normalized": true, "lstrip": true, "rstrip": true, "single_word": true}],
 "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "Ġ": 3, "ab": 4, "Ġa": 5, "Ġab": 6, "1": 7, "Ċ": 8},
   "merges": [["a", "b"], "Ġ a", ["Ġa", "b"]], "ignore_merges": true}})";

const char* const kTokens[] = {"{",          "}",
                               "[",          "]",
                               ",",          ":",
                               "\"",         "\\",
                               "null",       "true",
                               "false",      "-1",
                               "0",          "1",
                               "1e9",        "4294967296",
                               "\"BPE\"",    "\"WordPiece\"",
                               "\"type\"",   "\"Sequence\"",
                               "\"Regex\"",  "\"String\"",
                               "\"(\"",      "\"\\\\p{L}*\"",
                               "\"first\"",  "\"never\"",
                               "\"<0x41>\"", "\"▁\"",
                               "\xff",       "\xc3\xa9",
                               " "};

void check(const std::string& json_text, const std::string& input, int& loaded, int& rejected) {
  try {
    const auto tok = Tokenizer::from_json(json_text, "fuzz.json");
    ++loaded;
    for (bool special : {true, false}) {
      const std::vector<int32_t> ids = tok->encode(input, special);
      const std::string text = tok->decode(ids, !special);
      StreamDecoder stream(*tok);
      for (int32_t id : ids) (void)stream.next(id);
      (void)stream.finish();
      (void)text;
    }
  } catch (const Error& e) {
    ++rejected;
    const std::string msg = e.what();
    if (msg.rfind("[tokenizer] ", 0) != 0 || msg.find('\n') != std::string::npos) {
      std::fprintf(stderr, "bad message: %s\n", msg.c_str());
      std::abort();
    }
  }
}

}  // namespace

#include <gtest/gtest.h>

TEST(FuzzTokenizer, RandomMutationsNeverCrash) {
  std::mt19937_64 rng(20261205);
  const auto below = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  const std::vector<std::string> seeds = {kByteLevel, make_synthetic_tokenizer_json(300)};
  for (const auto& s : seeds) ASSERT_NO_THROW(Tokenizer::from_json(s, "seed.json"));
  int loaded = 0, rejected = 0;
  constexpr int kIterations = 6000;
  for (int it = 0; it < kIterations; ++it) {
    std::string f = seeds[below(seeds.size())];
    // A third of the runs fuzz only the text, so encode and decode get real exercise.
    for (size_t e = 0, n = below(3) == 0 ? 0 : 1 + below(3); e < n; ++e) {
      const size_t pos = below(f.size() + 1);
      switch (below(4)) {
        case 0:  // token insert / replace
          f.replace(pos, below(3) == 0 ? below(6) : 0, kTokens[below(std::size(kTokens))]);
          break;
        case 1:  // random bytes
          for (size_t k = 0, m = 1 + below(4); k < m && !f.empty(); ++k)
            f[below(f.size())] = static_cast<char>(rng());
          break;
        case 2:  // truncation
          f.resize(pos);
          break;
        default:  // delete a span
          f.erase(pos, below(16));
          break;
      }
    }
    std::string input;
    for (size_t k = 0, m = below(64); k < m; ++k)
      input.push_back(below(3) == 0 ? static_cast<char>(rng()) : "ab c1\n\t<|s|>é"[below(14)]);
    check(f, input, loaded, rejected);
  }
  std::printf("tokenizer fuzz: %d mutants, %d loaded, %d rejected\n", kIterations, loaded,
              rejected);
  EXPECT_EQ(loaded + rejected, kIterations);
  EXPECT_GT(loaded, kIterations / 5);
  EXPECT_GT(rejected, kIterations / 4);
}
