// The tape → memgraph builder shared by export_training_graph (export_memgraph.cpp) and the
// memory planner (memory_plan.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "deltamoe/graph/export_memgraph.h"

namespace deltamoe::graph::detail {

/// Sizes for planned execution: bytes of each tape node's forward slot (value + saved, as the
/// planner lays them out) and of its gradient; `keep` = values read after backward().
struct PlanSizes {
  std::vector<uint64_t> fwd, grad;  // per tape id
  std::vector<int32_t> view_of;     // per tape id: the tape node whose slot it shares, or -1
  std::vector<Var> keep;
};

struct Exported {
  sched::Graph graph;
  std::vector<char> is_param_grad;  // per exported node: base of a parameter's gradient
  std::vector<int32_t> fwd;         // per tape id: its forward memgraph node
  std::vector<int32_t> grad_base;   // per tape id: its gradient's base node, or -1
  /// Per exported node: -1 forward; -2 the gradient seed; else the tape id whose VJP made it.
  std::vector<int32_t> vjp_of;
};

/// Builds the memgraph of one training step. Without `plan` (export): sizes are the tensors'
/// bytes and every value is its own buffer. With `plan`: sizes come from it, input leaves and
/// parameter gradients (caller-owned) are persistent, a scatter_add_rows that took over its
/// base's storage is a view of it, so is a node with plan->view_of set (a later member of a
/// slot group: the group's slot is its first member's buffer), and plan->keep's values are
/// outputs.
Exported build(const Graph& g, Var loss, const ExportOptions& opt, const PlanSizes* plan);

}  // namespace deltamoe::graph::detail
