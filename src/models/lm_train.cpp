// Training loop, evaluation and saving of TrainableMoeLm (see lm_train.h).
#include "deltamoe/models/lm_train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "deltamoe/core/error.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/safetensors.h"
#include "deltamoe/nn/nn.h"
#include "models/policy_json.h"

namespace deltamoe::models {

namespace {

constexpr const char* kComp = "lm-train";
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Mean over the MoE layers (a dense layer's routing is empty).
double mean_experts_of(const LmTrainForward& f) {
  double s = 0.0;
  int moe_layers = 0;
  for (const auto& r : f.routing)
    if (r.tokens() > 0) {
      s += r.mean_experts();
      ++moe_layers;
    }
  return moe_layers > 0 ? s / moe_layers : 0.0;
}

// Warmup, then cosine from 1 to 0.1.
float lr_scale(int64_t step, int64_t steps, int64_t warmup) {
  if (warmup > 0 && step < warmup) return static_cast<float>(step + 1) / static_cast<float>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, steps - warmup));
  const double t = std::clamp(static_cast<double>(step - warmup) / span, 0.0, 1.0);
  return static_cast<float>(0.1 + 0.9 * 0.5 * (1.0 + std::cos(M_PI * t)));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  DELTAMOE_CHECK(f.good(), kComp, path, ": cannot write");
}

}  // namespace

std::vector<int32_t> token_stream(const io::Tokenizer& tok, const std::vector<std::string>& docs,
                                  int32_t separator) {
  std::vector<int32_t> out;
  for (const std::string& d : docs) {
    const std::vector<int32_t> ids = tok.encode(d, /*add_special_tokens=*/false);
    out.insert(out.end(), ids.begin(), ids.end());
    out.push_back(separator);
  }
  return out;
}

LmTrainSummary train_lm(TrainableMoeLm& model, nn::Adam& adam, const std::vector<int32_t>& train,
                        const LmTrainOptions& o) {
  DELTAMOE_CHECK(o.seq_len >= 2 && o.batch >= 1 && o.steps >= 0, kComp, "bad shape: batch ",
                 o.batch, ", seq_len ", o.seq_len);
  const int64_t n = static_cast<int64_t>(train.size());
  DELTAMOE_CHECK(n > o.seq_len, kComp, "the training stream has ", n,
                 " tokens, fewer than one window of ", o.seq_len + 1);
  DELTAMOE_CHECK(!o.teacher || o.teacher->config().vocab_size == model.config().vocab_size, kComp,
                 "the teacher's vocabulary (", o.teacher ? o.teacher->config().vocab_size : 0,
                 ") is not the student's (", model.config().vocab_size, ")");
  LmTrainSummary s;
  const auto t0 = Clock::now();
  const int64_t report = std::max<int64_t>(1, o.steps / 20);
  const bool tty = o.progress && isatty(STDERR_FILENO);
  double recent_loss = 0.0, recent_k = 0.0;
  int64_t recent = 0;
  std::vector<int32_t> tokens(static_cast<size_t>(o.batch * o.seq_len));
  std::unique_ptr<graph::StepMemoryPlanner> planner;
  if (o.memory_plan) {
    graph::MemoryPlanOptions po;
    po.slack = o.memory_plan_slack;
    planner = std::make_unique<graph::StepMemoryPlanner>(po);
  }
  for (int64_t step = o.start_step; step < o.steps; ++step) {
    for (int64_t b = 0; b < o.batch; ++b) {
      std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step) * 1000003u +
                          static_cast<uint64_t>(b));
      const int64_t at = std::uniform_int_distribution<int64_t>(0, n - o.seq_len)(rng);
      std::copy(train.begin() + at, train.begin() + at + o.seq_len, tokens.begin() + b * o.seq_len);
    }
    graph::Graph g(true);
    if (planner) planner->begin(g);
    LmTrainForwardOptions fo;
    fo.balance_alpha = o.balance_alpha;
    fo.budget_beta = o.budget_beta;
    const LmTrainForward fwd = model.forward(g, tokens, o.seq_len, fo);
    std::vector<float> soft;
    const bool distil = o.teacher && (o.distill_steps <= 0 || step < o.distill_steps);
    if (distil) soft = o.teacher->teacher_distribution(tokens, o.seq_len);
    const graph::Var loss =
        model.loss(g, fwd, tokens, o.seq_len, distil ? &soft : nullptr, o.distill_weight);
    if (planner)
      planner->backward(g, loss, {});
    else
      g.backward(loss);
    adam.step(lr_scale(step, o.steps, o.warmup));
    const double l = g.scalar(loss), k = mean_experts_of(fwd);
    DELTAMOE_CHECK(std::isfinite(l), kComp, "the loss is ", l, " at step ", step + 1,
                   " (diverged: lower --lr)");
    s.loss_curve.emplace_back(step + 1, l);
    ++s.steps;
    s.tokens += o.batch * o.seq_len;
    if (step >= o.steps - std::max<int64_t>(1, o.steps / 10)) {
      recent_loss += l;
      recent_k += k;
      ++recent;
    }
    // A bar rewritten in place on a terminal; a line every 5% of the steps otherwise (logs).
    const bool last = step + 1 == o.steps;
    if (o.progress && (tty || (step + 1) % report == 0 || last)) {
      const double el = since(t0), tps = static_cast<double>(s.tokens) / std::max(el, 1e-9);
      const double eta = static_cast<double>(o.steps - step - 1) *
                         static_cast<double>(o.batch * o.seq_len) / std::max(tps, 1e-9);
      const int width = 24,
                done = static_cast<int>(width * (step + 1) / std::max<int64_t>(1, o.steps));
      std::fprintf(stderr,
                   "%s[%s%s] step %lld/%lld  loss %.4f  experts/token %.3f  %.0f tokens/s  %.0f s, "
                   "ETA %.0f s%s",
                   tty ? "\r" : "", std::string(static_cast<size_t>(done), '#').c_str(),
                   std::string(static_cast<size_t>(width - done), '.').c_str(),
                   static_cast<long long>(step + 1), static_cast<long long>(o.steps), l, k, tps, el,
                   eta, tty && !last ? "   " : "\n");
      std::fflush(stderr);
    }
    if (o.checkpoint_every > 0 && o.on_checkpoint && (step + 1) % o.checkpoint_every == 0 &&
        step + 1 < o.steps)
      o.on_checkpoint(step + 1);
  }
  if (planner) {
    s.memory_plan = planner->stats();
    if (o.progress) std::fprintf(stderr, "%s\n", planner->summary().c_str());
  }
  s.seconds = since(t0);
  s.tokens_per_s = static_cast<double>(s.tokens) / std::max(s.seconds, 1e-9);
  if (recent > 0) {
    s.final_loss = recent_loss / static_cast<double>(recent);
    s.mean_experts = recent_k / static_cast<double>(recent);
  }
  return s;
}

LmEval evaluate_lm(TrainableMoeLm& model, const std::vector<int32_t>& stream, int64_t seq_len,
                   int64_t batch, int64_t max_tokens, LmEvalDetail* detail,
                   const std::vector<std::vector<int32_t>>* forced_ks) {
  DELTAMOE_CHECK(seq_len >= 2 && batch >= 1, kComp, "bad shape: batch ", batch, ", seq_len ",
                 seq_len);
  int64_t windows = static_cast<int64_t>(stream.size()) / seq_len;
  if (max_tokens > 0) windows = std::min(windows, std::max<int64_t>(1, max_tokens / seq_len));
  DELTAMOE_CHECK(windows > 0, kComp, "the evaluation stream has ", stream.size(),
                 " tokens, fewer than one window of ", seq_len);
  const int64_t layers = model.config().num_hidden_layers;
  if (forced_ks) {
    DELTAMOE_CHECK(static_cast<int64_t>(forced_ks->size()) == layers, kComp, "forced_ks has ",
                   forced_ks->size(), " layers, the model ", layers);
    for (const auto& ks : *forced_ks)
      DELTAMOE_CHECK(static_cast<int64_t>(ks.size()) >= windows * seq_len, kComp, "forced_ks has ",
                     ks.size(), " tokens for ", windows * seq_len);
  }
  if (detail) {
    *detail = LmEvalDetail{};
    detail->token_k.assign(static_cast<size_t>(layers), {});
    detail->load.resize(static_cast<size_t>(layers));
    for (int64_t l = 0; l < layers; ++l)
      detail->load[static_cast<size_t>(l)].assign(
          static_cast<size_t>(model.config().experts_in_layer(l)), 0);
  }
  LmEval e;
  double nats = 0.0, k = 0.0;
  std::vector<std::vector<int32_t>> forced_batch;
  const auto t0 = Clock::now();
  for (int64_t w0 = 0; w0 < windows; w0 += batch) {
    const int64_t nb = std::min(batch, windows - w0);
    const std::vector<int32_t> tokens(stream.begin() + w0 * seq_len,
                                      stream.begin() + (w0 + nb) * seq_len);
    graph::Graph g(false);
    LmTrainForwardOptions fo;
    if (forced_ks) {
      forced_batch.resize(static_cast<size_t>(layers));
      for (int64_t l = 0; l < layers; ++l) {
        const auto& src = (*forced_ks)[static_cast<size_t>(l)];
        forced_batch[static_cast<size_t>(l)].assign(src.begin() + w0 * seq_len,
                                                    src.begin() + (w0 + nb) * seq_len);
      }
      fo.forced_ks = &forced_batch;
    }
    const LmTrainForward fwd = model.forward(g, tokens, seq_len, fo);
    const graph::Var loss =
        model.loss(g, fwd, tokens, seq_len, nullptr, 0.0, detail ? &detail->token_loss : nullptr);
    const int64_t predicted = nb * (seq_len - 1);
    nats += static_cast<double>(g.scalar(loss)) * static_cast<double>(predicted);
    e.tokens += predicted;
    k += mean_experts_of(fwd) * static_cast<double>(nb * seq_len);  // a last batch may be short
    if (detail)
      for (int64_t l = 0; l < layers; ++l) {
        const moe::RoutingResult& rr = fwd.routing[static_cast<size_t>(l)];
        auto& tk = detail->token_k[static_cast<size_t>(l)];
        for (int64_t t = 0; t < rr.tokens(); ++t) tk.push_back(rr.experts_of(t));
        for (int32_t id : rr.expert_ids) ++detail->load[static_cast<size_t>(l)][id];
      }
  }
  const double el = since(t0);
  e.loss = nats / static_cast<double>(e.tokens);
  e.perplexity = std::exp(e.loss);
  e.mean_experts = k / static_cast<double>(windows * seq_len);
  e.tokens_per_s = static_cast<double>(windows * seq_len) / std::max(el, 1e-9);
  return e;
}

void save_lm(const TrainableMoeLm& model, const std::string& routing, const moe::PolicySpec& spec,
             const std::string& tokenizer_json, const std::string& separator_token,
             const std::string& dir) {
  io::HfConfig cfg = model.config();
  std::vector<const moe::RoutingPolicy*> layers;
  for (const auto& p : model.layer_policies()) layers.push_back(p.get());
  cfg.deltamoe_routing_json = trained_routing_json(routing, spec, layers).dump();
  write_text(dir + "/config.json", io::hf_config_to_json(cfg));
  const std::vector<io::SafetensorsTensorSpec> specs =
      io::hf_tensor_specs(model.config(), DType::f32, io::HfExpertLayout::per_expert);
  io::SafetensorsWriter w(dir + "/model.safetensors", specs, {{"format", "pt"}});
  for (size_t i : w.order()) w.append(model.params().get(specs[i].name));
  w.commit();
  write_text(dir + "/tokenizer.json", tokenizer_json + "\n");
  nlohmann::ordered_json tc;
  tc["bos_token"] = separator_token;
  tc["eos_token"] = separator_token;
  tc["model_max_length"] = model.config().max_position_embeddings;
  tc["tokenizer_class"] = "PreTrainedTokenizerFast";
  write_text(dir + "/tokenizer_config.json", tc.dump(2) + "\n");
}

std::unique_ptr<TrainableMoeLm> load_trainable_lm(const std::string& dir) {
  const io::HfConfig cfg = io::HfConfig::load(dir);
  auto lm =
      std::make_unique<TrainableMoeLm>(cfg, io::load_hf_weights(cfg, io::HfCheckpoint::open(dir)));
  if (auto policies = trained_layer_policies(cfg); !policies.empty())
    lm->set_layer_policies(std::move(policies));
  return lm;
}

void save_train_state(const TrainableMoeLm& model, nn::Adam& adam, int64_t steps_done,
                      const std::string& path) {
  const auto& params = model.params().params();
  std::vector<io::SafetensorsTensorSpec> specs;
  for (const auto& p : params) {
    specs.push_back({"adam.m." + p.name, DType::f32, p.value.shape()});
    specs.push_back({"adam.v." + p.name, DType::f32, p.value.shape()});
  }
  io::SafetensorsWriter w(
      path, specs,
      {{"steps_done", std::to_string(steps_done)}, {"adam_steps", std::to_string(adam.steps())}});
  for (size_t i : w.order())
    w.append(i % 2 == 0 ? adam.first_moments()[i / 2] : adam.second_moments()[i / 2]);
  w.commit();
}

int64_t load_train_state(const TrainableMoeLm& model, nn::Adam& adam, const std::string& path) {
  const io::SafetensorsFile f = io::SafetensorsFile::open(path);
  const auto& params = model.params().params();
  for (size_t i = 0; i < params.size(); ++i) {
    for (int which = 0; which < 2; ++which) {
      const std::string name = (which ? "adam.v." : "adam.m.") + params[i].name;
      DELTAMOE_CHECK(f.has(name), kComp, path, ": no ", name, " (not a state of this model)");
      const Tensor t = f.get(name);
      DELTAMOE_CHECK(t.shape() == params[i].value.shape() && t.dtype() == DType::f32, kComp, path,
                     ": ", name, " has shape ", shape_str(t.shape()), ", expected ",
                     shape_str(params[i].value.shape()));
      Tensor& dst = which ? adam.second_moments()[i] : adam.first_moments()[i];
      std::copy(t.data<float>(), t.data<float>() + t.numel(), dst.data<float>());
    }
  }
  auto number = [&](const char* key) {
    const auto it = f.metadata().find(key);
    DELTAMOE_CHECK(it != f.metadata().end(), kComp, path, ": no ", key, " in its metadata");
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(it->second, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DELTAMOE_CHECK(used == it->second.size() && used > 0 && v >= 0, kComp, path, ": ", key, " '",
                   it->second, "' is not a step count");
    return static_cast<int64_t>(v);
  };
  adam.set_steps(number("adam_steps"));
  return number("steps_done");
}

}  // namespace deltamoe::models
