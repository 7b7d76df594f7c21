// `deltamoe sweep-lm`: the delta-MoE experiments on language models (issue 15, item 4; see
// docs/experiments/delta-moe-lm.md). Trains every configuration for each seed with
// `deltamoe train-lm` in child processes (one shared tokenizer, so models compare token by
// token), evaluates them on the validation split, writes CSVs, plots and the report.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/hf_model.h"
#include "deltamoe/io/output.h"
#include "deltamoe/io/tokenizer.h"
#include "deltamoe/io/tokenizer_train.h"
#include "deltamoe/models/lm_train.h"
#include "sweep_jobs.h"
#include "sweep_lm.h"
#include "sweep_report.h"
#include "train_common.h"

namespace {

using namespace deltamoe;
using namespace deltamoe::cli::sweep_lm;
using Clock = std::chrono::steady_clock;
using cli::sweep::sig;
constexpr const char* kComp = "sweep-lm";
constexpr const char* kSeparator = "<|endoftext|>";
constexpr int64_t kExperts = 8;

struct Options {
  bool quick = false;
  std::string out_dir = "sweep-lm-report";
  std::string work_dir = "/tmp/deltamoe-sweep-lm";
  std::string data;  // empty: Debian's fortunes
  int seeds = 0, jobs = 2, threads = 1;
  int64_t steps = 0, eval_tokens = -1, batch = 16, seq_len = 64, vocab = 2048;
  int64_t hidden = 128, inter = 256, layers = 2;
  float lr = 3e-3f;
  bool no_plots = false, json = false;
};

struct Run {
  std::string name, method;
  double budget = 0;  // k or K*
  int seed = 1;
};

// Names the recipe, so a sweep with other steps / shapes / data never reuses cached models.
std::string recipe_tag(const Options& o) {
  std::ostringstream os;
  os << "st" << o.steps << "_b" << o.batch << "_t" << o.seq_len << "_lr" << o.lr << "_v" << o.vocab
     << "_h" << o.hidden << "_i" << o.inter << "_l" << o.layers << "_"
     << (o.data.empty() ? std::string("fortunes")
                        : std::to_string(std::hash<std::string>{}(o.data) % 100000));
  return os.str();
}

std::string run_dir(const Run& r, const Options& o) {
  return o.work_dir + "/" + r.name + "_s" + std::to_string(r.seed);
}

// train-lm arguments of a run (1 thread; the sweep evaluates, so train-lm evaluates little).
std::vector<std::string> train_args(const Run& r, const Options& o) {
  const bool student = r.method == "student" || r.method == "student-kd";
  const bool fixed_k =
      r.method == "top-k" || r.method == "residual" || r.method == "pyramid" || student;
  const int64_t k = fixed_k ? static_cast<int64_t>(r.budget) : 2;
  const std::string routing = r.method == "residual" ? "top-k-raw:" + std::to_string(k)
                              : fixed_k              ? "top-k:" + std::to_string(k)
                                                     : r.method;
  // clang-format off
  std::vector<std::string> a = {
      "train-lm",
      "--routing", routing,
      "--experts", std::to_string(kExperts),
      "--top-k", std::to_string(k),
      "--layers", std::to_string(student ? o.layers - 1 : o.layers),
      "--hidden", std::to_string(o.hidden),
      "--inter", std::to_string(o.inter),
      "--seq-len", std::to_string(o.seq_len),
      "--batch", std::to_string(o.batch),
      "--steps", std::to_string(o.steps),
      "--lr", sig(o.lr, 9),
      "--seed", std::to_string(r.seed),
      "--threads", "1",
      "--eval-tokens", std::to_string(o.seq_len),
      "--out", run_dir(r, o),
      "--force", "--json", "--no-progress"};
  // clang-format on
  // Mixture-of-Students: one layer fewer, distilled from the seed's top-2 model (phase 2).
  if (r.method == "student-kd")
    a.insert(a.end(), {"--teacher", o.work_dir + "/top-k_k2_s" + std::to_string(r.seed),
                       "--distill-weight", "0.5"});
  else
    a.insert(a.end(), {"--tokenizer", o.work_dir + "/tokenizer.json"});
  if (is_delta(r.method)) a.insert(a.end(), {"--target-k", sig(r.budget, 17)});
  // PR-MoE's residual: a shared expert as wide as a routed one, beside raw top-1 weights.
  if (r.method == "residual") a.insert(a.end(), {"--shared-inter", std::to_string(o.inter)});
  if (r.method == "pyramid") {
    // DeepSpeed's pyramid: half the experts in the first half of the layers.
    const auto it = std::find(a.begin(), a.end(), "--experts");
    *it = "--layer-experts";
    *(it + 1) = pyramid_experts(o.layers, kExperts);
  }
  if (!o.data.empty()) a.insert(a.end(), {"--data", o.data});
  return a;
}

// Relative training cost (attention, router and head ≈ 2 experts' worth, plus K experts).
double run_cost(const Run& r) {
  return 2.0 + r.budget;
}

bool trained(const Run& r, const Options& o) {
  const std::string d = run_dir(r, o);
  return std::filesystem::exists(d + "/model.safetensors") &&
         std::filesystem::exists(d + ".train.json");
}

TrainRow train_row(const Run& r, const Options& o, double secs) {
  nlohmann::json j;
  const std::string path = run_dir(r, o) + ".train.json";
  try {
    std::ifstream f(path);
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    fail(kComp, path, ": ", e.what());
  }
  // A cached model keeps the time its own training took (in its JSON).
  return TrainRow{r.name,
                  r.method,
                  r.budget,
                  r.seed,
                  j.at("train_loss").get<double>(),
                  j.at("train_experts_per_token").get<double>(),
                  secs > 0 ? secs : j.at("time_s").get<double>(),
                  j.at("train_tokens_per_s").get<double>()};
}

void train_all(const std::vector<Run>& runs, const Options& o, Study& st) {
  std::vector<Run> todo;
  for (const Run& r : runs)
    if (!trained(r, o)) todo.push_back(r);
  std::stable_sort(todo.begin(), todo.end(),
                   [](const Run& a, const Run& b) { return run_cost(a) > run_cost(b); });
  std::vector<cli::sweep::ChildJob> jobs;
  for (const Run& r : todo) {
    const std::string base = run_dir(r, o);
    jobs.push_back({train_args(r, o), base + ".train.json.tmp", base + ".train.log",
                    "training " + r.name + " seed " + std::to_string(r.seed)});
  }
  std::fprintf(stderr, "[sweep-lm] %zu models to train (%zu cached), %d at a time\n", todo.size(),
               runs.size() - todo.size(), o.jobs);
  const auto t0 = Clock::now();
  size_t done = 0;
  cli::sweep::run_child_jobs(
      jobs, o.jobs,
      [&](size_t i, double secs) {
        const Run& r = todo[i];
        // The JSON is renamed into place last: it marks the model complete for a re-run.
        std::filesystem::rename(run_dir(r, o) + ".train.json.tmp", run_dir(r, o) + ".train.json");
        const TrainRow row = train_row(r, o, secs);
        const double el = std::chrono::duration<double>(Clock::now() - t0).count();
        ++done;
        std::fprintf(stderr,
                     "[sweep-lm] trained %s seed %d in %.0f s: train loss %.3f, %.2f experts/token "
                     "(%zu/%zu, %.0f s elapsed, ETA %.0f s)\n",
                     r.name.c_str(), r.seed, secs, row.train_loss, row.train_experts, done,
                     todo.size(), el,
                     el / static_cast<double>(done) * static_cast<double>(todo.size() - done));
      },
      kComp);
  for (const Run& r : runs) st.train.push_back(train_row(r, o, 0.0));
}

struct Model {
  Run run;
  std::unique_ptr<models::TrainableMoeLm> lm;
  std::vector<std::shared_ptr<moe::RoutingPolicy>> trained_policies;  // per layer
  void use_trained() { lm->set_layer_policies(trained_policies); }
  void use(const std::string& spec) {
    lm->set_policy(moe::parse_policy_spec(spec, lm->config().num_experts));
  }
};

Model load_model(const Run& r, const Options& o) {
  Model m{r, models::load_trainable_lm(run_dir(r, o)), {}};
  DELTAMOE_CHECK(!m.lm->config().deltamoe_routing_json.empty(), kComp, run_dir(r, o),
                 "/config.json has no deltamoe_routing (not written by train-lm)");
  m.trained_policies = m.lm->layer_policies();
  return m;
}

std::vector<double> window_losses(const models::LmEvalDetail& d, int64_t seq_len) {
  const size_t per = static_cast<size_t>(seq_len - 1);
  std::vector<double> w(d.token_loss.size() / per, 0.0);
  for (size_t i = 0; i < w.size() * per; ++i) w[i / per] += d.token_loss[i];
  for (double& x : w) x /= static_cast<double>(per);
  return w;
}

// What the E2 token breakdown needs of the validation stream.
struct TokenInfo {
  std::vector<int32_t> freq_bucket;  // per validation token: rank bucket of its training count
  std::vector<int32_t> pos_bucket;   // per validation token: position in its document, bucketed
};
const std::vector<std::string> kFreqBuckets = {"rank 1-10", "rank 11-100", "rank 101-1000",
                                               "rank > 1000"};
const std::vector<std::string> kPosBuckets = {"0", "1-3", "4-15", "16-63", "64+"};
const std::vector<std::string> kLossBuckets = {"easiest 25%", "25-50%", "50-75%", "hardest 25%"};

TokenInfo token_info(const std::vector<int32_t>& train, const std::vector<int32_t>& val,
                     int32_t vocab, int32_t sep) {
  std::vector<int64_t> count(static_cast<size_t>(vocab), 0);
  for (int32_t t : train) ++count[static_cast<size_t>(t)];
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return count[a] > count[b]; });
  std::vector<int32_t> rank(static_cast<size_t>(vocab));
  for (size_t i = 0; i < order.size(); ++i)
    rank[static_cast<size_t>(order[i])] = static_cast<int32_t>(i) + 1;
  TokenInfo ti;
  int64_t pos = 0;
  for (int32_t t : val) {
    const int32_t r = rank[static_cast<size_t>(t)];
    ti.freq_bucket.push_back(r <= 10 ? 0 : r <= 100 ? 1 : r <= 1000 ? 2 : 3);
    ti.pos_bucket.push_back(pos == 0 ? 0 : pos <= 3 ? 1 : pos <= 15 ? 2 : pos <= 63 ? 3 : 4);
    pos = t == sep ? 0 : pos + 1;
  }
  return ti;
}

// E2 rows of one model: mean experts (over layers) and loss of the predicting tokens by
// frequency, position and loss quartile of the model's own per-token loss.
void token_rows(const Run& r, const models::LmEvalDetail& d, const TokenInfo& ti, int64_t seq_len,
                Study& st) {
  const size_t L = d.token_k.size(), n = d.token_k[0].size();
  std::vector<double> k(n, 0.0);
  for (const auto& layer : d.token_k)
    for (size_t i = 0; i < n; ++i) k[i] += layer[i] / static_cast<double>(L);
  // Token i of the evaluated windows predicts i + 1 unless it ends its window.
  std::vector<std::pair<size_t, double>> pred;  // (stream index, loss)
  for (size_t i = 0, j = 0; i < n; ++i)
    if (static_cast<int64_t>(i % static_cast<size_t>(seq_len)) != seq_len - 1)
      pred.emplace_back(i, d.token_loss[j++]);
  std::vector<double> sorted;
  for (const auto& p : pred) sorted.push_back(p.second);
  std::sort(sorted.begin(), sorted.end());
  auto quartile = [&](double l) {
    for (int q = 1; q < 4; ++q)
      if (l < sorted[sorted.size() * static_cast<size_t>(q) / 4]) return q - 1;
    return 3;
  };
  for (const std::string by : {"frequency", "position", "loss"}) {
    const auto& names = by == "frequency"  ? kFreqBuckets
                        : by == "position" ? kPosBuckets
                                           : kLossBuckets;
    std::vector<double> ks(names.size(), 0), ls(names.size(), 0);
    std::vector<int64_t> cnt(names.size(), 0);
    for (const auto& [i, l] : pred) {
      const int b = by == "frequency"  ? ti.freq_bucket[i]
                    : by == "position" ? ti.pos_bucket[i]
                                       : quartile(l);
      ks[static_cast<size_t>(b)] += k[i];
      ls[static_cast<size_t>(b)] += l;
      ++cnt[static_cast<size_t>(b)];
    }
    for (size_t b = 0; b < names.size(); ++b)
      if (cnt[b] > 0)
        st.tokens.push_back({r.seed, r.method, r.budget, by, names[b], cnt[b],
                             ks[b] / static_cast<double>(cnt[b]),
                             ls[b] / static_cast<double>(cnt[b])});
  }
}

void evaluate_seed(int seed, const std::vector<Run>& runs, const Options& o,
                   const std::vector<int32_t>& val, const TokenInfo& ti, Study& st) {
  std::vector<Model> ms;
  for (const Run& r : runs)
    if (r.seed == seed) ms.push_back(load_model(r, o));
  const int64_t T = o.seq_len, B = o.batch, max_tok = o.eval_tokens;
  // Evaluations use all the sweep's cores (--jobs); timings alone run on --threads.
  auto eval = [&](Model& m, models::LmEvalDetail* d = nullptr,
                  const std::vector<std::vector<int32_t>>* forced = nullptr) {
    set_num_threads(std::max(o.jobs, o.threads));
    const models::LmEval e = models::evaluate_lm(*m.lm, val, T, B, max_tok, d, forced);
    set_num_threads(o.threads);
    return e;
  };
  // ---- every model at its trained routing, with per-token detail (E1's diagonal, E2, E3).
  std::vector<models::LmEvalDetail> details(ms.size());
  std::vector<models::LmEval> native(ms.size());
  for (size_t i = 0; i < ms.size(); ++i) native[i] = eval(ms[i], &details[i]);
  // ---- E1: fixed top-k models at every k.
  for (size_t i = 0; i < ms.size(); ++i) {
    Model& m = ms[i];
    if (m.run.method != "top-k") continue;
    const int kt = static_cast<int>(m.run.budget);
    for (int ke = 1; ke <= kExperts; ++ke) {
      models::LmEval e = native[i];  // its own k: evaluated above
      if (ke != kt) {
        m.use("top-k:" + std::to_string(ke));
        e = eval(m);
        m.use_trained();
      }
      st.e1.push_back({seed, kt, ke, e.perplexity, e.mean_experts});
    }
    std::fprintf(stderr, "[sweep-lm] seed %d E1 %s done\n", seed, m.run.name.c_str());
  }
  // ---- post-hoc top-p on the top-2 model.
  for (Model& m : ms)
    if (m.run.method == "top-k" && m.run.budget == 2) {
      for (double p : {0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}) {
        m.use("top-p:" + sig(p));
        const models::LmEval e = eval(m);
        st.posthoc.push_back({seed, p, e.perplexity, e.mean_experts});
      }
      m.use_trained();
    }
  // ---- timing: round robin, best pass per model, so load changes hit every model alike.
  std::vector<double> best(ms.size(), 0.0);
  const int64_t timing_tokens =
      std::min<int64_t>(o.quick ? 8192 : 32768, max_tok > 0 ? max_tok : int64_t{1} << 40);
  for (int rep = 0; rep < (o.quick ? 2 : 3); ++rep)
    for (size_t i = 0; i < ms.size(); ++i)
      best[i] =
          std::max(best[i], models::evaluate_lm(*ms[i].lm, val, T, B, timing_tokens).tokens_per_s);
  // ---- E2 and E3 at the trained routing, with the controls.
  size_t top2 = ms.size();
  for (size_t i = 0; i < ms.size(); ++i)
    if (ms[i].run.method == "top-k" && ms[i].run.budget == 2) top2 = i;
  DELTAMOE_ASSERT(top2 < ms.size(), "no top-2 model for seed ", seed);
  const std::vector<double> w2 = window_losses(details[top2], T);
  for (size_t i = 0; i < ms.size(); ++i) {
    Model& m = ms[i];
    const models::LmEvalDetail& d = details[i];
    E3Row row;
    row.seed = seed;
    row.method = m.run.method;
    row.budget = m.run.budget;
    row.perplexity = native[i].perplexity;
    row.experts = native[i].mean_experts;
    row.tokens_per_s = best[i];
    const std::vector<double> w = window_losses(d, T);
    if (i != top2) {
      const auto pt = cli::sweep::paired_t(w, w2);
      row.d_top2 = pt.mean;
      row.d_top2_half = pt.half;
      row.p_top2 = pt.p_value;
    }
    row.k_hist.assign(static_cast<size_t>(kExperts), 0.0);
    double pairs = 0;
    for (const auto& layer : d.token_k)
      for (int32_t k : layer) {
        row.k_hist[static_cast<size_t>(k - 1)] += 1;
        pairs += 1;
      }
    for (double& h : row.k_hist) h /= pairs;
    {
      const io::HfConfig& c = m.lm->config();
      row.params = m.lm->params().numel();
      int64_t moe_layers = 0;
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l);
      row.active_ffn_params = 3.0 * static_cast<double>(c.hidden_size * moe_layers) *
                              (static_cast<double>(c.moe_intermediate_size) * row.experts +
                               static_cast<double>(c.shared_expert_intermediate_size));
    }
    if (is_delta(m.run.method)) {
      // Shuffled-K control: each layer's per-token K, assigned to random tokens.
      std::vector<std::vector<int32_t>> ks = d.token_k;
      std::mt19937_64 rng(static_cast<uint64_t>(1000 + seed));
      for (auto& layer : ks) std::shuffle(layer.begin(), layer.end(), rng);
      models::LmEvalDetail ds;
      row.shuffled_perplexity = eval(m, &ds, &ks).perplexity;
      const auto ps = cli::sweep::paired_t(w, window_losses(ds, T));
      row.d_shuffled = ps.mean;
      row.d_shuffled_half = ps.half;
      row.p_shuffled = ps.p_value;
    }
    if (is_delta(m.run.method) || (m.run.method == "top-k" && m.run.budget <= 2))
      token_rows(m.run, d, ti, T, st);
    if (m.run.method == "top-k" && m.run.budget != 3)
      for (size_t l = 0; l < d.load.size(); ++l) {
        const cli::sweep::LoadStats ls = cli::sweep::load_stats(d.load[l]);
        st.load.push_back({seed, m.run.method, m.run.budget, static_cast<int>(l), ls.share,
                           ls.max_over_mean, ls.cv});
      }
    st.e3.push_back(row);
    std::fprintf(stderr, "[sweep-lm] seed %d %-14s ppl %.2f, %.3f experts/token, %.0f tokens/s%s\n",
                 seed, m.run.name.c_str(), row.perplexity, row.experts, row.tokens_per_s,
                 !is_delta(m.run.method)
                     ? ""
                     : (", shuffled-K ppl " + sig(row.shuffled_perplexity)).c_str());
  }
}

int run_sweep_lm(const Options& in) {
  Options o = in;
  if (o.seeds <= 0) o.seeds = o.quick ? 2 : 3;
  if (o.steps <= 0) o.steps = o.quick ? 150 : 2500;
  if (o.eval_tokens < 0) o.eval_tokens = o.quick ? 16384 : 0;
  DELTAMOE_CHECK(o.hidden % 4 == 0 && (o.hidden / 4) % 2 == 0, kComp, "--hidden ", o.hidden,
                 " must be a multiple of 8 (4 heads of an even size)");
  o.work_dir += "/" + recipe_tag(o);
  set_num_threads(o.threads);
  cli::keep_freed_memory();
  io::check_writable_dir(o.out_dir, kComp);
  io::check_writable_dir(o.work_dir, kComp);
  std::filesystem::create_directories(o.work_dir);
  std::filesystem::create_directories(o.out_dir);
  const auto t0 = Clock::now();

  // One tokenizer for every model, trained here on the training split (cached).
  const io::TextSplit split = o.data.empty() ? io::load_fortunes() : io::load_text_file(o.data);
  const std::string tok_path = o.work_dir + "/tokenizer.json";
  if (!std::filesystem::exists(tok_path)) {
    io::BpeTrainOptions bo;
    bo.vocab_size = static_cast<int32_t>(o.vocab);
    bo.special_tokens = {kSeparator};
    cli::write_file_atomic(tok_path, io::train_bpe(split.train, bo).tokenizer_json + "\n");
  }
  std::string tok_json;
  {
    std::ifstream f(tok_path);
    std::stringstream ss;
    ss << f.rdbuf();
    tok_json = ss.str();
  }
  const auto tok = io::Tokenizer::from_json(tok_json, tok_path);
  const int32_t sep = tok->token_id(kSeparator);
  const std::vector<int32_t> train = models::token_stream(*tok, split.train, sep);
  const std::vector<int32_t> val = models::token_stream(*tok, split.validation, sep);

  std::vector<Run> runs;
  for (int seed = 1; seed <= o.seeds; ++seed) {
    for (int k : {1, 2, 3, 4})
      runs.push_back({"top-k_k" + std::to_string(k), "top-k", static_cast<double>(k), seed});
    for (const std::string meth : {"top-p", "threshold"})
      for (double kt : {1.25, 1.5, 2.0}) runs.push_back({meth + "_K" + sig(kt), meth, kt, seed});
    // AdaMoE's null experts, the third delta policy, at the target budget.
    runs.push_back({"null-experts_K1.5", "null-experts", 1.5, seed});
    runs.push_back({"residual_k1", "residual", 1.0, seed});
    if (o.layers > 1) runs.push_back({"pyramid_k2", "pyramid", 2.0, seed});
  }
  Study st;
  st.quick = o.quick;
  st.seeds = o.seeds;
  st.jobs = o.jobs;
  st.threads = o.threads;
  st.steps = o.steps;
  st.batch = o.batch;
  st.seq_len = o.seq_len;
  st.eval_tokens = o.eval_tokens > 0
                       ? std::min<int64_t>(o.eval_tokens, static_cast<int64_t>(val.size()))
                       : static_cast<int64_t>(val.size());
  st.train_tokens = static_cast<int64_t>(train.size());
  st.layers = o.layers;
  st.hidden = o.hidden;
  st.inter = o.inter;
  st.vocab = tok->vocab_size();
  st.lr = o.lr;
  st.data = split.source;
  // Students need their teachers: a second round of trainings.
  std::vector<Run> students;
  if (o.layers > 1)
    for (int seed = 1; seed <= o.seeds; ++seed) {
      students.push_back({"student_k2", "student", 2.0, seed});
      students.push_back({"student-kd_k2", "student-kd", 2.0, seed});
    }
  train_all(runs, o, st);
  train_all(students, o, st);
  runs.insert(runs.end(), students.begin(), students.end());
  const TokenInfo ti = token_info(train, val, tok->vocab_size(), sep);
  for (int seed = 1; seed <= o.seeds; ++seed) evaluate_seed(seed, runs, o, val, ti, st);
  st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  write_csvs(o.out_dir, st);
  if (!o.no_plots) st.plots = cli::sweep::run_plot_script("plot_delta_moe_lm.py", o.out_dir, kComp);
  nlohmann::json j = write_report(o.out_dir, st);
  j["time_s"] = st.seconds;
  j["out_dir"] = o.out_dir;
  std::fprintf(stderr, "[sweep-lm] done in %.0f s; report %s/delta-moe-lm.md\n", st.seconds,
               o.out_dir.c_str());
  if (o.json) std::cout << j.dump() << "\n";
  return 0;
}

deltamoe::cli::CommandRegistrar reg(
    "sweep-lm",
    "Run the delta-MoE language-model experiments (E1-E3, post-hoc top-p) and write the report",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<Options>();
      app.add_flag("--quick", o->quick,
                   "small version (2 seeds, 150 steps, 16k validation tokens; a few minutes)");
      app.add_option("--out-dir", o->out_dir,
                     "where the CSVs, PNGs and delta-moe-lm.md go (the committed study: "
                     "--out-dir docs/experiments)")
          ->capture_default_str();
      app.add_option("--work-dir", o->work_dir,
                     "where trained models are cached (resumable; one subdirectory per recipe)")
          ->capture_default_str();
      app.add_option("--data", o->data,
                     "UTF-8 text file (documents separated by blank lines); default: the fortune "
                     "files of " +
                         std::string(io::kFortunesDir))
          ->check(CLI::ExistingFile);
      app.add_option("--seeds", o->seeds, "seeds per configuration")->check(CLI::Range(1, 100));
      app.add_option("--steps", o->steps, "training steps per model")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
      app.add_option("--eval-tokens", o->eval_tokens, "validation tokens evaluated (0: all)")
          ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
      app.add_option("--jobs", o->jobs, "trainings at a time, each a 1-thread child process")
          ->check(CLI::Range(1, 256))
          ->capture_default_str();
      app.add_option("--threads", o->threads,
                     "threads of the timing (1 keeps timings stable); evaluations use "
                     "max(--jobs, --threads)")
          ->check(CLI::Range(1, 1024))
          ->capture_default_str();
      app.add_option("--batch", o->batch, "sequences per training step")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 16))
          ->capture_default_str();
      app.add_option("--lr", o->lr, "Adam learning rate (cosine decay to 10%)")
          ->check(cli::finite_in(0.0, 10.0, true))
          ->capture_default_str();
      app.add_option("--vocab", o->vocab, "tokenizer vocabulary (one BPE for every model)")
          ->check(CLI::Range(int64_t{300}, int64_t{1} << 20))
          ->capture_default_str();
      app.add_option("--hidden", o->hidden, "hidden size")
          ->check(CLI::Range(int64_t{8}, int64_t{1} << 14))
          ->capture_default_str();
      app.add_option("--inter", o->inter, "expert intermediate size")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 16))
          ->capture_default_str();
      cli::show_default(app, {"--seeds"}, "3, --quick 2");
      cli::show_default(app, {"--steps"}, "2500, --quick 150");
      cli::show_default(app, {"--eval-tokens"}, "all, --quick 16384");
      app.add_flag("--no-plots", o->no_plots, "skip python/plot_delta_moe_lm.py");
      app.add_flag("--json", o->json, "print one JSON summary on stdout");
      return [o]() { return run_sweep_lm(*o); };
    });

}  // namespace
