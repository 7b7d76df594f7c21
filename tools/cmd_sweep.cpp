// `deltamoe sweep`: the delta-MoE experiments E1-E3 (see docs/experiments/delta-moe.md).
// Trains every configuration for each seed, evaluates on the test set, writes CSVs, calls
// python/plot_delta_moe.py for the PNGs and writes the report with tables and a verdict.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>

#include "command.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/io/output.h"
#include "deltamoe/models/moe_classifier.h"
#include "models/data_shim.h"
#include "sweep_jobs.h"
#include "sweep_report.h"
#include "train_common.h"

namespace {

using namespace deltamoe;
using namespace deltamoe::cli::sweep;
using Clock = std::chrono::steady_clock;
using cli::sweep::sig;

struct SweepOptions {
  bool quick = false;
  // Not docs/experiments: run from the repository root, that would overwrite the committed
  // study (regenerating it is `--out-dir docs/experiments`, docs/training.md).
  std::string out_dir = "sweep-report";
  std::string work_dir = "/tmp/deltamoe-sweep";
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int seeds = 0, epochs = 0, threads = 1;
  int jobs = 2;  // trainings at a time (child processes of this binary, 1 thread each)
  int64_t max_train = 0;
  // The training recipe (the same for every configuration; see docs/training.md).
  int64_t batch = 256;
  float lr = 2e-3f;
  int64_t warmup = 0;
  double dropout = 0.1;
  float label_smoothing = 0.0f;
  bool augment_flip = false;
  int64_t augment_shift = 0;
  bool no_plots = false, json = false;
};

// Names the training recipe, so models cached in the work directory by a sweep with another
// recipe (epochs, batch, lr, ...) are never reused: each recipe gets its own subdirectory.
std::string recipe_tag(const SweepOptions& o) {
  std::ostringstream os;
  os << "e" << o.epochs << "_b" << o.batch << "_lr" << o.lr << "_w" << o.warmup << "_d" << o.dropout
     << "_ls" << o.label_smoothing << "_f" << (o.augment_flip ? 1 : 0) << "_s" << o.augment_shift
     << "_n" << o.max_train;
  return os.str();
}

std::string recipe_text(const SweepOptions& o) {
  std::ostringstream os;
  os << "Adam (lr " << o.lr << ", cosine decay";
  if (o.warmup > 0) os << ", " << o.warmup << " warm-up steps";
  os << "), batch " << o.batch;
  if (o.dropout > 0) os << ", dropout " << o.dropout << " on the stem and MoE outputs";
  if (o.label_smoothing > 0) os << ", label smoothing " << o.label_smoothing;
  if (o.augment_flip || o.augment_shift > 0) {
    os << ", augmentation:";
    if (o.augment_flip) os << " left-right flips";
    if (o.augment_flip && o.augment_shift > 0) os << " and";
    if (o.augment_shift > 0) os << " shifts of up to " << o.augment_shift << " px";
  }
  return os.str();
}

struct Run {
  std::string name;    // e.g. "top-k_k2_bal" or "top-p_K1.5"
  std::string method;  // top-k | top-p | threshold | null-experts
  double budget = 0;   // k (top-k) or K* (delta)
  bool balance = true;
  int seed = 1;
};

models::MoeClassifierConfig config_for(const Run& r) {
  models::MoeClassifierConfig c;
  c.layers = 2;
  c.routing.kind = r.method;
  if (r.method == "top-k") {
    c.routing.k = static_cast<int64_t>(r.budget);
  } else {
    c.routing.target_k = r.budget;
    c.routing.p = 0.5;
    c.routing.k = r.method == "null-experts" ? static_cast<int64_t>(std::floor(r.budget)) + 1 : 2;
  }
  return c;
}

// Training rows of an earlier invocation (out_dir/delta-moe-train.csv), by "name,seed", so a
// re-run that reuses cached models still reports how they were trained.
std::map<std::string, std::vector<std::string>> previous_train_rows(const std::string& path) {
  std::map<std::string, std::vector<std::string>> rows;
  std::ifstream f(path);
  std::string line;
  if (!std::getline(f, line)) return rows;
  while (std::getline(f, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (cells.size() == 9) rows[cells[0] + "," + cells[4]] = cells;
  }
  return rows;
}

std::string model_path(const Run& r, const SweepOptions& o) {
  return o.work_dir + "/" + r.name + "_s" + std::to_string(r.seed) + ".safetensors";
}

models::TrainOptions train_options_for(const Run& r, const SweepOptions& o) {
  models::TrainOptions t;
  t.epochs = o.epochs;
  t.batch = o.batch;
  t.lr = o.lr;
  t.warmup_steps = o.warmup;
  t.augment_flip = o.augment_flip;
  t.augment_shift = o.augment_shift;
  t.dropout = o.dropout;
  t.label_smoothing = o.label_smoothing;
  t.seed = static_cast<uint64_t>(r.seed);
  t.balance_alpha = r.balance ? 0.01 : 0.0;
  t.entropy_beta = r.method == "top-p" ? 1e-4 : 0.0;
  t.max_train = o.max_train;
  t.val_size = 5000;
  return t;
}

// `deltamoe train` arguments that give the same model as get_model's in-process training
// (config_for + train_options_for): `sweep --jobs 1` and `--jobs 2` give the same models.
std::vector<std::string> train_args(const Run& r, const SweepOptions& o) {
  const auto c = config_for(r);
  const auto t = train_options_for(r, o);
  // The routing as a spec where it has parameters of its own; threshold and null-experts
  // take the defaults that config_for also takes (and adapt toward --target-k).
  std::string routing = r.method;
  if (r.method == "top-k") routing += ":" + std::to_string(c.routing.k);
  if (r.method == "top-p") routing += ":" + sig(c.routing.p, 17);
  // One flag and its value per line.
  // clang-format off
  std::vector<std::string> a = {
      "train",
      "--routing", routing,
      "--layers", std::to_string(c.layers),
      "--epochs", std::to_string(t.epochs),
      "--batch", std::to_string(t.batch),
      "--lr", sig(t.lr, 9),
      "--warmup", std::to_string(t.warmup_steps),
      "--seed", std::to_string(t.seed),
      "--balance-alpha", sig(t.balance_alpha, 17),
      "--entropy-beta", sig(t.entropy_beta, 17),
      "--max-train", std::to_string(t.max_train),
      "--val-size", std::to_string(t.val_size),
      "--augment-shift", std::to_string(t.augment_shift),
      "--dropout", sig(t.dropout, 17),
      "--label-smoothing", sig(t.label_smoothing, 9),
      "--threads", "1",
      "--data-dir", o.data_dir,
      "--out", model_path(r, o),
      "--json",
      "--no-test",
      "--no-progress"
  };
  // clang-format on
  if (t.augment_flip) a.push_back("--augment-flip");
  if (r.method != "top-k") a.insert(a.end(), {"--target-k", sig(c.routing.target_k, 17)});
  return a;
}

// Relative training cost of a run (stem + router + head ≈ 1.6 expert-equivalents per layer
// pair, plus K experts per layer): longest first keeps the two job slots evenly loaded.
double run_cost(const Run& r) {
  return 1.6 + 2.0 * r.budget;
}

// Trains every run whose model is not in the work directory yet, `o.jobs` at a time, each in
// a child process `deltamoe train ... --threads 1` of this same binary (run_child_jobs).
// Returns the training CSV row of each run trained, by "name,seed".
std::map<std::string, std::vector<std::string>> train_parallel(const std::vector<Run>& runs,
                                                               const SweepOptions& o) {
  std::map<std::string, std::vector<std::string>> rows;
  std::vector<Run> todo;
  for (const Run& r : runs) {
    const std::string path = model_path(r, o);
    if (!std::filesystem::exists(path) ||
        !std::filesystem::exists(std::filesystem::path(path).replace_extension(".json")))
      todo.push_back(r);
  }
  std::stable_sort(todo.begin(), todo.end(),
                   [](const Run& a, const Run& b) { return run_cost(a) > run_cost(b); });
  std::vector<ChildJob> jobs;
  for (const Run& r : todo) {
    const std::string base = o.work_dir + "/" + r.name + "_s" + std::to_string(r.seed);
    jobs.push_back({train_args(r, o), base + ".train.json", base + ".train.log",
                    "training " + r.name + " seed " + std::to_string(r.seed)});
  }
  const auto t0 = Clock::now();
  size_t done = 0;
  run_child_jobs(
      jobs, o.jobs,
      [&](size_t i, double secs) {
        const Run& run = todo[i];
        ++done;
        const std::string base = o.work_dir + "/" + run.name + "_s" + std::to_string(run.seed);
        nlohmann::json j;
        try {
          std::ifstream f(base + ".train.json");
          j = nlohmann::json::parse(f);
        } catch (const nlohmann::json::exception& e) {
          fail("sweep", base, ".train.json: ", e.what());
        }
        const auto& last = j.at("epochs").back();
        const double val = j.at("val_accuracy").get<double>(),
                     k = j.at("train_avg_experts").get<double>();
        std::fprintf(
            stderr,
            "[sweep] trained %s seed %d in %.1f s: val %.2f%%, train K %.3f (%zu/%zu, %.0f s "
            "elapsed)\n",
            run.name.c_str(), run.seed, secs, 100.0 * val, k, done, todo.size(),
            std::chrono::duration<double>(Clock::now() - t0).count());
        rows[run.name + "," + std::to_string(run.seed)] = {
            run.name,
            run.method,
            sig(run.budget),
            run.balance ? "1" : "0",
            std::to_string(run.seed),
            sig(val),
            sig(k),
            sig(secs),
            sig(last.at("samples_per_s").get<double>())};
      },
      "sweep");
  return rows;
}

// Trains (or loads from the work directory, so an interrupted sweep resumes).
models::MoeClassifier get_model(const Run& r, const SweepOptions& o, const models::detail::Data& d,
                                Csv& train_csv,
                                const std::map<std::string, std::vector<std::string>>& previous) {
  const std::string path = model_path(r, o);
  if (std::filesystem::exists(path) &&
      std::filesystem::exists(std::filesystem::path(path).replace_extension(".json"))) {
    std::fprintf(stderr, "[sweep] reuse %s\n", path.c_str());
    auto it = previous.find(r.name + "," + std::to_string(r.seed));
    if (it != previous.end()) train_csv.row(it->second);
    return models::MoeClassifier::load(path);
  }
  models::MoeClassifier m(config_for(r), static_cast<uint64_t>(r.seed));
  const models::TrainOptions t = train_options_for(r, o);
  const auto t0 = Clock::now();
  const auto s = models::train(m, d.train.images, d.train.labels, t);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::fprintf(stderr, "[sweep] trained %s seed %d in %.1f s: val %.2f%%, train K %.3f\n",
               r.name.c_str(), r.seed, secs, 100.0 * s.epochs.back().val_accuracy,
               s.epochs.back().avg_experts);
  train_csv.row({r.name, r.method, sig(r.budget), r.balance ? "1" : "0", std::to_string(r.seed),
                 sig(s.epochs.back().val_accuracy), sig(s.epochs.back().avg_experts), sig(secs),
                 sig(s.epochs.back().samples_per_s)});
  m.save(path);
  return m;
}

std::vector<int32_t> correct_vector(const models::EvalResult& r, const std::vector<int32_t>& y) {
  std::vector<int32_t> c(y.size());
  for (size_t i = 0; i < y.size(); ++i) c[i] = r.predicted[i] == y[i];
  return c;
}

// One timed pass over the test set after a warm-up batch (caches, BLAS buffers).
double measure_samples_per_s(models::MoeClassifier& m, const models::detail::Data& d) {
  const Tensor warm = d.test.images.slice(0, 1000);
  models::evaluate(m, warm,
                   std::vector<int32_t>(d.test.labels.begin(), d.test.labels.begin() + 1000));
  return models::evaluate(m, d.test.images, d.test.labels).samples_per_s;
}

int run_sweep(const SweepOptions& in) {
  SweepOptions o = in;
  if (o.seeds <= 0) o.seeds = o.quick ? 2 : 3;
  if (o.epochs <= 0) o.epochs = o.quick ? 3 : 12;
  if (o.quick && o.max_train == 0) o.max_train = 8000;
  o.work_dir += "/" + recipe_tag(o);
  set_num_threads(o.threads);
  cli::keep_freed_memory();
  io::check_writable_dir(o.out_dir, "sweep");
  io::check_writable_dir(o.work_dir, "sweep");
  std::filesystem::create_directories(o.work_dir);
  const auto t_start = Clock::now();
  const auto d = models::detail::load_data(o.data_dir);
  auto previous = previous_train_rows(o.out_dir + "/delta-moe-train.csv");
  const auto& ty = d.test.labels;

  const std::vector<int> train_ks = {1, 2, 4};
  const std::vector<int> fixed_ks = {1, 2, 3, 4};
  const std::vector<std::string> methods = {"top-p", "threshold", "null-experts"};
  const std::vector<double> targets = {1.25, 1.5, 2.0, 3.0};
  const int64_t experts = 8;

  Csv train_csv({"name", "method", "budget", "balance", "seed", "val_accuracy", "train_avg_experts",
                 "train_seconds", "train_samples_per_s"});
  Csv e1({"seed", "k_train", "k_eval", "accuracy", "avg_experts", "expert_flops_per_sample"});
  Csv e2_sum({"seed", "k", "balance", "layer", "max_over_mean", "cv", "accuracy"});
  Csv e2_load({"seed", "k", "balance", "layer", "expert", "share"});
  Csv e2_class({"k", "balance", "class", "expert", "count"});
  Csv e3({"seed", "method", "budget", "accuracy", "avg_experts", "expert_flops_per_sample",
          "samples_per_s", "shuffled_accuracy", "mcnemar_b", "mcnemar_c", "mcnemar_p"});
  Csv e3_class({"seed", "method", "budget", "class", "avg_experts", "accuracy"});
  Csv e3_hist({"seed", "method", "budget", "k", "fraction"});

  // Every run of the sweep, in the order the report visits them.
  auto top_k_run = [](int k, bool bal, int seed) {
    return Run{"top-k_k" + std::to_string(k) + (bal ? "_bal" : "_nobal"), "top-k", double(k), bal,
               seed};
  };
  auto delta_run = [](const std::string& meth, double kt, int seed) {
    return Run{meth + "_K" + sig(kt), meth, kt, true, seed};
  };
  if (o.jobs > 1) {
    std::vector<Run> runs;
    for (int seed = 1; seed <= o.seeds; ++seed) {
      for (int k : fixed_ks)
        for (bool bal : {true, false})
          if (bal || std::find(train_ks.begin(), train_ks.end(), k) != train_ks.end())
            runs.push_back(top_k_run(k, bal, seed));
      for (const auto& meth : methods)
        for (double kt : targets) runs.push_back(delta_run(meth, kt, seed));
    }
    // The freshly trained runs' rows replace those of an earlier invocation.
    for (auto& [key, row] : train_parallel(runs, o)) previous[key] = row;
  }

  for (int seed = 1; seed <= o.seeds; ++seed) {
    // ---- fixed top-k models (E1, E2, E3 baselines)
    std::map<int, std::vector<int32_t>> correct_topk;
    std::vector<std::pair<Run, models::MoeClassifier>> timed;
    for (int k : fixed_ks)
      for (bool bal : {true, false}) {
        const bool in_e1 = std::find(train_ks.begin(), train_ks.end(), k) != train_ks.end();
        if (!bal && !in_e1) continue;
        const Run r = top_k_run(k, bal, seed);
        auto m = get_model(r, o, d, train_csv, previous);
        const auto native = models::evaluate(m, d.test.images, ty);
        // E2: load at the trained k.
        if (in_e1)
          for (int64_t l = 0; l < m.config().layers; ++l) {
            const auto& ld = native.load[static_cast<size_t>(l)];
            const LoadStats st = load_stats(ld);
            e2_sum.row({std::to_string(seed), std::to_string(k), bal ? "1" : "0", std::to_string(l),
                        sig(st.max_over_mean), sig(st.cv), sig(native.accuracy)});
            for (int64_t e = 0; e < experts; ++e)
              e2_load.row({std::to_string(seed), std::to_string(k), bal ? "1" : "0",
                           std::to_string(l), std::to_string(e),
                           sig(st.share[static_cast<size_t>(e)])});
          }
        if (in_e1 && seed == 1)
          for (size_t c = 0; c < native.class_expert.size(); ++c)
            for (int64_t e = 0; e < experts; ++e)
              e2_class.row({std::to_string(k), bal ? "1" : "0", std::to_string(c),
                            std::to_string(e),
                            std::to_string(native.class_expert[c][static_cast<size_t>(e)])});
        if (!bal) continue;
        // E1: evaluate at every k.
        if (in_e1)
          for (int ke = 1; ke <= experts; ++ke) {
            moe::PolicySpec s;
            s.kind = "top-k";
            s.k = ke;
            m.set_policy(s);
            const auto r1 = models::evaluate(m, d.test.images, ty);
            e1.row({std::to_string(seed), std::to_string(k), std::to_string(ke), sig(r1.accuracy),
                    sig(r1.avg_experts), sig(r1.expert_flops_per_sample)});
          }
        m.reset_policies();
        correct_topk[k] = correct_vector(native, ty);
        timed.emplace_back(r, std::move(m));
      }
    // ---- delta policies (E3)
    for (const auto& meth : methods)
      for (double kt : targets) {
        const Run r = delta_run(meth, kt, seed);
        timed.emplace_back(r, get_model(r, o, d, train_csv, previous));
      }
    // ---- timing: round robin over the seed's models, best pass per model, so a change of
    // load on the (shared) machine during the measurement hits every model alike.
    std::vector<double> best_sps(timed.size(), 0.0);
    for (int rep = 0; rep < (o.quick ? 2 : 5); ++rep)
      for (size_t i = 0; i < timed.size(); ++i)
        best_sps[i] = std::max(best_sps[i], measure_samples_per_s(timed[i].second, d));
    // ---- evaluation of E3
    for (size_t ti = 0; ti < timed.size(); ++ti) {
      auto& [r, m] = timed[ti];
      const auto native = models::evaluate(m, d.test.images, ty);
      const double sps = best_sps[ti];
      std::string shuffled = "", mb = "", mc = "", mp = "";
      if (r.method != "top-k") {
        // Shuffled-K control: the same per-token budgets, assigned to random tokens.
        std::vector<std::vector<int32_t>> ks = native.token_k;
        std::mt19937_64 rng(static_cast<uint64_t>(1000 + seed));
        for (auto& layer : ks) std::shuffle(layer.begin(), layer.end(), rng);
        shuffled = sig(models::evaluate(m, d.test.images, ty, 1000, &ks).accuracy);
        const auto mn = mcnemar(correct_topk.at(2), correct_vector(native, ty));
        mb = std::to_string(mn.b);
        mc = std::to_string(mn.c);
        mp = sig(mn.p_value);
        // K by class and the K histogram.
        std::vector<double> ksum(10, 0), kcnt(10, 0), kcor(10, 0);
        for (size_t i = 0; i < ty.size(); ++i) {
          ksum[static_cast<size_t>(ty[i])] += native.experts_used[i];
          kcnt[static_cast<size_t>(ty[i])] += 1;
          kcor[static_cast<size_t>(ty[i])] += native.predicted[i] == ty[i];
        }
        for (int c = 0; c < 10; ++c)
          e3_class.row({std::to_string(seed), r.method, sig(r.budget), std::to_string(c),
                        sig(ksum[c] / kcnt[c]), sig(kcor[c] / kcnt[c])});
        std::vector<double> hist(static_cast<size_t>(experts) + 1, 0);
        double tot = 0;
        for (const auto& layer : native.token_k)
          for (int32_t k : layer) {
            hist[static_cast<size_t>(k)] += 1;
            tot += 1;
          }
        for (int64_t k = 1; k <= experts; ++k)
          e3_hist.row({std::to_string(seed), r.method, sig(r.budget), std::to_string(k),
                       sig(hist[static_cast<size_t>(k)] / tot)});
      }
      e3.row({std::to_string(seed), r.method, sig(r.budget), sig(native.accuracy),
              sig(native.avg_experts), sig(native.expert_flops_per_sample), sig(sps), shuffled, mb,
              mc, mp});
      std::fprintf(stderr, "[sweep] seed %d %-16s acc %.2f%% K %.3f %.0f samples/s %s\n", seed,
                   r.name.c_str(), 100.0 * native.accuracy, native.avg_experts, sps,
                   shuffled.empty() ? "" : ("shuffled-K acc " + shuffled).c_str());
    }
  }

  const std::string dir = o.out_dir;
  train_csv.write(dir + "/delta-moe-train.csv");
  e1.write(dir + "/delta-moe-e1.csv");
  e2_sum.write(dir + "/delta-moe-e2-summary.csv");
  e2_load.write(dir + "/delta-moe-e2-load.csv");
  e2_class.write(dir + "/delta-moe-e2-class-expert.csv");
  e3.write(dir + "/delta-moe-e3.csv");
  e3_class.write(dir + "/delta-moe-e3-k-by-class.csv");
  e3_hist.write(dir + "/delta-moe-e3-k-hist.csv");
  const double secs = std::chrono::duration<double>(Clock::now() - t_start).count();

  bool plots = false;
  if (!o.no_plots) {
    plots = run_plot_script("plot_delta_moe.py", dir, "sweep");
  }
  ReportInputs ri{o.quick, o.seeds, o.epochs, o.max_train,   o.threads,
                  secs,    plots,   o.jobs,   recipe_text(o)};
  const nlohmann::json verdict = write_report(dir, ri, e1, e2_sum, e3, e3_class, train_csv);
  nlohmann::json j = verdict;
  j["time_s"] = secs;
  j["out_dir"] = dir;
  std::fprintf(stderr, "[sweep] done in %.0f s; report %s/delta-moe.md\n", secs, dir.c_str());
  if (o.json) std::cout << j.dump() << "\n";
  return 0;
}

deltamoe::cli::CommandRegistrar reg(
    "sweep", "Run the delta-MoE experiments (E1-E3) and write the report with plots",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto o = std::make_shared<SweepOptions>();
      app.add_flag("--quick", o->quick, "small version for CI (2 seeds, 3 epochs on 8k images)");
      app.add_option("--out-dir", o->out_dir,
                     "where the CSVs, PNGs and delta-moe.md go (the committed study: --out-dir "
                     "docs/experiments)");
      app.add_option("--work-dir", o->work_dir,
                     "where trained models are cached (resumable; one subdirectory per recipe)");
      app.add_option("--data-dir", o->data_dir, "Fashion-MNIST directory");
      app.add_option("--seeds", o->seeds, "seeds per configuration (default 3; quick 2)");
      app.add_option("--epochs", o->epochs, "training epochs (default 12; quick 3)");
      app.add_option("--max-train", o->max_train, "training images (default all 55k; quick 8k)");
      app.add_option("--threads", o->threads,
                     "threads of the evaluation and timing (1 keeps timings stable)");
      app.add_option(
          "--jobs", o->jobs,
          "trainings at a time, each a 1-thread child process (default 2; 1: in this process)");
      app.add_option("--batch", o->batch, "training batch size (default 256)");
      app.add_option("--lr", o->lr, "Adam learning rate, cosine decay (default 2e-3)");
      app.add_option("--warmup", o->warmup, "linear learning-rate warm-up steps (default 0)");
      app.add_option("--dropout", o->dropout, "dropout on the stem and MoE outputs (default 0.1)");
      app.add_option("--label-smoothing", o->label_smoothing,
                     "cross-entropy label smoothing (default 0)");
      app.add_flag("--augment-flip", o->augment_flip,
                   "mirror training images left-right with probability 1/2");
      app.add_option("--augment-shift", o->augment_shift,
                     "shift training images by up to this many pixels");
      cli::show_default(app, {"--seeds"}, "3, --quick 2");
      cli::show_default(app, {"--epochs"}, "12, --quick 3");
      cli::show_default(app, {"--max-train"}, "all, --quick 8000");
      app.add_flag("--no-plots", o->no_plots, "skip python/plot_delta_moe.py");
      app.add_flag("--json", o->json, "print one JSON summary on stdout");
      return [o]() { return run_sweep(*o); };
    });

}  // namespace
