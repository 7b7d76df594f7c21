// tokenizer.model: SentencePiece through Debian's libsentencepiece for encoding; decoding is
// our own, following current upstream SentencePiece (which Python's sentencepiece 0.2 ships):
// Debian's 0.1.97 strips the leading space of every piece while the output is still empty,
// upstream only of the first one, and HF tokenizers agrees with upstream. Doing it here also
// makes the result independent of the library version installed.
#include <sentencepiece_processor.h>

#include <fstream>
#include <sstream>

#include "deltamoe/core/error.h"
#include "io/file_util.h"
#include "io/tokenizer_internal.h"
#include "io/tokenizer_text.h"

namespace deltamoe::io {

namespace {
constexpr const char* kComponent = "tokenizer";
constexpr std::string_view kSpace = "\xE2\x96\x81";  // ▁

// The few ModelProto fields decoding needs, read from the protobuf wire format directly
// (Debian's package ships no sentencepiece_model.pb.h).
struct SpmSpec {
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool treat_whitespace_as_suffix = false;
  bool has_denormalizer = false;
  std::string unk_surface = " \xE2\x81\x87 ";
};

class Wire {
 public:
  explicit Wire(std::string_view b) : b_(b) {}
  bool done() const { return i_ >= b_.size(); }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && i_ < b_.size(); shift += 7) {
      const auto c = static_cast<unsigned char>(b_[i_++]);
      v |= static_cast<uint64_t>(c & 0x7F) << shift;
      if ((c & 0x80) == 0) return true;
    }
    return false;
  }
  // Reads one field; for length-delimited ones `bytes` gets the payload. False on bad input.
  bool field(uint32_t& number, uint64_t& value, std::string_view& bytes) {
    uint64_t key = 0;
    if (!varint(key)) return false;
    number = static_cast<uint32_t>(key >> 3);
    switch (key & 7) {
      case 0:
        return varint(value);
      case 1:
        return skip(8);
      case 2:
        if (!varint(value) || value > b_.size() - i_) return false;
        bytes = b_.substr(i_, value);
        i_ += value;
        return true;
      case 5:
        return skip(4);
      default:
        return false;
    }
  }

 private:
  bool skip(size_t n) {
    if (n > b_.size() - i_) return false;
    i_ += n;
    return true;
  }
  std::string_view b_;
  size_t i_ = 0;
};

SpmSpec read_spec(std::string_view model) {
  SpmSpec spec;
  Wire top(model);
  uint32_t num = 0;
  uint64_t val = 0;
  std::string_view bytes;
  while (!top.done() && top.field(num, val, bytes)) {
    if (num == 2) {  // trainer_spec
      Wire w(bytes);
      while (!w.done() && w.field(num, val, bytes)) {
        if (num == 24) spec.treat_whitespace_as_suffix = val != 0;
        if (num == 44) spec.unk_surface = std::string(bytes);
      }
    } else if (num == 3) {  // normalizer_spec
      Wire w(bytes);
      while (!w.done() && w.field(num, val, bytes)) {
        if (num == 3) spec.add_dummy_prefix = val != 0;
        if (num == 4) spec.remove_extra_whitespaces = val != 0;
      }
    } else if (num == 5) {  // denormalizer_spec: rules in precompiled_charsmap (field 2)
      Wire w(bytes);
      while (!w.done() && w.field(num, val, bytes))
        if (num == 2 && !bytes.empty()) spec.has_denormalizer = true;
    }
  }
  return spec;
}

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const std::string& path) {
    path_ = path;
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(kComponent, path, ": cannot open the SentencePiece model");
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string bytes = ss.str();
    if (bytes.empty()) fail(kComponent, path, ": the SentencePiece model is empty");
    const auto status = sp_.LoadFromSerializedProto(bytes);
    if (!status.ok())
      fail(kComponent, path, ": not a SentencePiece model (", detail::one_line(status.ToString()),
           ")");
    spec_ = read_spec(bytes);
    if (spec_.treat_whitespace_as_suffix || spec_.has_denormalizer)
      fail(kComponent, path, ": SentencePiece models with ",
           spec_.treat_whitespace_as_suffix ? "treat_whitespace_as_suffix" : "denormalizer rules",
           " are not supported");
    size_ = sp_.GetPieceSize();
    if (size_ <= 0) fail(kComponent, path, ": the SentencePiece model has no pieces");
    bos_id_ = sp_.bos_id() < size_ ? sp_.bos_id() : -1;
    eos_id_ = sp_.eos_id() < size_ ? sp_.eos_id() : -1;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text::to_valid_utf8(text), &ids);
    if (!status.ok())
      fail(kComponent, path_, ": encoding failed (", detail::one_line(status.ToString()), ")");
    std::vector<int32_t> out;
    out.reserve(ids.size() + 1);
    if (add_special_tokens && bos_id_ >= 0) out.push_back(bos_id_);
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    std::string text, bytes;
    bool is_bos_ws = true, bos_ws_seen = false;
    // Consecutive byte pieces form one byte string; each valid character in it is kept and
    // each byte that starts no valid character becomes U+FFFD.
    const auto flush_bytes = [&] {
      for (size_t i = 0; i < bytes.size();) {
        const size_t n = text::valid_sequence_length(bytes, i);
        if (n == 0) {
          text += text::kReplacement;
          ++i;
        } else {
          text.append(bytes, i, n);
          i += n;
        }
      }
      bytes.clear();
    };
    for (int32_t id : ids) {
      check(id);
      if (sp_.IsByte(id)) {
        bytes.push_back(static_cast<char>(byte_value(id)));
        continue;
      }
      flush_bytes();
      if (bos_ws_seen || !text.empty()) is_bos_ws = false;
      bos_ws_seen = false;
      if (sp_.IsControl(id)) continue;  // <s>, </s> are invisible, skipped or not
      if (sp_.IsUnknown(id)) {          // SentencePiece shows <unk> as " ⁇ " even when skipping
        text += spec_.unk_surface;
        continue;
      }
      const std::string piece = sp_.IdToPiece(id);
      std::string_view rest = piece;
      if (is_bos_ws && (spec_.add_dummy_prefix || spec_.remove_extra_whitespaces) &&
          rest.substr(0, kSpace.size()) == kSpace) {
        rest.remove_prefix(kSpace.size());
        bos_ws_seen = !spec_.remove_extra_whitespaces;
      }
      for (size_t at = rest.find(kSpace);; at = rest.find(kSpace)) {
        text.append(rest.substr(0, at));
        if (at == std::string_view::npos) break;
        text.push_back(' ');
        rest.remove_prefix(at + kSpace.size());
      }
    }
    flush_bytes();
    return text;
  }

  std::string piece(int32_t id) const override {
    check(id);
    return sp_.IdToPiece(id);
  }
  int32_t token_id(std::string_view piece) const override {
    const int id = sp_.PieceToId(piece);
    return id >= 0 && id < size_ && sp_.IdToPiece(id) == piece ? id : -1;
  }
  int32_t vocab_size() const override { return size_; }
  bool is_special(int32_t id) const override { return id >= 0 && id < size_ && sp_.IsControl(id); }
  bool is_byte_token(int32_t id) const override { return id >= 0 && id < size_ && sp_.IsByte(id); }
  std::string kind() const override { return "sentencepiece"; }

 private:
  void check(int32_t id) const {
    if (id < 0 || id >= size_)
      fail(kComponent, path_, ": token id ", id, " is out of range [0, ", size_, ")");
  }
  int byte_value(int32_t id) const {
    const std::string p = sp_.IdToPiece(id);  // "<0xNN>"
    return p.size() == 6 ? static_cast<int>(std::strtol(p.substr(3, 2).c_str(), nullptr, 16)) : 0;
  }

  sentencepiece::SentencePieceProcessor sp_;
  SpmSpec spec_;
  int32_t size_ = 0;
};
}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const std::string& path) {
  return std::make_unique<SpmTokenizer>(path);
}

}  // namespace deltamoe::io
