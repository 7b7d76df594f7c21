// Random-mutation fuzzing of config.json and model.safetensors.index.json parsing
// (deterministic; runs as a GoogleTest).
//
// The golden configs and index are mutated (byte flips, JSON token edits, number rewrites,
// truncation, value swaps between fields). HfConfig::parse and parse_hf_index must either
// throw a one-line deltamoe::Error("hf") or succeed; a config that parses is then used to
// load the golden checkpoint of its family, which must either fail with a one-line
// deltamoe::Error or return weights of exactly the shapes the config implies. A third of the
// index mutants are also opened as a checkpoint against the real shards. Run under the
// `debug` preset (ASan + UBSan) to catch memory errors that do not crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "deltamoe/io/hf_model.h"

using namespace deltamoe;
using namespace deltamoe::io;
namespace fs = std::filesystem;

namespace {

const std::string kGolden = std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/";

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_text(const std::string& path, const std::string& text) {
  fs::remove(path);  // see fuzz_safetensors.cpp: unlink first, O_TRUNC makes ext4 flush
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

const char* const kTokens[] = {"{",
                               "}",
                               "[",
                               "]",
                               ",",
                               ":",
                               "\"",
                               "\\",
                               "\\u0000",
                               "\\ud800",
                               "null",
                               "true",
                               "false",
                               "-1",
                               "0",
                               "1",
                               "2",
                               "3",
                               "7",
                               "64",
                               "1e3",
                               "2.5",
                               "-0",
                               "1e400",
                               "18446744073709551615",
                               "9223372036854775807",
                               "2147483648",
                               "4294967296",
                               "\"silu\"",
                               "\"gelu\"",
                               "\"default\"",
                               "\"yarn\"",
                               "\"MixtralForCausalLM\"",
                               "\"OlmoeForCausalLM\"",
                               "\"Qwen3MoeForCausalLM\"",
                               "\"Qwen2MoeForCausalLM\"",
                               "\"num_experts\"",
                               "\"num_local_experts\"",
                               "\"head_dim\"",
                               "\"rope_parameters\"",
                               "\"rope_scaling\"",
                               "\"layer_types\"",
                               "\"sliding_attention\"",
                               "\"weight_map\"",
                               "\"model-00001-of-00004.safetensors\"",
                               "\"../x\"",
                               "[0,1]",
                               "[]",
                               "{}",
                               " ",
                               "\n",
                               "\xff",
                               "\xc3\xa9"};

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : rng_(seed) {}
  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(rng_() % n); }

  std::string mutate(std::string s) {
    for (int e = 0, n = 1 + static_cast<int>(below(3)); e < n && !s.empty(); ++e) {
      switch (below(6)) {
        case 0:  // bit flips
          for (size_t k = 0, m = 1 + below(4); k < m; ++k)
            s[below(s.size())] ^= static_cast<char>(1u << below(8));
          break;
        case 1:  // truncation
          s.resize(below(s.size() + 1));
          break;
        case 2:
        case 3: {  // token insert / replace
          const size_t pos = below(s.size() + 1);
          const size_t del = below(3) == 0 ? std::min(below(8), s.size() - pos) : 0;
          s.replace(pos, del, kTokens[below(std::size(kTokens))]);
          break;
        }
        case 4: {  // rewrite one number
          std::vector<size_t> starts;
          for (size_t i = 1; i < s.size(); ++i)
            if (isdigit(static_cast<unsigned char>(s[i])) &&
                !isdigit(static_cast<unsigned char>(s[i - 1])))
              starts.push_back(i);
          if (starts.empty()) break;
          const size_t a = starts[below(starts.size())];
          size_t b = a;
          while (b < s.size() && (isdigit(static_cast<unsigned char>(s[b])) || s[b] == '.')) ++b;
          const char* vals[] = {"0",   "1",    "2",     "3",          "5",
                                "8",   "16",   "33",    "-1",         "1024",
                                "0.5", "4096", "65537", "2147483647", "99999999999"};
          s.replace(a, b - a, vals[below(std::size(vals))]);
          break;
        }
        default: {  // swap two quoted strings (keys or values)
          std::vector<size_t> quotes;
          for (size_t i = 0; i < s.size(); ++i)
            if (s[i] == '"') quotes.push_back(i);
          if (quotes.size() < 4) break;
          const size_t i = below(quotes.size() / 2) * 2, j = below(quotes.size() / 2) * 2;
          if (i == j || j + 1 >= quotes.size() || i + 1 >= quotes.size()) break;
          const size_t a0 = std::min(i, j), b0 = std::max(i, j);
          const std::string sa = s.substr(quotes[a0], quotes[a0 + 1] - quotes[a0] + 1);
          const std::string sb = s.substr(quotes[b0], quotes[b0 + 1] - quotes[b0] + 1);
          s.replace(quotes[b0], sb.size(), sa);
          s.replace(quotes[a0], sa.size(), sb);
          break;
        }
      }
    }
    return s;
  }

 private:
  std::mt19937_64 rng_;
};

// Structure-aware edit: one field (top level or inside rope_parameters / rope_scaling) is
// set to another JSON value or removed, so that most mutants reach the semantic checks.
std::string edit_field(Mutator& m, const std::string& text) {
  auto j = nlohmann::json::parse(text);
  nlohmann::json* obj = &j;
  for (const char* sub : {"rope_parameters", "rope_scaling"})
    if (j.contains(sub) && j[sub].is_object() && m.below(4) == 0) obj = &j[sub];
  if (obj->empty()) return text;
  auto it = obj->begin();
  std::advance(it, static_cast<long>(m.below(obj->size())));
  const std::string key = it.key();
  static const nlohmann::json kValues[] = {
      nullptr,
      true,
      false,
      0,
      1,
      2,
      3,
      5,
      8,
      16,
      31,
      64,
      256,
      257,
      1024,
      -1,
      0.5,
      1e-6,
      2.5,
      4294967296LL,
      "silu",
      "gelu",
      "yarn",
      "default",
      "float32",
      "bfloat16",
      "int8",
      nlohmann::json::array(),
      nlohmann::json::array({0, 1}),
      nlohmann::json::array({2, 3}),
      nlohmann::json::object(),
      nlohmann::json::object({{"rope_type", "linear"}}),
      nlohmann::json::array({"full_attention", "sliding_attention"})};
  if (m.below(6) == 0)
    obj->erase(key);
  else
    (*obj)[key] = kValues[m.below(std::size(kValues))];
  return j.dump();
}

void check_error(const Error& e) {
  const std::string msg = e.what();
  if (std::getenv("DELTAMOE_FUZZ_VERBOSE") != nullptr) std::printf("%s\n", msg.c_str());
  ASSERT_TRUE(msg.rfind("[hf] ", 0) == 0 || msg.rfind("[safetensors] ", 0) == 0) << msg;
  ASSERT_EQ(msg.find('\n'), std::string::npos) << msg;
}

// Loads the checkpoint with a (mutated, parsed) config: either an Error or shapes that
// match the config exactly.
void load_and_check(const HfConfig& c, const HfCheckpoint& ck, int& loaded) {
  try {
    const HfModelWeights w = load_hf_weights(c, ck);
    ++loaded;
    ASSERT_EQ(static_cast<int64_t>(w.layers.size()), c.num_hidden_layers);
    ASSERT_EQ(w.embed.shape(), (Shape{c.vocab_size, c.hidden_size}));
    for (const auto& l : w.layers) {
      ASSERT_EQ(l.q.shape(), (Shape{c.num_attention_heads * c.head_dim, c.hidden_size}));
      if (l.moe) {
        ASSERT_EQ(static_cast<int64_t>(l.experts.size()), c.num_experts);
      }
    }
  } catch (const Error& e) {
    check_error(e);
  }
}

}  // namespace

TEST(FuzzHfConfig, ConfigMutationsNeverCrash) {
  struct Seed {
    std::string text, model_dir;
  };
  std::vector<Seed> seeds;
  for (const char* name : {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "mixtral_bf16"})
    seeds.push_back({read_text(kGolden + name + "/config.json"), kGolden + name});
  seeds.push_back({read_text(kGolden + "mixtral/config.v5.json"), kGolden + "mixtral"});
  std::vector<HfCheckpoint> ckpts;
  for (const auto& s : seeds) {
    ASSERT_NO_THROW(HfConfig::parse(s.text, "seed"));
    ckpts.push_back(HfCheckpoint::open(s.model_dir));
  }

  Mutator m(20261205);
  int parsed = 0, rejected = 0, loaded = 0;
  constexpr int kIterations = 6000;
  for (int it = 0; it < kIterations; ++it) {
    const size_t si = m.below(seeds.size());
    const std::string text =
        m.below(2) == 0 ? edit_field(m, seeds[si].text) : m.mutate(seeds[si].text);
    try {
      const HfConfig c = HfConfig::parse(text, "/m/config.json");
      ++parsed;
      load_and_check(c, ckpts[si], loaded);
    } catch (const Error& e) {
      ++rejected;
      check_error(e);
    }
    if (HasFatalFailure()) FAIL() << "iteration " << it << " input:\n" << text;
  }
  std::printf("config fuzz: %d mutants, %d parsed (%d loaded a checkpoint), %d rejected\n",
              kIterations, parsed, loaded, rejected);
  EXPECT_GT(parsed, kIterations / 20);
  EXPECT_GT(rejected, kIterations / 4);
  EXPECT_GT(loaded, 0);
}

TEST(FuzzHfConfig, IndexMutationsNeverCrash) {
  const fs::path dir =
      fs::temp_directory_path() / ("deltamoe_fuzz_hf_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::copy(kGolden + "mixtral", dir);
  const std::string index_path = (dir / "model.safetensors.index.json").string();
  const std::string seed = read_text(index_path);
  const HfConfig cfg = HfConfig::load(dir.string());

  Mutator m(777);
  int parsed = 0, rejected = 0, opened = 0, loaded = 0;
  constexpr int kIterations = 3000;
  for (int it = 0; it < kIterations; ++it) {
    const std::string text = m.mutate(seed);
    try {
      const auto map = parse_hf_index(text, index_path);
      ++parsed;
      for (const auto& [tensor, file] : map) {
        ASSERT_FALSE(tensor.empty());
        ASSERT_EQ(file.find('/'), std::string::npos) << file;
      }
      if (it % 3 == 0) {
        write_text(index_path, text);
        const HfCheckpoint ck = HfCheckpoint::open(dir.string());
        ++opened;
        load_and_check(cfg, ck, loaded);
      }
    } catch (const Error& e) {
      ++rejected;
      check_error(e);
    }
    if (HasFatalFailure()) FAIL() << "iteration " << it << " input:\n" << text;
  }
  fs::remove_all(dir);
  std::printf("index fuzz: %d mutants, %d parsed, %d opened, %d loaded, %d rejected\n", kIterations,
              parsed, opened, loaded, rejected);
  EXPECT_GT(parsed, kIterations / 20);
  EXPECT_GT(rejected, kIterations / 4);
}
