// Planned execution of training steps: one arena laid out by sched/ offsets.
//
// A training step records a tape (graph.h) whose values stay allocated until the Graph dies.
// The memory planner turns a recorded step into a plan: the step's memgraph (the exporter's
// model of which buffer each forward op and VJP reads) in the engine's own execution order
// (forward in tape order, then backward()'s VJP order), with buffer offsets from
// sched::place_buffers. Later steps run with a PlannedAllocator: every value, saved
// intermediate and gradient is a view of one Arena at its planned offset, so a buffer whose
// last reader has run is reused and the step's tensors never take more than the arena.
//
// Shapes depend on the data: dropless MoE routing gives each expert a different number of
// rows every step (and skips experts that get none). So:
// - routing-dependent buffers (gather_rows, gate_weights and everything computed row-wise
//   from them) are planned `slack` larger than seen, and grow to the largest seen; a buffer
//   larger than its slot goes to the heap for that step (counted as an overflow) and the next
//   plan grows;
// - the experts of one MoE layer share slots: the values that play the same part in each
//   expert (its gathered rows, its hidden activations, ...) are one group, laid out one after
//   the other in a single slot sized for their total, which top-k routing fixes (T·k rows) and
//   adaptive routing moves little, while one expert's share moves a lot from step to step.
//   The group lives from its first member's creation to its last member's last reader.
//   Gradients stay one slot each (an expert's die before the next expert's are made), sized
//   for the largest member;
// - the tape is checked node by node against the plan (op and inputs); at the first node that
//   differs, the arena is frozen (no further buffer goes into it; the rest of the step uses
//   the heap), which is safe because no buffer in it is overwritten after that point. A node
//   whose input the plan had already given away is an error (Error("graph")), never a wrong
//   value.
// After such a step, StepMemoryPlanner re-plans from it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "deltamoe/core/arena.h"
#include "deltamoe/graph/graph.h"

namespace deltamoe::graph {

/// Offset of a buffer that is not in the arena.
inline constexpr uint64_t kNoSlot = ~uint64_t{0};

/// One tape node in a plan.
struct PlannedNode {
  Op op = Op::input;
  std::vector<int32_t> inputs;  // tape ids, as on the tape
  bool dynamic = false;         // size follows the routing
  uint64_t value_bytes = 0;     // slot capacities (multiples of 64)
  uint64_t saved_bytes = 0;
  uint64_t grad_bytes = 0;
  uint64_t fwd_offset = kNoSlot;   // value at fwd_offset, saved at fwd_offset + value_bytes
  int32_t group = -1;              // MemoryPlan::groups index: the value goes in the group's slot
  uint64_t grad_offset = kNoSlot;  // kNoSlot: no gradient, or the caller's (parameters)
  /// Position (in the step's execution order) of the last reader of this node's forward
  /// buffer; after it the plan may give the memory away. INT64_MAX for kept values.
  int64_t live_until = 0;
  int64_t position = 0;  // this node's forward position in the execution order
};

struct MemoryPlanOptions {
  /// Extra room for routing-dependent slots, as a fraction of the size seen (>= 0).
  double slack = 0.1;
};

/// Values of several tape nodes laid out one after the other in one slot.
struct PlannedGroup {
  std::vector<int32_t> members;  // tape ids, in tape (= allocation) order
  uint64_t capacity = 0;         // bytes
  uint64_t offset = kNoSlot;
};

/// A plan for the tensors of one training step.
struct MemoryPlan {
  std::vector<PlannedNode> nodes;  // per tape id
  std::vector<PlannedGroup> groups;
  int32_t loss_id = -1;
  uint64_t arena_bytes = 0;  // the arena the plan lays out (>= peak_bytes)
  uint64_t peak_bytes = 0;   // the memory model's peak of the same order with these slots
  /// Peak of the recorded step itself (exact sizes, no slack), and what the tape holds when
  /// nothing is freed (graph::tape_resident_bytes).
  uint64_t recorded_peak_bytes = 0;
  uint64_t tape_resident_bytes = 0;
  double plan_seconds = 0.0;
  /// For a step run on the heap (the one the plan is made from): what backward() may drop
  /// after each VJP, so that it holds what the memory model does (exact sizes, no slack).
  BackwardRelease release;
  /// True when `other` recorded the same tape structure (ops and inputs, node by node).
  bool same_structure(const MemoryPlan& other) const;
};

/// Plans the step recorded on `g` (forward built, `loss` its scalar loss; backward() may or
/// may not have run). `keep`: values the caller reads after backward() (kept to the end;
/// the loss always is). Other values and gradients are overwritten during the step.
/// With `grow_from` of the same structure, every slot is at least as large as there.
/// Throws Error("graph") on a tape without gradients or a non-scalar loss.
MemoryPlan plan_step_memory(const Graph& g, Var loss, const std::vector<Var>& keep,
                            const MemoryPlan* grow_from = nullptr,
                            const MemoryPlanOptions& opt = {});

/// Only the release schedule of plan_step_memory (MemoryPlan::release): what backward() may drop
/// after each VJP so that a step on the heap holds what the memory model does. Cheaper: one
/// memgraph, no slots, no placement.
BackwardRelease plan_backward_release(const Graph& g, Var loss, const std::vector<Var>& keep);

/// Hands out a plan's slots as views of `arena` (its capacity must be >= plan.arena_bytes).
/// One per step: attach it to the step's Graph (Graph::set_allocator) before the first op.
/// Both must outlive the Graph's use of the memory. Not thread-safe (one tape, one thread).
class PlannedAllocator : public TapeAllocator {
 public:
  PlannedAllocator(const MemoryPlan& plan, Arena& arena);

  Tensor allocate(int32_t id, Op op, const std::vector<int32_t>& inputs, BufferRole role,
                  const Shape& shape, bool zero) override;
  void pushed(int32_t id, Op op, const std::vector<int32_t>& inputs) override;
  void begin_backward(const Graph& g, Var loss) override;

  /// Buffers that did not fit their slot (heap instead) and their bytes.
  int64_t overflows() const { return overflows_; }
  uint64_t overflow_bytes() const { return overflow_bytes_; }
  /// Tape id where the step stopped following the plan (-1: it followed it throughout);
  /// from there on every buffer went to the heap.
  int32_t diverged_at() const { return diverged_at_; }

 private:
  bool matches(int32_t id, Op op, const std::vector<int32_t>& inputs) const;
  void diverge(int32_t id, const std::vector<int32_t>& inputs);
  void check_inputs(int32_t id, const std::vector<int32_t>& inputs) const;

  const MemoryPlan& plan_;
  Arena& arena_;
  std::vector<char> in_arena_;  // per tape id: its forward buffer is in the arena
  int64_t overflows_ = 0;
  uint64_t overflow_bytes_ = 0;
  int32_t diverged_at_ = -1;
  int64_t frozen_at_ = -1;            // execution position after which nothing goes into the arena
  int32_t matched_ = -1;              // the last tape id checked against the plan (op, inputs)
  std::vector<uint64_t> group_used_;  // per group: bytes handed out this step
};

/// Statistics of a StepMemoryPlanner.
struct StepPlanStats {
  int64_t steps = 0;          // steps seen
  int64_t planned_steps = 0;  // steps that ran inside the arena from start to end
  int64_t plans = 0;          // plans made (the first, then after overflows / divergence)
  int64_t overflows = 0;      // buffers that went to the heap, over all steps
  int64_t diverged_steps = 0;
  uint64_t arena_bytes = 0;          // the arena's capacity (the largest plan's, once made)
  uint64_t planned_peak_bytes = 0;   // the current plan's arena (MemoryPlan::arena_bytes)
  uint64_t recorded_peak_bytes = 0;  // of the step the current plan came from
  uint64_t tape_resident_bytes = 0;  // ditto, when nothing is freed
  double plan_seconds = 0.0;         // total time spent planning
};

/// Runs training steps under memory plans: the first step on the heap (its forward recorded,
/// planned before its backward, which then frees each buffer after its last reader), the next
/// ones inside the arena, re-planning after a step that overflowed or diverged. Usage per
/// step: begin(g) on a fresh Graph, build the forward and the loss, then backward(g, loss,
/// keep) instead of g.backward(loss). Afterwards only parameter gradients, the loss and the
/// `keep` values may be read; the arena's contents are valid until the next begin().
class StepMemoryPlanner {
 public:
  explicit StepMemoryPlanner(const MemoryPlanOptions& opt = {});
  ~StepMemoryPlanner();
  /// Attaches the current plan's allocator to `g` (nothing before the first plan).
  void begin(Graph& g);
  /// Runs the backward pass of the step begun on `g` and closes the step: counts it and
  /// re-plans when needed (no plan yet, or the step outgrew or left its plan). `keep`: values
  /// read after this call (the loss always is).
  void backward(Graph& g, Var loss, const std::vector<Var>& keep);
  const StepPlanStats& stats() const { return stats_; }
  /// A one-line summary for logs ("memory plan: arena 12.3 MiB, ...").
  std::string summary() const;

 private:
  void adopt(std::unique_ptr<MemoryPlan> plan);

  MemoryPlanOptions opt_;
  Arena arena_;
  std::unique_ptr<MemoryPlan> plan_;
  std::unique_ptr<PlannedAllocator> alloc_;
  StepPlanStats stats_;
};

}  // namespace deltamoe::graph
