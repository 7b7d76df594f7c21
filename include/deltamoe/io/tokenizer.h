// Tokenizers of Hugging Face model directories: tokenizer.json (BPE) and tokenizer.model
// (SentencePiece).
//
// Correctness is defined as equality with the reference implementations: ids and text equal
// to Hugging Face `tokenizers` (Tokenizer.encode / decode) for tokenizer.json, and to
// `sentencepiece` (encode, plus <s> when special tokens are asked for; decode) for
// tokenizer.model. See docs/tokenizers.md for what is supported and how it was checked.
//
// Supported tokenizer.json content: model "BPE" (vocab, merges as "a b" strings or [a, b]
// pairs, unk_token, fuse_unk, byte_fallback, ignore_merges); normalizers NFC, NFD, NFKC, NFKD,
// Prepend, Replace, Strip and Sequence; pre-tokenizers Metaspace, ByteLevel, Split (regex or
// string, every split behaviour), Digits and Sequence; post-processors TemplateProcessing,
// ByteLevel and Sequence; decoders Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel
// and Sequence; added_tokens with lstrip / rstrip / normalized / single_word / special.
// Anything else (WordPiece, Unigram, WordLevel, unknown components) is an Error naming the
// file and the component. Regexes run on PCRE2 (UTF + UCP), Unicode normalisation on utf8proc.
//
// Errors: every failure is a deltamoe::Error whose what() is one line starting with
// "[tokenizer] " and naming the file (when a file is involved) and the offending thing.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace deltamoe::io {

/// A loaded tokenizer. Immutable after loading.
///
/// Thread-safety: every method is const and safe to call concurrently from many threads (the
/// BPE word cache is internally locked).
/// Text is UTF-8. Input text that is not valid UTF-8 is not rejected: each maximal invalid
/// subsequence is replaced by U+FFFD first (Python's errors="replace" rule), so the ids are
/// those the reference gives for `text.decode("utf-8", errors="replace")`.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// Loads the tokenizer of a model directory: `tokenizer.json` when present, else
  /// `tokenizer.model` (SentencePiece). bos/eos come from `tokenizer_config.json` when the
  /// directory has one (bos_token / eos_token), else from the model itself (see bos_id()).
  /// Throws Error naming the directory when it has neither file, or naming the file when it
  /// cannot be read or parsed or uses an unsupported component.
  static std::unique_ptr<Tokenizer> load(const std::string& model_dir);
  /// Loads one file: `*.json` is read as tokenizer.json, anything else as a SentencePiece
  /// model. A `tokenizer_config.json` beside it is used for bos/eos as in load().
  static std::unique_ptr<Tokenizer> load_file(const std::string& path);
  /// Parses tokenizer.json text held in memory; `name` stands for the file in messages.
  static std::unique_ptr<Tokenizer> from_json(std::string_view json_text,
                                              const std::string& name = "<memory>");

  /// Token ids of `text`. With `add_special_tokens`, the post-processor's template is applied
  /// (tokenizer.json; typically <s> first) or bos is prepended (SentencePiece, when the model
  /// has one). Special-token strings inside `text` ("<s>", "<|im_end|>") become their ids.
  virtual std::vector<int32_t> encode(std::string_view text,
                                      bool add_special_tokens = true) const = 0;
  /// The text of `ids`, as the reference decode gives it. `skip_special_tokens` drops special
  /// added tokens (tokenizer.json) / control tokens (SentencePiece). Throws Error when an id
  /// is outside [0, vocab_size()) or names no token.
  virtual std::string decode(std::span<const int32_t> ids,
                             bool skip_special_tokens = false) const = 0;

  /// The vocabulary string of `id` (e.g. "▁the", "<0x0A>", "Ġthe"). Throws Error when `id`
  /// names no token.
  virtual std::string piece(int32_t id) const = 0;
  /// The id of the vocabulary string `piece` (added tokens included), or -1 when absent.
  virtual int32_t token_id(std::string_view piece) const = 0;
  /// One more than the largest id (added tokens included).
  virtual int32_t vocab_size() const = 0;
  /// Beginning-of-sequence id, or -1 when the tokenizer has none.
  int32_t bos_id() const { return bos_id_; }
  /// End-of-sequence id, or -1 when the tokenizer has none.
  int32_t eos_id() const { return eos_id_; }
  /// Whether `id` is a special token (special added token / SentencePiece control token).
  virtual bool is_special(int32_t id) const = 0;
  /// Whether `id` is a byte-fallback token ("<0xNN>") whose text is decided only together
  /// with its neighbours (used by StreamDecoder).
  virtual bool is_byte_token(int32_t id) const = 0;
  /// "bpe-json" or "sentencepiece" (for diagnostics and --json output).
  virtual std::string kind() const = 0;
  /// The file it was loaded from ("<memory>" for from_json()).
  const std::string& path() const { return path_; }

 protected:
  std::string path_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  friend struct TokenizerAccess;
};

/// Turns ids arriving one at a time (generation) into text, returning only complete UTF-8
/// characters: a character spread over several byte tokens comes out whole once its last
/// byte arrives. The concatenation of everything next() and finish() return equals
/// tokenizer.decode(all ids, skip_special_tokens), leading-space handling included.
///
/// It keeps a small window of recent ids and decodes it, so a step costs O(window), not
/// O(sequence). Holds a reference to the tokenizer, which must outlive it.
/// Thread-safety: one StreamDecoder per sequence; not safe to share across threads.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false);

  /// Adds `id` and returns the text it completes (often empty while a character or a
  /// byte-fallback run is incomplete). Throws Error for an invalid id (state unchanged).
  std::string next(int32_t id);
  /// Returns whatever is still held back (an incomplete character decodes as U+FFFD, as in
  /// decode()) and resets the decoder for a new sequence.
  std::string finish();
  /// Forgets everything (a new sequence).
  void reset();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::vector<int32_t> window_;  // ids [emitted context..., pending...]
  size_t emitted_ = 0;           // how many ids at the front of window_ are already emitted
  std::string emitted_text_;     // decode(window_[0, emitted_))
};

/// A valid SentencePiece-style BPE tokenizer.json with exactly `vocab_size` ids: <unk>, <s>,
/// </s>, the 256 <0xNN> byte tokens, "▁" and printable ASCII, then merges learned by BPE over
/// a small built-in English text, then "<unused_N>" fillers if the text runs out of pairs.
/// Deterministic. Throws Error when vocab_size < 300. HF `tokenizers` loads it.
std::string make_synthetic_tokenizer_json(int32_t vocab_size);

}  // namespace deltamoe::io
