// `deltamoe generate` (text from a prompt, streamed) and `deltamoe perplexity`.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "command.h"
#include "lm_common.h"

namespace deltamoe::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct GenerateOptions {
  LmCliOptions lm;
  std::string prompt;
  int n = 128;
  double temperature = 0.0;
  double top_p = 1.0;
  uint64_t seed = 0;
  bool no_special = false;
  bool ignore_eos = false;
};

int run_generate(const GenerateOptions& o) {
  // Everything that can be checked before the (long) load is: the tokenizer, the config, the
  // prompt against the context.
  const auto tok = io::Tokenizer::load(o.lm.model);
  const io::HfConfig cfg = io::HfConfig::load(o.lm.model);
  const std::vector<int32_t> prompt = tok->encode(o.prompt, !o.no_special);
  DELTAMOE_CHECK(!prompt.empty(), "generate",
                 "the prompt encodes to no tokens (pass text, or drop --no-special)");
  const int64_t ctx = std::min<int64_t>(cfg.max_position_embeddings, 65536);
  DELTAMOE_CHECK(static_cast<int64_t>(prompt.size()) < ctx, "generate", "prompt of ", prompt.size(),
                 " tokens does not fit the model's context of ", ctx, " tokens");
  int n = o.n;
  if (static_cast<int64_t>(prompt.size()) + n > ctx) {
    n = static_cast<int>(ctx - static_cast<int64_t>(prompt.size()));
    std::cerr << "generate: -n lowered to " << n << " to fit the context of " << ctx << " tokens\n";
  }
  const auto t_load = Clock::now();
  auto m = load_lm(o.lm);
  std::cerr << "generate: loaded " << o.lm.model << " (" << io::hf_arch_name(m->config().arch)
            << ", " << m->layers() << " layers, " << experts_text(m->config()) << ", "
            << static_cast<double>(m->weight_bytes()) / 1e9 << " GB of " << dtype_name(m->dtype())
            << " weights"
            << ") in " << seconds_since(t_load) << " s; routing " << m->routing_name() << "\n";
  std::mt19937_64 rng(o.seed);
  models::KvCache cache;
  models::LmStats prompt_stats, gen_stats;
  std::vector<float> logits(static_cast<size_t>(m->vocab_size()));
  const auto t0 = Clock::now();
  m->forward(prompt.data(), static_cast<int64_t>(prompt.size()), cache, logits.data(), false,
             &prompt_stats);
  const double prompt_s = seconds_since(t0);
  io::StreamDecoder stream(*tok, /*skip_special_tokens=*/true);
  std::vector<int32_t> out;
  std::string text;
  const auto t1 = Clock::now();
  for (int i = 0; i < n; ++i) {
    const int32_t t =
        models::sample_token(logits.data(), m->vocab_size(), o.temperature, o.top_p, rng);
    out.push_back(t);
    const std::string piece = stream.next(t);
    text += piece;
    if (!o.lm.json) std::cout << piece << std::flush;
    if (!o.ignore_eos && t == tok->eos_id()) break;
    if (i + 1 < n) m->forward(&t, 1, cache, logits.data(), false, &gen_stats);
  }
  const double gen_s = seconds_since(t1);
  const std::string rest = stream.finish();
  text += rest;
  const double pp_tps = static_cast<double>(prompt.size()) / prompt_s;
  const double tg_tps = gen_s > 0 ? static_cast<double>(out.size()) / gen_s : 0.0;
  models::LmStats all = prompt_stats;
  all.moe_rows += gen_stats.moe_rows;
  all.routed_experts += gen_stats.routed_experts;
  if (o.lm.json) {
    json j = {{"model", o.lm.model},
              {"dtype", std::string(dtype_name(m->dtype()))},
              {"routing", m->routing_name()},
              {"prompt_ids", prompt},
              {"generated_ids", out},
              {"text", text},
              {"prompt_tokens", prompt.size()},
              {"generated_tokens", out.size()},
              {"prompt_time_ms", 1e3 * prompt_s},
              {"generation_time_ms", 1e3 * gen_s},
              {"prompt_tokens_per_s", pp_tps},
              {"generation_tokens_per_s", tg_tps},
              {"mean_experts_per_token", all.mean_experts()},
              {"prompt_mean_experts_per_token", prompt_stats.mean_experts()},
              {"threads", num_threads()},
              {"parallel", parallel_json(*m)}};
    if (const models::ExpertCache* c = m->expert_cache())
      j["expert_cache"] = expert_cache_json(*c, static_cast<double>(all.tokens + gen_stats.tokens));
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << rest << "\n";
  }
  std::fprintf(
      stderr,
      "generate: prompt %zu tokens in %.1f ms (%.1f tokens/s), generated %zu tokens in %.1f ms "
      "(%.1f tokens/s), %.2f experts per token (routing %s)\n",
      prompt.size(), 1e3 * prompt_s, pp_tps, out.size(), 1e3 * gen_s, tg_tps, all.mean_experts(),
      m->routing_name().c_str());
  if (const models::ExpertCache* c = m->expert_cache())
    std::cerr << "generate: "
              << expert_cache_line(
                     expert_cache_json(*c, static_cast<double>(all.tokens + gen_stats.tokens)))
              << "\n";
  return 0;
}

CommandRegistrar reg_generate(
    "generate",
    "Generate text from a prompt with a Hugging Face MoE language model (streamed to stdout)",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<GenerateOptions>();
      add_lm_options(app, o->lm);
      app.add_option("--prompt", o->prompt, "Prompt text")->required();
      app.add_option("-n,--n-predict", o->n, "Tokens to generate (stops early at end-of-sequence)")
          ->check(CLI::Range(1, 1 << 20))
          ->capture_default_str();
      app.add_option("--temperature", o->temperature, "Sampling temperature; 0 = greedy")
          ->check(CLI::Range(0.0, 100.0))
          ->capture_default_str();
      app.add_option("--top-p-sample", o->top_p,
                     "Nucleus sampling: keep the smallest set of tokens with this much probability")
          ->check(CLI::Range(1e-6, 1.0))
          ->capture_default_str();
      app.add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
      app.add_flag("--no-special", o->no_special, "Do not add special tokens (BOS) to the prompt");
      app.add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-sequence");
      return [o] { return run_generate(*o); };
    });

struct PerplexityOptions {
  LmCliOptions lm;
  std::string file;
  int context = 512;
  int64_t max_tokens = 0;
};

int run_perplexity(const PerplexityOptions& o) {
  std::ifstream in(o.file, std::ios::binary);
  DELTAMOE_CHECK(in.good(), "perplexity", "cannot read --file ", o.file);
  std::stringstream ss;
  ss << in.rdbuf();
  const auto tok = io::Tokenizer::load(o.lm.model);
  std::vector<int32_t> ids = tok->encode(ss.str(), /*add_special_tokens=*/false);
  if (o.max_tokens > 0 && static_cast<int64_t>(ids.size()) > o.max_tokens)
    ids.resize(static_cast<size_t>(o.max_tokens));
  DELTAMOE_CHECK(ids.size() >= 2, "perplexity", o.file, " has fewer than 2 tokens");
  auto m = load_lm(o.lm);
  const int64_t ctx = std::min<int64_t>(o.context, m->config().max_position_embeddings);
  DELTAMOE_CHECK(ctx >= 2, "perplexity", "--context must be at least 2");
  const int64_t v = m->vocab_size();
  // Non-overlapping windows of `ctx` tokens, each starting from an empty cache (with BOS in
  // front when the tokenizer has one); every token after the first of a window is scored.
  const int32_t bos = tok->bos_id();
  const int64_t body = bos >= 0 ? ctx - 1 : ctx;
  double nll = 0.0;
  int64_t scored = 0;
  models::LmStats stats;
  std::vector<float> logits;
  const auto t0 = Clock::now();
  const int64_t windows = (static_cast<int64_t>(ids.size()) + body - 1) / body;
  for (int64_t w = 0; w < windows; ++w) {
    std::vector<int32_t> win;
    if (bos >= 0) win.push_back(bos);
    const int64_t b = w * body, e = std::min<int64_t>(static_cast<int64_t>(ids.size()), b + body);
    win.insert(win.end(), ids.begin() + b, ids.begin() + e);
    if (win.size() < 2) continue;
    models::KvCache cache;
    logits.resize(win.size() * static_cast<size_t>(v));
    m->forward(win.data(), static_cast<int64_t>(win.size()), cache, logits.data(), true, &stats);
    for (size_t i = 0; i + 1 < win.size(); ++i) {
      const float* row = logits.data() + i * static_cast<size_t>(v);
      double mx = row[0];
      for (int64_t c = 1; c < v; ++c) mx = std::max<double>(mx, row[c]);
      double sum = 0.0;
      for (int64_t c = 0; c < v; ++c) sum += std::exp(row[c] - mx);
      nll += std::log(sum) + mx - row[win[i + 1]];
      ++scored;
    }
    std::fprintf(stderr, "\rperplexity: window %lld/%lld, ppl so far %.4f",
                 static_cast<long long>(w + 1), static_cast<long long>(windows),
                 std::exp(nll / static_cast<double>(scored)));
  }
  std::fprintf(stderr, "\n");
  const double secs = seconds_since(t0);
  const double ppl = std::exp(nll / static_cast<double>(scored));
  if (o.lm.json) {
    json j = {{"model", o.lm.model},
              {"file", o.file},
              {"dtype", std::string(dtype_name(m->dtype()))},
              {"routing", m->routing_name()},
              {"context", ctx},
              {"tokens", ids.size()},
              {"scored_tokens", scored},
              {"perplexity", ppl},
              {"mean_nll", nll / static_cast<double>(scored)},
              {"mean_experts_per_token", stats.mean_experts()},
              {"time_ms", 1e3 * secs},
              {"tokens_per_s", static_cast<double>(stats.tokens) / secs},
              {"threads", num_threads()},
              {"parallel", parallel_json(*m)}};
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf(
        "perplexity %.4f over %lld tokens (context %lld), %.2f experts per token, routing %s\n",
        ppl, static_cast<long long>(scored), static_cast<long long>(ctx), stats.mean_experts(),
        m->routing_name().c_str());
  }
  return 0;
}

CommandRegistrar reg_perplexity(
    "perplexity",
    "Perplexity of a Hugging Face MoE language model on a text file, with experts per token",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<PerplexityOptions>();
      add_lm_options(app, o->lm);
      app.add_option("--file", o->file, "UTF-8 text file")->required();
      app.add_option("--context", o->context, "Tokens per window (non-overlapping windows)")
          ->check(CLI::Range(2, 1 << 20))
          ->capture_default_str();
      app.add_option("--max-tokens", o->max_tokens,
                     "Score at most this many tokens of the file (0 = all)")
          ->check(CLI::NonNegativeNumber)
          ->capture_default_str();
      return [o] { return run_perplexity(*o); };
    });

}  // namespace
}  // namespace deltamoe::cli
