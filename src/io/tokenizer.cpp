// Tokenizer loading (model directory, file, memory) and the streaming decoder.
#include "deltamoe/io/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "deltamoe/core/error.h"
#include "io/file_util.h"
#include "io/tokenizer_hf.h"
#include "io/tokenizer_internal.h"
#include "io/tokenizer_text.h"

namespace deltamoe::io {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
constexpr const char* kComponent = "tokenizer";
constexpr uintmax_t kMaxFileBytes = uintmax_t{1} << 30;

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail(kComponent, path, ": cannot read (", ec.message(), ")");
  if (size > kMaxFileBytes)
    fail(kComponent, path, ": ", size, " bytes is too large for a tokenizer");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(kComponent, path, ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// bos_token / eos_token of tokenizer_config.json: a string, {"content": ...} or null.
void apply_config(Tokenizer& t, const fs::path& config) {
  std::error_code ec;
  if (!fs::exists(config, ec)) return;
  json j;
  try {
    j = json::parse(read_text_file(config.string()));
  } catch (const json::exception& e) {
    fail(kComponent, config.string(), ": not valid JSON: ", detail::one_line(e.what()));
  }
  if (!j.is_object()) fail(kComponent, config.string(), ": top level is not a JSON object");
  const auto id_of = [&](const char* key, int32_t current) -> int32_t {
    const auto it = j.find(key);
    if (it == j.end()) return current;
    if (it->is_null()) return -1;
    const json* v = &*it;
    if (v->is_object() && v->contains("content")) v = &(*v)["content"];
    if (!v->is_string())
      fail(kComponent, config.string(), ": ", key, " is neither a string nor {\"content\": ...}");
    const int32_t id = t.token_id(v->get<std::string>());
    if (id < 0)
      fail(kComponent, config.string(), ": ", key, " '", detail::one_line(v->get<std::string>()),
           "' is not in the vocabulary");
    return id;
  };
  const int32_t bos = id_of("bos_token", t.bos_id());
  const int32_t eos = id_of("eos_token", t.eos_id());
  TokenizerAccess::set_special_ids(t, bos, eos);
}

bool ends_with_replacement(const std::string& s) {
  return s.size() >= text::kReplacement.size() &&
         s.compare(s.size() - text::kReplacement.size(), text::kReplacement.size(),
                   text::kReplacement) == 0;
}
}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view json_text,
                                                const std::string& name) {
  return hf::parse_tokenizer_json(json_text, name);
}

std::unique_ptr<Tokenizer> Tokenizer::load_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail(kComponent, path, ": no such file");
  std::unique_ptr<Tokenizer> t;
  if (fs::path(path).extension() == ".json")
    t = hf::parse_tokenizer_json(read_text_file(path), path);
  else
    t = make_spm_tokenizer(path);
  apply_config(*t, fs::path(path).parent_path() / "tokenizer_config.json");
  return t;
}

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& model_dir) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) fail(kComponent, model_dir, ": not a directory");
  const fs::path dir(model_dir);
  for (const char* name : {"tokenizer.json", "tokenizer.model"})
    if (fs::exists(dir / name, ec)) return load_file((dir / name).string());
  fail(kComponent, model_dir, ": has neither tokenizer.json nor tokenizer.model");
}

// ---------------------------------------------------------------------------------------------
// StreamDecoder
//
// The window holds [context ids (already emitted) | pending ids]. Each step decodes the whole
// window and emits what follows the context's text. Decoders only treat the start of the
// output specially (a stripped leading space), so the context keeps that effect away from the
// new text; byte runs are decided as a whole, so nothing is emitted while the last id is a
// byte token; a trailing U+FFFD is an incomplete character still to come.

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tok_(tokenizer), skip_special_(skip_special_tokens) {}

void StreamDecoder::reset() {
  window_.clear();
  emitted_ = 0;
  emitted_text_.clear();
}

std::string StreamDecoder::next(int32_t id) {
  (void)tok_.piece(id);  // throws for an invalid id before the state changes
  window_.push_back(id);
  if (tok_.is_byte_token(id)) return {};
  const std::string text = tok_.decode(window_, skip_special_);
  if (ends_with_replacement(text)) return {};
  // Supported decoders always extend the context's text; should one not, emit from the
  // context's length rather than lose or repeat text.
  std::string out = text.size() > emitted_text_.size() ? text.substr(emitted_text_.size()) : "";
  // The new ids become the context, unless they decode to nothing on their own: then the
  // older context stays, since SentencePiece strips a leading space only at the very start.
  const std::span<const int32_t> fresh(window_.data() + emitted_, window_.size() - emitted_);
  std::string fresh_text = tok_.decode(fresh, skip_special_);
  if (!fresh_text.empty()) {
    window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(emitted_));
    emitted_text_ = std::move(fresh_text);
  } else {
    emitted_text_ = text;
  }
  emitted_ = window_.size();
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  if (emitted_ < window_.size()) {
    const std::string text = tok_.decode(window_, skip_special_);
    if (text.size() > emitted_text_.size()) out = text.substr(emitted_text_.size());
  }
  reset();
  return out;
}

}  // namespace deltamoe::io
