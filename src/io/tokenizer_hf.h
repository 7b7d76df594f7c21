// The tokenizer.json (Hugging Face `tokenizers`) pipeline, private to src/io.
//
// Each component of the file becomes a flat list of steps (nested Sequences are flattened,
// which keeps their meaning since each step applies to the output of the one before):
//   added tokens split out (non-normalized ones on the raw text, normalized ones after the
//   normalizers) -> normalizers -> pre-tokenizers -> BPE per piece -> post-processor.
// Decoding maps ids to token strings and runs the decoder steps over the list of strings.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "deltamoe/io/tokenizer.h"
#include "io/tokenizer_text.h"

namespace deltamoe::io::hf {

/// Heterogeneous string hashing so maps keyed by std::string can be searched by string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct AddedToken {
  int32_t id = -1;
  std::string content;
  std::string match;  // what is searched for: content, normalized when `normalized`
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

enum class NormKind { nfc, nfd, nfkc, nfkd, prepend, replace, strip };
struct Normalizer {
  NormKind kind;
  std::string a, b;                  // prepend: a; replace: pattern literal a -> b
  std::shared_ptr<text::Regex> re;   // replace with a Regex pattern
  bool left = false, right = false;  // strip
};

enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };
enum class PreKind { metaspace, byte_level, split, digits };
struct PreTokenizer {
  PreKind kind;
  // metaspace
  std::string replacement;
  int prepend_scheme = 0;  // 0 always, 1 first, 2 never
  bool split = true;
  // byte_level
  bool add_prefix_space = false, use_regex = true;
  // split / digits
  std::shared_ptr<text::Regex> re;
  SplitBehavior behavior = SplitBehavior::isolated;
  bool invert = false;
  bool individual_digits = false;
};

enum class DecKind { replace, byte_fallback, fuse, strip, metaspace, byte_level };
struct Decoder {
  DecKind kind;
  std::string a, b;                 // replace: literal a -> b; metaspace: a = replacement
  std::shared_ptr<text::Regex> re;  // replace with a Regex pattern
  char32_t strip_char = ' ';
  size_t start = 0, stop = 0;  // strip
  bool strip_first = true;     // metaspace: drop the replacement in the first token
};

/// The BPE model: vocab, merge ranks, unknown / byte fallback, and a word cache.
class Bpe {
 public:
  StringMap vocab;                  // token -> id
  std::vector<std::string> pieces;  // id -> token ("" for ids the model does not have)
  std::vector<bool> has_piece;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  int32_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::array<int32_t, 256> byte_ids{};  // id of "<0xNN>", -1 when absent

  /// Appends the ids of one pre-tokenized piece to `out`.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheMaxWords = 1 << 15;  // per shard; cleared when full
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
  };
  mutable std::array<Shard, kCacheShards> cache_;
};

class HfTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override;
  std::string piece(int32_t id) const override;
  int32_t token_id(std::string_view piece) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  bool is_special(int32_t id) const override;
  bool is_byte_token(int32_t id) const override;
  std::string kind() const override { return "bpe-json"; }

  // Built by the parser (tokenizer_json.cpp).
  Bpe bpe_;
  std::vector<AddedToken> added_;  // in file order, ids resolved
  // Indices into added_ by the first byte of `match`, longest first; [0] non-normalized
  // tokens, [1] normalized ones (searched after the normalizers).
  std::array<std::array<std::vector<uint32_t>, 256>, 2> added_by_first_byte_;
  std::unordered_map<int32_t, size_t> added_by_id_;
  StringMap added_by_content_;  // content -> index into added_
  std::vector<Normalizer> normalizers_;
  bool has_normalizer_ = false;
  std::vector<PreTokenizer> pre_tokenizers_;
  std::vector<Decoder> decoders_;
  bool has_decoder_ = false;
  // Post-processor templates ("single" of each TemplateProcessing): an id list per item,
  // with kSequence marking where the encoded text goes.
  static constexpr int32_t kSequence = -1;
  std::vector<std::vector<int32_t>> templates_;
  int32_t vocab_size_ = 0;
  std::string default_bos_, default_eos_;  // guessed from the template / vocab

  /// The normalizer steps applied to `s` (also used on normalized added tokens).
  std::string normalize(std::string s) const;
  void set_path(std::string p) { path_ = std::move(p); }
  void set_special_ids(int32_t bos, int32_t eos) {
    bos_id_ = bos;
    eos_id_ = eos;
  }

 private:
  struct Segment {
    std::string text;
    int32_t added_id = -1;   // >= 0: an added token, already an id
    bool at_origin = false;  // starts at byte 0 of the original input
  };
  std::vector<Segment> split_added(const std::string& text, bool at_origin, bool normalized) const;
  std::vector<Segment> pre_tokenize(Segment seg) const;
  std::string token_string(int32_t id) const;
};

/// Parses tokenizer.json text into a tokenizer; `path` names the file in errors.
std::unique_ptr<HfTokenizer> parse_tokenizer_json(std::string_view json_text,
                                                  const std::string& path);

}  // namespace deltamoe::io::hf
