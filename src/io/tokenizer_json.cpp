// tokenizer.json -> HfTokenizer. Trusts nothing: every field is type-checked, every id
// range-checked, and anything unsupported is named in a one-line Error.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"
#include "io/file_util.h"
#include "io/tokenizer_hf.h"

namespace deltamoe::io::hf {

using json = nlohmann::json;

namespace {
constexpr const char* kComponent = "tokenizer";
// Real files nest five levels at most (decoder Sequence -> Replace -> pattern); far deeper
// input is not a tokenizer, and refusing it bounds the parser's work on hostile files.
constexpr int kMaxDepth = 32;
// Ids above this are refused: the id -> piece table is dense.
constexpr int64_t kMaxId = (int64_t{1} << 24) - 1;

class Parser {
 public:
  explicit Parser(const std::string& path) : path_(path) {}

  [[noreturn]] void bad(const std::string& what) const { fail(kComponent, path_, ": ", what); }

  const json& field(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object()) bad(where + " is not an object");
    const auto it = obj.find(key);
    if (it == obj.end()) bad(where + " has no '" + key + "'");
    return *it;
  }
  std::string str(const json& j, const std::string& where) const {
    if (!j.is_string()) bad(where + " is not a string");
    return j.get<std::string>();
  }
  std::string str_field(const json& obj, const char* key, const std::string& where) const {
    return str(field(obj, key, where), where + "." + key);
  }
  bool flag(const json& obj, const char* key, bool fallback, const std::string& where) const {
    const auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) bad(where + "." + key + " is not a boolean");
    return it->get<bool>();
  }
  int64_t integer(const json& j, int64_t lo, int64_t hi, const std::string& where) const {
    if (!j.is_number_integer() && !j.is_number_unsigned()) bad(where + " is not an integer");
    if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(hi))
      bad(where + " is out of range");
    const int64_t v = j.get<int64_t>();
    if (v < lo || v > hi) bad(where + " = " + std::to_string(v) + " is out of range");
    return v;
  }
  std::string type_of(const json& obj, const std::string& where) const {
    return str_field(obj, "type", where);
  }
  char32_t one_char(const json& j, const std::string& where) const {
    const std::string s = str(j, where);
    size_t i = 0;
    if (s.empty() || !text::is_valid_utf8(s)) bad(where + " is not one character");
    const char32_t c = text::next_code_point(s, i);
    if (i != s.size()) bad(where + " is not one character");
    return c;
  }
  // A {"String": s} or {"Regex": r} pattern: literal text in `literal`, or a compiled regex.
  std::shared_ptr<text::Regex> pattern(const json& j, std::string& literal,
                                       const std::string& where) const {
    if (!j.is_object() || j.size() != 1)
      bad(where + " is not {\"String\": ...} or {\"Regex\": ...}");
    try {
      if (j.contains("String")) {
        literal = str(j["String"], where + ".String");
        return nullptr;
      }
      if (j.contains("Regex"))
        return std::make_shared<text::Regex>(str(j["Regex"], where + ".Regex"), false);
    } catch (const Error& e) {
      const std::string msg = e.what();
      bad(where + ": " + msg.substr(msg.find("] ") + 2));
    }
    bad(where + " is not {\"String\": ...} or {\"Regex\": ...}");
  }

  const std::string& path_;
};

template <typename F>
void for_each_step(const Parser& p, const json& j, const char* seq_key, const std::string& where,
                   const F& f, int depth = 0) {
  if (j.is_null()) return;
  if (depth > 8) p.bad(where + " nests Sequences too deeply");
  const std::string type = p.type_of(j, where);
  if (type == "Sequence") {
    const json& list = p.field(j, seq_key, where);
    if (!list.is_array()) p.bad(where + "." + seq_key + " is not an array");
    for (size_t i = 0; i < list.size(); ++i)
      for_each_step(p, list[i], seq_key, where + "." + seq_key + "[" + std::to_string(i) + "]", f,
                    depth + 1);
    return;
  }
  f(j, type, where);
}

void parse_normalizers(const Parser& p, const json& j, HfTokenizer& t) {
  t.has_normalizer_ = !j.is_null();
  for_each_step(
      p, j, "normalizers", "normalizer",
      [&](const json& n, const std::string& type, const std::string& where) {
        Normalizer out{NormKind::nfc, {}, {}, nullptr, false, false};
        if (type == "NFC") {
          out.kind = NormKind::nfc;
        } else if (type == "NFD") {
          out.kind = NormKind::nfd;
        } else if (type == "NFKC") {
          out.kind = NormKind::nfkc;
        } else if (type == "NFKD") {
          out.kind = NormKind::nfkd;
        } else if (type == "Prepend") {
          out.kind = NormKind::prepend;
          out.a = p.str_field(n, "prepend", where);
        } else if (type == "Replace") {
          out.kind = NormKind::replace;
          out.re = p.pattern(p.field(n, "pattern", where), out.a, where + ".pattern");
          out.b = p.str_field(n, "content", where);
        } else if (type == "Strip") {
          out.kind = NormKind::strip;
          out.left = p.flag(n, "strip_left", false, where);
          out.right = p.flag(n, "strip_right", false, where);
        } else {
          p.bad(where + " type '" + type +
                "' is not supported (supported: NFC, NFD, NFKC, NFKD, Prepend, Replace, Strip, "
                "Sequence)");
        }
        t.normalizers_.push_back(std::move(out));
      });
}

int prepend_scheme(const Parser& p, const json& j, const std::string& where) {
  int scheme = 0;  // "always" is the reference's default
  if (auto it = j.find("prepend_scheme"); it != j.end() && !it->is_null()) {
    const std::string s = p.str(*it, where + ".prepend_scheme");
    if (s == "always")
      scheme = 0;
    else if (s == "first")
      scheme = 1;
    else if (s == "never")
      scheme = 2;
    else
      p.bad(where + ".prepend_scheme '" + s + "' is not first, always or never");
  }
  if (!p.flag(j, "add_prefix_space", true, where)) scheme = 2;  // legacy form
  return scheme;
}

void parse_pre_tokenizers(const Parser& p, const json& j, HfTokenizer& t) {
  std::shared_ptr<text::Regex> gpt2;
  for_each_step(
      p, j, "pretokenizers", "pre_tokenizer",
      [&](const json& n, const std::string& type, const std::string& where) {
        PreTokenizer out{};
        if (type == "Metaspace") {
          out.kind = PreKind::metaspace;
          text::append_utf8(out.replacement,
                            p.one_char(p.field(n, "replacement", where), where + ".replacement"));
          out.prepend_scheme = prepend_scheme(p, n, where);
          out.split = p.flag(n, "split", true, where);
        } else if (type == "ByteLevel") {
          out.kind = PreKind::byte_level;
          out.add_prefix_space = p.flag(n, "add_prefix_space", true, where);
          out.use_regex = p.flag(n, "use_regex", true, where);
          if (!gpt2) gpt2 = std::make_shared<text::Regex>(text::kGpt2Pattern, false);
          out.re = gpt2;
        } else if (type == "Split") {
          out.kind = PreKind::split;
          std::string literal;
          out.re = p.pattern(p.field(n, "pattern", where), literal, where + ".pattern");
          if (!out.re) out.re = std::make_shared<text::Regex>(literal, true);
          const std::string b = p.str_field(n, "behavior", where);
          if (b == "Removed")
            out.behavior = SplitBehavior::removed;
          else if (b == "Isolated")
            out.behavior = SplitBehavior::isolated;
          else if (b == "MergedWithPrevious")
            out.behavior = SplitBehavior::merged_with_previous;
          else if (b == "MergedWithNext")
            out.behavior = SplitBehavior::merged_with_next;
          else if (b == "Contiguous")
            out.behavior = SplitBehavior::contiguous;
          else
            p.bad(where + ".behavior '" + b + "' is not a split behaviour");
          out.invert = p.flag(n, "invert", false, where);
        } else if (type == "Digits") {
          out.kind = PreKind::digits;
          out.individual_digits = p.flag(n, "individual_digits", false, where);
        } else {
          p.bad(where + " type '" + type +
                "' is not supported (supported: Metaspace, ByteLevel, Split, Digits, Sequence)");
        }
        t.pre_tokenizers_.push_back(std::move(out));
      });
}

void parse_decoders(const Parser& p, const json& j, HfTokenizer& t) {
  t.has_decoder_ = !j.is_null();
  for_each_step(
      p, j, "decoders", "decoder",
      [&](const json& n, const std::string& type, const std::string& where) {
        Decoder out{};
        if (type == "Replace") {
          out.kind = DecKind::replace;
          out.re = p.pattern(p.field(n, "pattern", where), out.a, where + ".pattern");
          out.b = p.str_field(n, "content", where);
        } else if (type == "ByteFallback") {
          out.kind = DecKind::byte_fallback;
        } else if (type == "Fuse") {
          out.kind = DecKind::fuse;
        } else if (type == "Strip") {
          out.kind = DecKind::strip;
          out.strip_char = p.one_char(p.field(n, "content", where), where + ".content");
          out.start = static_cast<size_t>(
              p.integer(p.field(n, "start", where), 0, 1 << 20, where + ".start"));
          out.stop = static_cast<size_t>(
              p.integer(p.field(n, "stop", where), 0, 1 << 20, where + ".stop"));
        } else if (type == "Metaspace") {
          out.kind = DecKind::metaspace;
          text::append_utf8(out.a,
                            p.one_char(p.field(n, "replacement", where), where + ".replacement"));
          out.strip_first = prepend_scheme(p, n, where) != 2;
        } else if (type == "ByteLevel") {
          out.kind = DecKind::byte_level;
        } else {
          p.bad(where + " type '" + type +
                "' is not supported (supported: Replace, ByteFallback, Fuse, Strip, Metaspace, "
                "ByteLevel, Sequence)");
        }
        t.decoders_.push_back(std::move(out));
      });
}

void parse_post_processor(const Parser& p, const json& j, HfTokenizer& t) {
  for_each_step(
      p, j, "processors", "post_processor",
      [&](const json& n, const std::string& type, const std::string& where) {
        if (type == "ByteLevel") return;  // offsets only; ids unchanged
        if (type != "TemplateProcessing")
          p.bad(where + " type '" + type +
                "' is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
        const json& single = p.field(n, "single", where);
        const json& specials = p.field(n, "special_tokens", where);
        if (!single.is_array()) p.bad(where + ".single is not an array");
        std::vector<int32_t> tmpl;
        for (size_t i = 0; i < single.size(); ++i) {
          const std::string w = where + ".single[" + std::to_string(i) + "]";
          const json& item = single[i];
          if (item.is_object() && item.contains("Sequence")) {
            const std::string id = p.str_field(item["Sequence"], "id", w + ".Sequence");
            if (id != "A") p.bad(w + " uses sequence '" + id + "' in a single-sequence template");
            tmpl.push_back(HfTokenizer::kSequence);
          } else if (item.is_object() && item.contains("SpecialToken")) {
            const std::string name = p.str_field(item["SpecialToken"], "id", w + ".SpecialToken");
            if (!specials.is_object() || !specials.contains(name))
              p.bad(w + " names special token '" + name + "' absent from special_tokens");
            const json& ids = p.field(specials[name], "ids", where + ".special_tokens." + name);
            if (!ids.is_array()) p.bad(where + ".special_tokens." + name + ".ids is not an array");
            for (const json& id : ids)
              tmpl.push_back(static_cast<int32_t>(
                  p.integer(id, 0, kMaxId, where + ".special_tokens." + name)));
          } else {
            p.bad(w + " is neither a Sequence nor a SpecialToken");
          }
        }
        t.templates_.push_back(std::move(tmpl));
      });
}

void parse_bpe(const Parser& p, const json& m, HfTokenizer& t) {
  if (!m.is_object()) p.bad("model is not an object");
  const std::string type = m.contains("type") ? p.type_of(m, "model") : std::string("?");
  if (type != "BPE") p.bad("model type '" + type + "' is not supported (supported: BPE)");
  Bpe& bpe = t.bpe_;
  if (auto it = m.find("dropout");
      it != m.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0.0))
    p.bad("model.dropout is set: BPE dropout (random segmentation) is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (auto it = m.find(k);
        it != m.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
      p.bad(std::string("model.") + k + " is not supported");
  const json& vocab = p.field(m, "vocab", "model");
  if (!vocab.is_object()) p.bad("model.vocab is not an object");
  int64_t max_id = -1;
  for (const auto& [piece, id] : vocab.items()) {
    const int64_t v = p.integer(id, 0, kMaxId, "model.vocab['" + detail::one_line(piece) + "']");
    max_id = std::max(max_id, v);
  }
  if (max_id >= 2 * static_cast<int64_t>(vocab.size()) + 1024)
    p.bad("model.vocab ids are sparse (largest " + std::to_string(max_id) + " for " +
          std::to_string(vocab.size()) + " entries)");
  bpe.pieces.assign(static_cast<size_t>(max_id + 1), std::string());
  bpe.has_piece.assign(static_cast<size_t>(max_id + 1), false);
  bpe.vocab.reserve(vocab.size());
  for (const auto& [piece, id] : vocab.items()) {
    const auto v = id.get<int32_t>();
    if (bpe.has_piece[static_cast<size_t>(v)])
      p.bad("model.vocab gives id " + std::to_string(v) + " to two tokens");
    if (!text::is_valid_utf8(piece)) p.bad("model.vocab has a token that is not valid UTF-8");
    bpe.has_piece[static_cast<size_t>(v)] = true;
    bpe.pieces[static_cast<size_t>(v)] = piece;
    bpe.vocab.emplace(piece, v);
  }
  const auto id_of = [&](const std::string& s, const std::string& where) {
    const auto it = bpe.vocab.find(s);
    if (it == bpe.vocab.end()) p.bad(where + ": '" + detail::one_line(s) + "' is not in the vocab");
    return it->second;
  };
  const json& merges = p.field(m, "merges", "model");
  if (!merges.is_array()) p.bad("model.merges is not an array");
  bpe.merges.reserve(merges.size());
  int32_t rank = 0;
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string where = "model.merges[" + std::to_string(i) + "]";
    std::string a, b;
    if (merges[i].is_string()) {
      const std::string line = merges[i].get<std::string>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        p.bad(where + " is not two tokens separated by one space");
      a = line.substr(0, sp);
      b = line.substr(sp + 1);
    } else if (merges[i].is_array() && merges[i].size() == 2) {
      a = p.str(merges[i][0], where + "[0]");
      b = p.str(merges[i][1], where + "[1]");
    } else {
      p.bad(where + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    const int32_t ia = id_of(a, where), ib = id_of(b, where), iab = id_of(a + b, where);
    // A pair listed twice keeps its last rank, as in the reference's map.
    bpe.merges[(static_cast<uint64_t>(static_cast<uint32_t>(ia)) << 32) |
               static_cast<uint32_t>(ib)] = {rank++, iab};
  }
  if (auto it = m.find("unk_token"); it != m.end() && !it->is_null()) {
    const auto u = bpe.vocab.find(p.str(*it, "model.unk_token"));
    bpe.unk_id = u == bpe.vocab.end() ? -1 : u->second;
  }
  bpe.fuse_unk = p.flag(m, "fuse_unk", false, "model");
  bpe.byte_fallback = p.flag(m, "byte_fallback", false, "model");
  bpe.ignore_merges = p.flag(m, "ignore_merges", false, "model");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    const auto it = bpe.vocab.find(std::string_view(name));
    bpe.byte_ids[static_cast<size_t>(b)] = it == bpe.vocab.end() ? -1 : it->second;
  }
}

// Ids follow the reference: a token already in the model vocab keeps that id, others are
// numbered from the vocab's size in file order (the "id" field is only a hint there).
void parse_added_tokens(const Parser& p, const json& j, HfTokenizer& t) {
  if (j.is_null()) return;
  if (!j.is_array()) p.bad("added_tokens is not an array");
  auto next_id = static_cast<int32_t>(t.bpe_.vocab.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    AddedToken a;
    a.content = p.str_field(j[i], "content", where);
    if (a.content.empty()) continue;
    if (!text::is_valid_utf8(a.content)) p.bad(where + ".content is not valid UTF-8");
    a.single_word = p.flag(j[i], "single_word", false, where);
    a.lstrip = p.flag(j[i], "lstrip", false, where);
    a.rstrip = p.flag(j[i], "rstrip", false, where);
    a.special = p.flag(j[i], "special", false, where);
    a.normalized = p.flag(j[i], "normalized", !a.special, where);
    if (auto it = t.added_by_content_.find(a.content); it != t.added_by_content_.end()) {
      a.id = t.added_[static_cast<size_t>(it->second)].id;
    } else if (auto v = t.bpe_.vocab.find(a.content); v != t.bpe_.vocab.end()) {
      a.id = v->second;
    } else {
      if (next_id > kMaxId) p.bad(where + ": too many tokens");
      a.id = next_id++;
    }
    a.match = a.normalized && t.has_normalizer_ ? t.normalize(a.content) : a.content;
    if (auto it = t.added_by_id_.find(a.id); it != t.added_by_id_.end()) {
      t.added_[it->second] = a;  // the later entry for an id wins
    } else {
      t.added_by_id_[a.id] = t.added_.size();
      t.added_.push_back(a);
    }
    t.added_by_content_[a.content] = static_cast<int32_t>(t.added_by_id_[a.id]);
  }
  for (size_t k = 0; k < t.added_.size(); ++k) {
    const AddedToken& a = t.added_[k];
    if (a.match.empty()) continue;
    t.added_by_first_byte_[a.normalized][static_cast<unsigned char>(a.match[0])].push_back(
        static_cast<uint32_t>(k));
  }
  for (auto& side : t.added_by_first_byte_)
    for (auto& list : side)
      std::stable_sort(list.begin(), list.end(), [&](uint32_t x, uint32_t y) {
        return t.added_[x].match.size() > t.added_[y].match.size();
      });
}

int32_t find_first(const HfTokenizer& t, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (const int32_t id = t.token_id(n); id >= 0) return id;
  return -1;
}
}  // namespace

std::unique_ptr<HfTokenizer> parse_tokenizer_json(std::string_view json_text,
                                                  const std::string& path) {
  const Parser p(path);
  const json root = detail::parse_json_object_strict(json_text, kMaxDepth, "",
                                                     [&](const std::string& msg) { p.bad(msg); });
  if (auto it = root.find("version"); it != root.end() && (!it->is_string() || *it != "1.0"))
    p.bad("version is not \"1.0\"");
  auto t = std::make_unique<HfTokenizer>();
  t->set_path(path);
  try {
    const json null_json;
    const auto get = [&](const char* k) -> const json& {
      const auto it = root.find(k);
      return it == root.end() ? null_json : *it;
    };
    parse_bpe(p, p.field(root, "model", "file"), *t);
    parse_normalizers(p, get("normalizer"), *t);
    parse_pre_tokenizers(p, get("pre_tokenizer"), *t);
    parse_decoders(p, get("decoder"), *t);
    parse_post_processor(p, get("post_processor"), *t);
    parse_added_tokens(p, get("added_tokens"), *t);
  } catch (const json::exception& e) {  // a type mismatch the checks above did not foresee
    p.bad("unexpected JSON content: " + detail::one_line(e.what()));
  }
  int64_t size = static_cast<int64_t>(t->bpe_.pieces.size());
  for (const auto& a : t->added_) size = std::max<int64_t>(size, a.id + 1);
  t->vocab_size_ = static_cast<int32_t>(size);
  for (const auto& tmpl : t->templates_)
    for (int32_t id : tmpl)
      if (id != HfTokenizer::kSequence && id >= t->vocab_size_)
        p.bad("post_processor uses token id " + std::to_string(id) + " beyond the vocab");
  // bos / eos when no tokenizer_config.json says: the template's leading special token, else
  // the usual names.
  int32_t bos = -1;
  if (!t->templates_.empty() && !t->templates_[0].empty() &&
      t->templates_[0][0] != HfTokenizer::kSequence)
    bos = t->templates_[0][0];
  if (bos < 0) bos = find_first(*t, {"<s>", "<|begin_of_text|>", "<bos>"});
  const int32_t eos =
      find_first(*t, {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"});
  t->set_special_ids(bos, eos);
  return t;
}

}  // namespace deltamoe::io::hf
