// ChatTemplate: loading a model directory's chat template and rendering conversations.
#include "deltamoe/io/chat_template.h"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "io/chat_template_internal.h"
#include "io/file_util.h"

namespace deltamoe::io {

namespace fs = std::filesystem;
using chat_detail::Json;
using chat_detail::kComponent;

namespace {

std::string read_small_file(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail(kComponent, path.string(), ": cannot read (", ec.message(), ")");
  if (size > (uintmax_t{64} << 20))
    fail(kComponent, path.string(), ": ", size, " bytes is too large");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(kComponent, path.string(), ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// bos_token / eos_token: a string, {"content": ...}, or null / absent ("").
std::string special_token(const nlohmann::json& config, const char* key, const std::string& file) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  const nlohmann::json* v = &*it;
  if (v->is_object() && v->contains("content")) v = &(*v)["content"];
  if (!v->is_string())
    fail(kComponent, file, ": ", key, " is neither a string nor {\"content\": ...}");
  return v->get<std::string>();
}

// The message text of an Error without its "[chat] " prefix.
std::string without_prefix(const Error& e) {
  const std::string msg = e.what();
  const std::string prefix = std::string("[") + kComponent + "] ";
  return msg.rfind(prefix, 0) == 0 ? msg.substr(prefix.size()) : msg;
}

// A message as transformers passes it: keys whose value is null dropped, reasoning copied
// to `thinking` and `reasoning_content` (its _alias_reasoning_fields).
Json normalize_message(const Json& m, size_t index) {
  if (!m.is_object()) fail(kComponent, "message ", index, " is not a JSON object");
  Json clean = Json::object();
  for (const auto& [k, v] : m.items())
    if (!v.is_null()) clean[k] = v;
  const Json* reasoning = nullptr;
  for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
    const auto it = clean.find(key);
    if (it != clean.end()) {
      reasoning = &*it;
      break;
    }
  }
  if (!reasoning) return clean;
  const Json r = *reasoning;
  Json out = Json::object();
  out["thinking"] = r;
  for (const auto& [k, v] : clean.items()) out[k] = v;
  out["reasoning_content"] = r;
  return out;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, std::string bos_token, std::string eos_token)
    : source_(std::move(source)),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)) {
  program_ = chat_detail::parse_template(source_);
}

ChatTemplate ChatTemplate::load(const std::string& model_dir) {
  return *load_dir(model_dir, /*required=*/true);
}

std::optional<ChatTemplate> ChatTemplate::load_if_present(const std::string& model_dir) {
  return load_dir(model_dir, /*required=*/false);
}

std::optional<ChatTemplate> ChatTemplate::load_dir(const std::string& model_dir, bool required) {
  std::error_code ec;
  if (!fs::is_directory(model_dir, ec)) fail(kComponent, model_dir, ": not a directory");
  const fs::path dir(model_dir);
  const fs::path config_path = dir / "tokenizer_config.json";
  const fs::path jinja_path = dir / "chat_template.jinja";
  nlohmann::json config = nlohmann::json::object();
  const bool has_config = fs::is_regular_file(config_path, ec);
  if (has_config) {
    try {
      config = nlohmann::json::parse(read_small_file(config_path));
    } catch (const nlohmann::json::exception& e) {
      fail(kComponent, config_path.string(), ": not valid JSON: ", detail::one_line(e.what()));
    }
    if (!config.is_object())
      fail(kComponent, config_path.string(), ": top level is not a JSON object");
  }
  const std::string bos = special_token(config, "bos_token", config_path.string());
  const std::string eos = special_token(config, "eos_token", config_path.string());
  std::string source, from;
  if (fs::is_regular_file(jinja_path, ec)) {
    source = read_small_file(jinja_path);
    from = jinja_path.string();
  } else if (has_config && config.contains("chat_template") && !config["chat_template"].is_null()) {
    const nlohmann::json& t = config["chat_template"];
    from = config_path.string();
    if (t.is_string()) {
      source = t.get<std::string>();
    } else if (t.is_array()) {
      bool found = false;
      for (const auto& item : t)
        if (item.is_object() && item.value("name", nlohmann::json()) == "default" &&
            item.contains("template") && item["template"].is_string()) {
          source = item["template"].get<std::string>();
          found = true;
          break;
        }
      if (!found) fail(kComponent, from, ": chat_template has no template named 'default'");
    } else {
      fail(kComponent, from, ": chat_template is neither a string nor a list of {name, template}");
    }
  } else {
    if (!required) return std::nullopt;
    fail(kComponent, model_dir, ": no chat template (no chat_template.jinja, and ",
         has_config ? "tokenizer_config.json has no chat_template)" : "no tokenizer_config.json)");
  }
  try {
    return ChatTemplate(std::move(source), bos, eos);
  } catch (const Error& e) {
    fail(kComponent, from, ": ", without_prefix(e));
  }
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  Json list = Json::array();
  for (const auto& m : messages) list.push_back(Json{{"role", m.role}, {"content", m.content}});
  return render_json(list, add_generation_prompt, extra);
}

std::string ChatTemplate::render_json(const nlohmann::ordered_json& messages,
                                      bool add_generation_prompt,
                                      const nlohmann::ordered_json& extra) const {
  if (!program_) fail(kComponent, "no chat template");
  if (!messages.is_array()) fail(kComponent, "messages must be a JSON list");
  if (!extra.is_null() && !extra.is_object())
    fail(kComponent, "extra variables must be a JSON object");
  Json list = Json::array();
  for (size_t i = 0; i < messages.size(); ++i) list.push_back(normalize_message(messages[i], i));
  Json globals = Json::object();
  globals["messages"] = std::move(list);
  globals["tools"] = nullptr;
  globals["documents"] = nullptr;
  globals["add_generation_prompt"] = add_generation_prompt;
  if (!bos_token_.empty()) globals["bos_token"] = bos_token_;
  if (!eos_token_.empty()) globals["eos_token"] = eos_token_;
  if (extra.is_object())
    for (const auto& [k, v] : extra.items()) globals[k] = v;
  try {
    chat_detail::Renderer r(*program_, std::move(globals));
    return r.run();
  } catch (const nlohmann::json::exception& e) {
    fail(kComponent, "template value error: ", detail::one_line(e.what()));
  }
}

}  // namespace deltamoe::io
