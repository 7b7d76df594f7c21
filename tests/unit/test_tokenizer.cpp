// Tokenizers against golden data from HF tokenizers and Python sentencepiece
// (python/make_golden_tokenizer.py): every fortune of Debian's fortunes package (2.5 MB) is
// encoded by each variant and checked against per-chunk hashes of the reference ids and of the
// reference decode; hard cases are checked id for id; streaming decode must equal decode.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "deltamoe/core/error.h"
#include "deltamoe/io/tokenizer.h"
#include "io/tokenizer_text.h"

using namespace deltamoe;
using namespace deltamoe::io;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const std::string kGolden = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/tokenizer/";
const char* const kFortunes = "/usr/share/games/fortunes";

std::string gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error("cannot open " + path);
  std::string out;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return out;
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("deltamoe_tok_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& bytes) const {
    const fs::path p = path / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }
};

struct Fnv {
  uint64_t h = 0xCBF29CE484222325ull;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  }
  void add_ids(const std::vector<int32_t>& ids) {  // little-endian length, then the ids
    const auto n = static_cast<int32_t>(ids.size());
    add(&n, 4);
    add(ids.data(), ids.size() * 4);
  }
  std::string hex() const {
    char buf[20];
    std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
    return buf;
  }
};

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// Everything the tests share, built once: golden file, fortune units, the tokenizers.
struct Fixture {
  json golden;
  std::vector<std::string> units;
  size_t text_bytes = 0;
  std::string units_fnv;
  std::map<std::string, std::unique_ptr<Tokenizer>> tokenizers;
  std::map<std::string, std::string> base_json;
  TempDir dir;

  Fixture() {
    golden = json::parse(gunzip(kGolden + "golden.json.gz"));
    for (const auto& f : golden["fortunes"]["files"]) {
      std::ifstream in(std::string(kFortunes) + "/" + f.get<std::string>(), std::ios::binary);
      if (!in) continue;
      const std::string raw{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
      text_bytes += raw.size();
      const std::string text = text::to_valid_utf8(raw);
      for (size_t pos = 0;;) {
        const size_t at = text.find("\n%\n", pos);
        const std::string entry =
            text.substr(pos, at == std::string::npos ? std::string::npos : at - pos);
        if (entry.find_first_not_of('\n') != std::string::npos) units.push_back(entry);
        if (at == std::string::npos) break;
        pos = at + 3;
      }
    }
    Fnv f;
    for (const auto& u : units) f.add(u.c_str(), u.size() + 1);
    units_fnv = f.hex();

    base_json["mixtral"] = gunzip(kGolden + "mixtral.tokenizer.json.gz");
    base_json["gpt2"] = gunzip(kGolden + "gpt2.tokenizer.json.gz");
    base_json["synthetic"] = make_synthetic_tokenizer_json(1000);
    tokenizers["mixtral_spm"] = Tokenizer::load_file(
        dir.write("spm/tokenizer.model", gunzip(kGolden + "mixtral.tokenizer.model.gz")));
    for (const auto& [name, patch] : golden["patches"].items()) {
      json j = json::parse(base_json.at(patch["base"].get<std::string>()));
      if (patch.contains("set"))
        for (const auto& [k, v] : patch["set"].items()) j[k] = v;
      if (patch.value("merges_as_pairs", false))
        for (auto& m : j["model"]["merges"]) {
          const std::string s = m.get<std::string>();
          m = json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
        }
      tokenizers[name] = Tokenizer::from_json(j.dump(), name);
    }
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void expect_one_line_error(const std::function<void()>& f, const std::string& must_contain) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << must_contain;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[tokenizer] ", 0), 0u) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_NE(msg.find(must_contain), std::string::npos) << msg;
  }
}

class GoldenVariant : public ::testing::TestWithParam<std::string> {};
std::string variant_name(const ::testing::TestParamInfo<std::string>& p) {
  return p.param;
}

}  // namespace

TEST(Tokenizer, FortunesTextIsTheGoldenOne) {
  const Fixture& f = fixture();
  ASSERT_GT(f.text_bytes, 0u)
      << "install Debian's fortunes and fortunes-min (scripts/install-deps.sh)";
  ASSERT_EQ(f.text_bytes, f.golden["fortunes"]["bytes"].get<size_t>())
      << "the fortunes files differ from those the golden data were made from (package "
      << f.golden["fortunes"]["package"] << ")";
  ASSERT_EQ(f.units.size(), f.golden["fortunes"]["units"].get<size_t>());
  ASSERT_EQ(f.units_fnv, f.golden["fortunes"]["text_fnv"].get<std::string>());
  EXPECT_GE(f.text_bytes, size_t{1} << 20);
}

TEST_P(GoldenVariant, FortunesIdsAndDecodeEqualTheReference) {
  const Fixture& f = fixture();
  ASSERT_EQ(f.units_fnv, f.golden["fortunes"]["text_fnv"].get<std::string>());
  const json& g = f.golden["variants"][GetParam()];
  const Tokenizer& tok = *f.tokenizers.at(GetParam());
  const size_t chunk = f.golden["chunk"].get<size_t>();
  size_t bad_ids = 0, bad_text = 0, ids_total = 0, stream_bad = 0;
  for (size_t c = 0, k = 0; c < f.units.size(); c += chunk, ++k) {
    Fnv hi, ht;
    for (size_t u = c; u < std::min(c + chunk, f.units.size()); ++u) {
      const std::vector<int32_t> ids = tok.encode(f.units[u], true);
      if (u < 3) {
        EXPECT_EQ(json(ids), g["first_units"][u]) << "unit " << u;
      }
      hi.add_ids(ids);
      const std::string text = tok.decode(ids);
      ht.add(text.c_str(), text.size() + 1);
      ids_total += ids.size();
      StreamDecoder stream(tok);
      std::string streamed;
      for (int32_t id : ids) streamed += stream.next(id);
      streamed += stream.finish();
      stream_bad += streamed != text;
    }
    if (hi.hex() != g["ids_fnv"][k]) {
      if (bad_ids++ < 3)
        ADD_FAILURE() << "ids differ in chunk " << k << ", first unit: " << f.units[c];
    }
    if (ht.hex() != g["text_fnv"][k]) {
      if (bad_text++ < 3) ADD_FAILURE() << "decoded text differs in chunk " << k;
    }
  }
  std::printf(
      "%s: %zu bytes of text, %zu units, %zu ids; chunks with different ids: %zu, "
      "different decode: %zu; streaming != decode: %zu units\n",
      GetParam().c_str(), f.text_bytes, f.units.size(), ids_total, bad_ids, bad_text, stream_bad);
  EXPECT_EQ(ids_total, g["total_ids"].get<size_t>());
  EXPECT_EQ(bad_ids, 0u);
  EXPECT_EQ(bad_text, 0u);
  EXPECT_EQ(stream_bad, 0u);
}

TEST_P(GoldenVariant, HardCasesEqualTheReference) {
  const Fixture& f = fixture();
  const Tokenizer& tok = *f.tokenizers.at(GetParam());
  for (const json& h : f.golden["variants"][GetParam()]["hard"]) {
    const std::string text = from_hex(h["hex"]);
    const std::vector<int32_t> ids = tok.encode(text, true);
    EXPECT_EQ(json(ids), h["ids"]) << "text: " << text;
    EXPECT_EQ(json(tok.encode(text, false)), h["ids_plain"]) << "text: " << text;
    EXPECT_EQ(tok.decode(ids), h["decoded"].get<std::string>()) << "text: " << text;
    EXPECT_EQ(tok.decode(ids, true), h["decoded_skip"].get<std::string>()) << "text: " << text;
    for (bool skip : {false, true}) {
      StreamDecoder stream(tok, skip);
      std::string streamed;
      for (int32_t id : ids) {
        const std::string part = stream.next(id);
        EXPECT_TRUE(text::is_valid_utf8(part));
        streamed += part;
      }
      streamed += stream.finish();
      EXPECT_EQ(streamed, tok.decode(ids, skip)) << "text: " << text;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, GoldenVariant,
                         ::testing::Values("mixtral_spm", "mixtral_legacy", "mixtral_metaspace",
                                           "gpt2", "qwen2_style", "synthetic"),
                         variant_name);

TEST(Tokenizer, SpecialIdsAndPieces) {
  const Fixture& f = fixture();
  const Tokenizer& spm = *f.tokenizers.at("mixtral_spm");
  const Tokenizer& js = *f.tokenizers.at("mixtral_legacy");
  for (const Tokenizer* t : {&spm, &js}) {
    EXPECT_EQ(t->bos_id(), 1);
    EXPECT_EQ(t->eos_id(), 2);
    EXPECT_EQ(t->vocab_size(), 32000);
    EXPECT_EQ(t->piece(1), "<s>");
    EXPECT_EQ(t->token_id("▁Hello"), 22557);
    EXPECT_EQ(t->token_id("no such piece"), -1);
    EXPECT_TRUE(t->is_special(2));
    EXPECT_FALSE(t->is_special(22557));
    EXPECT_TRUE(t->is_byte_token(t->token_id("<0x0A>")));
  }
  const Tokenizer& gpt2 = *f.tokenizers.at("gpt2");
  EXPECT_EQ(gpt2.vocab_size(), 50257);
  EXPECT_EQ(gpt2.eos_id(), 50256);
  EXPECT_EQ(gpt2.bos_id(), -1);
  const Tokenizer& qwen = *f.tokenizers.at("qwen2_style");
  EXPECT_EQ(qwen.token_id("<|im_end|>"), 50258);
  EXPECT_TRUE(qwen.is_special(50258));
  EXPECT_FALSE(qwen.is_special(qwen.token_id("<think>")));
}

TEST(Tokenizer, LoadsModelDirectoriesAndTokenizerConfig) {
  const Fixture& f = fixture();
  TempDir d;
  d.write("both/tokenizer.json", f.base_json.at("gpt2"));
  d.write("both/tokenizer.model", gunzip(kGolden + "mixtral.tokenizer.model.gz"));
  d.write("both/tokenizer_config.json",
          R"({"bos_token": {"content": "<|endoftext|>"}, "eos_token": null})");
  const auto t = Tokenizer::load((d.path / "both").string());
  EXPECT_EQ(t->kind(), "bpe-json");  // tokenizer.json wins
  EXPECT_EQ(t->bos_id(), 50256);
  EXPECT_EQ(t->eos_id(), -1);
  d.write("spm/tokenizer.model", gunzip(kGolden + "mixtral.tokenizer.model.gz"));
  EXPECT_EQ(Tokenizer::load((d.path / "spm").string())->kind(), "sentencepiece");
}

TEST(Tokenizer, MergesInBothFormsAndAddedTokens) {
  // A tiny hand-made file: merges as strings and as pairs must give the same ids.
  json j = json::parse(R"({
    "version": "1.0", "normalizer": null, "decoder": null, "post_processor": null,
    "pre_tokenizer": {"type": "Metaspace", "replacement": "_", "add_prefix_space": true},
    "added_tokens": [
      {"id": 9, "content": "<x>", "special": true, "normalized": false, "lstrip": true, "rstrip": true},
      {"id": 10, "content": "ab", "special": false, "normalized": true, "single_word": true}],
    "model": {"type": "BPE", "vocab": {"<unk>": 0, "_": 1, "a": 2, "b": 3, "c": 4, "_a": 5, "_ab": 6,
              "bc": 7, "ab": 8}, "merges": ["_ a", "_a b", "b c"], "unk_token": "<unk>", "fuse_unk": true}})");
  const auto strings = Tokenizer::from_json(j.dump(), "strings.json");
  j["model"]["merges"] = json::parse(R"([["_", "a"], ["_a", "b"], ["b", "c"]])");
  const auto pairs = Tokenizer::from_json(j.dump(), "pairs.json");
  for (const auto* t : {strings.get(), pairs.get()}) {
    EXPECT_EQ(t->encode("abc"), (std::vector<int32_t>{6, 4}));
    EXPECT_EQ(t->encode("bc"), (std::vector<int32_t>{1, 7}));
    EXPECT_EQ(t->encode("xyz c"), (std::vector<int32_t>{1, 0, 1, 4}));       // fused <unk>
    EXPECT_EQ(t->encode("a  <x>  bc"), (std::vector<int32_t>{5, 9, 1, 7}));  // lstrip / rstrip
    EXPECT_EQ(t->token_id("<x>"), 9);
    EXPECT_EQ(t->decode(std::vector<int32_t>{5, 9, 7}),
              "_a <x> bc");  // no decoder: joined by spaces
    EXPECT_EQ(t->decode(std::vector<int32_t>{5, 9, 7}, true), "_a bc");
  }
}

TEST(Tokenizer, SyntheticTokenizerAnyVocabSize) {
  for (int32_t v : {300, 301, 1000, 4096, 32000}) {
    const auto t = Tokenizer::from_json(make_synthetic_tokenizer_json(v), "synthetic");
    EXPECT_EQ(t->vocab_size(), v);
    EXPECT_EQ(t->bos_id(), 1);
    EXPECT_EQ(t->eos_id(), 2);
    const std::string text = "The engine reads a model. 日本 ~ {x}";
    const std::vector<int32_t> ids = t->encode(text);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(t->decode(ids, true), text) << v;
  }
  EXPECT_EQ(make_synthetic_tokenizer_json(777), make_synthetic_tokenizer_json(777));
  EXPECT_THROW(make_synthetic_tokenizer_json(299), Error);
}

TEST(Tokenizer, ConcurrentEncodeEqualsSerial) {
  const Fixture& f = fixture();
  for (const char* name : {"qwen2_style", "mixtral_spm"}) {
    const Tokenizer& tok = *f.tokenizers.at(name);
    const size_t n = std::min<size_t>(f.units.size(), 400);
    std::vector<std::vector<int32_t>> serial(n), parallel(n);
    for (size_t i = 0; i < n; ++i) serial[i] = tok.encode(f.units[i]);
    std::vector<std::thread> threads;
    for (size_t w = 0; w < 4; ++w)
      threads.emplace_back([&, w] {
        for (size_t i = w; i < n; i += 4) parallel[i] = tok.encode(f.units[i]);
      });
    for (auto& th : threads) th.join();
    EXPECT_EQ(serial, parallel) << name;
  }
}

TEST(Tokenizer, ErrorsAreOneLineAndNameTheFile) {
  const Fixture& f = fixture();
  TempDir d;
  const std::string gpt2 = f.base_json.at("gpt2");
  expect_one_line_error([&] { Tokenizer::load((d.path / "nope").string()); }, "nope");
  d.write("empty/readme.txt", "x");
  expect_one_line_error([&] { Tokenizer::load((d.path / "empty").string()); },
                        "neither tokenizer.json nor tokenizer.model");
  expect_one_line_error([&] { Tokenizer::load_file((d.path / "missing.json").string()); },
                        "missing.json");
  const std::string bad = d.write("bad/tokenizer.json", "{\"model\": [1, 2,");
  expect_one_line_error([&] { Tokenizer::load_file(bad); }, bad + ": not valid JSON");
  const std::string cut = d.write("cut/tokenizer.json", gpt2.substr(0, gpt2.size() / 2));
  expect_one_line_error([&] { Tokenizer::load_file(cut); }, cut);
  json j = json::parse(gpt2);
  j["model"]["type"] = "WordPiece";
  const std::string wp = d.write("wp/tokenizer.json", j.dump());
  expect_one_line_error([&] { Tokenizer::load_file(wp); },
                        "model type 'WordPiece' is not supported");
  j = json::parse(gpt2);
  j["pre_tokenizer"] = {{"type", "BertPreTokenizer"}};
  expect_one_line_error([&] { Tokenizer::from_json(j.dump(), "bert.json"); },
                        "bert.json: pre_tokenizer type 'BertPreTokenizer' is not supported");
  j = json::parse(gpt2);
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_one_line_error([&] { Tokenizer::from_json(j.dump(), "lc.json"); },
                        "'Lowercase' is not supported");
  j = json::parse(gpt2);
  j["model"]["merges"][0] = "a b c";
  expect_one_line_error([&] { Tokenizer::from_json(j.dump(), "m.json"); }, "model.merges[0]");
  j = json::parse(gpt2);
  j["model"]["merges"][5] = json::array({"zzzq", "qqqz"});
  expect_one_line_error([&] { Tokenizer::from_json(j.dump(), "m.json"); }, "is not in the vocab");
  j = json::parse(gpt2);
  j["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  expect_one_line_error([&] { Tokenizer::from_json(j.dump(), "re.json"); },
                        "re.json: pre_tokenizer.pattern");
  // tokenizer.model: garbage and truncated.
  const std::string model = gunzip(kGolden + "mixtral.tokenizer.model.gz");
  const std::string garbage = d.write("g/tokenizer.model", "this is not a protobuf");
  expect_one_line_error([&] { Tokenizer::load_file(garbage); }, garbage);
  const std::string trunc = d.write("t/tokenizer.model", model.substr(0, model.size() / 3));
  expect_one_line_error([&] { Tokenizer::load_file(trunc); }, trunc);
  // Ids out of range.
  for (const char* name : {"mixtral_spm", "gpt2"}) {
    const Tokenizer& t = *f.tokenizers.at(name);
    expect_one_line_error(
        [&] {
          t.decode(std::vector<int32_t>{1, t.vocab_size()});
        },
        "out of range");
    expect_one_line_error([&] { t.decode(std::vector<int32_t>{-1}); }, "out of range");
    expect_one_line_error([&] { t.piece(1 << 30); }, "out of range");
    StreamDecoder s(t);
    std::string streamed = s.next(100);
    streamed += s.finish();
    EXPECT_EQ(streamed, t.decode(std::vector<int32_t>{100}));
    expect_one_line_error([&] { s.next(-5); }, "out of range");
  }
}

TEST(Tokenizer, StreamingHoldsBackPartialCharacters) {
  const Fixture& f = fixture();
  for (const char* name : {"mixtral_spm", "mixtral_legacy", "gpt2"}) {
    const Tokenizer& t = *f.tokenizers.at(name);
    const std::string text = " 😀 and 日本語, then 👨‍👩‍👧 done";
    const auto ids = t.encode(text);
    StreamDecoder s(t);
    std::string all;
    for (int32_t id : ids) {
      const std::string part = s.next(id);
      EXPECT_TRUE(text::is_valid_utf8(part)) << name;
      EXPECT_EQ(part.find("\xEF\xBF\xBD"), std::string::npos) << name;
      all += part;
    }
    all += s.finish();
    EXPECT_EQ(all, t.decode(ids)) << name;
  }
}

TEST(Tokenizer, EncodesAMegabyteQuickly) {
  // Not a timing assertion: a guard against quadratic behaviour on one long input.
  const Fixture& f = fixture();
  std::string big;
  for (const auto& u : f.units) {
    if (big.size() > (1u << 20)) break;
    big += u + "\n";
  }
  for (const char* name : {"mixtral_legacy", "qwen2_style"}) {
    const auto ids = f.tokenizers.at(name)->encode(big);
    EXPECT_GT(ids.size(), big.size() / 8) << name;
  }
}
