// CSVs and the Markdown report of `deltamoe sweep-lm` (see sweep_lm.h).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>

#include "command.h"
#include "sweep_lm.h"
#include "sweep_report.h"

namespace deltamoe::cli::sweep_lm {

namespace {

using sweep::Csv;
using sweep::fixed;
using sweep::mean_ci;
using sweep::MeanCi;
using sweep::sig;

std::string ci(const MeanCi& m, int decimals) {
  return m.n > 1 ? fixed(m.mean, decimals) + " ± " + fixed(m.half, decimals)
                 : fixed(m.mean, decimals);
}

std::string pval(double p) {
  if (p < 1e-4) return "<1e-4";
  return fixed(p, p < 0.01 ? 4 : 2);
}

std::string config_name(const std::string& method, double budget) {
  if (method == "residual") return "residual (shared + top-" + sig(budget) + ")";
  if (method == "pyramid") return "pyramid (top-" + sig(budget) + ")";
  if (method == "student") return "student, one layer fewer (top-" + sig(budget) + ")";
  if (method == "student-kd") return "student distilled from top-" + sig(budget);
  return method == "top-k" ? "top-" + sig(budget) : method + " K*=" + sig(budget);
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

using Key = std::pair<std::string, double>;  // (method, budget)

struct Agg {
  std::vector<double> ppl, k, tps, shuf, d2, ds;
  std::vector<double> p2, ps;
  std::vector<double> tps_ratio;  // tokens/s over the same seed's top-2
  std::vector<double> params, active;
};

}  // namespace

void write_csvs(const std::string& dir, const Study& s) {
  Csv train({"name", "method", "budget", "seed", "train_loss", "train_experts_per_token",
             "train_seconds", "train_tokens_per_s"});
  for (const auto& r : s.train)
    train.row({r.name, r.method, sig(r.budget), std::to_string(r.seed), sig(r.train_loss, 6),
               sig(r.train_experts, 5), sig(r.seconds, 5), sig(r.tokens_per_s, 6)});
  Csv e1({"seed", "k_train", "k_eval", "perplexity", "experts_per_token"});
  for (const auto& r : s.e1)
    e1.row({std::to_string(r.seed), std::to_string(r.k_train), std::to_string(r.k_eval),
            sig(r.perplexity, 6), sig(r.experts, 5)});
  Csv load({"seed", "k", "layer", "expert", "share"});
  Csv load_sum({"seed", "k", "layer", "max_over_mean", "cv"});
  for (const auto& r : s.load) {
    load_sum.row({std::to_string(r.seed), sig(r.budget), std::to_string(r.layer),
                  sig(r.max_over_mean, 5), sig(r.cv, 5)});
    for (size_t e = 0; e < r.share.size(); ++e)
      load.row({std::to_string(r.seed), sig(r.budget), std::to_string(r.layer), std::to_string(e),
                sig(r.share[e], 5)});
  }
  Csv tok({"seed", "method", "budget", "by", "bucket", "tokens", "experts_per_token", "loss"});
  for (const auto& r : s.tokens)
    tok.row({std::to_string(r.seed), r.method, sig(r.budget), r.by, r.bucket,
             std::to_string(r.tokens), sig(r.experts, 5), sig(r.loss, 5)});
  Csv e3({"seed", "method", "budget", "perplexity", "experts_per_token", "tokens_per_s",
          "shuffled_perplexity", "dloss_top2", "dloss_top2_ci", "p_top2", "dloss_shuffled",
          "dloss_shuffled_ci", "p_shuffled", "params", "active_ffn_params"});
  Csv hist({"seed", "method", "budget", "k", "fraction"});
  for (const auto& r : s.e3) {
    const bool delta = is_delta(r.method);
    e3.row({std::to_string(r.seed), r.method, sig(r.budget), sig(r.perplexity, 6),
            sig(r.experts, 5), sig(r.tokens_per_s, 6), delta ? sig(r.shuffled_perplexity, 6) : "",
            sig(r.d_top2, 5), sig(r.d_top2_half, 5), sig(r.p_top2, 4),
            delta ? sig(r.d_shuffled, 5) : "", delta ? sig(r.d_shuffled_half, 5) : "",
            delta ? sig(r.p_shuffled, 4) : "", std::to_string(r.params),
            sig(r.active_ffn_params, 6)});
    for (size_t k = 0; k < r.k_hist.size(); ++k)
      hist.row({std::to_string(r.seed), r.method, sig(r.budget), std::to_string(k + 1),
                sig(r.k_hist[k], 5)});
  }
  Csv post({"seed", "p", "perplexity", "experts_per_token"});
  for (const auto& r : s.posthoc)
    post.row({std::to_string(r.seed), sig(r.p), sig(r.perplexity, 6), sig(r.experts, 5)});
  train.write(dir + "/delta-moe-lm-train.csv");
  e1.write(dir + "/delta-moe-lm-e1.csv");
  load.write(dir + "/delta-moe-lm-e2-load.csv");
  load_sum.write(dir + "/delta-moe-lm-e2-summary.csv");
  tok.write(dir + "/delta-moe-lm-e2-tokens.csv");
  e3.write(dir + "/delta-moe-lm-e3.csv");
  hist.write(dir + "/delta-moe-lm-e3-k-hist.csv");
  post.write(dir + "/delta-moe-lm-posthoc.csv");
}

nlohmann::json write_report(const std::string& dir, const Study& s) {
  std::ostringstream md;
  const std::string cmd =
      std::string("deltamoe sweep-lm") + (s.quick ? " --quick" : "") + " --out-dir " + dir;
  md << "# delta-MoE language models: per-token expert budgets on real text\n\n"
     << "Generated by `" << cmd << "` in " << fixed(s.seconds / 60.0, 1) << " min on "
     << cpu_model() << " (" << s.jobs << " trainings at a time, 1 thread each; evaluation on "
     << std::max(s.jobs, s.threads) << " thread" << (std::max(s.jobs, s.threads) > 1 ? "s" : "")
     << ", timing on " << s.threads << " thread" << (s.threads > 1 ? "s" : "") << ")."
     << (s.quick ? " **Quick run: too short to conclude anything; the study is the full run.**"
                 : "")
     << "\n\n## Setup\n\n"
     << "Mixtral-layout MoE language models (`deltamoe train-lm`): " << s.layers
     << " layers, hidden " << s.hidden << ", 8 experts of intermediate size " << s.inter
     << " per layer, vocabulary " << s.vocab << " (one BPE tokenizer trained on the training "
     << "split and shared by every model, so per-token losses pair up). Data: " << s.data << ", "
     << s.train_tokens << " training tokens. Each model: " << s.steps << " Adam steps of "
     << s.batch << " × " << s.seq_len << " tokens (lr " << s.lr
     << ", warmup 20, cosine to 10%), Switch balance loss 0.01; " << s.seeds
     << " seeds per configuration (seed = initialisation and data order). Evaluation: "
     << s.eval_tokens << " validation tokens in windows of " << s.seq_len
     << " (perplexity = exp of the mean next-token loss). Delta policies, each with one "
     << "controller per MoE layer: top-p (a PI controller moves p toward the target mean K* "
     << "while training), per-expert thresholds (EMA quantiles toward K*) and AdaMoE's null "
     << "experts (top-2 over 8 experts + 8 null router outputs; an integral controller moves the "
     << "nulls' selection bias toward K*); inference routes with the parameters as trained. "
        "Intervals are "
     << "95% t-intervals over seeds; paired tests are over the validation windows' mean losses "
     << "(same tokens, same seed).\n\n";

  // ---------------- E1
  std::map<std::pair<int, int>, std::vector<double>> e1;
  std::set<int> k_train;
  for (const auto& r : s.e1) {
    e1[{r.k_train, r.k_eval}].push_back(r.perplexity);
    k_train.insert(r.k_train);
  }
  md << "## E1: experts per token at inference vs validation perplexity\n\n"
     << "Each fixed top-k model (rows: the k it was trained with) evaluated with top-k routing "
        "for every k (columns).\n\n| trained \\ evaluated |";
  for (int k = 1; k <= s.experts; ++k) md << " k=" << k << " |";
  md << "\n|---|";
  for (int k = 1; k <= s.experts; ++k) md << "---:|";
  md << "\n";
  for (int kt : k_train) {
    md << "| top-" << kt << " |";
    for (int k = 1; k <= s.experts; ++k) {
      const MeanCi m = mean_ci(e1[{kt, k}]);
      md << (k == kt ? " **" : " ") << ci(m, 2) << (k == kt ? "**" : "") << " |";
    }
    md << "\n";
  }
  if (s.plots) md << "\n![E1](delta-moe-lm-e1.png)\n";

  // ---------------- E2
  std::map<std::pair<double, int>, std::vector<double>> mom, cvs;
  for (const auto& r : s.load) {
    mom[{r.budget, r.layer}].push_back(r.max_over_mean);
    cvs[{r.budget, r.layer}].push_back(r.cv);
  }
  md << "\n## E2: expert load, and which tokens take how many experts\n\n"
     << "Load of the fixed top-k models at their trained k on the validation tokens "
        "(share of routed (token, expert) pairs; max/mean 1 and CV 0 are perfectly even):\n\n"
     << "| model | layer | max share / mean | CV of shares |\n|---|---:|---:|---:|\n";
  for (const auto& [key, v] : mom)
    md << "| top-" << sig(key.first) << " | " << key.second << " | " << ci(mean_ci(v), 2) << " | "
       << ci(mean_ci(cvs[key]), 2) << " |\n";
  // Token breakdown for every config, averaged over seeds.
  std::map<std::tuple<std::string, double, std::string, std::string>, std::vector<double>> tk, tl;
  std::vector<std::pair<std::string, std::string>> buckets;
  std::set<Key> token_cfgs;
  for (const auto& r : s.tokens) {
    tk[{r.method, r.budget, r.by, r.bucket}].push_back(r.experts);
    tl[{r.method, r.budget, r.by, r.bucket}].push_back(r.loss);
    if (std::find(buckets.begin(), buckets.end(), std::make_pair(r.by, r.bucket)) == buckets.end())
      buckets.emplace_back(r.by, r.bucket);
    token_cfgs.insert({r.method, r.budget});
  }
  md << "\nMean experts per token (over layers) of the delta models, by the input token's "
        "frequency rank in the training split, its position in its document, and the quartile "
        "of the model's own loss on the next token (the seed's hypothesis: harder tokens take "
        "more experts). The last column is top-2's loss on the same bucket (nats).\n\n"
     << "| by | bucket |";
  std::vector<Key> delta_cfgs;
  for (const Key& k : token_cfgs)
    if (is_delta(k.first)) delta_cfgs.push_back(k);
  for (const Key& k : delta_cfgs) md << " " << config_name(k.first, k.second) << " |";
  md << " top-2 loss |\n|---|---|";
  for (size_t i = 0; i <= delta_cfgs.size(); ++i) md << "---:|";
  md << "\n";
  for (const auto& [by, b] : buckets) {
    md << "| " << by << " | " << b << " |";
    for (const Key& k : delta_cfgs)
      md << " " << fixed(mean_ci(tk[{k.first, k.second, by, b}]).mean, 2) << " |";
    md << " " << fixed(mean_ci(tl[{"top-k", 2.0, by, b}]).mean, 2) << " |\n";
  }
  if (s.plots)
    md << "\n![E2 load](delta-moe-lm-e2-load.png)\n![E2 tokens](delta-moe-lm-e2-tokens.png)\n";

  // ---------------- E3
  std::map<Key, Agg> agg;
  std::map<int, double> top2_tps;
  for (const auto& r : s.e3)
    if (r.method == "top-k" && r.budget == 2) top2_tps[r.seed] = r.tokens_per_s;
  for (const auto& r : s.e3) {
    Agg& a = agg[{r.method, r.budget}];
    a.ppl.push_back(r.perplexity);
    a.k.push_back(r.experts);
    a.tps.push_back(r.tokens_per_s);
    a.tps_ratio.push_back(r.tokens_per_s / top2_tps[r.seed]);
    a.params.push_back(static_cast<double>(r.params));
    a.active.push_back(r.active_ffn_params);
    a.d2.push_back(r.d_top2);
    a.p2.push_back(r.p_top2);
    if (is_delta(r.method)) {
      a.shuf.push_back(r.shuffled_perplexity);
      a.ds.push_back(r.d_shuffled);
      a.ps.push_back(r.p_shuffled);
    }
  }
  const MeanCi top2 = mean_ci(agg[{"top-k", 2.0}].ppl);
  // The fixed top-k frontier: perplexity at K experts, linear between the trained top-k models.
  std::vector<std::pair<double, double>> frontier;
  for (auto& [k, a] : agg)
    if (k.first == "top-k") frontier.emplace_back(mean_ci(a.k).mean, mean_ci(a.ppl).mean);
  std::sort(frontier.begin(), frontier.end());
  auto seeds_str = [](const std::vector<double>& d, const std::vector<double>& p) {
    std::string out;
    for (size_t i = 0; i < d.size(); ++i)
      out += (i ? "; " : "") + std::string(d[i] >= 0 ? "+" : "") + fixed(d[i], 3) + " (p " +
             pval(p[i]) + ")";
    return out;
  };
  md << "\n## E3: delta policies against fixed top-k\n\n"
     << "Validation perplexity, measured experts per token and measured forward tokens/s (best "
        "of "
     << (s.quick ? 2 : 3)
     << " round-robin passes, 1 thread) of every configuration; \"fixed-k at same K\" is "
        "the fixed top-k models' perplexity interpolated linearly at the delta model's measured "
        "K; Δ loss is nats per token against the same seed's top-2 model (per seed, with the "
        "paired test's p), and against the delta model's own shuffled-K control (the same "
        "per-layer K histogram assigned to random tokens).\n\n"
     << "| configuration | experts/token | val. perplexity | vs top-2 | fixed-k at same K | "
        "tokens/s vs top-2 | shuffled-K perplexity | Δ loss vs top-2 per seed | Δ loss vs "
        "shuffled-K per seed |\n|---|---:|---:|---:|---:|---:|---:|---|---|\n";
  nlohmann::json configs = nlohmann::json::array();
  bool target_met = false, beats_frontier_any = false;
  int alloc_helps = 0, delta_total = 0;
  std::string best;
  double best_gap = 1e9;
  for (auto& [key, a] : agg) {
    if (key.first == "student" || key.first == "student-kd") continue;  // their own table
    const MeanCi ppl = mean_ci(a.ppl), k = mean_ci(a.k), tr = mean_ci(a.tps_ratio);
    const bool delta = is_delta(key.first);
    const double rel = ppl.mean / top2.mean - 1.0, fk = sweep::interpolate(frontier, k.mean);
    md << "| " << config_name(key.first, key.second) << " | " << ci(k, 3) << " | " << ci(ppl, 2)
       << " | " << (rel >= 0 ? "+" : "") << fixed(100 * rel, 1) << "% | "
       << (delta ? fixed(fk, 2) : "") << " | " << fixed(tr.mean, 2) << "x | "
       << (delta ? ci(mean_ci(a.shuf), 2) : "") << " | "
       << (key == Key{"top-k", 2.0} ? "" : seeds_str(a.d2, a.p2)) << " | "
       << (delta ? seeds_str(a.ds, a.ps) : "") << " |\n";
    nlohmann::json c{{"method", key.first},
                     {"budget", key.second},
                     {"experts_per_token", k.mean},
                     {"perplexity", ppl.mean},
                     {"perplexity_ci", ppl.half},
                     {"perplexity_vs_top2", rel},
                     {"tokens_per_s_vs_top2", tr.mean}};
    if (delta) {
      ++delta_total;
      const MeanCi shuf = mean_ci(a.shuf);
      c["shuffled_perplexity"] = shuf.mean;
      c["fixed_k_perplexity_at_same_k"] = fk;
      bool all_better = true;
      for (size_t i = 0; i < a.ds.size(); ++i) all_better &= a.ds[i] < 0 && a.ps[i] < 0.05;
      alloc_helps += all_better;
      beats_frontier_any |= ppl.mean < fk;
      if (k.mean <= 1.5 && rel <= 0.01) target_met = true;
      if (k.mean <= 1.5 && rel < best_gap) {
        best_gap = rel;
        best = config_name(key.first, key.second) + " at " + fixed(k.mean, 2) +
               " experts/token: " + (rel >= 0 ? "+" : "") + fixed(100 * rel, 1) +
               "% perplexity vs top-2";
      }
    }
    configs.push_back(c);
  }
  if (s.plots) md << "\n![E3 frontier](delta-moe-lm-e3-frontier.png)\n";

  // ---------------- PR-MoE residual (seed 004, DeepSpeed-MoE)
  nlohmann::json residual_json, pyramid_json;
  if (agg.count({"residual", 1.0})) {
    md << "\n## PR-MoE: the residual and pyramid designs against top-1 and top-2\n\n"
       << "DeepSpeed-MoE's residual MoE: a dense shared expert (as wide as one routed expert) "
          "that every token uses, plus one routed expert (raw top-1 weight), written as Hugging "
          "Face Qwen2-MoE (`train-lm --shared-inter "
       << s.inter
       << " --top-k 1`; its shared expert has "
          "Qwen2-MoE's sigmoid gate, and q/k/v biases). Its pyramid MoE: fewer experts in the "
          "early layers (`train-lm --layer-experts "
       << pyramid_experts(s.layers, s.experts)
       << " --top-k 2`: the config field `deltamoe_layer_experts`; Hugging Face has no per-layer "
          "expert count, so this checkpoint runs in deltamoe only). Same recipe and seeds as "
          "above; \"active FFN parameters\" are the expert weights one token uses over all "
          "layers.\n\n"
       << "| model | parameters | active FFN parameters / token | val. perplexity | vs top-2 | "
          "tokens/s vs top-2 | Δ loss vs top-2 per seed |\n|---|---:|---:|---:|---:|---:|---|\n";
    for (const Key& key :
         {Key{"top-k", 1.0}, Key{"top-k", 2.0}, Key{"residual", 1.0}, Key{"pyramid", 2.0}}) {
      if (!agg.count(key)) continue;
      Agg& a = agg[key];
      const MeanCi ppl = mean_ci(a.ppl);
      const double rel = ppl.mean / top2.mean - 1.0;
      md << "| " << config_name(key.first, key.second) << " | "
         << fixed(mean_ci(a.params).mean / 1e6, 2) << "M | "
         << fixed(mean_ci(a.active).mean / 1e3, 0) << "k | " << ci(ppl, 2) << " | "
         << (rel >= 0 ? "+" : "") << fixed(100 * rel, 1) << "% | "
         << fixed(mean_ci(a.tps_ratio).mean, 2) << "x | "
         << (key == Key{"top-k", 2.0} ? "" : seeds_str(a.d2, a.p2)) << " |\n";
    }
    Agg& res = agg[{"residual", 1.0}];
    residual_json = {{"perplexity", mean_ci(res.ppl).mean},
                     {"perplexity_vs_top2", mean_ci(res.ppl).mean / top2.mean - 1.0},
                     {"tokens_per_s_vs_top2", mean_ci(res.tps_ratio).mean}};
    if (agg.count({"pyramid", 2.0})) {
      Agg& pyr = agg[{"pyramid", 2.0}];
      pyramid_json = {{"perplexity", mean_ci(pyr.ppl).mean},
                      {"perplexity_vs_top2", mean_ci(pyr.ppl).mean / top2.mean - 1.0},
                      {"parameters_vs_top2",
                       mean_ci(pyr.params).mean / mean_ci(agg[{"top-k", 2.0}].params).mean},
                      {"tokens_per_s_vs_top2", mean_ci(pyr.tps_ratio).mean}};
    }
  }

  // ---------------- Mixture-of-Students (seed 004, DeepSpeed-MoE)
  nlohmann::json mos_json;
  if (agg.count({"student-kd", 2.0})) {
    md << "\n## Mixture-of-Students: distilling the top-2 model into one layer fewer\n\n"
       << "DeepSpeed-MoE's Mixture-of-Students: a student MoE with fewer layers trained to "
          "match the teacher's next-token distribution as well as the data (`train-lm "
          "--layers "
       << s.layers - 1
       << " --teacher DIR --distill-weight 0.5`: loss = 0.5 cross-entropy + 0.5 cross-entropy "
          "against the teacher's softmax). Teacher: the same seed's top-2 model ("
       << s.layers << " layers); the student without distillation is the control. Depth removed: "
       << fixed(100.0 / static_cast<double>(s.layers), 0)
       << "% (DeepSpeed removed 12.5% of a deeper model). \"Quality kept\" is the teacher's "
          "validation loss over the student's.\n\n"
       << "| model | parameters | val. perplexity | vs teacher | quality kept (loss ratio) | "
          "tokens/s vs teacher | Δ loss vs teacher per seed |\n"
          "|---|---:|---:|---:|---:|---:|---|\n";
    for (const Key& key : {Key{"top-k", 2.0}, Key{"student", 2.0}, Key{"student-kd", 2.0}}) {
      if (!agg.count(key)) continue;
      Agg& a = agg[key];
      const MeanCi ppl = mean_ci(a.ppl);
      const double rel = ppl.mean / top2.mean - 1.0;
      const double kept = std::log(top2.mean) / std::log(ppl.mean);
      md << "| " << (key.first == "top-k" ? "teacher: top-2" : config_name(key.first, key.second))
         << " | " << fixed(mean_ci(a.params).mean / 1e6, 2) << "M | " << ci(ppl, 2) << " | "
         << (rel >= 0 ? "+" : "") << fixed(100 * rel, 1) << "% | " << fixed(100 * kept, 1) << "% | "
         << fixed(mean_ci(a.tps_ratio).mean, 2) << "x | "
         << (key.first == "top-k" ? "" : seeds_str(a.d2, a.p2)) << " |\n";
    }
    const double kd = mean_ci(agg[{"student-kd", 2.0}].ppl).mean,
                 plain = agg.count({"student", 2.0}) ? mean_ci(agg[{"student", 2.0}].ppl).mean
                                                     : std::nan("");
    mos_json = {{"student_kd_perplexity", kd},
                {"student_perplexity", plain},
                {"teacher_perplexity", top2.mean},
                {"quality_kept", std::log(top2.mean) / std::log(kd)}};
  }

  // ---------------- post-hoc top-p
  std::map<double, std::pair<std::vector<double>, std::vector<double>>> ph;
  for (const auto& r : s.posthoc) {
    ph[r.p].first.push_back(r.experts);
    ph[r.p].second.push_back(r.perplexity);
  }
  std::vector<std::pair<double, double>> ph_curve;
  md << "\n## Post-hoc top-p on the top-2 model vs a model trained for the budget\n\n"
     << "The fixed top-2 model routed at inference with top-p (what llama.cpp users do by "
        "changing `expert_used_count`, here with a probability threshold instead of a count), "
        "against the top-p models trained with the controller.\n\n"
     << "| top-2 model, top-p at inference | experts/token | val. perplexity |\n|---|---:|---:|\n";
  for (auto& [p, v] : ph) {
    const MeanCi k = mean_ci(v.first), ppl = mean_ci(v.second);
    ph_curve.emplace_back(k.mean, ppl.mean);
    md << "| p = " << sig(p) << " | " << ci(k, 3) << " | " << ci(ppl, 2) << " |\n";
  }
  std::sort(ph_curve.begin(), ph_curve.end());
  md << "\n| trained top-p | experts/token | val. perplexity | post-hoc top-p at the same K |\n"
        "|---|---:|---:|---:|\n";
  int trained_wins = 0, trained_total = 0;
  for (auto& [key, a] : agg)
    if (key.first == "top-p") {
      const double k = mean_ci(a.k).mean, ppl = mean_ci(a.ppl).mean,
                   post = sweep::interpolate(ph_curve, k);
      ++trained_total;
      trained_wins += ppl < post;
      md << "| K* = " << sig(key.second) << " | " << fixed(k, 3) << " | " << fixed(ppl, 2) << " | "
         << fixed(post, 2) << " |\n";
    }

  // ---------------- verdict
  md << "\n## Verdict\n\n";
  if (s.quick) md << "(Quick run: the statements below describe this run only.)\n\n";
  md << "- Target \"a delta policy within 1% perplexity of top-2 at ≤ 1.5 experts per token\": "
     << (target_met ? "**met**" : "**not met**")
     << (best.empty() ? " (no delta model averaged ≤ 1.5 experts/token)."
                      : "; closest: " + best + ".")
     << "\n- Delta models below the fixed top-k frontier (lower perplexity than fixed k "
        "interpolated at the same measured K): "
     << (beats_frontier_any ? "at least one (see E3)." : "none.")
     << "\n- Allocation matters (delta model better than its shuffled-K control in every seed, "
        "p < 0.05): "
     << alloc_helps << " of " << delta_total << " delta configurations."
     << "\n- Trained top-p better than post-hoc top-p on the top-2 model at the same K: "
     << trained_wins << " of " << trained_total << " targets.\n";
  if (!mos_json.is_null())
    md << "- Mixture-of-Students (one layer fewer, distilled from top-2): perplexity "
       << fixed(mos_json["student_kd_perplexity"].get<double>(), 2) << " against the teacher's "
       << fixed(top2.mean, 2) << " and " << fixed(mos_json["student_perplexity"].get<double>(), 2)
       << " for the same student trained without the teacher; it keeps "
       << fixed(100 * mos_json["quality_kept"].get<double>(), 1)
       << "% of the teacher's quality (loss ratio).\n";
  if (!residual_json.is_null()) {
    const double rel = residual_json["perplexity_vs_top2"].get<double>();
    md << "- PR-MoE residual (shared expert + top-1) against top-2: " << (rel >= 0 ? "+" : "")
       << fixed(100 * rel, 1) << "% perplexity at "
       << fixed(residual_json["tokens_per_s_vs_top2"].get<double>(), 2) << "x the tokens/s.\n";
  }
  if (!pyramid_json.is_null()) {
    const double rel = pyramid_json["perplexity_vs_top2"].get<double>();
    md << "- Pyramid (" << pyramid_experts(s.layers, s.experts)
       << " experts, top-2) against top-2: " << (rel >= 0 ? "+" : "") << fixed(100 * rel, 1)
       << "% perplexity with " << fixed(pyramid_json["parameters_vs_top2"].get<double>(), 2)
       << "x the parameters, " << fixed(pyramid_json["tokens_per_s_vs_top2"].get<double>(), 2)
       << "x the tokens/s.\n";
  }
  md << "\nCSV files: `delta-moe-lm-train.csv`, `delta-moe-lm-e1.csv`, "
        "`delta-moe-lm-e2-load.csv`, `delta-moe-lm-e2-summary.csv`, `delta-moe-lm-e2-tokens.csv`, "
        "`delta-moe-lm-e3.csv`, `delta-moe-lm-e3-k-hist.csv`, `delta-moe-lm-posthoc.csv`. Plots: "
        "`python3 python/plot_delta_moe_lm.py --dir "
     << dir << "`.\n";
  // Hand-written notes (caveats, follow-up runs) kept beside the CSVs survive a re-run.
  std::ifstream notes(dir + "/delta-moe-lm-notes.md");
  if (notes)
    md << "\n"
       << std::string(std::istreambuf_iterator<char>(notes), std::istreambuf_iterator<char>());
  write_file_atomic(dir + "/delta-moe-lm.md", md.str());
  return nlohmann::json{{"target_met", target_met},
                        {"closest", best},
                        {"top2_perplexity", top2.mean},
                        {"delta_below_frontier", beats_frontier_any},
                        {"allocation_helps", alloc_helps},
                        {"delta_configurations", delta_total},
                        {"trained_topp_beats_posthoc", trained_wins},
                        {"residual", residual_json},
                        {"pyramid", pyramid_json},
                        {"mixture_of_students", mos_json},
                        {"configurations", configs}};
}

}  // namespace deltamoe::cli::sweep_lm
