// make_synthetic_tokenizer_json: a small but real SentencePiece-style BPE tokenizer.json for
// random checkpoints, so that `deltamoe make-model` can ship a tokenizer of any vocab size.
#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"
#include "deltamoe/io/tokenizer.h"

namespace deltamoe::io {

namespace {
constexpr const char* kSpace = "\xE2\x96\x81";  // ▁

// Our own training text: plain English with common words, punctuation and digits.
constexpr const char* kTrainingText =
    "The engine reads a model from a directory and runs it on the machine it finds. "
    "Each layer sends every token to a few experts, and the router decides which ones. "
    "When the experts are busy, the tokens wait in a queue until there is room for them. "
    "A small model is useful for tests: it loads in a moment and shows whether the code is "
    "right, even if the text it writes makes no sense at all. "
    "The weather was cold in the morning, so we stayed inside and read the news. "
    "In the evening the wind went down and the sky was clear again over the hills. "
    "She said that the train would leave at seven, but it left at half past eight. "
    "There are 24 hours in a day, 7 days in a week and 365 days in most years. "
    "If you want to learn something well, you should try to explain it to someone else. "
    "He opened the window, looked at the garden and thought about the work of the day. "
    "Numbers such as 3.14, 42 and 1000 appear in the text as well as words and names. "
    "They were talking about the new station that the city will build next to the river. "
    "What do you think about this question? Nobody knows the answer, but many people "
    "have an opinion, and some of them are very sure that they are right. "
    "The children played in the park while their parents talked on the benches. "
    "Good software is tested often, measured with care and changed in small steps. "
    "Please write your name, the date and the time on the first line of the form.";

std::vector<std::string> base_characters() {
  std::vector<std::string> chars{kSpace};
  for (char c = 'a'; c <= 'z'; ++c) chars.emplace_back(1, c);
  for (char c = 'A'; c <= 'Z'; ++c) chars.emplace_back(1, c);
  for (char c = '0'; c <= '9'; ++c) chars.emplace_back(1, c);
  for (char c : std::string_view(".,'?!:;-\"()/&%$#@*+=<>[]_`{|}~^\\")) chars.emplace_back(1, c);
  return chars;
}

// Words of the training text, SentencePiece style: spaces become ▁ and start each word.
std::map<std::vector<std::string>, int> training_words() {
  std::map<std::vector<std::string>, int> words;
  std::vector<std::string> word;
  const std::string_view text = kTrainingText;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == ' ') {
      if (!word.empty()) ++words[word];
      word.assign(1, kSpace);
    } else {
      if (word.empty()) word.assign(1, kSpace);
      word.emplace_back(1, text[i]);
    }
  }
  return words;
}
}  // namespace

std::string make_synthetic_tokenizer_json(int32_t vocab_size) {
  DELTAMOE_CHECK(vocab_size >= 300, "tokenizer", "synthetic tokenizer: vocab_size ", vocab_size,
                 " is below the minimum of 300");
  DELTAMOE_CHECK(vocab_size <= (1 << 24), "tokenizer", "synthetic tokenizer: vocab_size ",
                 vocab_size, " is above the maximum of ", 1 << 24);
  using ojson = nlohmann::ordered_json;
  ojson vocab = ojson::object();
  std::map<std::string, int32_t> ids;
  const auto add = [&](const std::string& piece) {
    const auto id = static_cast<int32_t>(ids.size());
    ids.emplace(piece, id);
    vocab[piece] = id;
  };
  for (const char* s : {"<unk>", "<s>", "</s>"}) add(s);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    add(name);
  }
  for (const std::string& c : base_characters())
    if (static_cast<int32_t>(ids.size()) < vocab_size) add(c);

  // BPE training: merge the most frequent adjacent pair (ties: the smallest pair) until the
  // vocabulary is full or no pair occurs twice.
  ojson merges = ojson::array();
  auto words = training_words();
  while (static_cast<int32_t>(ids.size()) < vocab_size) {
    std::map<std::pair<std::string, std::string>, int> counts;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i)
        if (ids.count(w[i]) && ids.count(w[i + 1])) counts[{w[i], w[i + 1]}] += n;
    auto best = counts.end();
    for (auto it = counts.begin(); it != counts.end(); ++it)
      if (best == counts.end() || it->second > best->second) best = it;
    if (best == counts.end() || best->second < 2) break;
    const auto [a, b] = best->first;
    add(a + b);
    merges.push_back({a, b});
    std::map<std::vector<std::string>, int> merged;
    for (const auto& [w, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          out.push_back(a + b);
          ++i;
        } else {
          out.push_back(w[i]);
        }
      }
      merged[out] += n;
    }
    words = std::move(merged);
  }
  for (int n = 0; static_cast<int32_t>(ids.size()) < vocab_size; ++n)
    add("<unused_" + std::to_string(n) + ">");

  ojson added = ojson::array();
  for (int i = 0; i < 3; ++i)
    added.push_back({{"id", i},
                     {"content", i == 0   ? "<unk>"
                                 : i == 1 ? "<s>"
                                          : "</s>"},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  ojson j = {{"version", "1.0"},
             {"truncation", nullptr},
             {"padding", nullptr},
             {"added_tokens", added},
             {"normalizer", nullptr},
             {"pre_tokenizer",
              {{"type", "Metaspace"},
               {"replacement", kSpace},
               {"prepend_scheme", "first"},
               {"split", false}}},
             {"post_processor",
              {{"type", "TemplateProcessing"},
               {"single",
                {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
               {"pair",
                {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                 {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
                 {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
               {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
             {"decoder",
              {{"type", "Sequence"},
               {"decoders",
                {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                 {{"type", "ByteFallback"}},
                 {{"type", "Fuse"}},
                 {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
             {"model",
              {{"type", "BPE"},
               {"dropout", nullptr},
               {"unk_token", "<unk>"},
               {"continuing_subword_prefix", nullptr},
               {"end_of_word_suffix", nullptr},
               {"fuse_unk", true},
               {"byte_fallback", true},
               {"ignore_merges", false},
               {"vocab", vocab},
               {"merges", merges}}}};
  return j.dump(1);
}

}  // namespace deltamoe::io
