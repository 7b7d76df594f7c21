// `deltamoe tokenize`: text -> ids and pieces (like llama-tokenize), ids -> text, a chat
// conversation -> the prompt the model's chat template renders and its ids, and the
// synthetic tokenizer.json that random checkpoints ship with.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/io/chat_template.h"
#include "deltamoe/io/tokenizer.h"

namespace {

using deltamoe::fail;
using deltamoe::io::Tokenizer;

struct Options {
  std::string model, text, file, decode, chat, out = "-";
  bool json = false, no_special = false, skip_special = false, no_gen_prompt = false;
  int synthetic_vocab = 0;
};

std::unique_ptr<Tokenizer> load(const std::string& model) {
  std::error_code ec;
  return std::filesystem::is_directory(model, ec) ? Tokenizer::load(model)
                                                  : Tokenizer::load_file(model);
}

// A piece shown on one line: control characters and quotes escaped, the rest as is.
std::string shown(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\'' || c == '\\')
      out += std::string("\\") + static_cast<char>(c);
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::string tok;
  std::istringstream in(s);
  const auto flush = [&] {
    if (tok.empty()) return;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != tok.size() || v < INT32_MIN || v > INT32_MAX)
      fail("tokenize", "--decode: '", tok, "' is not an integer id");
    ids.push_back(static_cast<int32_t>(v));
    tok.clear();
  };
  for (char c : s) {
    if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '[' || c == ']')
      flush();
    else
      tok.push_back(c);
  }
  flush();
  return ids;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("tokenize", path, ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The prompt of the conversation in --chat (a JSON list of {role, content}) rendered with
// the chat template of the model directory (of the tokenizer file's directory).
std::string render_chat(const Options& o) {
  nlohmann::ordered_json messages;
  try {
    messages = nlohmann::ordered_json::parse(read_file(o.chat));
  } catch (const nlohmann::json::exception&) {
    fail("tokenize", o.chat, ": not valid JSON");
  }
  if (!messages.is_array()) fail("tokenize", o.chat, ": expected a JSON list of {role, content}");
  std::error_code ec;
  const std::string dir = std::filesystem::is_directory(o.model, ec)
                              ? o.model
                              : std::filesystem::path(o.model).parent_path().string();
  return deltamoe::io::ChatTemplate::load(dir.empty() ? "." : dir)
      .render_json(messages, !o.no_gen_prompt);
}

int run(const Options& o) {
  const int modes = !o.text.empty() + !o.file.empty() + !o.decode.empty() + !o.chat.empty() +
                    (o.synthetic_vocab > 0);
  if (modes != 1)
    fail("tokenize", "give exactly one of --text, --file, --decode, --chat, --synthetic-vocab");
  if (o.synthetic_vocab > 0) {
    deltamoe::cli::write_file_atomic(
        o.out, deltamoe::io::make_synthetic_tokenizer_json(o.synthetic_vocab));
    return 0;
  }
  if (o.model.empty()) fail("tokenize", "--model is required");
  const auto tok = load(o.model);
  nlohmann::json j = {{"model", o.model},
                      {"kind", tok->kind()},
                      {"vocab_size", tok->vocab_size()},
                      {"bos_id", tok->bos_id()},
                      {"eos_id", tok->eos_id()}};
  if (!o.decode.empty()) {
    const std::string text = tok->decode(parse_ids(o.decode), o.skip_special);
    if (o.json) {
      j["text"] = text;
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else {
      std::cout << text << "\n";
    }
    return 0;
  }
  std::string text = o.text;
  if (!o.file.empty()) text = read_file(o.file);
  // A chat prompt carries its special tokens from the template (as transformers'
  // apply_chat_template(tokenize=True) encodes it, without adding more).
  if (!o.chat.empty()) text = render_chat(o);
  const std::vector<int32_t> ids = tok->encode(text, !o.no_special && o.chat.empty());
  if (!o.chat.empty()) {
    if (o.json)
      j["prompt"] = text;
    else
      std::cout << text << "\n";
  }
  if (o.json) {
    nlohmann::json pieces = nlohmann::json::array();
    for (int32_t id : ids) pieces.push_back(tok->piece(id));
    j["ids"] = ids;
    j["pieces"] = pieces;
    j["count"] = ids.size();
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    for (int32_t id : ids) std::printf("%6d -> '%s'\n", id, shown(tok->piece(id)).c_str());
    std::fprintf(stderr, "%zu tokens\n", ids.size());
  }
  return 0;
}

deltamoe::cli::CommandRegistrar reg(
    "tokenize", "Text to token ids and pieces (or ids to text) with a model's tokenizer",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<Options>();
      app.add_option("--model", o->model,
                     "Model directory (tokenizer.json, else tokenizer.model) or a tokenizer file");
      app.add_option("--text", o->text, "Text to tokenize");
      app.add_option("--file", o->file, "File whose contents to tokenize");
      app.add_option("--chat", o->chat,
                     "JSON file with a list of {role, content} messages: print the prompt the "
                     "model's chat template renders, then its ids");
      app.add_flag("--no-generation-prompt", o->no_gen_prompt,
                   "With --chat, render without the assistant prompt at the end (default: off)");
      app.add_option("--decode", o->decode,
                     "Ids to turn back into text (comma or space separated)");
      app.add_flag("--json", o->json, "Print one JSON object on stdout (default: off)");
      app.add_flag("--no-special", o->no_special,
                   "Do not add special tokens such as <s> (default: off, they are added)");
      app.add_flag("--skip-special", o->skip_special,
                   "With --decode, drop special tokens from the text (default: off)");
      app.add_option("--synthetic-vocab", o->synthetic_vocab,
                     "Write the synthetic tokenizer.json of this vocab size (>= 300) to --out");
      app.add_option("--out", o->out, "Output file for --synthetic-vocab (default: - = stdout)");
      deltamoe::cli::show_default(app, {"--synthetic-vocab"}, "none");
      return [o]() { return run(*o); };
    });

}  // namespace
