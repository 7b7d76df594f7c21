// `deltamoe train-lm`: train a small Mixtral-style MoE language model on real text (Debian's
// fortunes by default) with any routing policy, and write it as a Hugging Face model directory
// that `generate`, `serve` and transformers load (issue 15).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/output.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/io/tokenizer_train.h"
#include "deltamoe/models/lm_train.h"
#include "deltamoe/moe/policies.h"
#include "lm_train_config.h"
#include "train_common.h"

namespace {

using namespace deltamoe;
constexpr const char* kComp = "train-lm";
constexpr const char* kSeparator = "<|endoftext|>";
constexpr const char* kStateFile = "trainer_state.safetensors";

struct Opts {
  cli::RoutingCli routing;
  std::string data, out, tokenizer, teacher;
  int64_t vocab = 2048, layers = 2, hidden = 128, heads = 4, kv_heads = 2, experts = 8, top_k = 2,
          inter = 256, shared_inter = 0, seq_len = 64, batch = 16, steps = 300, warmup = 20,
          checkpoint_every = 0;
  std::vector<int64_t> layer_experts;  // pyramid MoE: experts of each layer (empty: --experts)
  int64_t eval_tokens = 0;
  float lr = 3e-3f;
  double balance_alpha = 0.01, budget_beta = 0.0, distill_weight = 0.5;
  int64_t distill_steps = 0;
  uint64_t seed = 1;
  int threads = 2;
  bool tie = false, force = false, resume = false, json = false, no_progress = false;
  cli::MemoryPlanCli memory_plan;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  DELTAMOE_CHECK(f.good(), kComp, "cannot read ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

io::HfConfig make_config(const Opts& o, int32_t vocab) {
  cli::LmShape s;
  s.layers = o.layers;
  s.hidden = o.hidden;
  s.heads = o.heads;
  s.kv_heads = o.kv_heads;
  s.experts = o.experts;
  s.layer_experts = o.layer_experts;
  s.top_k = o.top_k;
  s.inter = o.inter;
  s.seq_len = o.seq_len;
  s.tie = o.tie;
  s.balance_alpha = o.balance_alpha;
  // PR-MoE's residual design as Hugging Face's Qwen2-MoE: a shared expert beside the routed
  // ones (with Qwen2-MoE's sigmoid gate and q/k/v biases). Routed weights: p as it is
  // (norm_topk_prob false, Qwen2-MoE's default; with top-1, renormalised weights are 1 and
  // the router learns from the balance loss alone), unless --routing top-k:K asks for
  // renormalised ones, which the config then records so that transformers agrees.
  s.shared_inter = o.shared_inter;
  s.norm_topk_prob = o.routing.routing.rfind("top-k:", 0) == 0;
  if (o.routing.kind() == "null-experts") {
    // AdaMoE's null experts are router outputs: M more rows in every router.
    const int64_t e = o.layer_experts.empty()
                          ? o.experts
                          : *std::max_element(o.layer_experts.begin(), o.layer_experts.end());
    const moe::PolicySpec spec = o.routing.spec(e);
    s.null_experts = spec.nulls > 0 ? spec.nulls : e;
  }
  return cli::lm_train_config(s, vocab, kComp);
}

deltamoe::cli::CommandRegistrar reg(
    "train-lm", "Train a small MoE language model on text; writes a Hugging Face directory",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<Opts>();
      o->routing.add(app, "",
                     "target mean experts per token K*: a controller adapts P, THETA toward it "
                     "while training (top-p, threshold)");
      app.add_option("--data", o->data,
                     "UTF-8 text file (documents separated by blank lines); default: the fortune "
                     "files of " +
                         std::string(io::kFortunesDir));
      const auto range = [](int64_t lo, int64_t hi) { return CLI::Range(lo, hi); };
      auto* vocab = app.add_option("--vocab", o->vocab,
                                   "Tokenizer vocabulary (trained on the training split)")
                        ->check(range(300, 1 << 20))
                        ->capture_default_str();
      app.add_option("--tokenizer", o->tokenizer,
                     "Use this tokenizer.json (it must have <|endoftext|>) instead of training one "
                     "(models compared token by token need the same tokenizer)")
          ->check(CLI::ExistingFile)
          ->excludes(vocab);
      app.add_option("--teacher", o->teacher,
                     "Distil this trained model directory (Mixture-of-Students): the student "
                     "also learns its next-token distribution, and takes its tokenizer")
          ->check(CLI::ExistingDirectory)
          ->excludes(vocab)
          ->excludes("--tokenizer");
      app.add_option("--distill-weight", o->distill_weight,
                     "With --teacher: loss = (1 - W) cross-entropy + W cross-entropy against "
                     "the teacher's distribution")
          ->check(cli::finite_in(0.0, 1.0))
          ->capture_default_str();
      app.add_option("--distill-steps", o->distill_steps,
                     "With --teacher: distil during the first N steps only, then learn from the "
                     "data alone (DeepSpeed's staged KD; 0: every step)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))
          ->capture_default_str();
      app.add_option("--layers", o->layers, "Decoder layers")
          ->check(range(1, 64))
          ->capture_default_str();
      app.add_option("--hidden", o->hidden, "Hidden size")
          ->check(range(8, 1 << 14))
          ->capture_default_str();
      app.add_option("--heads", o->heads, "Attention heads")
          ->check(range(1, 256))
          ->capture_default_str();
      app.add_option("--kv-heads", o->kv_heads, "Key/value heads")
          ->check(range(1, 256))
          ->capture_default_str();
      auto* experts = app.add_option("--experts", o->experts, "Experts per MoE layer")
                          ->check(range(1, 4096))
                          ->capture_default_str();
      app.add_option("--layer-experts", o->layer_experts,
                     "Experts of each layer, comma-separated, one per layer (DeepSpeed's pyramid "
                     "MoE, e.g. 4,8: more experts in later layers; config field "
                     "deltamoe_layer_experts, runs in deltamoe only)")
          ->delimiter(',')
          ->check(range(1, 4096))
          ->excludes(experts);
      app.add_option("--top-k", o->top_k,
                     "The config's experts per token (num_experts_per_tok; the routing unless "
                     "--routing says otherwise)")
          ->check(range(1, 4096))
          ->capture_default_str();
      app.add_option("--inter", o->inter, "Expert intermediate size")
          ->check(range(1, 1 << 16))
          ->capture_default_str();
      app.add_option("--shared-inter", o->shared_inter,
                     "Intermediate size of a shared expert beside the routed ones (PR-MoE's "
                     "residual design; writes Qwen2MoeForCausalLM, 0: none, Mixtral)")
          ->check(range(0, 1 << 16))
          ->capture_default_str();
      app.add_flag("--tie-embeddings", o->tie, "tie_word_embeddings (no lm_head.weight)");
      app.add_option("--seq-len", o->seq_len, "Tokens per training sequence")
          ->check(range(2, 1 << 16))
          ->capture_default_str();
      app.add_option("--batch", o->batch, "Sequences per step")
          ->check(range(1, 1 << 16))
          ->capture_default_str();
      app.add_option("--steps", o->steps, "Optimizer steps")
          ->check(range(1, int64_t{1} << 40))
          ->capture_default_str();
      app.add_option("--lr", o->lr, "Adam learning rate after warmup (cosine decay to 10%)")
          ->check(cli::finite_in(0.0, 10.0, true))
          ->capture_default_str();
      app.add_option("--warmup", o->warmup, "Linear warmup steps")
          ->check(range(0, int64_t{1} << 40))
          ->capture_default_str();
      app.add_option("--balance-alpha", o->balance_alpha, "Switch load-balancing loss weight")
          ->check(cli::finite_in(0.0, 1e6))
          ->capture_default_str();
      app.add_option("--budget-beta", o->budget_beta,
                     "Budget loss weight: the router's mean entropy per MoE layer (top-p's "
                     "dynamic loss, Huang et al. 2024: confident routers need fewer experts)")
          ->check(cli::finite_in(0.0, 1e6))
          ->capture_default_str();
      app.add_option("--eval-tokens", o->eval_tokens, "Validation tokens to evaluate (0: all)")
          ->check(range(0, int64_t{1} << 40))
          ->capture_default_str();
      app.add_option("--seed", o->seed, "Seed (init, which windows each step reads)")
          ->capture_default_str();
      app.add_option("--threads", o->threads, "Threads")
          ->check(CLI::Range(1, 1024))
          ->capture_default_str();
      app.add_option("--checkpoint-every", o->checkpoint_every,
                     "Write --out (model and trainer state) every N steps (0: only at the end)")
          ->check(range(0, int64_t{1} << 40))
          ->capture_default_str();
      app.add_flag("--resume", o->resume,
                   "Continue the run in --out from its trainer state (its config, tokenizer and "
                   "routing; --steps is the total)");
      app.add_option("--out", o->out, "Output model directory")->required();
      app.add_flag("--force", o->force, "Replace --out if it exists and is not empty");
      o->memory_plan.add(app);
      app.add_flag("--json", o->json, "Print one JSON object on stdout");
      app.add_flag("--no-progress", o->no_progress, "No progress lines on stderr");
      cli::show_default(app, {"--target-k"}, "none");
      app.parse_complete_callback([&app, o] {
        o->routing.check(app);
        for (const char* f : {"--distill-weight", "--distill-steps"})
          if (app.count(f) && o->teacher.empty()) throw CLI::ValidationError(f, "needs --teacher");
        // A resumed run keeps the model it resumes: shape flags would be silently ignored.
        if (o->resume)
          for (const char* f : {"--vocab", "--tokenizer", "--layers", "--hidden", "--heads",
                                "--kv-heads", "--experts", "--layer-experts", "--top-k", "--inter",
                                "--shared-inter", "--tie-embeddings"})
            if (app.count(f))
              throw CLI::ValidationError(f,
                                         "cannot change with --resume (the run in --out keeps "
                                         "its config and tokenizer)");
      });
      return [o]() -> int {
        set_num_threads(o->threads);
        cli::keep_freed_memory();
        namespace fs = std::filesystem;
        const auto t0 = std::chrono::steady_clock::now();
        const std::string state_path = o->out + "/" + kStateFile;
        if (o->resume)
          DELTAMOE_CHECK(fs::exists(state_path), kComp, "--resume: no ", state_path,
                         " (was the run started with --checkpoint-every?)");
        DELTAMOE_CHECK(o->hidden % o->heads == 0 && o->heads % o->kv_heads == 0, kComp, "--hidden ",
                       o->hidden, " / --heads ", o->heads, " / --kv-heads ", o->kv_heads,
                       ": heads must divide hidden and be a multiple of kv heads");
        DELTAMOE_CHECK((o->hidden / o->heads) % 2 == 0, kComp, "head dim ", o->hidden / o->heads,
                       " must be even (RoPE)");
        if (!o->layer_experts.empty()) {
          DELTAMOE_CHECK(static_cast<int64_t>(o->layer_experts.size()) == o->layers, kComp,
                         "--layer-experts lists ", o->layer_experts.size(), " layers, --layers is ",
                         o->layers);
          const int64_t fewest =
              *std::min_element(o->layer_experts.begin(), o->layer_experts.end());
          DELTAMOE_CHECK(o->top_k <= fewest, kComp, "--top-k ", o->top_k,
                         " > the fewest --layer-experts ", fewest);
        }
        DELTAMOE_CHECK(o->top_k <= o->experts || !o->layer_experts.empty(), kComp, "--top-k ",
                       o->top_k, " > --experts ", o->experts);
        // Everything that can fail on the output is checked before any training.
        { io::OutputDir probe(o->out, o->force || o->resume, kComp); }

        const io::TextSplit split =
            o->data.empty() ? io::load_fortunes() : io::load_text_file(o->data);
        std::string tok_json;
        io::HfConfig cfg;
        std::unique_ptr<models::TrainableMoeLm> lm;
        // The routing: --routing, else (resuming) the one the run was started with, else the
        // config's top-k.
        cli::RoutingCli rc = o->routing;
        if (o->resume) {
          tok_json = read_file(o->out + "/tokenizer.json");
          while (!tok_json.empty() && tok_json.back() == '\n') tok_json.pop_back();
          lm = models::load_trainable_lm(o->out);
          cfg = lm->config();
          if (rc.routing.empty() && !cfg.deltamoe_routing_json.empty()) {
            const auto r = nlohmann::json::parse(cfg.deltamoe_routing_json);
            rc.routing = r.value("spec", std::string());
            rc.target_k = r.value("target_k", 0.0);
          }
        } else if (!o->tokenizer.empty() || !o->teacher.empty()) {
          tok_json = read_file(o->teacher.empty() ? o->tokenizer : o->teacher + "/tokenizer.json");
          while (!tok_json.empty() && tok_json.back() == '\n') tok_json.pop_back();
        } else {
          io::BpeTrainOptions bo;
          bo.vocab_size = static_cast<int32_t>(o->vocab);
          bo.special_tokens = {kSeparator};
          tok_json = io::train_bpe(split.train, bo).tokenizer_json;
        }
        const auto tok = io::Tokenizer::from_json(tok_json, "tokenizer.json");
        if (!o->resume) {
          cfg = make_config(*o, tok->vocab_size());
          lm = std::make_unique<models::TrainableMoeLm>(cfg, o->seed);
        }
        if (rc.routing.empty())
          rc.routing = (cfg.norm_topk_prob ? "top-k:" : "top-k-raw:") +
                       std::to_string(cfg.num_experts_per_tok);
        const moe::PolicySpec spec = rc.spec(cfg.num_experts);
        lm->set_policy(spec);  // one policy (and controller) per MoE layer
        const int32_t sep = tok->token_id(kSeparator);
        DELTAMOE_CHECK(sep >= 0, kComp, o->tokenizer.empty() ? o->out : o->tokenizer,
                       ": the tokenizer has no ", kSeparator,
                       " token (documents are separated by it)");
        const std::vector<int32_t> train = models::token_stream(*tok, split.train, sep);
        const std::vector<int32_t> val = models::token_stream(*tok, split.validation, sep);
        nn::AdamOptions ao;
        ao.lr = o->lr;
        nn::Adam adam(lm->params(), ao);
        models::LmTrainOptions to;
        to.steps = o->steps;
        to.batch = o->batch;
        to.seq_len = o->seq_len;
        to.lr = o->lr;
        to.warmup = o->warmup;
        to.balance_alpha = o->balance_alpha;
        to.budget_beta = o->budget_beta;
        to.seed = o->seed;
        to.progress = !o->no_progress;
        to.memory_plan = o->memory_plan.arena();
        to.memory_plan_slack = o->memory_plan.slack;
        std::unique_ptr<models::TrainableMoeLm> teacher;
        if (!o->teacher.empty()) {
          teacher = models::load_trainable_lm(o->teacher);
          to.teacher = teacher.get();
          to.distill_weight = o->distill_weight;
          to.distill_steps = o->distill_steps;
          if (to.progress)
            std::fprintf(stderr,
                         "train-lm: distilling %s (%s, %lld layers, routing %s), weight %g\n",
                         o->teacher.c_str(), teacher->config().architecture.c_str(),
                         static_cast<long long>(teacher->config().num_hidden_layers),
                         teacher->routing_name().c_str(), o->distill_weight);
        }
        if (o->resume) to.start_step = models::load_train_state(*lm, adam, state_path);
        DELTAMOE_CHECK(to.start_step < to.steps || !o->resume, kComp, "--resume: ", state_path,
                       " has ", to.start_step, " steps done, --steps is ", to.steps);
        auto save = [&](int64_t steps_done, bool with_state) {
          io::OutputDir dir(o->out, /*force=*/true, kComp);
          models::save_lm(*lm, rc.routing, spec, tok_json, kSeparator, dir.file(""));
          if (with_state) models::save_train_state(*lm, adam, steps_done, dir.file(kStateFile));
          dir.commit();
        };
        to.checkpoint_every = o->checkpoint_every;
        to.on_checkpoint = [&](int64_t done) {
          save(done, true);
          if (to.progress)
            std::fprintf(stderr, "checkpoint: %s after %lld steps\n", o->out.c_str(),
                         static_cast<long long>(done));
        };
        if (to.progress)
          std::fprintf(
              stderr,
              "train-lm: %lld parameters, vocab %d, %zu training tokens, %zu validation "
              "tokens, routing %s, %lld steps of %lld x %lld tokens%s\n",
              static_cast<long long>(lm->params().numel()), tok->vocab_size(), train.size(),
              val.size(), lm->routing_name().c_str(), static_cast<long long>(o->steps),
              static_cast<long long>(o->batch), static_cast<long long>(o->seq_len),
              o->resume ? (" (resuming after step " + std::to_string(to.start_step) + ")").c_str()
                        : "");
        const models::LmTrainSummary s = models::train_lm(*lm, adam, train, to);
        const models::LmEval ev =
            models::evaluate_lm(*lm, val, o->seq_len, o->batch, o->eval_tokens);
        save(o->steps, o->checkpoint_every > 0);
        const double total_s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (to.progress)
          std::fprintf(stderr,
                       "validation: loss %.4f, perplexity %.2f, %.3f experts/token, %.0f tokens/s; "
                       "wrote %s (%.0f s)\n",
                       ev.loss, ev.perplexity, ev.mean_experts, ev.tokens_per_s, o->out.c_str(),
                       total_s);
        if (o->json) {
          nlohmann::ordered_json j{{"out", o->out},
                                   {"data", split.source},
                                   {"routing", lm->routing_name()},
                                   {"parameters", lm->params().numel()},
                                   {"vocab_size", tok->vocab_size()},
                                   {"train_tokens", train.size()},
                                   {"validation_tokens", val.size()},
                                   {"steps", o->steps},
                                   {"steps_this_run", s.steps},
                                   {"train_loss", s.final_loss},
                                   {"train_experts_per_token", s.mean_experts},
                                   {"train_tokens_per_s", s.tokens_per_s},
                                   {"validation_loss", ev.loss},
                                   {"validation_perplexity", ev.perplexity},
                                   {"validation_experts_per_token", ev.mean_experts},
                                   {"validation_tokens_per_s", ev.tokens_per_s},
                                   {"time_s", total_s}};
          if (s.memory_plan.steps > 0) j["memory_plan"] = cli::memory_plan_json(s.memory_plan);
          std::cout << j.dump(2) << "\n";
        }
        return 0;
      };
    });

}  // namespace
