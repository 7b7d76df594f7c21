// Encoding and decoding for tokenizer.json, step for step as HF tokenizers does it (see
// tokenizer_hf.h for the pipeline). Comments mark where the reference's behaviour is
// surprising, since those are the places a "cleaner" rewrite would break equality.
#include <algorithm>

#include "deltamoe/core/error.h"
#include "io/tokenizer_hf.h"

namespace deltamoe::io::hf {

namespace {
constexpr const char* kComponent = "tokenizer";

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return text::is_word_char(text::next_code_point(s, i));
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return text::is_word_char(text::next_code_point(s, i));
}

// Byte offset where the run of white space ending `s` begins.
size_t trailing_space_start(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t i = end - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    size_t j = i;
    if (!text::is_white_space(text::next_code_point(s, j))) break;
    end = i;
  }
  return end;
}

// Length in bytes of the run of white space starting `s`.
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (!text::is_white_space(text::next_code_point(s, j))) break;
    i = j;
  }
  return i;
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  size_t pos = 0;
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, pos)) {
    out.append(s, pos, at - pos);
    out.append(to);
    pos = at + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos);
  s = std::move(out);
}

std::string regex_replace(const text::Regex& re, const std::string& s, std::string_view to) {
  std::string out;
  size_t pos = 0;
  for (const auto& [b, e] : re.find_all(s)) {
    out.append(s, pos, b - pos);
    out.append(to);
    pos = e;
  }
  out.append(s, pos);
  return out;
}

struct Span {
  size_t begin, end;
  bool match;
};

// Applies a split behaviour to the alternating list of matched / unmatched spans.
std::vector<Span> apply_behavior(std::vector<Span> spans, SplitBehavior behavior) {
  std::vector<Span> out;
  bool prev_match = false;
  switch (behavior) {
    case SplitBehavior::removed:
      for (const Span& s : spans)
        if (!s.match) out.push_back(s);
      return out;
    case SplitBehavior::isolated:
      return spans;
    case SplitBehavior::merged_with_previous:
      for (const Span& s : spans) {
        if (s.match && !prev_match && !out.empty())
          out.back().end = s.end;
        else
          out.push_back(s);
        prev_match = s.match;
      }
      return out;
    case SplitBehavior::merged_with_next:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !prev_match && !out.empty())
          out.back().begin = it->begin;
        else
          out.push_back(*it);
        prev_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      return out;
    case SplitBehavior::contiguous:
      for (const Span& s : spans) {
        if (s.match == prev_match && !out.empty())
          out.back().end = s.end;
        else
          out.push_back(s);
        prev_match = s.match;
      }
      return out;
  }
  return out;
}

// Matched spans -> alternating list covering `size` bytes (unmatched gaps included).
std::vector<Span> with_gaps(const std::vector<std::pair<size_t, size_t>>& matches, size_t size,
                            bool invert) {
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != size) spans.push_back({prev, size, invert});
  return spans;
}

bool byte_token_value(std::string_view t, unsigned char& value) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return false;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    const int d = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
    if (d < 0) return false;
    v = v * 16 + d;
  }
  value = static_cast<unsigned char>(v);
  return true;
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Encoding

std::vector<HfTokenizer::Segment> HfTokenizer::split_added(const std::string& s, bool at_origin,
                                                           bool normalized) const {
  std::vector<Segment> out;
  size_t start_offset = 0;
  // Leftmost-longest matching, as the reference's Aho-Corasick automaton does: the first
  // position where any token matches wins, and there the longest token.
  for (size_t pos = 0; pos < s.size();) {
    const AddedToken* best = nullptr;
    for (uint32_t k : added_by_first_byte_[normalized][static_cast<unsigned char>(s[pos])]) {
      const AddedToken& t = added_[k];
      if (s.compare(pos, t.match.size(), t.match) == 0) {
        best = &t;
        break;
      }
    }
    if (best == nullptr) {
      pos += text::utf8_length(static_cast<unsigned char>(s[pos]));
      continue;
    }
    size_t start = pos, stop = pos + best->match.size();
    pos = stop;
    if (best->single_word) {
      const bool space_before = start == 0 || !ends_with_word(std::string_view(s).substr(0, start));
      const bool space_after =
          stop == s.size() || !starts_with_word(std::string_view(s).substr(stop));
      if (!space_before || !space_after) continue;
    }
    if (best->lstrip)
      start = std::max(trailing_space_start(std::string_view(s).substr(0, start)), start_offset);
    if (best->rstrip) stop += leading_space_length(std::string_view(s).substr(stop));
    if (start_offset < start)
      out.push_back(
          {s.substr(start_offset, start - start_offset), -1, at_origin && start_offset == 0});
    out.push_back({std::string(), best->id, false});
    // The search goes on from the match's end, not from the stripped end (as the
    // reference's automaton iterates independently of lstrip / rstrip).
    start_offset = stop;
  }
  if (start_offset < s.size())
    out.push_back({s.substr(start_offset), -1, at_origin && start_offset == 0});
  return out;
}

std::string HfTokenizer::normalize(std::string s) const {
  for (const Normalizer& n : normalizers_) {
    switch (n.kind) {
      case NormKind::nfc:
        s = text::normalize_unicode(s, text::NormalForm::nfc);
        break;
      case NormKind::nfd:
        s = text::normalize_unicode(s, text::NormalForm::nfd);
        break;
      case NormKind::nfkc:
        s = text::normalize_unicode(s, text::NormalForm::nfkc);
        break;
      case NormKind::nfkd:
        s = text::normalize_unicode(s, text::NormalForm::nfkd);
        break;
      case NormKind::prepend:
        if (!s.empty()) s.insert(0, n.a);
        break;
      case NormKind::replace:
        if (n.re)
          s = regex_replace(*n.re, s, n.b);
        else
          replace_all(s, n.a, n.b);
        break;
      case NormKind::strip: {
        size_t b = 0, e = s.size();
        if (n.left) b = leading_space_length(s);
        if (n.right) e = std::max(b, trailing_space_start(s));
        s = s.substr(b, e - b);
        break;
      }
    }
  }
  return s;
}

std::vector<HfTokenizer::Segment> HfTokenizer::pre_tokenize(Segment seg) const {
  std::vector<Segment> pieces{std::move(seg)};
  for (const PreTokenizer& p : pre_tokenizers_) {
    std::vector<Segment> next;
    const auto emit = [&](const Segment& parent, const std::vector<Span>& spans) {
      for (const Span& sp : spans)
        if (sp.end > sp.begin)
          next.push_back({parent.text.substr(sp.begin, sp.end - sp.begin), -1,
                          parent.at_origin && sp.begin == 0});
    };
    for (Segment& piece : pieces) {
      switch (p.kind) {
        case PreKind::metaspace: {
          replace_all(piece.text, " ", p.replacement);
          const bool starts = piece.text.compare(0, p.replacement.size(), p.replacement) == 0;
          // "first" means: only the piece that starts the original input (offset 0), so a
          // text beginning with an added token gets no prefix after it.
          if (!starts && (p.prepend_scheme == 0 || (p.prepend_scheme == 1 && piece.at_origin)))
            piece.text.insert(0, p.replacement);
          if (!p.split) {
            next.push_back(std::move(piece));
            break;
          }
          std::vector<std::pair<size_t, size_t>> m;
          for (size_t at = piece.text.find(p.replacement); at != std::string::npos;
               at = piece.text.find(p.replacement, at + p.replacement.size()))
            m.emplace_back(at, at + p.replacement.size());
          emit(piece, apply_behavior(with_gaps(m, piece.text.size(), false),
                                     SplitBehavior::merged_with_next));
          break;
        }
        case PreKind::byte_level:
          if (p.add_prefix_space && piece.text.compare(0, 1, " ") != 0) piece.text.insert(0, " ");
          if (p.use_regex)
            emit(piece, with_gaps(p.re->find_all(piece.text), piece.text.size(), false));
          else
            next.push_back(std::move(piece));
          break;
        case PreKind::split:
          emit(piece,
               apply_behavior(with_gaps(p.re->find_all(piece.text), piece.text.size(), p.invert),
                              p.behavior));
          break;
        case PreKind::digits: {
          std::vector<std::pair<size_t, size_t>> m;
          for (size_t i = 0; i < piece.text.size();) {
            const size_t b = i;
            if (text::is_numeric(text::next_code_point(piece.text, i))) m.emplace_back(b, i);
          }
          emit(piece, apply_behavior(with_gaps(m, piece.text.size(), false),
                                     p.individual_digits ? SplitBehavior::isolated
                                                         : SplitBehavior::contiguous));
          break;
        }
      }
    }
    if (p.kind == PreKind::byte_level) {
      // The byte-level alphabet applies to every piece once the split is done.
      const auto& table = text::byte_to_unicode();
      for (Segment& s : next) {
        std::string mapped;
        mapped.reserve(s.text.size() * 2);
        for (unsigned char c : s.text) mapped += table[c];
        s.text = std::move(mapped);
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

std::vector<int32_t> HfTokenizer::encode(std::string_view input, bool add_special_tokens) const {
  const std::string text = text::to_valid_utf8(input);
  std::vector<int32_t> ids;
  for (Segment& raw : split_added(text, true, false)) {
    if (raw.added_id >= 0) {
      ids.push_back(raw.added_id);
      continue;
    }
    const bool origin = raw.at_origin;
    const std::string normalized = has_normalizer_ ? normalize(std::move(raw.text)) : raw.text;
    for (Segment& seg : split_added(normalized, origin, true)) {
      if (seg.added_id >= 0) {
        ids.push_back(seg.added_id);
        continue;
      }
      for (const Segment& piece : pre_tokenize(std::move(seg))) bpe_.tokenize(piece.text, ids);
    }
  }
  if (add_special_tokens) {
    for (const auto& tmpl : templates_) {
      std::vector<int32_t> out;
      for (int32_t t : tmpl) {
        if (t == kSequence)
          out.insert(out.end(), ids.begin(), ids.end());
        else
          out.push_back(t);
      }
      ids = std::move(out);
    }
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Decoding

std::string HfTokenizer::token_string(int32_t id) const {
  if (id < 0 || id >= vocab_size_)
    fail(kComponent, path_, ": token id ", id, " is out of range [0, ", vocab_size_, ")");
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
    // The reference decodes a normalized added token as its normalized form.
    const AddedToken& t = added_[it->second];
    return t.normalized ? t.match : t.content;
  }
  if (!bpe_.has_piece[static_cast<size_t>(id)])
    fail(kComponent, path_, ": token id ", id, " is not in the vocabulary");
  return bpe_.pieces[static_cast<size_t>(id)];
}

std::string HfTokenizer::piece(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
  return token_string(id);
}

int32_t HfTokenizer::token_id(std::string_view p) const {
  if (auto it = added_by_content_.find(p); it != added_by_content_.end())
    return added_[static_cast<size_t>(it->second)].id;
  if (auto it = bpe_.vocab.find(p); it != bpe_.vocab.end()) return it->second;
  return -1;
}

bool HfTokenizer::is_special(int32_t id) const {
  const auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_[it->second].special;
}

bool HfTokenizer::is_byte_token(int32_t id) const {
  const bool has_byte_fallback =
      std::any_of(decoders_.begin(), decoders_.end(),
                  [](const Decoder& d) { return d.kind == DecKind::byte_fallback; });
  if (!has_byte_fallback || id < 0 || id >= vocab_size_) return false;
  unsigned char v = 0;
  return byte_token_value(token_string(id), v);
}

std::string HfTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    std::string t = token_string(id);
    if (skip_special_tokens) {
      // The reference tests the token's string against the special set, not the id.
      const auto it = added_by_content_.find(t);
      if (it != added_by_content_.end() && added_[static_cast<size_t>(it->second)].special)
        continue;
    }
    tokens.push_back(std::move(t));
  }
  if (!has_decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const Decoder& d : decoders_) {
    switch (d.kind) {
      case DecKind::replace:
        for (auto& t : tokens) {
          if (d.re)
            t = regex_replace(*d.re, t, d.b);
          else
            replace_all(t, d.a, d.b);
        }
        break;
      case DecKind::byte_fallback: {
        // A run of byte tokens becomes its UTF-8 text, or one U+FFFD per byte when the run
        // is not valid UTF-8 as a whole.
        std::vector<std::string> out;
        std::string run;
        size_t run_len = 0;
        const auto flush = [&] {
          if (run_len == 0) return;
          if (text::is_valid_utf8(run)) {
            out.push_back(run);
          } else {
            for (size_t k = 0; k < run_len; ++k) out.emplace_back(text::kReplacement);
          }
          run.clear();
          run_len = 0;
        };
        for (auto& t : tokens) {
          unsigned char v = 0;
          if (byte_token_value(t, v)) {
            run.push_back(static_cast<char>(v));
            ++run_len;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case DecKind::fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecKind::strip:
        for (auto& t : tokens) {
          std::vector<size_t> starts;  // byte offset of each character
          std::vector<char32_t> cps;
          for (size_t i = 0; i < t.size();) {
            starts.push_back(i);
            cps.push_back(text::next_code_point(t, i));
          }
          starts.push_back(t.size());
          size_t b = 0, e = cps.size();
          while (b < std::min(d.start, cps.size()) && cps[b] == d.strip_char) ++b;
          for (size_t k = 0; k < d.stop && e > b && cps[e - 1] == d.strip_char; ++k) --e;
          t = t.substr(starts[b], starts[e] - starts[b]);
        }
        break;
      case DecKind::metaspace:
        for (size_t i = 0; i < tokens.size(); ++i)
          // In the first token every replacement character goes, not only a leading one.
          replace_all(tokens[i], d.a, i == 0 && d.strip_first ? "" : " ");
        break;
      case DecKind::byte_level: {
        std::string bytes;
        for (const auto& t : tokens) {
          std::string tb;
          bool all = true;
          for (size_t i = 0; i < t.size() && all;) {
            const int b = text::unicode_to_byte(text::next_code_point(t, i));
            if (b < 0) all = false;
            tb.push_back(static_cast<char>(b));
          }
          bytes += all ? tb : t;
        }
        tokens.assign(1, text::to_valid_utf8(bytes));
        break;
      }
    }
  }
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

}  // namespace deltamoe::io::hf
