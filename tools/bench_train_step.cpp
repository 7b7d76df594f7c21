// `deltamoe bench train-step` (bench_train_step.h).
#include "bench_train_step.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "deltamoe/core/error.h"
#include "deltamoe/core/parallel.h"
#include "deltamoe/graph/memory_plan.h"
#include "deltamoe/models/moe_classifier.h"
#include "deltamoe/models/moe_lm_train.h"
#include "deltamoe/moe/policies.h"
#include "deltamoe/nn/nn.h"
#include "lm_train_config.h"
#include "proc_memory.h"
#include "sweep_jobs.h"

namespace deltamoe::cli {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr const char* kComp = "bench";

TrainStepBenchOptions with_defaults(TrainStepBenchOptions o) {
  const bool lm = o.kind == "lm";
  if (o.hidden == 0) o.hidden = lm ? 128 : 256;
  if (o.inter == 0) o.inter = 256;
  if (o.experts == 0) o.experts = 8;
  if (o.top_k == 0) o.top_k = 2;
  if (o.batch == 0) o.batch = lm ? 16 : 256;
  if (o.routing.empty()) o.routing = "top-k:" + std::to_string(o.top_k);
  return o;
}

void check(const TrainStepBenchOptions& o) {
  DELTAMOE_CHECK(o.kind == "lm" || o.kind == "classifier", kComp,
                 "train-step: --kind must be lm or classifier, got '", o.kind, "'");
  DELTAMOE_CHECK(o.memory_plan == "all" || o.memory_plan == "heap" || o.memory_plan == "release" ||
                     o.memory_plan == "arena",
                 kComp, "train-step: --memory-plan must be all, heap, release or arena, got '",
                 o.memory_plan, "'");
  DELTAMOE_CHECK(o.steps >= 2, kComp, "train-step: --steps must be >= 2 (the first is recorded)");
  DELTAMOE_CHECK(o.rounds >= 1, kComp, "train-step: --rounds must be >= 1");
  DELTAMOE_CHECK(o.slack >= 0.0, kComp, "train-step: --slack must be >= 0");
  DELTAMOE_CHECK(o.top_k <= o.experts, kComp, "train-step: --top-k ", o.top_k,
                 " exceeds --experts ", o.experts);
}

// One training step builder: builds the forward and the loss on `g` for step `s`; returns
// the loss and sets the values the step reads after backward().
using StepFn = std::function<graph::Var(graph::Graph& g, int64_t s, std::vector<graph::Var>& keep)>;

// Runs `steps` steps of `fn` (heap or arena) and measures them; one JSON object.
json measure(const TrainStepBenchOptions& o, nn::ParameterSet& params, const StepFn& fn) {
  const bool arena = o.memory_plan == "arena";
  nn::AdamOptions ao;
  ao.lr = 1e-3f;
  nn::Adam adam(params, ao);
  graph::MemoryPlanOptions po;
  po.slack = o.slack;
  graph::StepMemoryPlanner planner(po);
  const uint64_t rss_setup = proc_status_bytes("VmRSS");
  uint64_t rss_steady = 0;
  std::vector<double> ms;
  double last_loss = 0.0;
  uint64_t peak = 0, planned_peak = 0, planned_arena = 0;  // rises over rss_steady
  json last_step, per_step = json::array();
  for (int64_t s = 0; s < o.steps; ++s) {
    if (s == 1) {
      // The steady state between steps: model, optimizer, data, allocator caches; the
      // first step's tensors are gone (the arena is made at the next begin()).
      malloc_trim(0);
      rss_steady = proc_status_bytes("VmRSS");
    }
    // The mark is reset before every measured step, so that each step's own peak is known
    // (a step that re-plans, or whose buffers outgrew their slots, is not one of the plan's).
    if (s > 0)
      DELTAMOE_CHECK(reset_high_water(), kComp, "cannot reset VmHWM (/proc/self/clear_refs)");
    const int64_t planned_before = planner.stats().planned_steps;
    const auto t0 = Clock::now();
    graph::Graph g(true);
    if (arena) planner.begin(g);
    std::vector<graph::Var> keep;
    const graph::Var loss = fn(g, s, keep);
    if (arena) {
      planner.backward(g, loss, keep);
    } else if (o.memory_plan == "release") {
      const graph::BackwardRelease release = graph::plan_backward_release(g, loss, keep);
      g.backward(loss, &release);
    } else {
      g.backward(loss);
    }
    last_loss = g.scalar(loss);
    adam.step(1.0f);
    if (s > 0) {
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      const uint64_t hwm = proc_status_bytes("VmHWM"),
                     rise = hwm > rss_steady ? hwm - rss_steady : 0;
      const bool in_plan = planner.stats().planned_steps > planned_before;
      peak = std::max(peak, rise);
      if (in_plan && rise >= planned_peak) {
        planned_peak = rise;
        planned_arena = planner.stats().arena_bytes;
      }
      per_step.push_back({{"step", s}, {"peak_rise_bytes", rise}, {"in_plan", in_plan}});
    }
    if (s + 1 == o.steps) {
      // The figures of the step itself (exact sizes, freed at last use or never) build a
      // memgraph, which is not the step's memory: after its mark was read.
      // (After a release, dropped values keep their shapes, which is all this reads.)
      const graph::MemoryPlan p = graph::plan_step_memory(g, loss, keep);
      last_step = {{"recorded_peak_bytes", p.recorded_peak_bytes},
                   {"tape_resident_bytes", p.tape_resident_bytes}};
    }
  }
  std::sort(ms.begin(), ms.end());
  json j = {{"benchmark", "train-step"},     {"kind", o.kind},
            {"memory_plan", o.memory_plan},  {"steps", o.steps},
            {"measured_steps", o.steps - 1}, {"step_ms_median", ms[ms.size() / 2]},
            {"rss_setup_bytes", rss_setup},  {"rss_steady_bytes", rss_steady},
            {"peak_rise_bytes", peak},       {"last_loss", last_loss},
            {"last_step", last_step},        {"per_step", per_step}};
  if (arena) {
    const graph::StepPlanStats& st = planner.stats();
    j["planned_steps_peak_rise_bytes"] = planned_peak;  // 0: no step ran inside the plan
    j["planned_steps_arena_bytes"] = planned_arena;
    j["plan"] = {{"arena_bytes", st.arena_bytes},
                 {"planned_peak_bytes", st.planned_peak_bytes},
                 {"plans", st.plans},
                 {"planned_steps", st.planned_steps},
                 {"overflows", st.overflows},
                 {"diverged_steps", st.diverged_steps},
                 {"plan_seconds", st.plan_seconds}};
  }
  return j;
}

json run_one(const TrainStepBenchOptions& o) {
  // Every tensor of 64 KiB or more its own mapping, returned when freed (as the torch.compile
  // study does): the resident high-water mark then follows the tensors alive.
  mallopt(M_MMAP_THRESHOLD, 64 * 1024);
  mallopt(M_TRIM_THRESHOLD, 64 * 1024);
  set_num_threads(o.threads);
  std::mt19937_64 rng(o.seed);
  if (o.kind == "lm") {
    LmShape shape;
    shape.layers = o.layers;
    shape.hidden = o.hidden;
    shape.experts = o.experts;
    shape.top_k = o.top_k;
    shape.inter = o.inter;
    shape.seq_len = o.seq_len;
    models::TrainableMoeLm lm(lm_train_config(shape, o.vocab, kComp), o.seed);
    lm.set_policy(moe::parse_policy_spec(o.routing, o.experts));
    std::vector<int32_t> tokens(static_cast<size_t>(o.batch * o.seq_len));
    models::LmTrainForwardOptions fo;
    fo.balance_alpha = 0.01;
    return measure(o, lm.params(), [&](graph::Graph& g, int64_t, std::vector<graph::Var>&) {
      for (auto& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(o.vocab));
      const models::LmTrainForward fwd = lm.forward(g, tokens, o.seq_len, fo);
      return lm.loss(g, fwd, tokens, o.seq_len);
    });
  }
  models::MoeClassifierConfig c;
  c.stem = "patch";
  c.hidden = o.hidden;
  c.inter = o.inter;
  c.experts = o.experts;
  c.layers = o.layers;
  c.routing = moe::parse_policy_spec(o.routing, o.experts);
  models::MoeClassifier model(c, o.seed);
  const int64_t pixels = c.input_side * c.input_side;
  Tensor x({o.batch, pixels});
  std::vector<int32_t> y(static_cast<size_t>(o.batch));
  std::uniform_real_distribution<float> px(0.0f, 1.0f);
  models::ForwardOptions fo;
  fo.training = true;
  fo.balance_alpha = 0.01;
  fo.rng = &rng;
  return measure(o, model.params(), [&](graph::Graph& g, int64_t, std::vector<graph::Var>& keep) {
    for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = px(rng);
    for (auto& l : y) l = static_cast<int32_t>(rng() % static_cast<uint64_t>(c.classes));
    const models::ForwardOut out = model.forward(g, x, fo);
    graph::Var loss = g.cross_entropy(out.logits, y);
    if (out.aux_loss.valid()) loss = g.add(loss, out.aux_loss);
    keep.push_back(out.logits);
    return loss;
  });
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<std::string> child_args(const TrainStepBenchOptions& o, const std::string& mode) {
  return {"bench",
          "train-step",
          "--kind",
          o.kind,
          "--memory-plan",
          mode,
          "--steps",
          std::to_string(o.steps),
          "--memory-plan-slack",
          std::to_string(o.slack),
          "--vocab",
          std::to_string(o.vocab),
          "--layers",
          std::to_string(o.layers),
          "--hidden",
          std::to_string(o.hidden),
          "--inter",
          std::to_string(o.inter),
          "--experts",
          std::to_string(o.experts),
          "--top-k",
          std::to_string(o.top_k),
          "--seq-len",
          std::to_string(o.seq_len),
          "--batch",
          std::to_string(o.batch),
          "--routing",
          o.routing,
          "--threads",
          std::to_string(o.threads),
          "--seed",
          std::to_string(o.seed),
          "--json"};
}

const char* const kModes[] = {"heap", "release", "arena"};

int run_all(const TrainStepBenchOptions& o) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("deltamoe-train-step-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::vector<sweep::ChildJob> jobs;
  for (int r = 0; r < o.rounds; ++r)
    for (const std::string mode : kModes) {
      const std::string stem = (dir / (mode + std::to_string(r))).string();
      jobs.push_back({child_args(o, mode), stem + ".json", stem + ".log",
                      "train-step " + mode + " round " + std::to_string(r + 1)});
    }
  std::vector<json> runs(jobs.size());
  sweep::run_child_jobs(
      jobs, 1,
      [&](size_t i, double secs) {
        std::ifstream f(jobs[i].stdout_path);
        runs[i] = json::parse(f);
        std::fprintf(stderr, "[bench] %s: peak rise %.2f MiB, %.1f ms/step (%.0f s)\n",
                     jobs[i].label.c_str(), runs[i]["peak_rise_bytes"].get<double>() / 1048576.0,
                     runs[i]["step_ms_median"].get<double>(), secs);
      },
      kComp);
  std::filesystem::remove_all(dir);
  std::map<std::string, std::vector<double>> peak, ms;
  std::vector<double> in_plan_ratio;
  for (const json& r : runs) {
    const std::string m = r["memory_plan"];
    peak[m].push_back(r["peak_rise_bytes"].get<double>());
    ms[m].push_back(r["step_ms_median"].get<double>());
    if (m == "arena" && r["planned_steps_arena_bytes"].get<double>() > 0)
      in_plan_ratio.push_back(r["planned_steps_peak_rise_bytes"].get<double>() /
                              r["planned_steps_arena_bytes"].get<double>());
  }
  DELTAMOE_CHECK(!in_plan_ratio.empty(), kComp,
                 "train-step: no step ran inside its plan (more --steps or --memory-plan-slack)");
  const json& last_arena = runs.back();
  const double planned = last_arena["plan"]["arena_bytes"].get<double>();
  const double hp = median(peak["heap"]), rp = median(peak["release"]), ap = median(peak["arena"]);
  const double ratio = *std::max_element(in_plan_ratio.begin(), in_plan_ratio.end());
  json out = {{"benchmark", "train-step"},
              {"kind", o.kind},
              {"shape",
               {{"layers", o.layers},
                {"hidden", o.hidden},
                {"inter", o.inter},
                {"experts", o.experts},
                {"routing", o.routing},
                {"batch", o.batch},
                {"seq_len", o.seq_len},
                {"vocab", o.vocab}}},
              {"threads", o.threads},
              {"rounds", o.rounds},
              {"steps", o.steps},
              {"memory_plan_slack", o.slack},
              {"heap_peak_bytes", hp},
              {"release_peak_bytes", rp},
              {"arena_peak_bytes", ap},
              {"planned_arena_bytes", planned},
              {"planned_steps_measured_over_planned", ratio},
              {"arena_over_heap", ap / hp},
              {"arena_over_release", ap / rp},
              {"recorded_peak_bytes", last_arena["last_step"]["recorded_peak_bytes"]},
              {"tape_resident_bytes", last_arena["last_step"]["tape_resident_bytes"]},
              {"heap_step_ms", median(ms["heap"])},
              {"release_step_ms", median(ms["release"])},
              {"arena_step_ms", median(ms["arena"])},
              {"plan", last_arena["plan"]},
              {"runs", runs}};
  std::fprintf(stderr,
               "train-step %s: peak heap %.2f MiB, release %.2f MiB, arena %.2f MiB (arena/heap "
               "%.3f, arena/release %.3f); arena %.2f MiB, steps inside it peak at %.3fx it; "
               "%.1f / %.1f / %.1f ms/step\n",
               o.kind.c_str(), hp / 1048576.0, rp / 1048576.0, ap / 1048576.0, ap / hp, ap / rp,
               planned / 1048576.0, ratio, median(ms["heap"]), median(ms["release"]),
               median(ms["arena"]));
  if (o.json) std::cout << out.dump() << "\n";
  return 0;
}

}  // namespace

int run_train_step_bench(const TrainStepBenchOptions& given) {
  const TrainStepBenchOptions o = with_defaults(given);
  check(o);
  if (o.memory_plan == "all") return run_all(o);
  const json j = run_one(o);
  if (o.json)
    std::cout << j.dump() << "\n";
  else
    std::fprintf(stderr, "train-step %s on the %s: peak rise %.2f MiB, %.1f ms/step\n",
                 o.kind.c_str(), o.memory_plan.c_str(),
                 j["peak_rise_bytes"].get<double>() / 1048576.0, j["step_ms_median"].get<double>());
  return 0;
}

}  // namespace deltamoe::cli
