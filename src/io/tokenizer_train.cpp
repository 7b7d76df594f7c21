// Byte-level BPE training and the text corpora (see tokenizer_train.h).
//
// Training keeps, per distinct word, its symbol sequence and count; pair counts weighted by
// word counts; for each pair the words it may occur in; and a max-heap of (count, pair) whose
// stale entries are re-filed or dropped when popped. A merge rewrites only the words holding
// the pair, so the cost follows the words touched, not the corpus.
#include "deltamoe/io/tokenizer_train.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>

#include "deltamoe/core/error.h"
#include "io/tokenizer_text.h"

namespace deltamoe::io {

namespace {

uint64_t key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

struct Trainer {
  std::vector<std::vector<int32_t>> words;  // symbols of each distinct word
  std::vector<int64_t> counts;              // occurrences of each word
  std::unordered_map<uint64_t, int64_t> pairs;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // pair -> words (maybe stale)
  // (count, -a, -b): the largest count first, then the lowest ids.
  std::priority_queue<std::tuple<int64_t, int32_t, int32_t>> heap;

  void add_pairs(int32_t w, int64_t sign) {
    const auto& s = words[static_cast<size_t>(w)];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = key(s[i], s[i + 1]);
      int64_t& c = pairs[k];
      c += sign * counts[static_cast<size_t>(w)];
      if (sign > 0) {
        where[k].push_back(w);
        heap.emplace(c, -s[i], -s[i + 1]);
      }
    }
  }

  // The most frequent live pair, or count 0 when none is left.
  std::tuple<int64_t, int32_t, int32_t> best() {
    while (!heap.empty()) {
      auto [c, na, nb] = heap.top();
      heap.pop();
      const auto it = pairs.find(key(-na, -nb));
      const int64_t now = it == pairs.end() ? 0 : it->second;
      if (now == c) return {c, -na, -nb};
      if (now > 0) heap.emplace(now, na, nb);  // stale: re-file at its current count
    }
    return {0, -1, -1};
  }

  void merge(int32_t a, int32_t b, int32_t id) {
    const uint64_t k = key(a, b);
    std::vector<int32_t> ws = std::move(where[k]);
    where.erase(k);
    std::sort(ws.begin(), ws.end());
    ws.erase(std::unique(ws.begin(), ws.end()), ws.end());
    for (int32_t w : ws) {
      auto& s = words[static_cast<size_t>(w)];
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == a && s[i + 1] == b;
      if (!has) continue;
      add_pairs(w, -1);
      std::vector<int32_t> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          out.push_back(id);
          ++i;
        } else {
          out.push_back(s[i]);
        }
      }
      s = std::move(out);
      add_pairs(w, +1);
    }
    pairs.erase(k);
  }
};

// Documents of a text by a separator rule, then the fixed split.
TextSplit split_documents(std::vector<std::string> docs, std::string source) {
  TextSplit s;
  s.source = std::move(source);
  for (size_t i = 0; i < docs.size(); ++i) {
    if (i % 10 == 8)
      s.validation.push_back(std::move(docs[i]));
    else if (i % 10 == 9)
      s.test.push_back(std::move(docs[i]));
    else
      s.train.push_back(std::move(docs[i]));
  }
  return s;
}

std::string read_all(const std::string& path, const char* component) {
  std::ifstream f(path, std::ios::binary);
  DELTAMOE_CHECK(f.good(), component, "cannot read ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string trim_newlines(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  size_t b = 0;
  while (b < s.size() && (s[b] == '\n' || s[b] == '\r')) ++b;
  return s.substr(b);
}

// Appends the documents of `text` to `docs`: runs of lines between separator lines, without
// their leading and trailing newlines, empty ones dropped.
template <typename IsSeparator>
void append_documents(const std::string& text, IsSeparator is_separator,
                      std::vector<std::string>& docs) {
  std::istringstream in(text);
  std::string line, cur;
  auto flush = [&] {
    std::string d = trim_newlines(cur);
    if (!d.empty()) docs.push_back(std::move(d));
    cur.clear();
  };
  while (std::getline(in, line)) {
    if (is_separator(line))
      flush();
    else
      cur += line + "\n";
  }
  flush();
}

}  // namespace

BpeTrainResult train_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& opt) {
  const int32_t n_special = static_cast<int32_t>(opt.special_tokens.size());
  std::set<std::string> seen;
  for (const std::string& t : opt.special_tokens)
    DELTAMOE_CHECK(!t.empty() && seen.insert(t).second, "tokenizer",
                   "special tokens must be distinct and non-empty, got '", t, "'");
  DELTAMOE_CHECK(opt.vocab_size >= 256 + n_special, "tokenizer", "vocabulary of ", opt.vocab_size,
                 " is below the 256 byte tokens + ", n_special, " special tokens");
  BpeTrainResult r;
  const text::Regex split(text::kGpt2Pattern, false);
  std::map<std::string, int64_t> freq;  // ordered: word ids independent of hashing
  for (const std::string& raw : texts) {
    r.bytes += static_cast<int64_t>(raw.size());
    const std::string t = text::to_valid_utf8(raw);
    for (const auto& [b, e] : split.find_all(t)) ++freq[t.substr(b, e - b)];
  }
  r.words = static_cast<int64_t>(freq.size());

  const auto& alphabet = text::byte_to_unicode();
  std::vector<std::string> piece;  // id -> vocabulary string
  for (const std::string& t : opt.special_tokens) piece.push_back(t);
  for (int b = 0; b < 256; ++b) piece.push_back(alphabet[static_cast<size_t>(b)]);
  std::unordered_map<std::string, int32_t> id_of;
  for (int32_t i = 0; i < static_cast<int32_t>(piece.size()); ++i) id_of.emplace(piece[i], i);

  Trainer tr;
  for (const auto& [w, c] : freq) {
    std::vector<int32_t> s;
    for (unsigned char ch : w) s.push_back(n_special + ch);
    tr.words.push_back(std::move(s));
    tr.counts.push_back(c);
  }
  for (int32_t w = 0; w < static_cast<int32_t>(tr.words.size()); ++w) tr.add_pairs(w, +1);

  nlohmann::ordered_json merges = nlohmann::ordered_json::array();
  while (static_cast<int32_t>(piece.size()) < opt.vocab_size) {
    const auto [count, a, b] = tr.best();
    if (count < std::max<int64_t>(1, opt.min_frequency)) break;
    const std::string s = piece[static_cast<size_t>(a)] + piece[static_cast<size_t>(b)];
    int32_t id;
    if (const auto it = id_of.find(s); it != id_of.end()) {
      id = it->second;  // the same string by another path: one token
    } else {
      id = static_cast<int32_t>(piece.size());
      piece.push_back(s);
      id_of.emplace(s, id);
    }
    merges.push_back(piece[static_cast<size_t>(a)] + " " + piece[static_cast<size_t>(b)]);
    tr.merge(a, b, id);
  }
  r.merges = static_cast<int64_t>(merges.size());
  r.vocab_size = static_cast<int32_t>(piece.size());

  using oj = nlohmann::ordered_json;
  oj added = oj::array();
  for (int32_t i = 0; i < n_special; ++i)
    added.push_back({{"id", i},
                     {"content", piece[static_cast<size_t>(i)]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  oj vocab = oj::object();
  for (int32_t i = 0; i < static_cast<int32_t>(piece.size()); ++i)
    vocab[piece[static_cast<size_t>(i)]] = i;
  auto byte_level = [](bool prefix) {
    return oj{{"type", "ByteLevel"},
              {"add_prefix_space", prefix},
              {"trim_offsets", true},
              {"use_regex", true}};
  };
  oj j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = byte_level(false);
  j["post_processor"] = nullptr;
  j["decoder"] = byte_level(true);
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}};
  r.tokenizer_json = j.dump(1);
  return r;
}

TextSplit load_fortunes(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file() || e.is_symlink()) continue;
    if (e.path().has_extension()) continue;  // .dat indexes, .u8 links
    files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  DELTAMOE_CHECK(!files.empty(), "data", "no fortune files in ", dir,
                 " (install Debian's fortunes-min or fortunes, or pass --data FILE)");
  std::vector<std::string> docs;
  for (const std::string& f : files)
    append_documents(
        read_all(f, "data"), [](const std::string& l) { return l == "%"; }, docs);
  return split_documents(std::move(docs), dir + " (" + std::to_string(files.size()) + " files)");
}

TextSplit load_text_file(const std::string& path) {
  std::vector<std::string> docs;
  append_documents(
      read_all(path, "data"),
      [](const std::string& l) { return l.find_first_not_of(" \t\r") == std::string::npos; }, docs);
  DELTAMOE_CHECK(!docs.empty(), "data", path, " holds no text");
  return split_documents(std::move(docs), path);
}

}  // namespace deltamoe::io
