// Training a byte-level BPE tokenizer (GPT-2 / Qwen style) and the text corpora the language
// models are trained on (issue 15, item 2).
//
// The tokenizer is written as a Hugging Face tokenizer.json (ByteLevel pre-tokenizer with
// GPT-2's split regex, BPE model, ByteLevel decoder) that both io::Tokenizer and HF
// `tokenizers` load and encode alike (tests/unit/test_tokenizer_train.cpp against ids made by
// python/make_golden_tokenizer_train.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deltamoe::io {

struct BpeTrainOptions {
  /// Vocabulary size, the special tokens and the 256 byte tokens included.
  int32_t vocab_size = 4096;
  /// A pair is merged only if it occurs at least this often (weighted by word counts).
  int64_t min_frequency = 2;
  /// Special tokens, ids 0, 1, ... in this order (the first is the documents' separator).
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
};

struct BpeTrainResult {
  std::string tokenizer_json;  // the tokenizer.json text
  int32_t vocab_size = 0;      // what was reached (less than asked when merges ran out)
  int64_t merges = 0;
  int64_t words = 0;  // distinct pre-tokenized words of the input
  int64_t bytes = 0;  // input bytes
};

/// Learns merges from `texts` (UTF-8; invalid bytes replaced by U+FFFD first): each text is
/// split by GPT-2's regex, each piece's bytes are the initial symbols, then the most frequent
/// adjacent pair is merged (ties: the pair of lower ids) until `vocab_size` or
/// `min_frequency` stops it. Deterministic. Throws Error("tokenizer") for a vocabulary below
/// 256 + special tokens, duplicate or empty special tokens.
BpeTrainResult train_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& options);

/// A corpus split by a fixed rule: of its documents in reading order, every tenth (index % 10
/// == 8) goes to validation, the next (index % 10 == 9) to test, the rest to train.
struct TextSplit {
  std::vector<std::string> train, validation, test;
  std::string source;  // what was read, for reports
};

/// Where Debian's fortunes and fortunes-min packages put their files.
inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

/// The fortune files of `dir` (every regular file without an extension, in name order;
/// documents are separated by lines holding only "%"), split by the rule above. Throws
/// Error("data") naming the directory when it holds none (install fortunes-min).
TextSplit load_fortunes(const std::string& dir = kFortunesDir);

/// Any UTF-8 text file: documents are separated by blank lines; split by the rule above.
/// Throws Error("data") naming the file when it cannot be read or holds no text.
TextSplit load_text_file(const std::string& path);

}  // namespace deltamoe::io
