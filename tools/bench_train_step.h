// `deltamoe bench train-step`: the memory of the engine's own training step three ways: on the
// heap as the engine has always run it (the tape holds every tensor until the step ends); on
// the heap with the backward freeing each buffer after its last reader (the plan's release
// schedule: what a good allocator can do once told the last uses); inside one arena laid out
// by sched/ (graph/memory_plan.h). Each is measured as the rise of the process's resident
// high-water mark over the steady state between steps, per step, in separate processes
// alternated round by round.
#pragma once

#include <cstdint>
#include <string>

namespace deltamoe::cli {

struct TrainStepBenchOptions {
  std::string kind = "lm";          // lm | classifier
  std::string memory_plan = "all";  // all (children, alternated) | heap | release | arena
  int64_t steps = 12;               // steps per run; the first is the recorded warm-up
  int rounds = 2;                   // all: rounds of the three modes
  double slack = 0.1;               // MemoryPlanOptions::slack
  // Shapes; 0 = the kind's default (lm: train-lm's; classifier: train's, patch stem).
  int64_t vocab = 2048, layers = 2, hidden = 0, inter = 0, experts = 0, top_k = 0, seq_len = 64,
          batch = 0;
  std::string routing;  // empty: top-k:<top_k>
  int threads = 2;
  uint64_t seed = 1;
  bool json = false;
};

/// Runs the benchmark (all: spawns this binary for each mode and round); one JSON object on
/// stdout when `json`. Throws Error("bench") on bad options.
int run_train_step_bench(const TrainStepBenchOptions& o);

}  // namespace deltamoe::cli
